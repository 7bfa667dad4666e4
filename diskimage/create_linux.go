//go:build linux

package diskimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// CreateOptions describes a new GPT disk made from a root filesystem tree.
type CreateOptions struct {
	Size       int64        // total disk size in bytes (required; rounded up to 1 MiB)
	Filesystem string       // "ext4" (default) or "xfs"
	Label      string       // root filesystem label, default "root"
	Arch       string       // GOARCH for the GPT root partition type, default runtime.GOARCH
	Log        func(string) // optional progress lines
}

// Layout of the disks CreateFromRootfs writes (bytes).
const (
	createMiB       = 1 << 20
	createBIOSStart = 1 * createMiB
	createBIOSSize  = 1 * createMiB
	createRootStart = createBIOSStart + createBIOSSize
	// The last MiB stays free: it holds the backup GPT and keeps the root
	// partition's end 1 MiB aligned.
	createTailGap = 1 * createMiB
	// mkfs.xfs refuses filesystems smaller than 300 MiB.
	createMinXFSPart = 300 * createMiB
	// Below this an ext4 filesystem gets no journal.
	createMinExt4Part = 13 * createMiB
	// ext4 geometry passed to mkfs.ext4 explicitly, so the size estimate
	// does not depend on the host's mke2fs.conf.
	createExt4Block      = 4096
	createExt4InodeRatio = 16384
	createExt4InodeSize  = 256
	createXFSInodeSize   = 512
)

// The tar flags that keep owners (numerically), modes, xattrs (all
// namespaces) and ACLs.
var createTarMeta = []string{"--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"}

// CreateFromRootfs writes a new raw disk image at dst from src, a directory
// or a tar archive (.tar, .tar.gz/.tgz, .tar.xz, .tar.zst; GNU tar detects
// the compression). src is never modified. dst must not exist: the image is
// written to a temporary name in dst's directory, fsynced and then linked
// to dst without replacing anything.
//
// The disk is GPT, 1 MiB aligned: partition 1 "BIOS boot" (1 MiB, BIOS boot
// type) and partition 2 "root" (the rest but the last MiB, the GPT root type
// of o.Arch) holding the root filesystem. ext4 is made by mkfs.ext4 -d at
// the partition's offset (nothing is mounted; a tar archive is first
// extracted next to dst). xfs is made on a loop device attached at the
// partition's offset, mounted, filled by tar and released. If the tree's
// /etc/fstab has no entry for "/", "UUID=<uuid> / <fs> defaults 0 1" is
// appended to it (or it is created) in the new filesystem only. UUIDs are
// random (read back with Probe). ext4 gets 4 KiB blocks, 256-byte inodes
// and one inode per 16 KiB whatever the host's mke2fs.conf says, so that a
// Size too small for the tree is caught before anything is written. The
// image file is created with mode 0600.
//
// Cancelling ctx kills the child processes (whole process groups) and
// removes every temporary file, mount and loop device. It returns the table
// read back from the new image.
func CreateFromRootfs(ctx context.Context, src, dst string, o CreateOptions) (*Table, error) {
	c, err := newCreator(src, dst, o)
	if err != nil {
		return nil, err
	}
	t, err := c.create(ctx)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("create %s: %w", c.dst, err)
	}
	return t, nil
}

type creator struct {
	src      string // absolute, symlinks resolved
	srcIsDir bool
	dst      string // absolute
	dir      string // dst's directory
	base     string // dst's name
	size     int64
	fs       string
	label    string
	arch     string
	rootType string
	log      func(string)
}

