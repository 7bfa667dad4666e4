//go:build linux

package diskimage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

const (
	rootUUID = "6a3e1c2b-9d4f-4e8a-b7c1-2f5d8e9a0b1c"
	bootUUID = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
)

// buildGPTDisk makes a 64 MiB GPT disk: ESP (vfat), /boot (ext4, XBOOTLDR
// type) and root (ext4, x86-64 root type) filled from a folder with
// mkfs.ext4 -d, each filesystem made in its own file and copied in.
func buildGPTDisk(t *testing.T) (string, *Table) {
	fixture.NeedTools(t, "sgdisk", "mkfs.ext4", "mkfs.vfat", "dd", "blkid")
	img := tempImage(t, 64<<20)
	fixture.Run(t, "sgdisk", "-n1:2048:+8M", "-t1:ef00", "-c1:ESP", "-n2:0:+16M", "-t2:ea00", "-c2:boot",
		"-n3:0:0", "-t3:8304", "-c3:root", img)
	tab := readTableFile(t, img)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "os-release"), []byte("ID=debian\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "marker"), []byte("hello from root\n"), 0o644)
	mkfs := func(p Partition, tool string, args ...string) {
		f := filepath.Join(dir, "p"+strconv.Itoa(p.Number))
		fh, _ := os.Create(f)
		fh.Truncate(p.Size)
		fh.Close()
		fixture.Run(t, tool, append(args, f)...)
		fixture.Run(t, "dd", "if="+f, "of="+img, "bs=1M", "oflag=seek_bytes", "seek="+strconv.FormatInt(p.Start, 10), "conv=notrunc,sparse", "status=none")
		os.Remove(f)
	}
	mkfs(tab.Partitions[0], "mkfs.vfat", "-n", "ESP", "-i", "C0FFEE11")
	mkfs(tab.Partitions[1], "mkfs.ext4", "-q", "-F", "-L", "boot", "-U", bootUUID)
	mkfs(tab.Partitions[2], "mkfs.ext4", "-q", "-F", "-L", "root", "-U", rootUUID, "-d", tree)
	return img, tab
}

func TestGPTDiskProbeAndRoot(t *testing.T) {
	img, tab := buildGPTDisk(t)
	compareSfdisk(t, img, tab)
	probes := map[int]FS{}
	for _, p := range tab.Partitions {
		probes[p.Number] = checkAgainstBlkid(t, img, p.Start, p.Size)
	}
	if probes[1].Type != "vfat" || probes[1].UUID != "C0FF-EE11" || probes[3].UUID != rootUUID || probes[2].Label != "boot" {
		t.Errorf("probes: %+v", probes)
	}
	// Root by GPT type, by label (on a plain type table), by os-release hook.
	r, how, err := ChooseRoot(tab, RootOptions{Arch: "amd64", Probes: probes})
	if err != nil || r.Number != 3 || !strings.Contains(how, "GPT root") {
		t.Errorf("by type: %v %q %v", r.Number, how, err)
	}
	r, how, err = ChooseRoot(tab, RootOptions{Arch: "riscv64", Probes: probes})
	if err != nil || r.Number != 3 || how != "filesystem label root" {
		t.Errorf("by label: %v %q %v", r.Number, how, err)
	}
	noLabel := map[int]FS{2: {Type: "ext4"}, 3: {Type: "ext4"}, 1: probes[1]}
	var asked []int
	r, how, err = ChooseRoot(tab, RootOptions{Arch: "riscv64", Probes: noLabel, HasOSRelease: func(p Partition, fs FS) (bool, error) {
		asked = append(asked, p.Number)
		return p.Number == 3, nil
	}})
	if err != nil || r.Number != 3 || how != "filesystem holding os-release" || len(asked) != 2 {
		t.Errorf("by os-release: %v %q %v asked %v", r.Number, how, err, asked)
	}
	if _, _, err = ChooseRoot(tab, RootOptions{Arch: "riscv64", Probes: noLabel}); err == nil {
		t.Error("no root: no error")
	}
}

func noLoopsLeft(t *testing.T, img string) {
	t.Helper()
	if out := fixture.Run(t, "losetup", "-j", img); strings.TrimSpace(out) != "" {
		t.Errorf("loop devices left for %s:\n%s", img, out)
	}
	if err := CheckNoLeftovers(img); err != nil {
		t.Error(err)
	}
}

