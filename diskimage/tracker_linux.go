//go:build linux

package diskimage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
)

// Tracker records every loop device and mount it creates and releases them
// all, mounts first (deepest first, including mounts made below them by
// others, e.g. during provisioning), then loops in reverse order. Release
// is idempotent and safe to call on every path (defer it and call it again
// from a step's Cleanup).
type Tracker struct {
	mu     sync.Mutex
	loops  []*Loop
	spares []*Loop // attached by Reserve, not handed out yet (also in loops)
	mounts []trackedMount
	// Log, if set, receives one line per action Release takes.
	Log func(string)
}

type trackedMount struct {
	source, target, image string
	released              bool
}

// Reserve attaches n spare loop devices to the whole of imagePath (see
// AttachSpare), for later read-write AttachPartition calls on that image:
// call it while the image is still empty, before writing it.
func (t *Tracker) Reserve(ctx context.Context, imagePath string, n int) error {
	for i := 0; i < n; i++ {
		l, err := AttachSpare(ctx, imagePath)
		if err != nil {
			return err
		}
		t.mu.Lock()
		t.loops = append(t.loops, l)
		t.spares = append(t.spares, l)
		t.mu.Unlock()
	}
	return nil
}

// AttachPartition attaches part of imagePath and records the loop. A
// read-write attach takes a spare of that image (Reserve) when one is left,
// moved to the partition; otherwise it attaches a new loop device.
func (t *Tracker) AttachPartition(ctx context.Context, imagePath string, part Partition, readOnly bool) (*Loop, error) {
	if !readOnly {
		if l := t.takeSpare(imagePath); l != nil {
			if err := l.Repoint(part.Start, part.Size); err != nil {
				return nil, fmt.Errorf("attach partition %d: %w", part.Number, err)
			}
			return l, nil
		}
	}
	l, err := AttachPartition(ctx, imagePath, part, readOnly)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.loops = append(t.loops, l)
	t.mu.Unlock()
	return l, nil
}

// takeSpare removes and returns a spare attached to imagePath, or nil.
func (t *Tracker) takeSpare(imagePath string) *Loop {
	abs, err := canonical(imagePath)
	if err != nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, l := range t.spares {
		if l.Image == abs {
			t.spares = append(t.spares[:i], t.spares[i+1:]...)
			return l
		}
	}
	return nil
}

// DropSpares detaches the spares no AttachPartition took.
func (t *Tracker) DropSpares() error {
	t.mu.Lock()
	spares := t.spares
	t.spares = nil
	t.mu.Unlock()
	var errs []error
	for _, l := range spares {
		if err := l.Detach(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Mount mounts and records the mount; image names the disk image behind
// the source (for messages), may be "".
func (t *Tracker) Mount(ctx context.Context, source, target, fstype string, opts ...string) error {
	abs, err := filepath.Abs(target)
	if err != nil {
		return err
	}
	if err := Mount(ctx, source, abs, fstype, opts...); err != nil {
		return err
	}
	img := ""
	t.mu.Lock()
	for _, l := range t.loops {
		if l.Device == source {
			img = l.Image
		}
	}
	t.mounts = append(t.mounts, trackedMount{source: source, target: abs, image: img})
	t.mu.Unlock()
	return nil
}

// Mounts returns the recorded mount targets still held, in creation order.
func (t *Tracker) Mounts() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var r []string
	for _, m := range t.mounts {
		if !m.released {
			r = append(r, m.target)
		}
	}
	return r
}

// Loops returns the recorded loop devices.
func (t *Tracker) Loops() []*Loop {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*Loop(nil), t.loops...)
}

// Release unmounts all recorded mounts (and anything mounted below them)
// deepest first, killing processes that keep them busy, then detaches all
// recorded loops in reverse order. It keeps going after failures and
// returns them joined, plus a report of every action taken.
func (t *Tracker) Release() ([]string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var report []string
	var errs []error
	say := func(s string) {
		report = append(report, s)
		if t.Log != nil {
			t.Log(s)
		}
	}
	// Deepest targets first; among equal depth, the latest mount first.
	idx := make([]int, 0, len(t.mounts))
	for i := len(t.mounts) - 1; i >= 0; i-- {
		if !t.mounts[i].released {
			idx = append(idx, i)
		}
	}
	targets := make([]string, len(idx))
	for k, i := range idx {
		targets[k] = t.mounts[i].target
	}
	sortDeepestFirst(targets)
	done := map[string]bool{}
	for _, tg := range targets {
		if done[tg] {
			continue
		}
		done[tg] = true
		reps, err := UnmountTree(tg)
		for _, r := range reps {
			if !r.NotMounted {
				say(r.String())
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for i := range t.mounts {
			if t.mounts[i].target == tg {
				t.mounts[i].released = true
			}
		}
	}
	for i := len(t.loops) - 1; i >= 0; i-- {
		l := t.loops[i]
		l.mu.Lock()
		already := l.detached
		l.mu.Unlock()
		if already {
			continue
		}
		if err := l.Detach(); err != nil {
			errs = append(errs, err)
			continue
		}
		say(fmt.Sprintf("detached %s (%s at offset %d)", l.Device, l.Image, l.Offset))
	}
	t.spares = nil
	if len(errs) > 0 {
		return report, fmt.Errorf("release: %w", errors.Join(errs...))
	}
	return report, nil
}