func newCreator(src, dst string, o CreateOptions) (*creator, error) {
	c := &creator{fs: o.Filesystem, label: o.Label, arch: o.Arch, log: o.Log}
	if c.fs == "" {
		c.fs = "ext4"
	}
	if c.label == "" {
		c.label = "root"
	}
	if c.arch == "" {
		c.arch = runtime.GOARCH
	}
	if c.log == nil {
		c.log = func(string) {}
	}
	var minPart int64
	switch c.fs {
	case "ext4":
		if len(c.label) > 16 {
			return nil, fmt.Errorf("CreateOptions.Label %q is %d bytes; ext4 labels hold at most 16", c.label, len(c.label))
		}
		minPart = createMinExt4Part
	case "xfs":
		if len(c.label) > 12 {
			return nil, fmt.Errorf("CreateOptions.Label %q is %d bytes; xfs labels hold at most 12", c.label, len(c.label))
		}
		minPart = createMinXFSPart
	default:
		return nil, fmt.Errorf("CreateOptions.Filesystem %q is not supported: want \"ext4\" or \"xfs\"", o.Filesystem)
	}
	if strings.ContainsAny(c.label, "\x00\n") {
		return nil, fmt.Errorf("CreateOptions.Label %q holds a NUL or newline", c.label)
	}
	typ, ok := RootGPTTypes[c.arch]
	if !ok {
		var archs []string
		for a := range RootGPTTypes {
			archs = append(archs, a)
		}
		sort.Strings(archs)
		return nil, fmt.Errorf("CreateOptions.Arch %q has no GPT root partition type (known: %s)", c.arch, strings.Join(archs, ", "))
	}
	c.rootType = typ
	if o.Size <= 0 {
		return nil, fmt.Errorf("CreateOptions.Size is required (got %d bytes)", o.Size)
	}
	c.size = (o.Size + createMiB - 1) / createMiB * createMiB
	if min := createRootStart + minPart + createTailGap; c.size < min {
		return nil, fmt.Errorf("CreateOptions.Size %s is too small: a disk with an %s root filesystem takes at least %s",
			createHuman(o.Size), c.fs, createHuman(min))
	}

	if src == "" {
		return nil, errors.New("source rootfs path is empty")
	}
	st, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("source rootfs: %w", err)
	}
	switch {
	case st.IsDir():
		c.srcIsDir = true
	case st.Mode().IsRegular():
	default:
		return nil, fmt.Errorf("source rootfs %s is a %s, want a directory or a tar archive", src, createKind(st.Mode()))
	}
	if c.src, err = canonical(src); err != nil {
		return nil, fmt.Errorf("source rootfs: %w", err)
	}

	if dst == "" {
		return nil, errors.New("destination image path is empty")
	}
	if c.dst, err = filepath.Abs(dst); err != nil {
		return nil, fmt.Errorf("destination %s: %w", dst, err)
	}
	if _, err := os.Lstat(c.dst); err == nil {
		return nil, fmt.Errorf("destination %s already exists", c.dst)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("destination: %w", err)
	}
	c.dir, c.base = filepath.Split(c.dst)
	if st, err := os.Stat(c.dir); err != nil {
		return nil, fmt.Errorf("destination directory: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("destination directory %s is not a directory", c.dir)
	}
	if c.srcIsDir {
		if d, err := canonical(c.dir); err == nil && under(d, c.src) {
			return nil, fmt.Errorf("destination %s lies inside the source tree %s", c.dst, c.src)
		}
		var below []string
		for _, m := range MountsUnder(c.src) {
			if m != c.src {
				below = append(below, m)
			}
		}
		if len(below) > 0 {
			return nil, fmt.Errorf("source tree %s has filesystems mounted below it (%s); unmount them first", c.src, strings.Join(below, ", "))
		}
	}

	tools := []string{"sfdisk"}
	if c.fs == "ext4" {
		tools = append(tools, "mkfs.ext4", "debugfs")
	} else {
		tools = append(tools, "mkfs.xfs", "losetup", "mount")
	}
	if !c.srcIsDir || c.fs == "xfs" {
		tools = append(tools, "tar")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return nil, fmt.Errorf("%s is not installed (scripts/deps.sh installs it): %w", t, err)
		}
	}
	return c, nil
}

func (c *creator) logf(format string, args ...any) { c.log(fmt.Sprintf(format, args...)) }