func TestAttachMountReadUnmount(t *testing.T) {
	fixture.NeedRoot(t)
	img, tab := buildGPTDisk(t)
	ctx := context.Background()
	root := tab.Partitions[2]
	l, err := AttachPartition(ctx, img, root, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Detach()
	loops, err := ListLoopsFor(img)
	if err != nil || len(loops) != 1 || loops[0].Device != l.Device || loops[0].Offset != root.Start {
		t.Fatalf("ListLoopsFor: %+v %v", loops, err)
	}
	err = CheckNoLeftovers(img)
	if err == nil || !strings.Contains(err.Error(), "losetup -d "+l.Device) {
		t.Errorf("CheckNoLeftovers: %v", err)
	}
	// The loop device shows the filesystem too.
	dev, _ := os.Open(l.Device)
	fs, err := Probe(dev, 0, root.Size)
	dev.Close()
	if err != nil || fs.UUID != rootUUID {
		t.Errorf("probe of %s: %+v %v", l.Device, fs, err)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := Mount(ctx, l.Device, mnt, "ext4", "ro"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(mnt, "marker"))
	if string(b) != "hello from root\n" {
		t.Errorf("marker: %q %v", b, err)
	}
	rep, err := Unmount(mnt)
	if err != nil || rep.Lazy || len(rep.Killed) > 0 || rep.NotMounted {
		t.Errorf("unmount: %+v %v", rep, err)
	}
	if rep, err := Unmount(mnt); err != nil || !rep.NotMounted {
		t.Errorf("second unmount: %+v %v", rep, err)
	}
	if err := l.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := l.Detach(); err != nil {
		t.Errorf("second detach: %v", err)
	}
	noLoopsLeft(t, img)
}

func TestTrackerBusyNestedRelease(t *testing.T) {
	fixture.NeedRoot(t)
	img, tab := buildGPTDisk(t)
	ctx := context.Background()
	var tr Tracker
	var logged []string
	tr.Log = func(s string) { logged = append(logged, s) }
	rootLoop, err := tr.AttachPartition(ctx, img, tab.Partitions[2], false)
	if err != nil {
		t.Fatal(err)
	}
	bootLoop, err := tr.AttachPartition(ctx, img, tab.Partitions[1], false)
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "root")
	if err := tr.Mount(ctx, rootLoop.Device, mnt, "ext4"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Mount(ctx, bootLoop.Device, filepath.Join(mnt, "boot"), "ext4"); err != nil {
		t.Fatal(err)
	}
	// Untracked nested mount, as provisioning might make.
	if err := Mount(ctx, "tmpfs", filepath.Join(mnt, "boot", "tmp"), "tmpfs"); err != nil {
		t.Fatal(err)
	}
	// A busy process: cwd inside the boot mount.
	sleep := exec.Command("sleep", "300")
	sleep.Dir = filepath.Join(mnt, "boot")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleep.Wait() }()
	defer sleep.Process.Kill()
	UnmountWait = 50 * time.Millisecond

	report, err := tr.Release()
	if err != nil {
		t.Fatalf("release: %v\n%s", err, strings.Join(report, "\n"))
	}
	t.Logf("release report:\n%s", strings.Join(report, "\n"))
	select {
	case <-waited:
	case <-time.After(3 * time.Second):
		t.Error("sleep still running after release")
	}
	if sleep.ProcessState == nil || sleep.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("sleep not killed: %v", sleep.ProcessState)
	}
	joined := strings.Join(report, "\n")
	if !strings.Contains(joined, "killing ["+strconv.Itoa(sleep.Process.Pid)+"]") {
		t.Errorf("report does not name the killed sleep:\n%s", joined)
	}
	if len(MountsUnder(mnt)) != 0 || len(tr.Mounts()) != 0 {
		t.Errorf("mounts left: %v %v", MountsUnder(mnt), tr.Mounts())
	}
	// The tmp mount went before boot, boot before root.
	ti, bi, ri := indexOf(report, "/boot/tmp:"), indexOf(report, "/boot: unmounted"), indexOf(report, "/root: unmounted")
	if !(ti >= 0 && ti < bi && bi < ri) {
		t.Errorf("order tmp %d boot %d root %d:\n%s", ti, bi, ri, joined)
	}
	noLoopsLeft(t, img)
	// Released twice: harmless, nothing done.
	report2, err := tr.Release()
	if err != nil || len(report2) != 0 {
		t.Errorf("second release: %v %v", report2, err)
	}
}

