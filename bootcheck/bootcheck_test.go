package bootcheck

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
)

func TestDirectCmdline(t *testing.T) {
	const nonce = "0123456789abcdef"
	c := directCmdline("UUID=r00t", "rootflags=noatime quiet", nonce)
	want := `root=UUID=r00t ro rootflags=noatime quiet console=ttyS0 panic=-1 ` +
		`systemd.run="/bin/sh -c 'udevadm settle -t 60 || :; n=0123456789abcdef; m=; while read a b; do m=$$m,$$a; done </proc/modules; echo KMODCTL-BOOTCHECK-$$n modules=$${m#,} end-$$n >/dev/ttyS0'" ` +
		`systemd.run_success_action=poweroff systemd.run_failure_action=poweroff`
	if c != want {
		t.Errorf("command line\n got %s\nwant %s", c, want)
	}
	// The kernel prints its command line: the markers must not be in it.
	if strings.Contains(c, markerPrefix+nonce) || strings.Contains(c, endMarker(nonce)) {
		t.Errorf("the command line holds the probe's marker: %s", c)
	}
	if strings.Count(c, `"`) != 2 {
		t.Errorf("the command line must hold exactly one double-quoted group: %s", c)
	}
	// initramfs-tools splits the command line on blanks and acts on some
	// words; none of the probe's words may be one of them.
	for _, w := range strings.Fields(probeScript(nonce)) {
		switch {
		case w == "ro", w == "rw", w == "debug", w == "quiet", strings.Contains(w, "="):
			if !strings.HasPrefix(w, "n=") && !strings.HasPrefix(w, "m=") && !strings.HasPrefix(w, "modules=") {
				t.Errorf("probe word %q may be taken as a boot option", w)
			}
		}
	}
	if got := probeUnitText(nonce); !strings.Contains(got, "\nExecStart=/bin/sh -c 'udevadm settle -t 60 || :; n="+nonce+"; m=; while read a b; do m=$$m,$$a;") ||
		!strings.Contains(got, "\nAfter=multi-user.target\n") || !strings.Contains(got, "\nSuccessAction=poweroff\n") {
		t.Errorf("probe unit:\n%s", got)
	}
}

func TestParseProbe(t *testing.T) {
	const nonce = "feedfacecafebeef"
	console := "[    0.07] Kernel command line: ... echo KMODCTL-BOOTCHECK-$$n modules=$${m#,} end-$$n ...\n" +
		"KMODCTL-BOOTCHECK-" + nonce + " modules=virtio_blk,ext4,crc16,mbcache,jbd2 end-" + nonce + "\n"
	mods, ok := parseProbe(console, nonce)
	if !ok || !slices.Equal(mods, []string{"crc16", "ext4", "jbd2", "mbcache", "virtio_blk"}) {
		t.Errorf("parseProbe = %v, %v", mods, ok)
	}
	if mods, ok := parseProbe("KMODCTL-BOOTCHECK-"+nonce+" modules= end-"+nonce, nonce); !ok || len(mods) != 0 {
		t.Errorf("no modules: %v, %v", mods, ok)
	}
	if _, ok := parseProbe("KMODCTL-BOOTCHECK-other modules=ext4 end-other", nonce); ok {
		t.Error("another nonce was accepted")
	}
	if _, ok := parseProbe("KMODCTL-BOOTCHECK-"+nonce+" modules=ext4[  OK  ] Started x", nonce); ok {
		t.Error("a cut line was accepted")
	}

	loaded := []string{"ext4", "virtio_blk", "kmodtest_marker"}
	miss := missingModules([]string{"ext4", "virtio-blk", "kmodtest_marker.ko.zst", "/lib/modules/x/ext4.ko", "kmodtest_nonexistent", "ext"}, loaded)
	if !slices.Equal(miss, []string{"kmodtest_nonexistent", "ext"}) {
		t.Errorf("missingModules = %v", miss)
	}

	// Lines seen on the console of failing boots of the fixture (kernel
	// without initrd, /boot with a wrong fstype in fstab, a wrong root UUID)
	// and of healthy ones.
	for line, fails := range map[string]bool{
		"[    1.500847] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)": true,
		"[\x1b[0;1;31mFAILED\x1b[0m] Failed to mount \x1b[0;1;39mboot.mount\x1b[0m - /boot.":            true,
		"Gave up waiting for root file system device.  Common problems:":                                true,
		"ALERT!  UUID=00000000-0000-0000-0000-000000000000 does not exist.  Dropping to a shell!":       true,
		"You are in emergency mode. After logging in, type \"journalctl -xb\" to view system logs,":     true,
		"Gave up waiting for suspend/resume device":                                                     false,
		"[  \x1b[0;32mOK\x1b[0m  ] Reached target \x1b[0;1;39mbasic.target\x1b[0m - Basic System.":      false,
		"[  \x1b[0;32mOK\x1b[0m  ] Mounted \x1b[0;1;39mboot.mount\x1b[0m - /boot.":                      false,
		"[    3.356452] Run /init as init process":                                                      false,
	} {
		matched := ""
		for _, m := range failureMarkers {
			if strings.Contains(line, m.Text) {
				matched = m.Text
				break
			}
		}
		if (matched != "") != fails {
			t.Errorf("%q: failure marker %q, want a failure: %v", line, matched, fails)
		}
	}

	if got := stripANSI("\x1b[0;1;31mFAILED\x1b[0m] Failed to mount \x1b[0;1;39mboot.mount\x1b[0m - /boot."); got != "FAILED] Failed to mount boot.mount - /boot." {
		t.Errorf("stripANSI = %q", got)
	}
}