func (c *creator) create(ctx context.Context) (_ *Table, err error) {
	t0 := time.Now()
	img, err := os.CreateTemp(c.dir, "."+c.base+".tmp-*")
	if err != nil {
		return nil, err
	}
	tmp := img.Name()
	published := false
	defer func() {
		img.Close()
		if !published {
			os.Remove(tmp)
		}
	}()
	if err := img.Truncate(c.size); err != nil {
		return nil, err
	}
	rootSize := c.size - createRootStart - createTailGap
	c.logf("partitioning %s: GPT, BIOS boot 1 MiB, %s root %s", createHuman(c.size), c.arch, createHuman(rootSize))
	// first-lba 34 (sfdisk would use 2048): the usual GPT, no gap that
	// sgdisk -v warns about.
	script := fmt.Sprintf("label: gpt\nfirst-lba: 34\nstart=%d, size=%d, type=%s, name=\"BIOS boot\"\nstart=%d, size=%d, type=%s, name=\"root\"\n",
		createBIOSStart/512, createBIOSSize/512, GPTTypeBIOSBoot, createRootStart/512, rootSize/512, c.rootType)
	if _, _, err := createRun(ctx, strings.NewReader(script), "sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", tmp); err != nil {
		return nil, err
	}
	tab, err := ReadTable(img, c.size)
	if err != nil {
		return nil, fmt.Errorf("read back the new table: %w", err)
	}
	part, ok := tab.Partition(2)
	if !ok || part.Start != createRootStart || part.Size != rootSize || part.Type != c.rootType {
		return nil, fmt.Errorf("sfdisk wrote an unexpected table: %v", tab.Partitions)
	}

	var fsys FS
	switch c.fs {
	case "ext4":
		fsys, err = c.ext4(ctx, img, tmp, part)
	case "xfs":
		fsys, err = c.xfs(ctx, img, tmp, part)
	}
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	c.logf("syncing %s", tmp)
	if err := img.Sync(); err != nil {
		return nil, fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if tab, err = ReadTable(img, c.size); err != nil {
		return nil, fmt.Errorf("read back the new table: %w", err)
	}
	if err := img.Close(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := createPublish(tmp, c.dst); err != nil {
		return nil, err
	}
	published = true
	c.logf("created %s (%s, root %s %s label %q UUID %s) in %s", c.dst, createHuman(c.size), c.fs,
		createHuman(part.Size), fsys.Label, fsys.UUID, time.Since(t0).Round(time.Millisecond))
	return tab, nil
}

// createPublish gives tmp the name dst without replacing an existing dst
// (a hard link, then the temporary name is removed), and syncs the folder.
func createPublish(tmp, dst string) error {
	if err := os.Link(tmp, dst); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("destination %s appeared while the image was built; not replacing it", dst)
		}
		// A filesystem without hard links: check, then rename.
		if _, serr := os.Lstat(dst); serr == nil {
			return fmt.Errorf("destination %s appeared while the image was built; not replacing it", dst)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
	} else {
		os.Remove(tmp) // dst is complete; a failure leaves only a stray name
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", filepath.Dir(dst), err)
	}
	return nil
}

// ---- ext4 ----

func (c *creator) ext4(ctx context.Context, img *os.File, tmp string, part Partition) (FS, error) {
	tree := c.src
	if !c.srcIsDir {
		d, err := os.MkdirTemp(c.dir, "."+c.base+".rootfs-*")
		if err != nil {
			return FS{}, err
		}
		defer os.RemoveAll(d)
		if err := os.Chmod(d, 0o755); err != nil {
			return FS{}, err
		}
		if err := c.extract(ctx, d); err != nil {
			return FS{}, err
		}
		tree = d
	}
	sz, err := createMeasure(ctx, tree)
	if err != nil {
		return FS{}, err
	}
	if err := c.checkFits(sz, part.Size); err != nil {
		return FS{}, err
	}
	fst, err := createInspectFstab(tree)
	if err != nil {
		return FS{}, err
	}
	rootSt, err := os.Stat(tree)
	if err != nil {
		return FS{}, err
	}
	rst := rootSt.Sys().(*syscall.Stat_t)

	c.logf("mkfs.ext4 -d: %d files, %s of data into %s", sz.inodes, createHuman(sz.data), createHuman(part.Size))
	t0 := time.Now()
	args := []string{"-q", "-F", "-t", "ext4",
		"-b", strconv.Itoa(createExt4Block), "-i", strconv.Itoa(createExt4InodeRatio), "-I", strconv.Itoa(createExt4InodeSize),
		"-L", c.label, "-d", tree,
		"-E", fmt.Sprintf("offset=%d,root_owner=%d:%d", part.Start, rst.Uid, rst.Gid),
		tmp, strconv.FormatInt(part.Size/1024, 10) + "k"}
	if _, stderr, err := createRun(ctx, nil, "mkfs.ext4", args...); err != nil {
		switch {
		case strings.Contains(stderr, "Could not allocate block"):
			return FS{}, c.tooSmall(sz, part.Size, "mkfs.ext4 ran out of blocks", err)
		case strings.Contains(stderr, "Could not allocate inode"):
			return FS{}, c.tooSmall(sz, part.Size, "mkfs.ext4 ran out of inodes", err)
		}
		return FS{}, err
	}
	c.logf("mkfs.ext4 done in %s", time.Since(t0).Round(time.Millisecond))
	fsys, err := ProbePartition(img, part)
	if err != nil {
		return FS{}, fmt.Errorf("probe the new filesystem: %w", err)
	}
	if fsys.Type != "ext4" || fsys.Label != c.label || fsys.UUID == "" {
		return FS{}, fmt.Errorf("new filesystem probes as %+v, want ext4 labelled %q", fsys, c.label)
	}

	// debugfs fixes what mkfs.ext4 -d does not copy (the root folder's
	// mode) and writes the fstab.
	dev := fmt.Sprintf("%s?offset=%d", tmp, part.Start)
	var cmds []string
	add := func(format string, args ...any) { cmds = append(cmds, fmt.Sprintf(format, args...)) }
	var content []byte
	if !fst.hasRoot {
		content = fst.content(c.fs, fsys.UUID)
		hostDir, err := os.MkdirTemp("", "kmodctl-fstab-*")
		if err != nil {
			return FS{}, err
		}
		defer os.RemoveAll(hostDir)
		host := filepath.Join(hostDir, "fstab")
		if err := os.WriteFile(host, content, 0o644); err != nil {
			return FS{}, err
		}
		for _, d := range fst.missingDirs {
			add("cd %s", createDQ(path.Dir(d)))
			add("mkdir %s", createDQ(path.Base(d)))
			add("sif %s mode 040755", createDQ(d))
			add("sif %s uid 0", createDQ(d))
			add("sif %s gid 0", createDQ(d))
		}
		add("cd %s", createDQ(path.Dir(fst.path)))
		if fst.exists {
			add("rm %s", createDQ(path.Base(fst.path)))
		}
		add("write %s %s", createDQ(host), createDQ(path.Base(fst.path)))
		add("sif %s mode 0%o", createDQ(fst.path), syscall.S_IFREG|fst.mode)
		add("sif %s uid %d", createDQ(fst.path), fst.uid)
		add("sif %s gid %d", createDQ(fst.path), fst.gid)
		c.logf("fstab: %s %s / %s", map[bool]string{true: "appending to", false: "creating"}[fst.exists], fst.path, fsys.UUID)
	}
	add("sif / mode 0%o", uint32(syscall.S_IFDIR)|rst.Mode&0o7777)
	for _, p := range append([]string{fst.path, os.TempDir()}, fst.missingDirs...) {
		if strings.ContainsAny(p, "\"\\\n\x00") {
			return FS{}, fmt.Errorf("path %q holds a character debugfs cannot take", p)
		}
	}
	_, stderr, err := createRun(ctx, strings.NewReader(strings.Join(cmds, "\n")+"\n"), "debugfs", "-w", "-f", "-", dev)
	if err != nil {
		return FS{}, err
	}
	if msg := createDebugfsErrors(stderr); msg != "" {
		return FS{}, fmt.Errorf("debugfs on the new filesystem: %s", msg)
	}
	if content != nil {
		out, _, err := createRun(ctx, nil, "debugfs", "-R", "cat "+createDQ(fst.path), dev)
		if err != nil {
			return FS{}, err
		}
		if out != string(content) {
			return FS{}, fmt.Errorf("debugfs wrote %s but reads back %q, want %q", fst.path, out, content)
		}
	}
	return fsys, nil
}

// createDQ quotes s for debugfs (its parser takes "..." as one argument).
func createDQ(s string) string { return `"` + s + `"` }

// createDebugfsErrors returns debugfs's complaints: its stderr without the
// version banner.
func createDebugfsErrors(stderr string) string {
	var msgs []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "debugfs ") {
			continue
		}
		msgs = append(msgs, l)
	}
	return strings.Join(msgs, "; ")
}

