package main

import (
	"io"
	"os"
	"os/signal"
	"syscall"
)

// warmFile reads a source file once so that no measured side pays for a
// cold page cache, and returns its FileInfo.
func warmFile(path string) os.FileInfo {
	st, err := os.Stat(path)
	must(err)
	f, err := os.Open(path)
	must(err)
	_, err = io.Copy(io.Discard, f)
	f.Close()
	must(err)
	return st
}

// watchInterrupt reports whether Ctrl-C (or SIGTERM) arrived: packer, in
// the same process group, gets it too and cleans up, so the bench waits for
// it instead of dying first.
func watchInterrupt() (interrupted func() bool, stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	return func() bool {
		select {
		case <-sigs:
			return true
		default:
			return false
		}
	}, func() { signal.Stop(sigs) }
}