func TestOptionErrors(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(k, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		o    Options
		err  string
	}{
		{"no image", Options{}, "no image"},
		{"missing image", Options{Image: img + ".missing"}, "no such file"},
		{"no root", Options{Image: img, Kernel: Kernel{Vmlinuz: k}}, "needs the root= value"},
		{"root with blank", Options{Image: img, Kernel: Kernel{Vmlinuz: k}, Root: "LABEL=a b"}, "blanks"},
		{"missing initrd", Options{Image: img, Kernel: Kernel{Vmlinuz: k, Initrd: k + ".no"}, Root: "UUID=x"}, "no such file"},
		{"direct without kernel", Options{Image: img, Mode: ModeDirect}, "needs a kernel"},
		{"firmware with kernel", Options{Image: img, Mode: ModeFirmware, Kernel: Kernel{Vmlinuz: k}}, "do not apply"},
		{"bad mode", Options{Image: img, Mode: "pxe"}, "unknown mode"},
		{"bad accel", Options{Image: img, Accel: "hvf"}, "neither kvm nor tcg"},
		{"unbalanced quote", Options{Image: img, Kernel: Kernel{Vmlinuz: k}, Root: "UUID=x", ExtraCmdline: `a="b`}, "unbalanced"},
		{"firmware, no bootloader", Options{Image: img}, "no bootloader"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := Run(ctx, c.o)
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("Run: %v, want an error with %q", err, c.err)
			}
			if res != nil {
				t.Errorf("a Result without a boot: %+v", res)
			}
		})
	}
}

// TestThrowawayCopy: a raw image is copied sparsely (diskimage.SparseCopy)
// to a new file, never over an existing one.
func TestThrowawayCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := throwawayCopy(context.Background(), src, "raw", dst); err != nil {
		t.Fatal(err)
	}
	if a, b := fileSum(t, src), fileSum(t, dst); a != b {
		t.Fatalf("copy differs: %s vs %s", a, b)
	}
	if err := throwawayCopy(context.Background(), src, "raw", dst); err == nil {
		t.Error("copy over an existing file: no error")
	}
}