// extract unpacks the archive c.src into dir.
func (c *creator) extract(ctx context.Context, dir string) error {
	c.logf("extracting %s", c.src)
	t0 := time.Now()
	args := append([]string{"-C", dir, "-xpf", c.src, "--same-owner"}, createTarMeta...)
	if _, _, err := createRun(ctx, nil, "tar", args...); err != nil {
		return fmt.Errorf("extract %s: %w", c.src, err)
	}
	c.logf("extracted in %s", time.Since(t0).Round(time.Millisecond))
	return nil
}

// ---- xfs ----

func (c *creator) xfs(ctx context.Context, img *os.File, tmp string, part Partition) (_ FS, err error) {
	var sz createTreeSize
	if c.srcIsDir {
		if sz, err = createMeasure(ctx, c.src); err != nil {
			return FS{}, err
		}
		if err := c.checkFits(sz, part.Size); err != nil {
			return FS{}, err
		}
	}
	mnt, err := os.MkdirTemp("", "kmodctl-create-*")
	if err != nil {
		return FS{}, err
	}
	defer os.Remove(mnt) // after the release below
	tr := &Tracker{Log: c.log}
	defer func() {
		if _, rerr := tr.Release(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	loop, err := tr.AttachPartition(ctx, tmp, part, false)
	if err != nil {
		return FS{}, err
	}
	c.logf("mkfs.xfs on %s (%s at offset %d)", loop.Device, createHuman(part.Size), part.Start)
	if _, _, err := createRun(ctx, nil, "mkfs.xfs", "-q", "-L", c.label, loop.Device); err != nil {
		return FS{}, err
	}
	fsys, err := ProbePartition(img, part)
	if err != nil {
		return FS{}, fmt.Errorf("probe the new filesystem: %w", err)
	}
	if fsys.Type != "xfs" || fsys.Label != c.label || fsys.UUID == "" {
		return FS{}, fmt.Errorf("new filesystem probes as %+v, want xfs labelled %q", fsys, c.label)
	}
	if err := tr.Mount(ctx, loop.Device, mnt, "xfs"); err != nil {
		return FS{}, err
	}
	t0 := time.Now()
	var stderr string
	if c.srcIsDir {
		c.logf("copying %s (%d files, %s of data) with tar", c.src, sz.inodes, createHuman(sz.data))
		stderr, err = createTarCopy(ctx, c.src, mnt)
	} else {
		c.logf("extracting %s with tar", c.src)
		args := append([]string{"-C", mnt, "-xpf", c.src, "--same-owner"}, createTarMeta...)
		_, stderr, err = createRun(ctx, nil, "tar", args...)
	}
	if err != nil {
		if ctx.Err() == nil && (strings.Contains(stderr, "No space left on device") || createFull(mnt)) {
			return FS{}, c.tooSmall(sz, part.Size, "tar ran out of space", err)
		}
		return FS{}, fmt.Errorf("fill the xfs filesystem from %s: %w", c.src, err)
	}
	c.logf("copied in %s", time.Since(t0).Round(time.Millisecond))
	fst, err := createInspectFstab(mnt)
	if err != nil {
		return FS{}, err
	}
	if !fst.hasRoot {
		c.logf("fstab: %s %s / %s", map[bool]string{true: "appending to", false: "creating"}[fst.exists], fst.path, fsys.UUID)
		if err := fst.writeInto(mnt, fst.content(c.fs, fsys.UUID)); err != nil {
			return FS{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return FS{}, err
	}
	if rep, err := tr.Release(); err != nil {
		return FS{}, err
	} else if len(rep) == 0 {
		return FS{}, errors.New("release: nothing was unmounted or detached")
	}
	return fsys, nil
}

// createFull tells whether the filesystem mounted at dir is (nearly) out
// of blocks or inodes: tar does not always say ENOSPC ("Wrote only 1536 of
// 10240 bytes").
func createFull(dir string) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return false
	}
	return int64(st.Bavail)*st.Bsize < 4*createMiB || (st.Files > 0 && st.Ffree < 16)
}

// createTarCopy copies the tree src into dst with a tar pipe, keeping
// owners, modes, times, xattrs, ACLs, hard links and holes. It returns the
// reader's stderr (where ENOSPC shows).
func createTarCopy(ctx context.Context, src, dst string) (string, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", err
	}
	rd := createCmd(ctx, "tar", append([]string{"-C", src, "--sparse", "-cf", "-", "."}, createTarMeta...)...)
	wr := createCmd(ctx, "tar", append([]string{"-C", dst, "-xpf", "-", "--same-owner"}, createTarMeta...)...)
	var rdErr, wrErr createTail
	rd.Stdout, rd.Stderr = pw, &rdErr
	wr.Stdin, wr.Stderr = pr, &wrErr
	if err := rd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return "", err
	}
	if err := wr.Start(); err != nil {
		pr.Close()
		pw.Close()
		rd.Process.Kill()
		rd.Wait()
		return "", err
	}
	pr.Close()
	pw.Close()
	werr := wr.Wait()
	rerr := rd.Wait()
	if ctx.Err() != nil {
		return wrErr.String(), fmt.Errorf("tar: %w", ctx.Err())
	}
	if werr != nil {
		return wrErr.String(), fmt.Errorf("tar -x into %s: %w: %s", dst, werr, strings.TrimSpace(wrErr.String()))
	}
	if rerr != nil {
		return wrErr.String(), fmt.Errorf("tar -c of %s: %w: %s", src, rerr, strings.TrimSpace(rdErr.String()))
	}
	return wrErr.String(), nil
}

