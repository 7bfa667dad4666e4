// Package bootcheck proves that a customized disk image still boots, and
// that the kernel modules it should load are loaded, without changing the
// image. The kmod-image Packer builder runs it after provisioning.
//
// # Direct mode
//
// The caller copies a kernel and its initrd out of the image (FindKernels)
// and works out the root= value (RootArg). Run boots them in QEMU with the
// image as a virtio disk opened with snapshot=on (guest writes go to a
// temporary overlay that QEMU discards: the image file is never written) and
// the kernel command line
//
//	root=<Root> ro <ExtraCmdline> console=ttyS0 panic=-1 systemd.run="/bin/sh -c '<probe>'" systemd.run_success_action=poweroff systemd.run_failure_action=poweroff
//
// systemd's run generator (systemd 250 and later; Debian 12 has 252) turns
// systemd.run= into kernel-command-line.service and makes
// kernel-command-line.target the default target, so the boot goes through
// the initrd, the switch to the real root, sysinit.target (fstab mounts,
// udev coldplug, systemd-modules-load) and basic.target, then runs the probe
// instead of multi-user.target. The probe waits for udev to settle, reads
// /proc/modules and writes one line to the serial port:
//
//	KMODCTL-BOOTCHECK-<nonce> modules=a,b,c end-<nonce>
//
// where nonce is random per check. Quoting: the kernel groups a parameter
// value in double quotes ("..." cannot itself hold a double quote) and
// keeps /proc/cmdline verbatim; systemd's command line parser removes the
// double quotes; the generator escapes % and writes the value as ExecStart=,
// whose parser groups the single-quoted script into one argument and turns
// $$ into $. The probe therefore holds no quotes, backslashes or %, and
// writes every shell $ as $$. The kernel echoes its command line on the
// console at boot, so the probe builds the marker from pieces ($$n holds the
// nonce): the whole marker never appears before the probe prints it.
//
// Failure markers end the boot early: kernel panics (qemu.KernelFailures;
// panic=-1 also makes a panicking kernel reboot, which ends QEMU), systemd's
// emergency mode and "Failed to mount" lines, initramfs-tools' "ALERT!" and
// "Gave up waiting for root", dracut's fatal and emergency messages. A
// failing probe powers the guest off (systemd.run_failure_action).
//
// # Firmware mode
//
// The image boots through its own bootloader (diskimage.DetectBootloader must find one:
// BIOS boot code, or an EFI System Partition with EFI/BOOT/BOOTX64.EFI, then
// booted with OVMF when it is installed). The kernel command line is the
// bootloader's, so the probe goes in through a throwaway copy: the image is
// copied sparsely (or converted with qemu-img when it is not raw) into a
// temporary folder (os.TempDir, i.e. $TMPDIR: it needs room for the image's
// data), its root partition (diskimage.ChooseRoot) is attached with a loop
// device and mounted, and
//
//	/etc/systemd/system/kmodctl-bootcheck.service
//	/etc/systemd/system/multi-user.target.wants/kmodctl-bootcheck.service -> ../kmodctl-bootcheck.service
//
// are written: a oneshot unit ordered after multi-user.target that runs the
// same probe and powers off. The copy is unmounted, booted, and deleted.
// This mode checks the whole boot chain including multi-user.target, but
// the image's kernel messages reach the serial console only when its
// bootloader passes console=ttyS0 (cloud images do); the probe line is
// written to /dev/ttyS0 directly, so it is seen either way.
//
// # Resources
//
// Run releases everything it created on every path, context cancellation
// included: QEMU is killed and reaped (qemu.Boot), mounts and loop devices
// are released (diskimage.Tracker), the temporary folder is removed. Run
// does not limit how many boots run at once: a caller running several
// limits them itself (this module's builder and tests hold one of the
// machine-wide slots of its internal qemu package per boot).
package bootcheck

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemu"
)

// Modes of Options.Mode.
const (
	ModeDirect   = "direct"
	ModeFirmware = "firmware"
)