func indexOf(lines []string, sub string) int {
	for i, l := range lines {
		if strings.Contains(l, sub) {
			return i
		}
	}
	return -1
}

func TestUnderAndUnescape(t *testing.T) {
	if !under("/mnt/x/y", "/mnt/x") || under("/mnt/xy", "/mnt/x") || !under("/mnt/x", "/mnt/x/") || !under("/mnt/x/f (deleted)", "/mnt/x") {
		t.Error("under")
	}
	if got := unescapeOctal(`/mnt/a\040b\134c`); got != `/mnt/a b\c` {
		t.Errorf("unescape %q", got)
	}
}

// TestTrackerSpares: spares attached to an empty image, which is written
// only afterwards, show the written partitions once handed out (nothing
// stale from before the write), writes through them reach the image, and
// the spares nobody took are detached.
func TestTrackerSpares(t *testing.T) {
	fixture.NeedRoot(t)
	src, tab := buildGPTDisk(t)
	ctx := context.Background()
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "work.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(st.Size()); err != nil {
		t.Fatal(err)
	}
	var tr Tracker
	defer tr.Release()
	if err := tr.Reserve(ctx, img, 3); err != nil {
		t.Fatal(err)
	}
	if n := len(tr.Loops()); n != 3 {
		t.Fatalf("%d loops after Reserve(3)", n)
	}
	// Read the start of each spare while the image is all zeros (as udev's
	// probe would): a cache kept across the move would show zeros where the
	// moved device's filesystem starts.
	for _, l := range tr.Loops() {
		d, err := os.Open(l.Device)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1<<20)
		if _, err := d.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
	if err := SparseCopy(ctx, f, src, nil); err != nil {
		t.Fatal(err)
	}
	root, boot := tab.Partitions[2], tab.Partitions[1]
	lr, err := tr.AttachPartition(ctx, img, root, false)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := tr.AttachPartition(ctx, img, boot, false)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(tr.Loops()); n != 3 {
		t.Errorf("%d loops: the attaches did not take the spares", n)
	}
	loops, err := ListLoopsFor(img)
	if err != nil {
		t.Fatal(err)
	}
	offsets := map[string]int64{}
	for _, l := range loops {
		offsets[l.Device] = l.Offset
	}
	if offsets[lr.Device] != root.Start || offsets[lb.Device] != boot.Start {
		t.Errorf("loops %+v; want %s at %d and %s at %d", loops, lr.Device, root.Start, lb.Device, boot.Start)
	}
	dev, _ := os.Open(lr.Device)
	fs, err := Probe(dev, 0, root.Size)
	dev.Close()
	if err != nil || fs.UUID != rootUUID {
		t.Errorf("probe of the moved %s: %+v %v", lr.Device, fs, err)
	}
	if err := tr.DropSpares(); err != nil {
		t.Fatal(err)
	}
	if loops, _ := ListLoopsFor(img); len(loops) != 2 {
		t.Errorf("after DropSpares: %+v", loops)
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := tr.Mount(ctx, lr.Device, mnt, "ext4"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "marker")); string(b) != "hello from root\n" {
		t.Errorf("marker: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "written"), []byte("through the spare\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Release(); err != nil {
		t.Fatal(err)
	}
	noLoopsLeft(t, img)
	// The write reached the image: mount it again from a fresh loop.
	l, err := AttachPartition(ctx, img, root, true)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Detach()
	if err := Mount(ctx, l.Device, mnt, "ext4", "ro"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(mnt, "written"))
	Unmount(mnt)
	if string(b) != "through the spare\n" {
		t.Errorf("written file: %q %v", b, err)
	}
	if err := l.Detach(); err != nil {
		t.Fatal(err)
	}
	noLoopsLeft(t, img)
}
