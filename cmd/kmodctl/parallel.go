package main

import (
	"runtime"
	"sync"
)

// forEachOrdered runs work(i) for i in [0,n) on up to workers goroutines and
// calls emit(i, result) in index order, holding at most a small window of
// finished results so memory stays bounded on large trees.
func forEachOrdered[T any](n, workers int, work func(i int) T, emit func(i int, v T)) {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	window := workers * 4
	type item struct {
		i int
		v T
	}
	jobs := make(chan int)
	done := make(chan item, window)
	// slots bounds the results that are computed but not yet emitted.
	slots := make(chan struct{}, window)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				done <- item{i, work(i)}
			}
		}()
	}
	go func() {
		for i := 0; i < n; i++ {
			slots <- struct{}{}
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		close(done)
	}()
	pending := make(map[int]T, window)
	next := 0
	for it := range done {
		pending[it.i] = it.v
		for {
			v, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			emit(next, v)
			<-slots
			next++
		}
	}
}
