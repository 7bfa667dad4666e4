package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// Boots of the fixture kernel with the fixture initrds (real QEMU, TCG on
// this machine), each holding a machine-wide slot.

// bootCap caps every boot of these tests.
const bootCap = 120 * time.Second

func bootFixture(t *testing.T, initrd, cmdline string, markers []Marker) *Result {
	t.Helper()
	fixture.Tool(t, "qemu-system-x86_64")
	kernel := fixture.Vmlinuz(t)
	slot(t)
	log := filepath.Join(t.TempDir(), "console.log")
	r, err := Boot(t.Context(), Config{Kernel: kernel, Initrd: initrd, Append: cmdline, Markers: markers, Timeout: bootCap, ConsoleLog: log})
	if err != nil {
		t.Fatalf("boot: %v", err)
	}
	t.Logf("%s: %s", filepath.Base(initrd), r)
	if b, err := os.ReadFile(log); err != nil || string(b) != r.Console {
		t.Errorf("console log: %d bytes (%v), console %d bytes", len(b), err, len(r.Console))
	}
	if !gone(r.PID) {
		t.Errorf("QEMU %d still runs after Boot", r.PID)
	}
	return r
}

// gone reports whether process pid has ended (and been reaped).
func gone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

// TestBootFixtureInitrds boots the fixture initrds of both initramfs
// generators unmodified to the conclusive line of their own failure path
// (no root device): this proves the kernel unpacked the image and ran its
// /init, that the markers of both generators work, and sets the baseline
// the injection tests extend. The gzip, xz and microcode variants of the
// initramfs-tools image differ only in compression; initramfs's
// TestInjectFixtures boots each of them (injected, in both modes) to a
// module's line, which proves more than this baseline would.
func TestBootFixtureInitrds(t *testing.T) {
	for _, c := range []struct {
		name, cmdline string
		markers       []Marker
	}{
		{fixture.InitrdToolsZstd, InitramfsToolsCmdline, InitramfsToolsMarkers(SuccessOn(InitramfsToolsEnd))},
		{fixture.InitrdDracut, DracutCmdline, DracutMarkers(SuccessOn(DracutEnd))},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := bootFixture(t, fixture.Initrd(t, c.name), c.cmdline, c.markers)
			if r.Outcome != Success {
				t.Fatalf("%s\n%s", r, r.Tail(30))
			}
		})
	}
}

// TestBootWrongMarkers: a success marker the boot never prints must not
// pass: the guest reaches its failure path and reboots (panic=1 and
// -no-reboot end QEMU), so the outcome is Exited; the boot's own line
// listed as a failure marker gives Failure.
func TestBootWrongMarkers(t *testing.T) {
	t.Parallel()
	initrd := fixture.Initrd(t, fixture.InitrdToolsZstd)
	r := bootFixture(t, initrd, InitramfsToolsCmdline, []Marker{SuccessOn("Reached target")})
	if r.Outcome != Exited || !strings.Contains(r.Console, InitramfsToolsEnd) {
		t.Fatalf("want exited after %q: %s\n%s", InitramfsToolsEnd, r, r.Tail(20))
	}
	r = bootFixture(t, initrd, InitramfsToolsCmdline, []Marker{SuccessOn("Reached target"), FailureOn(InitramfsToolsEnd)})
	if r.Outcome != Failure || !strings.Contains(r.Line, InitramfsToolsEnd) {
		t.Fatalf("want failure on %q: %s", InitramfsToolsEnd, r)
	}
}

// TestBootTimeout and TestBootCancel: QEMU is killed when the boot runs out
// of time or its context ends.
func TestBootTimeout(t *testing.T) {
	t.Parallel()
	fixture.Tool(t, "qemu-system-x86_64")
	kernel, initrd := fixture.Vmlinuz(t), fixture.Initrd(t, fixture.InitrdToolsZstd)
	slot(t)
	r, err := Boot(t.Context(), Config{Kernel: kernel, Initrd: initrd, Append: InitramfsToolsCmdline, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Outcome != Timeout || r.Elapsed < 3*time.Second || r.Elapsed > 5*time.Second {
		t.Errorf("want a timeout after 3s: %s", r)
	}
	if !gone(r.PID) {
		t.Errorf("QEMU %d still runs after a timeout", r.PID)
	}
	t.Logf("%d console bytes before the timeout", len(r.Console))
}

func TestBootCancel(t *testing.T) {
	t.Parallel()
	fixture.Tool(t, "qemu-system-x86_64")
	kernel, initrd := fixture.Vmlinuz(t), fixture.Initrd(t, fixture.InitrdToolsZstd)
	slot(t)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(2*time.Second, cancel)
	r, err := Boot(ctx, Config{Kernel: kernel, Initrd: initrd, Append: InitramfsToolsCmdline, Markers: KernelFailures})
	if !errors.Is(err, context.Canceled) || r == nil || r.Outcome != Canceled {
		t.Fatalf("want canceled: %v %v", r, err)
	}
	if !gone(r.PID) {
		t.Errorf("QEMU %d still runs after cancel", r.PID)
	}
}

// slot is qemutest.Slot, which this package's own tests cannot import (it
// imports this package).
func slot(t *testing.T) {
	t.Helper()
	release, err := Acquire(t.Context())
	if err != nil {
		t.Fatalf("qemu slot: %v", err)
	}
	t.Cleanup(release)
}
