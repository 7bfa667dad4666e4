package initramfs

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemu"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
)

// Boot tests: the fixture kernel boots each injected image under QEMU with
// the harness's recipes (internal/qemu's package comment): no root device, so
// early userspace runs its module-loading stage, then its "no root" path
// prints a conclusive line and the guest reboots or powers off (panic=1,
// rd.emergency=poweroff, -no-reboot). The console decides.

// bootTimeout caps one boot (TCG: 10-30 s to the conclusive line).
const bootTimeout = 120 * time.Second

// bootImage boots image with the fixture kernel and returns the result; the
// machine-wide QEMU slot is held for the boot.
func bootImage(t *testing.T, image string, flavor Flavor) *qemu.Result {
	t.Helper()
	fixture.Tool(t, "qemu-system-x86_64")
	kernel := fixture.Vmlinuz(t)
	cmdline, markers := qemu.InitramfsToolsCmdline, qemu.InitramfsToolsMarkers(qemu.SuccessOn(qemu.TestModuleMarker))
	if flavor == Dracut {
		cmdline, markers = qemu.DracutCmdline, qemu.DracutMarkers(qemu.SuccessOn(qemu.TestModuleMarker))
	}
	qemutest.Slot(t)
	res, err := qemu.Boot(t.Context(), qemu.Config{
		Kernel:     kernel,
		Initrd:     image,
		Append:     cmdline,
		Timeout:    bootTimeout,
		Markers:    markers,
		ConsoleLog: filepath.Join(t.TempDir(), "console.log"),
	})
	if err != nil {
		t.Fatalf("boot %s: %v", image, err)
	}
	t.Logf("boot %s: %s", filepath.Base(image), res)
	return res
}

// injectCopy copies a fixture image into the test's folder and injects the
// marker module (and extra modules) into it.
func injectCopy(t *testing.T, name string, mode InjectMode, load bool, extra ...InjectOption) (string, *InjectResult) {
	t.Helper()
	src := fixture.Initrd(t, name)
	img := filepath.Join(t.TempDir(), name+"-"+string(mode)+".img")
	fixture.CopyFile(t, src, img)
	opts := append([]InjectOption{WithModules(fixture.TestModule(t, "kmodtest_marker")), WithMode(mode), WithLoad(load)}, extra...)
	res, err := Inject(img, opts...)
	if err != nil {
		t.Fatalf("inject %s (%s): %v", name, mode, err)
	}
	return img, res
}

func flavorOf(name string) Flavor {
	if strings.HasPrefix(name, "dracut") {
		return Dracut
	}
	return InitramfsTools
}

// bootMarker boots an image injected with the marker module and --load
// (TestInjectFixtures calls it for every fixture image, in both modes, the
// ucode one included): the marker must appear.
func bootMarker(t *testing.T, name, img string) {
	t.Helper()
	res := bootImage(t, img, flavorOf(name))
	if res.Outcome != qemu.Success {
		t.Fatalf("no marker: %s\n%s", res, res.Tail(30))
	}
}

// TestBootInjectedWithoutLoad: without --load the module is in the image but
// nothing loads it.
func TestBootInjectedWithoutLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("boot tests are long")
	}
	t.Parallel()
	img, _ := injectCopy(t, fixture.InitrdToolsZstd, Append, false)
	res := bootImage(t, img, InitramfsTools)
	if res.Outcome == qemu.Success || strings.Contains(res.Console, qemu.TestModuleMarker) {
		t.Fatalf("the marker module loaded without --load: %s", res)
	}
	if res.Outcome != qemu.Failure && res.Outcome != qemu.Exited {
		t.Fatalf("the boot did not reach a conclusion: %s\n%s", res, res.Tail(30))
	}
}

// withoutUnlink disables the symlink Inject writes before replacing a
// regular file, to show the trap the test guards against.
func withoutUnlink() InjectOption {
	return func(c *injectOptions) error {
		c.noUnlink = true
		return nil
	}
}

// busyboxLink is one of the 256 names of busybox's inode in Debian's
// initramfs-tools images that init does not use.
const busyboxLink = "usr/bin/xxd"

// TestBootHardLinkTrap: replacing one name of busybox's hard link group in
// an appended archive must leave the other 255 (/bin/sh among them) alone:
// the image still runs its init script, which loads the marker module.
// Without the symlink written first, the same injection overwrites busybox
// through the shared inode and init cannot start: the test would notice.
func TestBootHardLinkTrap(t *testing.T) {
	if testing.Short() {
		t.Skip("boot tests are long")
	}
	replacement := []byte("#!/bin/sh\necho not busybox\n")
	for _, tc := range []struct {
		name  string
		extra []InjectOption
		boots bool
	}{
		{"unlinked", nil, true},
		{"trap", []InjectOption{withoutUnlink()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opts := append([]InjectOption{WithFile(busyboxLink, replacement, 0o755)}, tc.extra...)
			img, res := injectCopy(t, fixture.InitrdToolsZstd, Append, true, opts...)
			if tc.boots && (len(res.HardLinksBroken) != 1 || res.HardLinksBroken[0] != busyboxLink) {
				t.Errorf("hard links broken: %v", res.HardLinksBroken)
			}
			r := bootImage(t, img, InitramfsTools)
			if tc.boots && r.Outcome != qemu.Success {
				t.Fatalf("replacing %s broke the boot: %s\n%s", busyboxLink, r, r.Tail(30))
			}
			if !tc.boots && r.Outcome == qemu.Success {
				t.Fatalf("writing over a hard link in place still booted: the test cannot see the trap: %s", r)
			}
		})
	}
}

// TestBootDracutCmdlineD: the load list dracut images without systemd get,
// etc/cmdline.d/90-kmodctl.conf with rd.driver.pre=, read by dracut-lib's
// getargs; checked on the (systemd) dracut fixture, whose dracut-pre-udev
// hook reads it the same way.
func TestBootDracutCmdlineD(t *testing.T) {
	if testing.Short() {
		t.Skip("boot tests are long")
	}
	t.Parallel()
	img, res := injectCopy(t, fixture.InitrdDracut, Append, true, func(c *injectOptions) error {
		c.dracutCmdline = true
		return nil
	})
	if res.LoadConfig != dracutCmdlineFile {
		t.Fatalf("load config %s", res.LoadConfig)
	}
	r := bootImage(t, img, Dracut)
	if r.Outcome != qemu.Success {
		t.Fatalf("no marker: %s\n%s", r, r.Tail(30))
	}
}