// ---- sizes ----

type createTreeSize struct {
	data   int64 // bytes the files' content takes in 4 KiB blocks
	inodes int64 // entries, hard links counted once
}

// createMeasure sums what the tree at root takes: regular files in 4 KiB
// blocks (holes not counted), one block per folder and long symlink.
func createMeasure(ctx context.Context, root string) (createTreeSize, error) {
	var s createTreeSize
	type key struct{ dev, ino uint64 }
	seen := map[key]bool{}
	round := func(n int64) int64 { return (n + createExt4Block - 1) / createExt4Block * createExt4Block }
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n++; n%1024 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no stat data", p)
		}
		if st.Nlink > 1 && !fi.IsDir() {
			k := key{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		s.inodes++
		switch {
		case fi.Mode().IsRegular():
			s.data += min(round(fi.Size()), round(st.Blocks*512))
		case fi.IsDir():
			s.data += max(createExt4Block, min(round(fi.Size()), round(st.Blocks*512)))
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			s.data += createExt4Block
		}
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("measure the tree %s: %w", root, err)
	}
	return s, nil
}

// createOverhead is a lower estimate of the metadata a new filesystem of
// part bytes takes, and the number of inodes it offers (0: no limit).
func createOverhead(fsType string, part int64) (overhead, inodes int64) {
	if fsType == "xfs" {
		return min(64*createMiB, part/4) + part/100, 0
	}
	// mkfs.ext4 with our -b/-i/-I: inode tables plus the default journal
	// (e2fsprogs' ext2fs_default_journal_size).
	blocks := part / createExt4Block
	inodes = part / createExt4InodeRatio
	var journal int64
	switch {
	case blocks < 2048:
	case blocks < 32768:
		journal = 1024
	case blocks < 256*1024:
		journal = 4096
	case blocks < 512*1024:
		journal = 8192
	case blocks < 4096*1024:
		journal = 16384
	case blocks < 8192*1024:
		journal = 32768
	case blocks < 16384*1024:
		journal = 65536
	case blocks < 32768*1024:
		journal = 131072
	default:
		journal = 262144
	}
	return inodes*createExt4InodeSize + journal*createExt4Block, inodes
}