// Outcomes of Result.Outcome.
const (
	// Passed: the probe reported and every expected module was loaded.
	Passed = "passed"
	// MissingModules: the probe reported, some expected modules were not
	// loaded (Result.Missing).
	MissingModules = "missing-modules"
	// BootFailed: a failure line (panic, emergency mode, failed mount,
	// initrd shell) appeared first.
	BootFailed = "boot-failed"
	// TimedOut: no probe line within Options.Timeout.
	TimedOut = "timeout"
	// Exited: the guest powered off or rebooted before the probe reported
	// (a failing probe powers off).
	Exited = "exited"
	// Canceled: the context ended first.
	Canceled = "canceled"
	// Error: QEMU could not run or failed, or the probe line was unreadable.
	Error = "error"
)

// Defaults of Options.
const (
	DefaultTimeout = 5 * time.Minute
	DefaultMemory  = "1024M"
)

// ProbeUnit is the unit firmware mode writes into its throwaway copy.
const ProbeUnit = "kmodctl-bootcheck.service"

// ErrNoBootloader is wrapped by Run's error when firmware mode finds no
// bootloader in the image.
var ErrNoBootloader = errors.New("no bootloader")

// Options describe one check.
type Options struct {
	// Image and Format (default raw; anything qemu-img reads) are the disk
	// to boot. It is never written: direct mode opens it with QEMU's
	// snapshot=on, firmware mode boots a throwaway copy.
	Image, Format string
	// Mode is ModeDirect (the default when Kernel.Vmlinuz is set) or
	// ModeFirmware (the default otherwise).
	Mode string
	// Kernel is, for direct mode, the kernel and initrd COPIED OUT of the
	// image by the caller to host files (the image stays closed while QEMU
	// runs). Initrd may be "" (then root= must be something the kernel
	// resolves alone, such as PARTUUID=).
	Kernel Kernel
	// Root is the root= value for direct mode (RootArg).
	Root string
	// ExtraCmdline is added to the direct mode command line, after root=
	// and before the check's own console=, panic= and systemd.run=.
	ExtraCmdline string
	// ExpectModules must be loaded when the probe runs: names as in
	// /proc/modules ("-" and "_" are the same; a .ko suffix is ignored).
	// Built-in (=y) code is not in /proc/modules and counts as missing.
	ExpectModules []string
	// Timeout caps the boot (default DefaultTimeout).
	Timeout time.Duration
	// Memory is QEMU's -m (default DefaultMemory).
	Memory string
	// Accel is "" (qemu.Accelerator decides), "kvm" or "tcg".
	Accel string
	// ConsoleLog, when set, receives the serial console as it streams.
	ConsoleLog string
}

// Result is what a check found. Run returns it, when a boot happened, along
// with any error.
type Result struct {
	Outcome string
	// Elapsed runs from QEMU's start to the conclusive line; Accel is the
	// accelerator used.
	Elapsed time.Duration
	Accel   string
	// Modules are the modules listed in /proc/modules when the probe ran,
	// sorted; Missing are the ExpectModules among them that were not.
	Modules []string
	Missing []string
	// ConsoleLog is Options.ConsoleLog; Tail the last lines of the console
	// (terminal escape sequences removed).
	ConsoleLog string
	Tail       string
	// Line is the conclusive console line (the probe's, or the failure's).
	Line string
	// Cmdline is the kernel command line of a direct mode boot.
	Cmdline string
}

// tailLines is how many console lines Result.Tail and errors carry.
const tailLines = 40

// Run boots the image and waits for the probe (see the package comment). It
// returns an error when the check fails: expected modules missing (named),
// a failure line (quoted), a timeout or a guest that stopped early (with the
// console tail), bad options, or setup failures.
func Run(ctx context.Context, o Options) (*Result, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	nonce, err := newNonce()
	if err != nil {
		return nil, err
	}
	if o.Mode == ModeFirmware {
		return runFirmware(ctx, o, nonce)
	}
	cmdline := directCmdline(o.Root, o.ExtraCmdline, nonce)
	res, err := boot(ctx, o, qemu.Config{
		Kernel: o.Kernel.Vmlinuz,
		Initrd: o.Kernel.Initrd,
		Append: cmdline,
		Disks:  []qemu.Disk{{Path: o.Image, Format: o.Format, Snapshot: true}},
	}, nonce)
	if res != nil {
		res.Cmdline = cmdline
	}
	return res, err
}

