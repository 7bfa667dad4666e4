// Package qemu boots Linux guests in QEMU for tests: the initramfs injection
// tests now, the Packer builder's image tests later.
//
// # Running a boot
//
// Boot runs qemu-system-x86_64 -nographic -no-reboot with the serial console
// on a pipe, matches every console line against the caller's Markers and
// stops at the first conclusive one; QEMU is killed on every path (marker,
// Config.Timeout, context end) and reaped before Boot returns. The Result
// holds the outcome, the matched line, the elapsed time and the whole
// console (also streamed to Config.ConsoleLog when set).
//
// The accelerator is KVM only when it really works (see Accelerator); on the
// build machine, whose KVM is paravirtual and hangs guests, it is TCG, where
// the fixture kernel reaches its initramfs /init in ~3-9 s and a whole
// initramfs run to its conclusive line takes 10-30 s depending on the load.
//
// Boots are CPU-heavy: every test that boots (or runs Packer) holds one of
// the machine-wide slots first, Slot(t) or Acquire(ctx), so that across the
// packages go test runs in parallel no more of them run than there are CPUs.
//
// # Booting an initrd: command lines and markers
//
// The recipes below give a boot of the fixture kernel (fixture.Vmlinuz) with
// an initrd a short, deterministic end: no root= at all, so each initramfs
// runs its module-loading stage and then its own "no root" failure path, and
// prints a conclusive line; it then reboots or powers off, which ends QEMU
// (-no-reboot). Measured with the unmodified fixture images under TCG.
//
// initramfs-tools (InitramfsToolsCmdline, InitramfsToolsMarkers):
//
//	console=ttyS0 panic=1
//
// /init loads conf/modules (/etc/initramfs-tools/modules) in "Begin: Loading
// essential drivers ...", runs the premount scripts, then its local script
// prints
//
//	No root device specified. Boot arguments must include a root= parameter.
//	Rebooting automatically due to panic= boot argument
//
// root=/dev/nonexistent costs 30 s more: scripts/local waits max(30,
// rootdelay) seconds for the device (rootdelay cannot shorten it), then prints
// "Gave up waiting for root file system device." and "ALERT!  /dev/nonexistent
// does not exist.  Dropping to a shell!" (and reboots, with panic=).
//
// dracut (DracutCmdline, DracutMarkers):
//
//	console=ttyS0 panic=1 rd.shell=0 rd.emergency=poweroff
//
// The systemd-based initrd loads rd.driver.pre= modules (kernel command line
// or etc/cmdline.d/*.conf, which dracut's own force_drivers writes) in the
// dracut-pre-udev hook, reaches initrd-switch-root.service, which fails with
// no root, and dracut-emergency prints
//
//	Warning: Boot has failed. To debug this issue add "rd.shell rd.debug" to the kernel command line.
//
// then powers off (rd.emergency=poweroff; rd.shell=0 keeps it from opening a
// shell). With root=/dev/nonexistent rd.timeout=5 it ends the same way after
// systemd's "Timed out waiting for device" (colour codes split that line: do
// not match it); a short rd.timeout is a race under load, so prefer no root.
//
// # An injected module's marker
//
// The test module kmodtest_marker.ko (fixture.TestModule) prints at
// pr_emerg, so on the serial console whatever the log level, when loaded:
//
//	KMODTEST-MARKER: kmodtest_marker loaded
//
// It appears before the conclusive failure line in both initramfs flavours
// (initramfs-tools: inside "Begin: Loading essential drivers ...", after the
// kernel's "loading out-of-tree module taints kernel"; dracut: during
// dracut-pre-udev), so list it as the success marker ahead of the
// failures; an initrd that did not load it ends in Failure on the tool's
// conclusive line instead:
//
//	r, err := qemu.Boot(ctx, qemu.Config{
//		Kernel:  fixture.Vmlinuz(t),
//		Initrd:  injected,
//		Append:  qemu.InitramfsToolsCmdline, // or qemu.DracutCmdline
//		Markers: qemu.InitramfsToolsMarkers(qemu.SuccessOn(qemu.TestModuleMarker)), // or DracutMarkers
//		Timeout: 120 * time.Second,
//	})
//	if err != nil || r.Outcome != qemu.Success {
//		t.Fatalf("%v %v\n%s", r, err, r.Tail(40))
//	}
//
// The module must be loaded by the initramfs itself: for initramfs-tools its
// name in conf/modules; for dracut rd.driver.pre=NAME, from an
// etc/cmdline.d/NN-name.conf in the image or appended to the kernel command
// line (Config.Append). Checked by hand by adding the module the distros' way
// (updates/ + depmod, then /etc/initramfs-tools/modules + mkinitramfs, or
// force_drivers + dracut) in overlays of the rootfs fixtures: the marker
// printed 3-6 s after "Run /init as init process" with both.
package qemu

// TestModuleMarker is what kmodtest_marker.ko prints when loaded.
const TestModuleMarker = "KMODTEST-MARKER: kmodtest_marker loaded"

// Command lines and conclusive lines of the initrd recipes (see the package
// comment).
const (
	InitramfsToolsCmdline = "console=ttyS0 panic=1"
	InitramfsToolsEnd     = "No root device specified"
	DracutCmdline         = "console=ttyS0 panic=1 rd.shell=0 rd.emergency=poweroff"
	DracutEnd             = "Boot has failed"
)

// InitramfsToolsMarkers returns first (the caller's markers, e.g. a success
// marker) followed by the failure markers of an initramfs-tools boot:
// kernel panics, the "no root" end, a missing root device and the shell.
func InitramfsToolsMarkers(first ...Marker) []Marker {
	m := append([]Marker(nil), first...)
	m = append(m, KernelFailures...)
	return append(m,
		FailureOn(InitramfsToolsEnd),
		FailureOn("ALERT!"),
		FailureOn("Dropping to a shell"),
		FailureOn("Rebooting automatically due to panic="),
		FailureOn("(initramfs) "),
	)
}

// DracutMarkers returns first followed by the failure markers of a dracut
// boot: kernel panics, dracut-emergency's end, dracut's fatal errors, a
// missing root device and the emergency shell.
func DracutMarkers(first ...Marker) []Marker {
	m := append([]Marker(nil), first...)
	m = append(m, KernelFailures...)
	return append(m,
		FailureOn(DracutEnd),
		FailureOn("dracut: FATAL:"),
		FailureOn("dracut-initqueue: timeout"),
		FailureOn("Entering emergency mode"),
		FailureOn(":/# "),
	)
}