func (c *creator) fits(s createTreeSize, part int64) bool {
	over, inodes := createOverhead(c.fs, part)
	data := s.data
	if c.fs == "xfs" {
		data += s.inodes * createXFSInodeSize
	}
	return data+over <= part && (inodes == 0 || s.inodes+11 <= inodes)
}

// checkFits fails early when the tree clearly does not fit a partition of
// part bytes.
func (c *creator) checkFits(s createTreeSize, part int64) error {
	if c.fits(s, part) {
		return nil
	}
	return c.tooSmall(s, part, "", nil)
}

// tooSmall is the error for a Size too small for the tree: it names the
// sizes and suggests a Size that fits with 10% to spare.
func (c *creator) tooSmall(s createTreeSize, part int64, what string, cause error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "CreateOptions.Size %s is too small for %s: ", createHuman(c.size), c.src)
	if what != "" {
		fmt.Fprintf(&b, "%s in the %s root partition of %s", what, c.fs, createHuman(part))
	} else {
		over, inodes := createOverhead(c.fs, part)
		fmt.Fprintf(&b, "the %s root partition would be %s, with about %s of it %s metadata", c.fs, createHuman(part), createHuman(over), c.fs)
		if inodes > 0 {
			fmt.Fprintf(&b, " and %d inodes", inodes)
		}
	}
	if s.inodes > 0 {
		fmt.Fprintf(&b, ", but the tree holds %d files with %s of data", s.inodes, createHuman(s.data))
		// The smallest Size (in MiB) the estimate accepts, plus 10%.
		need := s.data + createRootStart + createTailGap
		for !c.fits(s, need-createRootStart-createTailGap) {
			need += max(need/32, createMiB)
		}
		need = (need + need/10 + createMiB - 1) / createMiB * createMiB
		fmt.Fprintf(&b, "; use a Size of at least %s", createHuman(need))
	} else if fi, err := os.Stat(c.src); err == nil {
		fmt.Fprintf(&b, " (the archive is %s, compressed)", createHuman(fi.Size()))
	}
	if cause != nil {
		fmt.Fprintf(&b, ": %v", cause)
	}
	return errors.New(b.String())
}

