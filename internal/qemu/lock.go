package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// SlotsEnv overrides the number of machine-wide slots (default: the number of
// CPUs); SlotDirEnv the folder of the lock files (default: os.TempDir()).
const (
	SlotsEnv   = "KMODCTL_QEMU_SLOTS"
	SlotDirEnv = "KMODCTL_QEMU_LOCKDIR"
)

// Slots is how many heavy jobs (QEMU boots, Packer builds) may run at once on
// this machine, across processes.
func Slots() int {
	if n, err := strconv.Atoi(os.Getenv(SlotsEnv)); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

func slotDir() string {
	if d := os.Getenv(SlotDirEnv); d != "" {
		return d
	}
	return os.TempDir()
}

// Acquire takes one of Slots() machine-wide slots, waiting until one is free
// or ctx ends. The slots are flock(2) locks on files
// $TMPDIR/kmodctl-qemu-slot-<i>.lock, so they are shared by every process
// (go test runs packages in parallel) and freed by the kernel when a process
// dies. Call release exactly once. A caller holds at most one slot: a second
// Acquire while holding one can deadlock when all slots are taken that way.
func Acquire(ctx context.Context) (release func(), err error) {
	n := Slots()
	dir := slotDir()
	if err := os.MkdirAll(dir, 0o1777); err != nil {
		return nil, err
	}
	files := make([]*os.File, n)
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i := range files {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("kmodctl-qemu-slot-%d.lock", i)), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o666)
		if err != nil {
			return nil, err
		}
		files[i] = f
	}
	delay := 50 * time.Millisecond
	for {
		for i, f := range files {
			err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
			if err == nil {
				files[i] = nil // kept open: closing it releases the lock
				return func() { f.Close() }, nil
			}
			if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
				return nil, fmt.Errorf("flock %s: %w", f.Name(), err)
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		if delay < 500*time.Millisecond {
			delay *= 2
		}
	}
}