func (o Options) normalize() (Options, error) {
	if o.Image == "" {
		return o, errors.New("boot check: no image")
	}
	st, err := os.Stat(o.Image)
	if err != nil {
		return o, fmt.Errorf("boot check: %w", err)
	}
	if !st.Mode().IsRegular() {
		return o, fmt.Errorf("boot check: %s is not a regular file", o.Image)
	}
	if o.Format == "" {
		o.Format = "raw"
	}
	if o.Mode == "" {
		o.Mode = ModeFirmware
		if o.Kernel.Vmlinuz != "" {
			o.Mode = ModeDirect
		}
	}
	switch o.Accel {
	case "", qemu.AccelKVM, qemu.AccelTCG:
	default:
		return o, fmt.Errorf("boot check: accelerator %q is neither kvm nor tcg", o.Accel)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Memory == "" {
		o.Memory = DefaultMemory
	}
	switch o.Mode {
	case ModeDirect:
		if strings.Contains(o.Image, ",") {
			return o, fmt.Errorf("boot check: image path %q holds a comma, which QEMU's -drive cannot take", o.Image)
		}
		if o.Kernel.Vmlinuz == "" {
			return o, errors.New("boot check: direct mode needs a kernel (Options.Kernel.Vmlinuz)")
		}
		for _, p := range []string{o.Kernel.Vmlinuz, o.Kernel.Initrd} {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err != nil {
				return o, fmt.Errorf("boot check: %w", err)
			}
		}
		if o.Root == "" {
			return o, errors.New("boot check: direct mode needs the root= value (Options.Root, see RootArg)")
		}
		if err := checkCmdlineValue(o.Root); err != nil {
			return o, fmt.Errorf("boot check: root=: %w", err)
		}
		if strings.Contains(o.ExtraCmdline, `"`) && strings.Count(o.ExtraCmdline, `"`)%2 != 0 {
			return o, fmt.Errorf("boot check: unbalanced double quote in the extra kernel command line %q", o.ExtraCmdline)
		}
	case ModeFirmware:
		if o.Kernel.Vmlinuz != "" || o.Root != "" || o.ExtraCmdline != "" {
			return o, errors.New("boot check: firmware mode boots the image's own bootloader: Kernel, Root and ExtraCmdline do not apply")
		}
	default:
		return o, fmt.Errorf("boot check: unknown mode %q (want %s or %s)", o.Mode, ModeDirect, ModeFirmware)
	}
	return o, nil
}

func newNonce() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("boot check: nonce: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// markerPrefix starts the probe line.
const markerPrefix = "KMODCTL-BOOTCHECK-"

// probeScript is the probe as /bin/sh sees it: wait for udev's coldplug to
// finish (modules udev loads), list /proc/modules, write the marker line to
// the first serial port, which QEMU's -serial stdio carries whatever the
// console= of the boot. It holds no quotes, backslashes or % (see the
// package comment).
func probeScript(nonce string) string {
	return "udevadm settle -t 60 || :; n=" + nonce + "; m=; " +
		"while read a b; do m=$m,$a; done </proc/modules; " +
		"echo " + markerPrefix + "$n modules=${m#,} end-$n >/dev/ttyS0"
}

// execStartQuoted returns ExecStart='s value running script with /bin/sh:
// $ doubled, the script single-quoted.
func execStartQuoted(script string) string {
	if strings.ContainsAny(script, "'\"\\%") {
		panic("bootcheck: probe script holds a quote, a backslash or a %")
	}
	return "/bin/sh -c '" + strings.ReplaceAll(script, "$", "$$") + "'"
}

// directCmdline is the kernel command line of a direct mode check.
func directCmdline(root, extra, nonce string) string {
	parts := []string{"root=" + root, "ro"}
	if e := strings.TrimSpace(extra); e != "" {
		parts = append(parts, e)
	}
	parts = append(parts, "console=ttyS0", "panic=-1",
		`systemd.run="`+execStartQuoted(probeScript(nonce))+`"`,
		"systemd.run_success_action=poweroff", "systemd.run_failure_action=poweroff")
	return strings.Join(parts, " ")
}

// failureMarkers end a check as BootFailed.
var failureMarkers = append(append([]qemu.Marker(nil), qemu.KernelFailures...),
	qemu.FailureOn("emergency mode"),           // systemd: "You are in emergency mode."; dracut: "Entering emergency mode."
	qemu.FailureOn("Emergency Mode"),           // systemd: "Reached target emergency.target - Emergency Mode."
	qemu.FailureOn("Failed to mount"),          // systemd: "[FAILED] Failed to mount boot.mount - /boot."
	qemu.FailureOn("ALERT!"),                   // initramfs-tools: root device missing
	qemu.FailureOn("Gave up waiting for root"), // initramfs-tools (not "... for suspend/resume device": it boots on)
	qemu.FailureOn("Dropping to a shell"),      // initramfs-tools
	qemu.FailureOn("dracut: FATAL:"),           // dracut
	qemu.FailureOn("Boot has failed"),          // dracut-emergency
)

func endMarker(nonce string) string { return "end-" + nonce }

// boot runs one QEMU boot of cfg and turns its outcome into a Result.
func boot(ctx context.Context, o Options, cfg qemu.Config, nonce string) (*Result, error) {
	cfg.Memory = o.Memory
	cfg.Timeout = o.Timeout
	cfg.Accel = o.Accel
	cfg.ConsoleLog = o.ConsoleLog
	cfg.Markers = append([]qemu.Marker{qemu.SuccessOn(endMarker(nonce))}, failureMarkers...)
	r, err := qemu.Boot(ctx, cfg)
	res := &Result{ConsoleLog: o.ConsoleLog, Outcome: Error}
	if r == nil {
		return nil, fmt.Errorf("boot check: %w", err)
	}
	res.Elapsed, res.Accel = r.Elapsed, r.Accel
	res.Tail = stripANSI(r.Tail(tailLines))
	res.Line = stripANSI(r.Line)
	after := fmt.Sprintf("after %v (%s)", r.Elapsed.Round(100*time.Millisecond), r.Accel)
	if err != nil {
		if r.Outcome == qemu.Canceled {
			res.Outcome = Canceled
			return res, fmt.Errorf("boot check canceled %s: %w", after, err)
		}
		return res, fmt.Errorf("boot check: %w%s", err, tailText(res))
	}
	switch r.Outcome {
	case qemu.Success:
		mods, ok := parseProbe(r.Line, nonce)
		if !ok {
			mods, ok = parseProbe(r.Console, nonce)
		}
		if !ok {
			return res, fmt.Errorf("boot check: the probe's line is garbled %s: %q%s", after, res.Line, tailText(res))
		}
		res.Modules = mods
		res.Missing = missingModules(o.ExpectModules, mods)
		if len(res.Missing) > 0 {
			res.Outcome = MissingModules
			return res, fmt.Errorf("boot check: the image booted %s, but expected modules are not loaded: %s (loaded: %s)",
				after, strings.Join(res.Missing, ", "), strings.Join(mods, ","))
		}
		res.Outcome = Passed
		return res, nil
	case qemu.Failure:
		res.Outcome = BootFailed
		return res, fmt.Errorf("boot check: the boot failed %s: %q%s", after, res.Line, tailText(res))
	case qemu.Timeout:
		res.Outcome = TimedOut
		return res, fmt.Errorf("boot check: no probe line within %v (%s)%s", o.Timeout, r.Accel, tailText(res))
	case qemu.Exited:
		res.Outcome = Exited
		return res, fmt.Errorf("boot check: the guest stopped %s before the probe reported (the probe failed, or the guest rebooted or powered off)%s", after, tailText(res))
	}
	return res, fmt.Errorf("boot check: unexpected QEMU outcome %q", r.Outcome)
}

func tailText(r *Result) string {
	s := "\n--- console tail ---\n" + r.Tail
	if r.ConsoleLog != "" {
		s += "\n--- whole console in " + r.ConsoleLog
	}
	return s
}

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]`)

func stripANSI(s string) string { return ansiRE.ReplaceAllString(s, "") }

// parseProbe finds the probe line of nonce in text and returns its sorted
// module names.
func parseProbe(text, nonce string) ([]string, bool) {
	re := regexp.MustCompile(regexp.QuoteMeta(markerPrefix+nonce) + ` modules=([A-Za-z0-9_,-]*) ` + regexp.QuoteMeta(endMarker(nonce)))
	m := re.FindStringSubmatch(text)
	if m == nil {
		return nil, false
	}
	mods := []string{}
	for _, s := range strings.Split(m[1], ",") {
		if s != "" {
			mods = append(mods, s)
		}
	}
	sort.Strings(mods)
	return mods, true
}

// moduleName normalizes a module name as the kernel does ("-" is "_"),
// dropping a path and a .ko[.xz|.gz|.zst] suffix.
func moduleName(s string) string {
	s = filepath.Base(strings.TrimSpace(s))
	if i := strings.Index(s, ".ko"); i > 0 && (len(s) == i+3 || s[i+3] == '.') {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

func missingModules(expect, loaded []string) []string {
	have := map[string]bool{}
	for _, m := range loaded {
		have[moduleName(m)] = true
	}
	var miss []string
	for _, e := range expect {
		if !have[moduleName(e)] {
			miss = append(miss, e)
		}
	}
	return miss
}

// Firmware mode.

func runFirmware(ctx context.Context, o Options, nonce string) (res *Result, err error) {
	if o.Format == "raw" {
		// Refuse early, before copying gigabytes.
		bi, err := diskimage.DetectBootloader(o.Image)
		if err != nil {
			return nil, fmt.Errorf("boot check: %w", err)
		}
		if !bi.Bootable() {
			return nil, noBootloader(o.Image, bi)
		}
	}
	tmp, err := os.MkdirTemp("", "kmodctl-bootcheck-")
	if err != nil {
		return nil, fmt.Errorf("boot check: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(tmp); rerr != nil && err == nil {
			err = fmt.Errorf("boot check: remove the throwaway copy: %w", rerr)
		}
	}()
	disk := filepath.Join(tmp, "disk.raw")
	if err := throwawayCopy(ctx, o.Image, o.Format, disk); err != nil {
		return nil, fmt.Errorf("boot check: copy the image: %w", err)
	}
	bi, err := diskimage.DetectBootloader(disk)
	if err != nil {
		return nil, fmt.Errorf("boot check: %w", err)
	}
	if !bi.Bootable() {
		return nil, noBootloader(o.Image, bi)
	}
	if err := injectProbe(ctx, disk, tmp, nonce); err != nil {
		return nil, fmt.Errorf("boot check: %w", err)
	}
	cfg := qemu.Config{Disks: []qemu.Disk{{Path: disk, Format: "raw"}}}
	if !bi.BIOS {
		args, err := ovmfArgs(tmp)
		if err != nil {
			return nil, fmt.Errorf("boot check: %s: %w", bi.Why, err)
		}
		cfg.Args = args
	}
	return boot(ctx, o, cfg, nonce)
}

func noBootloader(image string, bi diskimage.Bootloader) error {
	return fmt.Errorf("boot check: %w in %s (%s): firmware mode boots the image through its own bootloader; use direct mode (boot a kernel and initrd copied out of the image) instead", ErrNoBootloader, image, bi.Why)
}

// throwawayCopy copies image into dst as a raw image: sparsely in Go for
// raw images, with qemu-img convert otherwise.
func throwawayCopy(ctx context.Context, image, format, dst string) error {
	if format == "raw" {
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		if err := diskimage.SparseCopy(ctx, out, image, nil); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-f", format, "-O", "raw", image, dst)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("qemu-img convert: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// injectProbe mounts the root file system of the raw image disk (a
// throwaway copy) below tmp and writes the probe unit and its
// multi-user.target.wants link.
func injectProbe(ctx context.Context, disk, tmp, nonce string) (err error) {
	f, err := os.Open(disk)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	tab, err := diskimage.ReadTable(f, st.Size())
	if err != nil {
		return fmt.Errorf("partition table: %w", err)
	}
	probes := diskimage.ProbeAll(f, tab)
	var tr diskimage.Tracker
	defer func() {
		if _, rerr := tr.Release(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	n := 0
	part, how, err := diskimage.ChooseRoot(tab, diskimage.RootOptions{
		Arch:   "amd64",
		Probes: probes,
		HasOSRelease: func(p diskimage.Partition, fs diskimage.FS) (bool, error) {
			n++
			mnt := filepath.Join(tmp, fmt.Sprintf("probe%d", n))
			var pt diskimage.Tracker
			defer pt.Release()
			l, err := pt.AttachPartition(ctx, disk, p, true)
			if err != nil {
				return false, err
			}
			if err := pt.Mount(ctx, l.Device, mnt, fs.Type, "ro"); err != nil {
				return false, err
			}
			for _, rel := range []string{"/etc/os-release", "/usr/lib/os-release"} {
				if _, ok := regularIn(mnt, rel); ok {
					return true, nil
				}
			}
			return false, nil
		},
	})
	if err != nil {
		return fmt.Errorf("root partition: %w", err)
	}
	fs, ok := probes[part.Number]
	if !ok {
		return fmt.Errorf("root %v (%s): no known file system", part, how)
	}
	mnt := filepath.Join(tmp, "root")
	l, err := tr.AttachPartition(ctx, disk, part, false)
	if err != nil {
		return err
	}
	if err := tr.Mount(ctx, l.Device, mnt, fs.Type); err != nil {
		return err
	}
	if err := writeProbeUnit(mnt, nonce); err != nil {
		return fmt.Errorf("root %v (%s): %w", part, how, err)
	}
	_, err = tr.Release()
	return err
}

// probeUnitText is the firmware mode probe unit.
func probeUnitText(nonce string) string {
	return `# Written by kmodctl's boot check into a throwaway copy of the image
# (never into the image itself): report the loaded modules, power off.
[Unit]
Description=kmodctl boot check probe
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
StandardOutput=journal+console
ExecStart=` + execStartQuoted(probeScript(nonce)) + `
`
}

// writeProbeUnit writes the probe unit and its wants link into the tree at
// root, resolving the image's symbolic links inside it.
func writeProbeUnit(root, nonce string) error {
	sys, err := mkdirIn(root, "/etc/systemd/system")
	if err != nil {
		return err
	}
	wants, err := mkdirIn(root, "/etc/systemd/system/multi-user.target.wants")
	if err != nil {
		return err
	}
	unit := filepath.Join(sys, ProbeUnit)
	if err := os.Remove(unit); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.WriteFile(unit, []byte(probeUnitText(nonce)), 0o644); err != nil {
		return err
	}
	link := filepath.Join(wants, ProbeUnit)
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink("../"+ProbeUnit, link)
}

// mkdirIn makes the image directory p (and missing parents) in the tree at
// root, following the image's symbolic links inside it, and returns its
// host path.
func mkdirIn(root, p string) (string, error) {
	if err := securejoin.MkdirAll(root, p, 0o755); err != nil {
		return "", fmt.Errorf("make %s in the image: %w", p, err)
	}
	return securejoin.SecureJoin(root, p)
}

// ovmfPairs are UEFI firmware code and variable store images as
// distributions install them (Debian/Ubuntu ovmf, Fedora edk2-ovmf, Arch
// edk2-ovmf).
var ovmfPairs = [][2]string{
	{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
	{"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
	{"/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"},
	{"/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"},
}

// ovmfArgs returns QEMU arguments booting UEFI firmware with a fresh copy of
// its variable store in tmp.
func ovmfArgs(tmp string) ([]string, error) {
	for _, p := range ovmfPairs {
		if _, err := os.Stat(p[0]); err != nil {
			continue
		}
		vars, err := os.ReadFile(p[1])
		if err != nil {
			continue
		}
		v := filepath.Join(tmp, "efivars.fd")
		if err := os.WriteFile(v, vars, 0o600); err != nil {
			return nil, err
		}
		return []string{
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + p[0],
			"-drive", "if=pflash,format=raw,unit=1,file=" + v,
		}, nil
	}
	return nil, errors.New("the image boots only by UEFI and no OVMF firmware is installed (Debian: apt-get install ovmf)")
}