// createHuman prints a byte count in MiB or GiB, with the exact bytes.
func createHuman(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%createMiB == 0:
		return fmt.Sprintf("%d MiB", n/createMiB)
	case n >= createMiB:
		return fmt.Sprintf("%.1f MiB (%d bytes)", float64(n)/createMiB, n)
	}
	return fmt.Sprintf("%d bytes", n)
}

// ---- fstab ----

type createFstab struct {
	path        string // in the tree, symlinks resolved, e.g. "/etc/fstab"
	exists      bool
	old         []byte
	mode        uint32 // permission bits (of the existing file, else 0644)
	uid, gid    uint32
	missingDirs []string // folders to create first, top down
	hasRoot     bool     // an entry mounts "/"
}

// createInspectFstab reads the tree's /etc/fstab (following symlinks inside
// the tree) and tells whether it has an entry for "/".
func createInspectFstab(root string) (*createFstab, error) {
	host, err := securejoin.SecureJoin(root, "/etc/fstab")
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(root, host)
	if err != nil {
		return nil, err
	}
	p := "/" + filepath.ToSlash(rel)
	f := &createFstab{path: p, mode: 0o644}
	fi, err := os.Lstat(host)
	switch {
	case err == nil:
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s in the tree is a %s, not a file", p, createKind(fi.Mode()))
		}
		if f.old, err = os.ReadFile(host); err != nil {
			return nil, err
		}
		st := fi.Sys().(*syscall.Stat_t)
		f.exists, f.mode, f.uid, f.gid = true, uint32(fi.Mode().Perm())|st.Mode&0o7000, st.Uid, st.Gid
	case errors.Is(err, fs.ErrNotExist):
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			fi, err := os.Lstat(filepath.Join(root, d))
			if err == nil {
				if !fi.IsDir() {
					return nil, fmt.Errorf("%s in the tree is a %s, not a folder", d, createKind(fi.Mode()))
				}
				break
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			f.missingDirs = append([]string{d}, f.missingDirs...)
		}
	default:
		return nil, err
	}
	entries, err := ParseFstab(bytes.NewReader(f.old))
	if err != nil && !errors.Is(err, ErrBadFstabLine) {
		return nil, fmt.Errorf("%s in the tree: %w", p, err)
	}
	for _, e := range entries {
		if path.Clean(e.File) == "/" {
			f.hasRoot = true
		}
	}
	return f, nil
}

