// Package qemutest holds the tests' side of QEMU: Slot takes one of the
// machine-wide slots (internal/qemu.Acquire) for the length of a test. It is
// imported by tests only; product code takes slots with qemu.Acquire.
package qemutest

import (
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/qemu"
)

// Slot is qemu.Acquire for tests: it waits for a slot (logging when it had
// to) and releases it when the test ends.
func Slot(t testing.TB) {
	t.Helper()
	start := time.Now()
	release, err := qemu.Acquire(t.Context())
	if err != nil {
		t.Fatalf("qemu slot: %v", err)
	}
	if w := time.Since(start); w > time.Second {
		t.Logf("waited %v for a qemu slot", w.Round(time.Millisecond))
	}
	t.Cleanup(release)
}
