package linewriter

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestWriter(t *testing.T) {
	var got []string
	w := New(func(s string) { got = append(got, s) })
	for _, chunk := range []string{"one\ntw", "o\r\n", "\nthree", "", " and more"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", chunk, n, err)
		}
	}
	if want := []string{"one", "two", ""}; !reflect.DeepEqual(got, want) {
		t.Errorf("before Flush: %q, want %q", got, want)
	}
	w.Flush()
	w.Flush()
	if want := []string{"one", "two", "", "three and more"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after Flush: %q, want %q", got, want)
	}

	// A run without newline longer than maxLine is passed on, not kept.
	got = nil
	w.Write([]byte(strings.Repeat("x", maxLine+1)))
	if len(got) != 1 || len(got[0]) != maxLine+1 {
		t.Errorf("long run: %d lines", len(got))
	}
}

// TestConcurrent: whole lines from two writers (stdout and stderr) stay
// whole. Run with -race.
func TestConcurrent(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]bool{}
	w := New(func(s string) { mu.Lock(); seen[s] = true; mu.Unlock() })
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				fmt.Fprintf(w, "writer %d line %d\n", g, i)
			}
		}()
	}
	wg.Wait()
	if len(seen) != 1000 {
		t.Errorf("%d distinct lines, want 1000", len(seen))
	}
}