// content is the fstab with the root entry appended.
func (f *createFstab) content(fsType, uuid string) []byte {
	b := append([]byte(nil), f.old...)
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return append(b, fmt.Sprintf("UUID=%s / %s defaults 0 1\n", uuid, fsType)...)
}

// writeInto writes content as the fstab of the tree mounted at root.
func (f *createFstab) writeInto(root string, content []byte) error {
	for _, d := range f.missingDirs {
		h := filepath.Join(root, d)
		if err := os.Mkdir(h, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(h, 0o755); err != nil {
			return err
		}
		if err := os.Lchown(h, 0, 0); err != nil {
			return err
		}
	}
	h := filepath.Join(root, f.path)
	tmp := h + ".kmodctl-new"
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		return err
	}
	if err := os.Lchown(tmp, int(f.uid), int(f.gid)); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, createFileMode(f.mode)); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, h); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func createKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

func createFileMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&syscall.S_ISUID != 0 {
		fm |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		fm |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		fm |= fs.ModeSticky
	}
	return fm
}

// ---- processes ----

// createCmd is exec.CommandContext in its own process group, all of which
// is killed when ctx ends (tar's decompressors included).
func createCmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	c.WaitDelay = 10 * time.Second
	return c
}

// createRun runs a tool and returns its stdout and (the tail of) its
// stderr; the error names the command and quotes stderr.
func createRun(ctx context.Context, stdin io.Reader, name string, args ...string) (string, string, error) {
	if err := ctx.Err(); err != nil {
		return "", "", err
	}
	c := createCmd(ctx, name, args...)
	var out bytes.Buffer
	var errb createTail
	c.Stdin, c.Stdout, c.Stderr = stdin, &out, &errb
	err := c.Run()
	if ctx.Err() != nil {
		return out.String(), errb.String(), fmt.Errorf("%s: %w", name, ctx.Err())
	}
	if err != nil {
		return out.String(), errb.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), nil
}

// createTail keeps the last 16 KiB written to it.
type createTail struct{ b []byte }

func (t *createTail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 16<<10 {
		t.b = append([]byte(nil), t.b[len(t.b)-16<<10:]...)
	}
	return len(p), nil
}

func (t *createTail) String() string { return string(t.b) }