func fileSum(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// synthImage builds a 64 MiB disk with one ext4 partition from 1 MiB made
// by mkfs.ext4 -d from files: a GPT with the x86-64 root type, or with
// mbr an MBR type 83 partition and no label. With bootCode the MBR's code
// is "jmp $": BIOS-bootable, it hangs.
func synthImage(t testing.TB, files map[string]string, mbr, bootCode bool) string {
	t.Helper()
	fixture.NeedTools(t, "sgdisk", "sfdisk", "mkfs.ext4")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	writeTree(t, tree, files)
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	label := []string{"-L", "root"}
	if mbr {
		cmd := exec.Command("sfdisk", "-q", img)
		cmd.Stdin = strings.NewReader("label: dos\nstart=2048, type=83\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sfdisk: %v\n%s", err, out)
		}
		label = nil
	} else {
		fixture.Run(t, "sgdisk", "-n", "1:2048:0", "-t", "1:8304", "-c", "1:root", img)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab, err := diskimage.ReadTable(f, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := tab.Partition(1)
	fsImg := filepath.Join(dir, "fs.ext4")
	if err := os.WriteFile(fsImg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(fsImg, p.Size); err != nil {
		t.Fatal(err)
	}
	fixture.Run(t, "mkfs.ext4", append(append([]string{"-q", "-F", "-d", tree}, label...), fsImg)...)
	fsData, err := os.ReadFile(fsImg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fsData, p.Start); err != nil {
		t.Fatal(err)
	}
	if bootCode {
		if _, err := f.WriteAt([]byte{0xeb, 0xfe}, 0); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func debugfsCat(t testing.TB, img string, off int64, p string) (string, error) {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, img+"?offset="+strconv.FormatInt(off, 10)).Output()
	return string(out), err
}

func TestInjectProbe(t *testing.T) {
	fixture.NeedRoot(t)
	fixture.NeedTools(t, "debugfs")
	const nonce = "00112233aabbccdd"
	for _, c := range []struct {
		name  string
		mbr   bool
		files map[string]string
		unit  string // where the unit must land in the image
	}{
		{"gpt root type, no systemd dir", false, map[string]string{"etc/os-release": "ID=test\n"}, "/etc/systemd/system/" + ProbeUnit},
		{"mbr, found by os-release", true, map[string]string{"etc/os-release": "ID=test\n", "etc/systemd/system/multi-user.target.wants/x.service": "->/dev/null"}, "/etc/systemd/system/" + ProbeUnit},
		// An absolute link in the image resolves inside it, never on the host.
		{"absolute link", false, map[string]string{"etc/os-release": "ID=test\n", "etc/systemd/system": "->/srv/units", "srv/units/.keep": ""}, "/srv/units/" + ProbeUnit},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := synthImage(t, c.files, c.mbr, false)
			before := fileSum(t, img)
			tmp := t.TempDir()
			disk := filepath.Join(tmp, "disk.raw")
			if err := throwawayCopy(context.Background(), img, "raw", disk); err != nil {
				t.Fatal(err)
			}
			if err := injectProbe(context.Background(), disk, tmp, nonce); err != nil {
				t.Fatal(err)
			}
			if after := fileSum(t, img); after != before {
				t.Fatal("the source image changed")
			}
			if ms := diskimage.MountsUnder(tmp); len(ms) != 0 {
				t.Errorf("mounts left: %v", ms)
			}
			if ls, err := diskimage.ListLoopsFor(disk); err != nil || len(ls) != 0 {
				t.Errorf("loops left: %v %v", ls, err)
			}
			if _, err := os.Stat("/srv/units/" + ProbeUnit); err == nil {
				t.Fatal("the unit was written on the host")
			}
			unit, err := debugfsCat(t, disk, 1<<20, c.unit)
			if err != nil || unit != probeUnitText(nonce) {
				t.Errorf("unit %s: %v\n%s", c.unit, err, unit)
			}
			out, err := exec.Command("debugfs", "-R", "stat /etc/systemd/system/multi-user.target.wants/"+ProbeUnit, disk+"?offset=1048576").CombinedOutput()
			if err != nil || !strings.Contains(string(out), `Fast link dest: "../`+ProbeUnit+`"`) {
				t.Errorf("wants link: %v\n%s", err, out)
			}
		})
	}
}

// noLeftovers checks that nothing of a check is left under dir: files,
// loop devices backed by files below it, processes naming it.
func noLeftovers(t testing.TB, dir string) {
	t.Helper()
	if es, _ := os.ReadDir(dir); len(es) != 0 {
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		t.Errorf("left in %s: %v", dir, names)
	}
	if out, err := exec.Command("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE").Output(); err == nil && strings.Contains(string(out), dir) {
		t.Errorf("loop devices left:\n%s", out)
	}
	if ms := diskimage.MountsUnder(dir); len(ms) != 0 {
		t.Errorf("mounts left: %v", ms)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(dir)) {
			t.Errorf("process %s still runs: %q", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// isolatedTmp points os.TempDir at a fresh folder for the test (take a
// qemu slot before: its lock files are in os.TempDir).
func isolatedTmp(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "tmp")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", d)
	return d
}

func TestRunFirmwareNoBootloader(t *testing.T) {
	tmp := isolatedTmp(t)
	raw := fixture.CloudImageRaw(t)
	start := time.Now()
	res, err := Run(context.Background(), Options{Image: raw})
	if !errors.Is(err, ErrNoBootloader) || res != nil {
		t.Fatalf("Run = %v, %v; want ErrNoBootloader", res, err)
	}
	if !strings.Contains(err.Error(), "use direct mode") || !strings.Contains(err.Error(), "no BIOS boot code") {
		t.Errorf("error: %v", err)
	}
	t.Logf("raw: %v in %v", err, time.Since(start))
	noLeftovers(t, tmp)

	if testing.Short() {
		return
	}
	// qcow2 is converted into the throwaway copy before it can be looked
	// at: the copy must go too.
	fixture.NeedTools(t, "qemu-img")
	start = time.Now()
	_, err = Run(context.Background(), Options{Image: fixture.CloudImageQcow2(t), Format: "qcow2", Mode: ModeFirmware})
	if !errors.Is(err, ErrNoBootloader) {
		t.Fatalf("qcow2: %v, want ErrNoBootloader", err)
	}
	t.Logf("qcow2: refused after conversion in %v", time.Since(start))
	noLeftovers(t, tmp)
}

// TestRunFirmwareCancel boots a throwaway copy of a synthetic image whose
// "bootloader" spins (jmp $) and cancels the check once SeaBIOS boots it:
// QEMU, the copy and its folder must all be gone when Run returns.
func TestRunFirmwareCancel(t *testing.T) {
	fixture.NeedRoot(t)
	img := synthImage(t, map[string]string{"etc/os-release": "ID=test\n"}, false, true)
	if bl, err := diskimage.DetectBootloader(img); err != nil || !bl.Bootable() {
		t.Fatalf("DetectBootloader = %+v, %v", bl, err)
	}
	before := fileSum(t, img)
	log := filepath.Join(t.TempDir(), "console.log")
	qemutest.Slot(t) // before TMPDIR moves: the slots' lock files live there
	tmp := isolatedTmp(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if b, _ := os.ReadFile(log); bytes.Contains(b, []byte("Booting from Hard Disk")) {
				cancel()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	res, err := Run(ctx, Options{Image: img, Timeout: 2 * time.Minute, ConsoleLog: log})
	if !errors.Is(err, context.Canceled) || res == nil || res.Outcome != Canceled {
		t.Fatalf("Run = %+v, %v; want canceled", res, err)
	}
	t.Logf("canceled after %v (%s): %v", res.Elapsed, res.Accel, err)
	noLeftovers(t, tmp)
	if fileSum(t, img) != before {
		t.Error("the image changed")
	}
}

// TestRunDirect boots the fixture cloud image twice with its own kernel and
// initrd (copied out as the builder does): once expecting ext4, once also
// expecting a module that does not exist. The image must not change.
func TestRunDirect(t *testing.T) {
	raw := fixture.CloudImageRaw(t)
	k, root := fixtureKernel(t)
	st0, err := os.Stat(raw)
	if err != nil {
		t.Fatal(err)
	}
	sum0 := fileSum(t, raw)
	qemutest.Slot(t)
	ctx := context.Background()
	dir := t.TempDir()

	log := filepath.Join(dir, "pass.log")
	res, err := Run(ctx, Options{Image: raw, Kernel: k, Root: root, ExpectModules: []string{"ext4"}, ConsoleLog: log})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("passed after %v (%s), %d modules: %v", res.Elapsed, res.Accel, len(res.Modules), res.Modules)
	t.Logf("command line: %s", res.Cmdline)
	if res.Outcome != Passed || len(res.Missing) != 0 || !slices.Contains(res.Modules, "ext4") || !slices.Contains(res.Modules, "virtio_blk") {
		t.Errorf("result %+v", res)
	}
	if b, err := os.ReadFile(log); err != nil || !bytes.Contains(b, []byte(res.Line)) || !strings.HasPrefix(res.Line, markerPrefix) {
		t.Errorf("console log %s (%v) lacks the probe line %q", log, err, res.Line)
	}

	log = filepath.Join(dir, "missing.log")
	res, err = Run(ctx, Options{Image: raw, Kernel: k, Root: root, ExpectModules: []string{"ext4", "kmodtest_nonexistent"}, ConsoleLog: log})
	if err == nil || !strings.Contains(err.Error(), "kmodtest_nonexistent") || strings.Contains(strings.SplitN(err.Error(), "(loaded", 2)[0], "ext4") {
		t.Fatalf("Run: %v; want an error naming kmodtest_nonexistent alone", err)
	}
	t.Logf("missing module after %v: %v", res.Elapsed, err)
	if res.Outcome != MissingModules || !slices.Equal(res.Missing, []string{"kmodtest_nonexistent"}) || !slices.Contains(res.Modules, "ext4") {
		t.Errorf("result %+v", res)
	}

	st1, err := os.Stat(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !st1.ModTime().Equal(st0.ModTime()) || st1.Size() != st0.Size() || fileSum(t, raw) != sum0 {
		t.Errorf("the fixture image changed (mtime %v -> %v, size %d -> %d)", st0.ModTime(), st1.ModTime(), st0.Size(), st1.Size())
	}
}

// FirmwareEnv opts in to TestRunFirmwareGRUB, a fourth boot (~30 s under
// TCG) that needs grub-mkimage (grub-pc-bin).
const firmwareEnv = "KMODCTL_BOOTCHECK_FIRMWARE"

// TestRunFirmwareGRUB checks firmware mode end to end: a copy of the
// fixture gets a BIOS GRUB (boot.img in the MBR, a core.img with an
// embedded configuration in the BIOS boot partition, as grub-bios-setup
// would place them), then Run boots it through SeaBIOS and GRUB with the
// probe unit in its own throwaway copy.
func TestRunFirmwareGRUB(t *testing.T) {
	if os.Getenv(firmwareEnv) == "" {
		t.Skipf("set %s=1 to boot a GRUB-installed copy of the fixture (needs grub-pc-bin)", firmwareEnv)
	}
	fixture.NeedRoot(t)
	fixture.WantTools(t, "grub-mkimage")
	const grubDir = "/usr/lib/grub/i386-pc"
	bootImg, err := os.ReadFile(filepath.Join(grubDir, "boot.img"))
	if err != nil {
		t.Skipf("no GRUB BIOS images: %v", err)
	}
	kver := fixture.KVER(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "grub.raw")
	if err := throwawayCopy(context.Background(), fixture.CloudImageRaw(t), "raw", img); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "early.cfg")
	if err := os.WriteFile(cfg, []byte("set root=(hd0,gpt2)\n"+
		"linux /vmlinuz-"+kver+" root=UUID=6b6d6f64-4007-4000-8000-000000000003 ro console=ttyS0\n"+
		"initrd /initrd.img-"+kver+"\nboot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	core := filepath.Join(dir, "core.img")
	fixture.Run(t, "grub-mkimage", "-O", "i386-pc", "-d", grubDir, "-o", core, "-c", cfg, "-p", "(hd0,gpt2)/grub",
		"biosdisk", "part_gpt", "ext2", "linux", "normal")
	coreImg, err := os.ReadFile(core)
	if err != nil {
		t.Fatal(err)
	}
	const coreLBA = 2048 // the fixture's BIOS boot partition
	// boot.img reads core.img's first sector from the LBA at 0x5c; that
	// sector's block list (its last 12 bytes) locates the rest.
	binary.LittleEndian.PutUint64(bootImg[0x5c:], coreLBA)
	binary.LittleEndian.PutUint64(coreImg[0x200-12:], coreLBA+1)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bootImg[:440], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(coreImg, coreLBA*512); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if bl, err := diskimage.DetectBootloader(img); err != nil || !bl.Bootable() {
		t.Fatalf("DetectBootloader = %+v, %v", bl, err)
	}
	before := fileSum(t, img)

	qemutest.Slot(t)
	tmp := isolatedTmp(t)
	log := filepath.Join(dir, "console.log")
	res, err := Run(context.Background(), Options{Image: img, ExpectModules: []string{"ext4"}, ConsoleLog: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("passed after %v (%s)", res.Elapsed, res.Accel)
	if res.Outcome != Passed || !slices.Contains(res.Modules, "ext4") {
		t.Errorf("result %+v", res)
	}
	// The probe ran once the image reached multi-user.target.
	if b, err := os.ReadFile(log); err != nil || !bytes.Contains(b, []byte("Multi-User System")) {
		t.Errorf("console log %s (%v): multi-user.target not reached before the probe", log, err)
	}
	noLeftovers(t, tmp)
	if fileSum(t, img) != before {
		t.Error("the image changed")
	}
}
