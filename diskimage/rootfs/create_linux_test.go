//go:build linux

package rootfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

const tinyFstab = "# static file system information\nproc /proc proc defaults 0 0\n"

// tinyTree builds a small root tree with what a copy must keep:
// owners, setuid/setgid/sticky modes, hard links, relative, absolute,
// dangling and long symlinks, a fifo, a sparse file, an empty file, a name
// with a space, a user xattr, ACLs and fixed mtimes.
func tinyTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	mkdir := func(rel string, mode os.FileMode, uid, gid int) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	file := func(rel, content string, mode os.FileMode, uid, gid int) {
		p := filepath.Join(root, rel)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	symlink := func(target, rel string) {
		if err := os.Symlink(target, filepath.Join(root, rel)); err != nil {
			t.Fatal(err)
		}
	}
	mkdir(".", 0o755, 0, 0)
	mkdir("etc", 0o755, 0, 0)
	file("etc/fstab", tinyFstab, 0o644, 0, 0)
	file("etc/hostname", "tiny\n", 0o644, 0, 0)
	file("etc/os-release", "ID=debian\nVERSION_ID=12\n", 0o644, 0, 0)
	mkdir("usr/bin", 0o755, 0, 0)
	file("usr/bin/su", "#!/bin/sh\necho su\n", 0o755|os.ModeSetuid, 0, 0)
	file("usr/bin/wall", "#!/bin/sh\n", 0o755|os.ModeSetgid, 0, 5)
	mkdir("home/alice", 0o700, 1000, 1000)
	file("home/alice/notes", "secret\n", 0o640, 1000, 1001)
	mkdir("srv/shared", 0o775|os.ModeSetgid, 0, 50)
	mkdir("tmp", 0o777|os.ModeSticky, 0, 0)
	mkdir("data", 0o755, 0, 0)
	file("data/hard1", "linked content\n", 0o600, 7, 8)
	if err := os.Link(filepath.Join(root, "data/hard1"), filepath.Join(root, "data/hard2")); err != nil {
		t.Fatal(err)
	}
	symlink("../etc/hostname", "data/rel")
	symlink("/etc/hostname", "data/abs")
	symlink("/nonexistent/target", "data/dangling")
	symlink("/"+strings.Repeat("long-component/", 8)+"end", "data/long")
	file("data/with space", "spaced\n", 0o644, 0, 0)
	file("data/empty", "", 0o644, 0, 0)
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i*7 + i>>10)
	}
	file("data/big", string(big), 0o644, 0, 0)
	if err := syscall.Mkfifo(filepath.Join(root, "data/fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	sp, err := os.Create(filepath.Join(root, "data/sparse"))
	if err != nil {
		t.Fatal(err)
	}
	sp.WriteAt([]byte("end of a sparse file\n"), 4<<20)
	sp.Close()
	if err := syscall.Setxattr(filepath.Join(root, "data/hard1"), "user.kmodctl", []byte("hello"), 0); err != nil {
		t.Logf("no user xattrs in %s: %v", root, err)
	}
	// An access and a default ACL (u::rwx,u:1000:r-x,g::r-x,m::r-x,o::r-x)
	// in the kernel's xattr form, as setfacl would set them.
	acl := []byte{2, 0, 0, 0}
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{1, 7, 0xffffffff}, {2, 5, 1000}, {4, 5, 0xffffffff}, {0x10, 5, 0xffffffff}, {0x20, 5, 0xffffffff}} {
		acl = append(acl, byte(e.tag), byte(e.tag>>8), byte(e.perm), byte(e.perm>>8),
			byte(e.id), byte(e.id>>8), byte(e.id>>16), byte(e.id>>24))
	}
	for _, name := range []string{"system.posix_acl_access", "system.posix_acl_default"} {
		if err := syscall.Setxattr(filepath.Join(root, "srv/shared"), name, acl, 0); err != nil {
			t.Logf("no ACLs in %s: %v", root, err)
		}
	}
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, rel := range []string{"etc/hostname", "data/big", "usr/bin/su"} {
		if err := os.Chtimes(filepath.Join(root, rel), old, old); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// meta is what snapshot records of an entry.
type meta struct {
	Mode         fs.FileMode
	UID, GID     uint32
	Size         int64
	Mtime, Ctime int64
	Link         string
}

// snapshot records the metadata (ctime included) of every entry, to
// prove that a tree was not modified.
func snapshot(t testing.TB, root string) map[string]meta {
	t.Helper()
	m := map[string]meta{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := meta{Mode: fi.Mode(), UID: st.Uid, GID: st.Gid, Size: fi.Size(),
			Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano()}
		if fi.Mode()&fs.ModeSymlink != 0 {
			e.Link, _ = os.Readlink(p)
		}
		rel, _ := filepath.Rel(root, p)
		m[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sameSnapshot(t *testing.T, what string, before, after map[string]meta) {
	t.Helper()
	if len(before) != len(after) {
		t.Errorf("%s: %d entries before, %d after", what, len(before), len(after))
	}
	n := 0
	for k, v := range before {
		if w, ok := after[k]; !ok || w != v {
			if n++; n <= 5 {
				t.Errorf("%s: %s changed: %+v -> %+v", what, k, v, w)
			}
		}
	}
}

func xattrs(p string) map[string]string {
	n, err := syscall.Listxattr(p, nil)
	if err != nil || n == 0 {
		return nil
	}
	buf := make([]byte, n)
	if n, err = syscall.Listxattr(p, buf); err != nil {
		return map[string]string{"": "error: " + err.Error()}
	}
	m := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		vn, err := syscall.Getxattr(p, name, nil)
		if err == nil {
			v := make([]byte, vn)
			if vn, err = syscall.Getxattr(p, name, v); err == nil {
				m[name] = string(v[:vn])
				continue
			}
		}
		m[name] = "error: " + err.Error()
	}
	return m
}

// sameContent compares two files' content with the buffers ba, bb.
func sameContent(a, b string, ba, bb []byte) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			return eb == ea, nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}

// compareTrees checks that got holds exactly the entries of src with
// the same type, mode, owner, size, content, symlink target, device
// number, xattrs, mtime (files and symlinks) and hard link structure. skip
// lists entries (relative) left to the caller; extra lists entries only
// got may have.
func compareTrees(t *testing.T, src, got string, skip, extra map[string]bool) {
	t.Helper()
	links := map[uint64]uint64{} // src inode -> got inode
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	seen := map[string]bool{}
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		seen[rel] = true
		if skip[rel] {
			return nil
		}
		a, err := os.Lstat(p)
		if err != nil {
			return err
		}
		gp := filepath.Join(got, rel)
		b, err := os.Lstat(gp)
		if err != nil {
			fail("%s: %v", rel, err)
			return nil
		}
		sa, sb := a.Sys().(*syscall.Stat_t), b.Sys().(*syscall.Stat_t)
		if a.Mode() != b.Mode() || sa.Uid != sb.Uid || sa.Gid != sb.Gid {
			fail("%s: mode %v owner %d:%d, want %v %d:%d", rel, b.Mode(), sb.Uid, sb.Gid, a.Mode(), sa.Uid, sa.Gid)
		}
		xb := xattrs(gp)
		for k := range xb {
			if strings.HasPrefix(k, "trusted.SGI_ACL_") {
				delete(xb, k) // how xfs stores ACLs, listed for root
			}
		}
		if len(xb) == 0 {
			xb = nil
		}
		if xa := xattrs(p); !reflect.DeepEqual(xa, xb) {
			fail("%s: xattrs %q, want %q", rel, xb, xa)
		}
		switch {
		case a.Mode().IsRegular():
			if a.Size() != b.Size() {
				fail("%s: size %d, want %d", rel, b.Size(), a.Size())
			} else if same, err := sameContent(p, gp, ba, bb); err != nil || !same {
				fail("%s: content differs (%v)", rel, err)
			}
			if sa.Nlink > 1 {
				if sb.Nlink != sa.Nlink {
					fail("%s: %d links, want %d", rel, sb.Nlink, sa.Nlink)
				}
				if ino, ok := links[sa.Ino]; ok && ino != sb.Ino {
					fail("%s: inode %d, want the inode of its hard link %d", rel, sb.Ino, ino)
				}
				links[sa.Ino] = sb.Ino
			}
		case a.Mode()&fs.ModeSymlink != 0:
			la, _ := os.Readlink(p)
			lb, _ := os.Readlink(gp)
			if la != lb {
				fail("%s: symlink to %q, want %q", rel, lb, la)
			}
		case a.Mode()&fs.ModeDevice != 0:
			if sa.Rdev != sb.Rdev {
				fail("%s: device %#x, want %#x", rel, sb.Rdev, sa.Rdev)
			}
		}
		if !a.IsDir() && sa.Mtim.Sec != sb.Mtim.Sec {
			fail("%s: mtime %v, want %v", rel, b.ModTime(), a.ModTime())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(got, p)
		if extra[rel] {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !seen[rel] {
			fail("%s: not in the source", rel)
		}
		return nil
	})
	if errs > 20 {
		t.Errorf("... %d differences in all", errs)
	}
}

// readTable reads the partition table of the image file p.
func readTable(t *testing.T, p string) *diskimage.Table {
	t.Helper()
	tab, err := diskimage.ReadTableFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// mountRO attaches the partition read-only and mounts it; the
// cleanup releases both and checks nothing is left.
func mountRO(t *testing.T, img string, p diskimage.Partition, fstype string) string {
	t.Helper()
	ctx := context.Background()
	mnt := t.TempDir()
	tr := &diskimage.Tracker{}
	t.Cleanup(func() {
		if _, err := tr.Release(); err != nil {
			t.Error(err)
		}
		if ms := diskimage.MountsUnder(mnt); len(ms) > 0 {
			t.Errorf("still mounted: %v", ms)
		}
		if err := diskimage.CheckNoLeftovers(img); err != nil {
			t.Error(err)
		}
	})
	l, err := tr.AttachPartition(ctx, img, p, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Mount(ctx, l.Device, mnt, fstype, "ro"); err != nil {
		t.Fatal(err)
	}
	return mnt
}

type imageWant struct {
	size  int64
	fs    string
	label string
	arch  string
}

// checkImage checks the layout, the table's validity for sfdisk and
// sgdisk, the filesystem (probe, blkid, fsck) and ChooseRoot on a new
// image, and returns the root partition and its filesystem.
func checkImage(t *testing.T, img string, ret *diskimage.Table, w imageWant) (diskimage.Partition, diskimage.FS) {
	t.Helper()
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != w.size {
		t.Errorf("image size %d, want %d", st.Size(), w.size)
	}
	tab := readTable(t, img)
	if !reflect.DeepEqual(tab, ret) {
		t.Errorf("returned table %+v, the image holds %+v", ret, tab)
	}
	if tab.Kind != "gpt" || tab.UsedBackupGPT || len(tab.Partitions) != 2 {
		t.Fatalf("table %+v, want a GPT with 2 partitions", tab)
	}
	p1, p2 := tab.Partitions[0], tab.Partitions[1]
	if p1.Number != 1 || p1.Start != 1<<20 || p1.Size != 1<<20 || p1.Type != diskimage.GPTTypeBIOSBoot || p1.Name != "BIOS boot" {
		t.Errorf("partition 1: %+v, want BIOS boot at 1 MiB, 1 MiB", p1)
	}
	if p2.Number != 2 || p2.Start != 2<<20 || p2.Size != w.size-3<<20 || p2.Type != diskimage.RootGPTTypes[w.arch] || p2.Name != "root" {
		t.Errorf("partition 2: %+v, want %s root at 2 MiB, %d bytes", p2, w.arch, w.size-3<<20)
	}
	if out := fixture.Run(t, "sfdisk", "--verify", img); !strings.Contains(out, "No errors detected") {
		t.Errorf("sfdisk --verify:\n%s", out)
	}
	if _, err := exec.LookPath("sgdisk"); err == nil {
		if out := fixture.Run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") || strings.Contains(out, "Warning") {
			t.Errorf("sgdisk -v:\n%s", out)
		}
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fs, err := diskimage.ProbePartition(f, p1); err == nil {
		t.Errorf("BIOS boot partition holds %+v", fs)
	}
	fsys, err := diskimage.ProbePartition(f, p2)
	if err != nil {
		t.Fatal(err)
	}
	if fsys.Type != w.fs || fsys.Label != w.label || len(fsys.UUID) != 36 {
		t.Errorf("root filesystem %+v, want %s labelled %q with a UUID", fsys, w.fs, w.label)
	}
	root, how, err := diskimage.ChooseRoot(tab, diskimage.RootOptions{Arch: w.arch, Probes: map[int]diskimage.FS{2: fsys}})
	if err != nil || root.Number != 2 || !strings.Contains(how, "GPT root partition type") {
		t.Errorf("ChooseRoot: %d %q %v, want 2 by GPT type", root.Number, how, err)
	}
	switch w.fs {
	case "ext4":
		fixture.NeedTools(t, "e2fsck")
		fixture.Run(t, "e2fsck", "-fn", img+"?offset="+strconv.FormatInt(p2.Start, 10))
	case "xfs":
		if _, err := exec.LookPath("xfs_repair"); err == nil {
			tr := &diskimage.Tracker{}
			l, err := tr.AttachPartition(context.Background(), img, p2, true)
			if err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("xfs_repair", "-n", l.Device).CombinedOutput()
			if _, rerr := tr.Release(); rerr != nil {
				t.Error(rerr)
			}
			if err != nil {
				t.Errorf("xfs_repair -n: %v\n%s", err, out)
			}
		}
	}
	if err := diskimage.CheckNoLeftovers(img); err != nil {
		t.Error(err)
	}
	return p2, fsys
}

// checkFstab checks the fstab at p in the mounted tree: want plus
// the root line, with the given mode and owner.
func checkFstab(t *testing.T, mnt, p, want string, mode os.FileMode, uid, gid uint32, fsys diskimage.FS) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(mnt, p))
	if err != nil {
		t.Fatal(err)
	}
	want += fmt.Sprintf("UUID=%s / %s defaults 0 1\n", fsys.UUID, fsys.Type)
	if string(b) != want {
		t.Errorf("%s:\n%s\nwant:\n%s", p, b, want)
	}
	fi, err := os.Lstat(filepath.Join(mnt, p))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode() != mode || st.Uid != uid || st.Gid != gid {
		t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d", p, fi.Mode(), st.Uid, st.Gid, mode, uid, gid)
	}
}

// onlyEntries checks that dir holds exactly names (no temporary
// files left).
func onlyEntries(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	sort.Strings(names)
	if !reflect.DeepEqual(got, names) && !(len(got) == 0 && len(names) == 0) {
		t.Errorf("%s holds %q, want %q", dir, got, names)
	}
}

// nothingLeft checks that no loop device is backed by a file in dir,
// nothing is mounted below tmpdir and no process runs with dir on its
// command line.
func nothingLeft(t *testing.T, dir, tmpdir string) {
	t.Helper()
	out := fixture.Run(t, "losetup", "--list", "--json", "-O", "NAME,BACK-FILE")
	var j struct {
		Loops []struct {
			Name     string `json:"name"`
			BackFile string `json:"back-file"`
		} `json:"loopdevices"`
	}
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &j); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range j.Loops {
		if bf := strings.TrimSuffix(l.BackFile, " (deleted)"); bf == dir || strings.HasPrefix(bf, dir+"/") {
			t.Errorf("loop device %s left, backed by %s", l.Name, l.BackFile)
		}
	}
	if ms := diskimage.MountsUnder(tmpdir); len(ms) > 0 {
		t.Errorf("mounts left: %v", ms)
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		cl, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if bytes.Contains(cl, []byte(dir)) {
			t.Errorf("process %s still runs: %q", p.Name(), bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
		}
	}
}

// logLines collects Log lines.
type logLines struct {
	mu    sync.Mutex
	lines []string
	on    func(string)
}

func (l *logLines) log(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	on := l.on
	l.mu.Unlock()
	if on != nil {
		on(s)
	}
}

func need(t *testing.T, fsType string) {
	t.Helper()
	fixture.NeedRoot(t)
	fixture.NeedTools(t, "sfdisk", "tar", "losetup", "blkid")
	if fsType == "xfs" {
		fixture.NeedTools(t, "mkfs.xfs")
		b, _ := os.ReadFile("/proc/filesystems")
		if !bytes.Contains(b, []byte("\txfs\n")) {
			t.Skip("the kernel has no xfs")
		}
	} else {
		fixture.NeedTools(t, "mkfs.ext4", "debugfs")
	}
}

func TestCreateImageExt4Dir(t *testing.T) {
	need(t, "ext4")
	src := tinyTree(t)
	before := snapshot(t, src)
	out := t.TempDir()
	t.Setenv("TMPDIR", t.TempDir())
	dst := filepath.Join(out, "disk.raw")
	var lg logLines
	t0 := time.Now()
	tab, err := CreateImage(context.Background(), src, dst, Options{Size: 63<<20 + 1, Log: lg.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ext4 from the tiny tree in %v", time.Since(t0))
	if len(lg.lines) < 3 {
		t.Errorf("log lines %q", lg.lines)
	}
	onlyEntries(t, out, "disk.raw")
	onlyEntries(t, os.Getenv("TMPDIR"))
	sameSnapshot(t, "source tree", before, snapshot(t, src))
	p, fsys := checkImage(t, dst, tab, imageWant{size: 64 << 20, fs: "ext4", label: "root", arch: "amd64"})
	mnt := mountRO(t, dst, p, "ext4")
	compareTrees(t, src, mnt, map[string]bool{"etc/fstab": true}, map[string]bool{"lost+found": true})
	checkFstab(t, mnt, "etc/fstab", tinyFstab, 0o644, 0, 0, fsys)
	if b, _ := os.ReadFile(filepath.Join(src, "etc/fstab")); string(b) != tinyFstab {
		t.Errorf("source fstab changed: %q", b)
	}
}

func TestCreateImageXFSDir(t *testing.T) {
	need(t, "xfs")
	src := tinyTree(t)
	// The root folder's own mode and owner are copied too.
	os.Chmod(src, 0o750)
	os.Lchown(src, 0, 3)
	before := snapshot(t, src)
	out := t.TempDir()
	t.Setenv("TMPDIR", t.TempDir())
	dst := filepath.Join(out, "disk.raw")
	var lg logLines
	t0 := time.Now()
	tab, err := CreateImage(context.Background(), src, dst, Options{Size: 320 << 20, Filesystem: "xfs", Label: "xroot", Arch: "arm64", Log: lg.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("xfs from the tiny tree in %v:\n%s", time.Since(t0), strings.Join(lg.lines, "\n"))
	onlyEntries(t, out, "disk.raw")
	onlyEntries(t, os.Getenv("TMPDIR"))
	nothingLeft(t, out, os.Getenv("TMPDIR"))
	sameSnapshot(t, "source tree", before, snapshot(t, src))
	p, fsys := checkImage(t, dst, tab, imageWant{size: 320 << 20, fs: "xfs", label: "xroot", arch: "arm64"})
	mnt := mountRO(t, dst, p, "xfs")
	compareTrees(t, src, mnt, map[string]bool{"etc/fstab": true}, nil)
	checkFstab(t, mnt, "etc/fstab", tinyFstab, 0o644, 0, 0, fsys)
}

// TestCreateImageTarballs makes images from archives of the tiny tree
// in every compression, ext4 and (one) xfs.
func TestCreateImageTarballs(t *testing.T) {
	need(t, "ext4")
	src := tinyTree(t)
	dir := t.TempDir()
	cases := []struct {
		name, fs, arch string
	}{
		{"root.tar", "ext4", "amd64"},
		{"root.tar.gz", "ext4", "arm64"},
		{"root.tgz", "ext4", "riscv64"},
		{"root.tar.xz", "ext4", "amd64"},
		{"root.tar.zst", "ext4", "amd64"},
		{"root.tar.gz", "xfs", "amd64"},
	}
	for _, c := range cases {
		t.Run(c.fs+"-"+c.name, func(t *testing.T) {
			if c.fs == "xfs" {
				need(t, "xfs")
			}
			if strings.HasSuffix(c.name, ".zst") {
				fixture.NeedTools(t, "zstd")
			}
			if strings.HasSuffix(c.name, ".xz") {
				fixture.NeedTools(t, "xz")
			}
			arch := filepath.Join(dir, c.name)
			if _, err := os.Stat(arch); err != nil {
				fixture.Run(t, "tar", append([]string{"-C", src, "-caf", arch}, append(tarMeta, ".")...)...)
			}
			archBefore := snapshot(t, dir)
			out := t.TempDir()
			t.Setenv("TMPDIR", t.TempDir())
			dst := filepath.Join(out, "disk.img")
			size := int64(40 << 20)
			if c.fs == "xfs" {
				size = 304 << 20
			}
			t0 := time.Now()
			tab, err := CreateImage(context.Background(), arch, dst, Options{Size: size, Filesystem: c.fs, Arch: c.arch})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s from %s in %v", c.fs, c.name, time.Since(t0))
			onlyEntries(t, out, "disk.img")
			onlyEntries(t, os.Getenv("TMPDIR"))
			sameSnapshot(t, "archive", archBefore, snapshot(t, dir))
			p, fsys := checkImage(t, dst, tab, imageWant{size: size, fs: c.fs, label: "root", arch: c.arch})
			mnt := mountRO(t, dst, p, c.fs)
			extra := map[string]bool{}
			if c.fs == "ext4" {
				extra["lost+found"] = true
			}
			compareTrees(t, src, mnt, map[string]bool{"etc/fstab": true}, extra)
			checkFstab(t, mnt, "etc/fstab", tinyFstab, 0o644, 0, 0, fsys)
		})
	}
}

// TestCreateImageFstab covers the fstab cases: an entry for "/"
// already there (left alone), a commented one, no final newline, no fstab,
// no /etc, and an fstab that is a symlink (followed inside the tree).
func TestCreateImageFstab(t *testing.T) {
	need(t, "ext4")
	type tc struct {
		name  string
		setup func(t *testing.T, root string)
		path  string // where the fstab is expected, in the tree
		want  string // its content before the root line; "" with keep
		keep  bool   // unchanged
		mode  os.FileMode
		owner uint32
	}
	write := func(rel, content string, mode os.FileMode, uid int) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			p := filepath.Join(root, rel)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(content), mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, mode)
			os.Lchown(p, uid, uid)
		}
	}
	has := "# comment\nUUID=0000 / ext4 errors=remount-ro 0 1\n"
	cases := []tc{
		{name: "has-root", setup: write("etc/fstab", has, 0o644, 0), path: "etc/fstab", want: has, keep: true, mode: 0o644},
		{name: "commented", setup: write("etc/fstab", "#/dev/sda1 / ext4 defaults 0 1\n", 0o600, 12), path: "etc/fstab",
			want: "#/dev/sda1 / ext4 defaults 0 1\n", mode: 0o600, owner: 12},
		{name: "no-newline", setup: write("etc/fstab", "tmpfs /tmp tmpfs defaults 0 0", 0o644, 0), path: "etc/fstab",
			want: "tmpfs /tmp tmpfs defaults 0 0\n", mode: 0o644},
		{name: "no-fstab", setup: write("etc/hostname", "x\n", 0o644, 0), path: "etc/fstab", want: "", mode: 0o644},
		{name: "no-etc", setup: write("bin/true", "x\n", 0o755, 0), path: "etc/fstab", want: "", mode: 0o644},
		{name: "symlink", setup: func(t *testing.T, root string) {
			write("etc/fstab.d/real", "proc /proc proc defaults 0 0\n", 0o644, 0)(t, root)
			os.Symlink("/etc/fstab.d/../fstab.d/real", filepath.Join(root, "etc/fstab"))
		}, path: "etc/fstab.d/real", want: "proc /proc proc defaults 0 0\n", mode: 0o644},
	}
	for _, fsType := range []string{"ext4", "xfs"} {
		for _, c := range cases {
			t.Run(fsType+"-"+c.name, func(t *testing.T) {
				need(t, fsType)
				src := filepath.Join(t.TempDir(), "tree")
				os.Mkdir(src, 0o755)
				c.setup(t, src)
				before := snapshot(t, src)
				dst := filepath.Join(t.TempDir(), "d.raw")
				size := int64(32 << 20)
				if fsType == "xfs" {
					size = 303 << 20
				}
				if _, err := CreateImage(context.Background(), src, dst, Options{Size: size, Filesystem: fsType}); err != nil {
					t.Fatal(err)
				}
				sameSnapshot(t, "source", before, snapshot(t, src))
				tab := readTable(t, dst)
				f, _ := os.Open(dst)
				fsys, err := diskimage.ProbePartition(f, tab.Partitions[1])
				f.Close()
				if err != nil {
					t.Fatal(err)
				}
				mnt := mountRO(t, dst, tab.Partitions[1], fsType)
				skip := map[string]bool{c.path: true}
				extra := map[string]bool{"lost+found": true}
				if c.keep {
					skip = nil
				} else {
					extra[c.path] = true
					extra[filepath.Dir(c.path)] = true
					checkFstab(t, mnt, c.path, c.want, c.mode, c.owner, c.owner, fsys)
				}
				compareTrees(t, src, mnt, skip, extra)
				if c.name == "no-etc" {
					fi, err := os.Stat(filepath.Join(mnt, "etc"))
					if err != nil || fi.Mode() != fs.ModeDir|0o755 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
						t.Errorf("new /etc: %v %v", fi.Mode(), err)
					}
				}
				if c.name == "symlink" {
					if l, err := os.Readlink(filepath.Join(mnt, "etc/fstab")); err != nil || l != "/etc/fstab.d/../fstab.d/real" {
						t.Errorf("etc/fstab symlink: %q %v", l, err)
					}
				}
			})
		}
	}
}

// fallocate makes a file of n allocated (unwritten) bytes instantly.
func fallocate(t *testing.T, p string, n int64) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
		t.Skipf("fallocate: %v", err)
	}
}

func TestCreateImageErrors(t *testing.T) {
	need(t, "ext4")
	ctx := context.Background()
	src := tinyTree(t)
	out := t.TempDir()
	t.Setenv("TMPDIR", t.TempDir())
	existing := filepath.Join(out, "existing.raw")
	os.WriteFile(existing, []byte("keep me"), 0o644)
	big := filepath.Join(t.TempDir(), "big")
	os.MkdirAll(filepath.Join(big, "etc"), 0o755)
	fallocate(t, filepath.Join(big, "blob"), 40<<20)
	ok := Options{Size: 32 << 20}
	cases := []struct {
		name     string
		src, dst string
		o        Options
		want     []string
	}{
		{"missing src", filepath.Join(out, "nope"), filepath.Join(out, "a.raw"), ok, []string{"source rootfs", filepath.Join(out, "nope"), "no such file"}},
		{"empty src", "", filepath.Join(out, "a.raw"), ok, []string{"source rootfs path is empty"}},
		{"src not a tree", "/dev/null", filepath.Join(out, "a.raw"), ok, []string{"/dev/null is a character device", "want a directory or a tar archive"}},
		{"src not an archive", existing, filepath.Join(out, "a.raw"), ok, []string{"extract " + existing, "tar"}},
		{"dst exists", src, existing, ok, []string{existing, "already exists"}},
		{"dst dir missing", src, filepath.Join(out, "no/dir/a.raw"), ok, []string{"destination directory", filepath.Join(out, "no/dir")}},
		{"dst inside src", src, filepath.Join(src, "data/a.raw"), ok, []string{"inside the source tree", src}},
		{"unknown fs", src, filepath.Join(out, "a.raw"), Options{Size: 32 << 20, Filesystem: "btrfs"}, []string{"Options.Filesystem", `"btrfs"`, "ext4", "xfs"}},
		{"no size", src, filepath.Join(out, "a.raw"), Options{}, []string{"Options.Size is required"}},
		{"tiny size", src, filepath.Join(out, "a.raw"), Options{Size: 4 << 20}, []string{"Options.Size 4 MiB is too small", "16 MiB"}},
		{"xfs size", src, filepath.Join(out, "a.raw"), Options{Size: 200 << 20, Filesystem: "xfs"}, []string{"Options.Size 200 MiB is too small", "xfs", "303 MiB"}},
		{"unknown arch", src, filepath.Join(out, "a.raw"), Options{Size: 32 << 20, Arch: "mips"}, []string{"Options.Arch", `"mips"`, "amd64"}},
		{"long label", src, filepath.Join(out, "a.raw"), Options{Size: 32 << 20, Label: "a-very-long-label-indeed"}, []string{"Options.Label", "16"}},
		{"xfs label", src, filepath.Join(out, "a.raw"), Options{Size: 320 << 20, Filesystem: "xfs", Label: "thirteen-char"}, []string{"Options.Label", "12"}},
		{"tree too big", big, filepath.Join(out, "a.raw"), Options{Size: 32 << 20}, []string{"Options.Size 32 MiB is too small", big, "29 MiB", "40.0 MiB", "use a Size of at least"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := CreateImage(ctx, c.src, c.dst, c.o)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			t.Log(err)
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Errorf("existing destination changed: %q", b)
	}
	onlyEntries(t, out, "existing.raw")
	onlyEntries(t, os.Getenv("TMPDIR"))
	nothingLeft(t, out, os.Getenv("TMPDIR"))
}

// TestCreateImageTooSmallXFS fills an xfs filesystem past its end,
// from a tree (caught before anything is made) and from an archive (caught
// when tar runs out of space, with the mount and loop released).
func TestCreateImageTooSmallXFS(t *testing.T) {
	need(t, "xfs")
	fixture.NeedTools(t, "zstd")
	ctx := context.Background()
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	fallocate(t, filepath.Join(tree, "blob"), 260<<20)
	arch := filepath.Join(t.TempDir(), "big.tar.zst")
	fixture.Run(t, "tar", "-C", tree, "-caf", arch, ".")
	out := t.TempDir()
	t.Setenv("TMPDIR", t.TempDir())
	o := Options{Size: 303 << 20, Filesystem: "xfs"}
	_, err := CreateImage(ctx, tree, filepath.Join(out, "a.raw"), o)
	if err == nil || !strings.Contains(err.Error(), "Options.Size 303 MiB is too small for "+tree) || !strings.Contains(err.Error(), "260.0 MiB") {
		t.Errorf("from a tree: %v", err)
	}
	t0 := time.Now()
	_, err = CreateImage(ctx, arch, filepath.Join(out, "a.raw"), o)
	if err == nil || !strings.Contains(err.Error(), "Options.Size 303 MiB is too small for "+arch) || !strings.Contains(err.Error(), "tar ran out of space") {
		t.Errorf("from an archive: %v", err)
	}
	t.Logf("%v after %v", err, time.Since(t0))
	onlyEntries(t, out)
	onlyEntries(t, os.Getenv("TMPDIR"))
	nothingLeft(t, out, os.Getenv("TMPDIR"))
}

// TestCreateImageTooSmallExt4 passes the early size estimate but not
// mkfs.ext4: 3000-byte xattrs take a block per file, which the estimate
// does not count.
func TestCreateImageTooSmallExt4(t *testing.T) {
	need(t, "ext4")
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	val := bytes.Repeat([]byte("x"), 3000)
	const files = 700
	for i := 0; i < files; i++ {
		p := filepath.Join(tree, fmt.Sprintf("f%03d", i))
		os.WriteFile(p, []byte("a"), 0o644)
		if err := syscall.Setxattr(p, "user.big", val, 0); err != nil {
			t.Skipf("setxattr: %v", err)
		}
	}
	// Fill the rest of what the estimate allows for a 16 MiB disk (13 MiB
	// root, 832 inodes, 4 MiB journal) but 256 KiB, with data that is not
	// zeros (mkfs.ext4 -d leaves zero blocks out).
	budget := int64(13<<20) - 832*256 - 4<<20 - (files+2)*4096 - 256<<10
	filler := make([]byte, budget)
	for i := range filler {
		filler[i] = byte(i%251 + 1)
	}
	os.WriteFile(filepath.Join(tree, "filler"), filler, 0o644)
	out := t.TempDir()
	t.Setenv("TMPDIR", t.TempDir())
	_, err := CreateImage(context.Background(), tree, filepath.Join(out, "a.raw"), Options{Size: 16 << 20})
	if err == nil || !strings.Contains(err.Error(), "Options.Size 16 MiB is too small for "+tree) || !strings.Contains(err.Error(), "mkfs.ext4 ran out of blocks") {
		t.Errorf("got %v", err)
	}
	t.Log(err)
	onlyEntries(t, out)
	onlyEntries(t, os.Getenv("TMPDIR"))
}

// TestCreateImageCancel cancels while mkfs.ext4 -d and while the xfs
// copy run (the fixture rootfs keeps both busy long enough): the error is
// context.Canceled and no process, mount, loop or file is left.
func TestCreateImageCancel(t *testing.T) {
	src := fixture.Rootfs(t)
	for _, c := range []struct{ fs, step string }{{"ext4", "mkfs.ext4 -d"}, {"xfs", "copying"}} {
		t.Run(c.fs, func(t *testing.T) {
			need(t, c.fs)
			out := t.TempDir()
			t.Setenv("TMPDIR", t.TempDir())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var lg logLines
			var at time.Time
			lg.on = func(s string) {
				if strings.HasPrefix(s, c.step) {
					at = time.Now()
					time.AfterFunc(300*time.Millisecond, cancel)
				}
			}
			_, err := CreateImage(ctx, src, filepath.Join(out, "a.raw"), Options{Size: 1 << 30, Filesystem: c.fs, Log: lg.log})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("error %v, want context.Canceled; log:\n%s", err, strings.Join(lg.lines, "\n"))
			}
			if at.IsZero() {
				t.Fatalf("never reached %q", c.step)
			}
			t.Logf("%v, %v after %s started", err, time.Since(at), c.step)
			onlyEntries(t, out)
			onlyEntries(t, os.Getenv("TMPDIR"))
			nothingLeft(t, out, os.Getenv("TMPDIR"))
		})
	}
}

// TestCreateImageFixtureExt4 builds a 1 GiB ext4 image from the
// Debian rootfs fixture and compares every entry.
func TestCreateImageFixtureExt4(t *testing.T) {
	need(t, "ext4")
	src := fixture.Rootfs(t)
	out := t.TempDir()
	t.Setenv("TMPDIR", t.TempDir())
	dst := filepath.Join(out, "debian.raw")

	_, err := CreateImage(context.Background(), src, dst, Options{Size: 512 << 20})
	if err == nil || !strings.Contains(err.Error(), "Options.Size 512 MiB is too small for "+src) {
		t.Errorf("512 MiB: %v", err)
	}
	t.Log(err)

	before := snapshot(t, src)
	fstab, err := os.ReadFile(filepath.Join(src, "etc/fstab"))
	if err != nil {
		t.Fatal(err)
	}
	var lg logLines
	t0 := time.Now()
	tab, err := CreateImage(context.Background(), src, dst, Options{Size: 1 << 30, Log: lg.log})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ext4 from the rootfs fixture in %v:\n%s", time.Since(t0), strings.Join(lg.lines, "\n"))
	onlyEntries(t, out, "debian.raw")
	sameSnapshot(t, "rootfs fixture", before, snapshot(t, src))
	p, fsys := checkImage(t, dst, tab, imageWant{size: 1 << 30, fs: "ext4", label: "root", arch: "amd64"})
	t1 := time.Now()
	mnt := mountRO(t, dst, p, "ext4")
	compareTrees(t, src, mnt, map[string]bool{"etc/fstab": true}, map[string]bool{"lost+found": true})
	checkFstab(t, mnt, "etc/fstab", string(fstab), 0o644, 0, 0, fsys)
	t.Logf("compared in %v", time.Since(t1))
}
