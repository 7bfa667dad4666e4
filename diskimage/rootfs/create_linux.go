//go:build linux

package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// Options describes a new GPT disk made from a root filesystem tree.
type Options struct {
	Size       int64        // total disk size in bytes (required; rounded up to 1 MiB)
	Filesystem string       // "ext4" (default) or "xfs"
	Label      string       // root filesystem label, default "root"
	Arch       string       // GOARCH for the GPT root partition type, default runtime.GOARCH
	Log        func(string) // optional progress lines
}

// Layout of the disks CreateImage writes (bytes).
const (
	mib       = 1 << 20
	biosStart = 1 * mib
	biosSize  = 1 * mib
	rootStart = biosStart + biosSize
	// The last MiB stays free: it holds the backup GPT and keeps the root
	// partition's end 1 MiB aligned.
	tailGap = 1 * mib
	// mkfs.xfs refuses filesystems smaller than 300 MiB.
	minXFSPart = 300 * mib
	// Below this an ext4 filesystem gets no journal.
	minExt4Part = 13 * mib
	// ext4 geometry passed to mkfs.ext4 explicitly, so the size estimate
	// does not depend on the host's mke2fs.conf.
	ext4Block      = 4096
	ext4InodeRatio = 16384
	ext4InodeSize  = 256
	xfsInodeSize   = 512
)

// The tar flags that keep owners (numerically), modes, xattrs (all
// namespaces) and ACLs.
var tarMeta = []string{"--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"}

// CreateImage writes a new raw disk image at dst from src, a directory or
// a tar archive (.tar, .tar.gz/.tgz, .tar.xz, .tar.zst; GNU tar detects
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
// random (read back with diskimage.Probe). ext4 gets 4 KiB blocks, 256-byte
// inodes and one inode per 16 KiB whatever the host's mke2fs.conf says, so
// that a Size too small for the tree is caught before anything is written.
// The image file is created with mode 0600.
//
// Cancelling ctx kills the child processes (whole process groups) and
// removes every temporary file, mount and loop device. It returns the table
// read back from the new image.
func CreateImage(ctx context.Context, src, dst string, o Options) (*diskimage.Table, error) {
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

func newCreator(src, dst string, o Options) (*creator, error) {
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
			return nil, fmt.Errorf("Options.Label %q is %d bytes; ext4 labels hold at most 16", c.label, len(c.label))
		}
		minPart = minExt4Part
	case "xfs":
		if len(c.label) > 12 {
			return nil, fmt.Errorf("Options.Label %q is %d bytes; xfs labels hold at most 12", c.label, len(c.label))
		}
		minPart = minXFSPart
	default:
		return nil, fmt.Errorf("Options.Filesystem %q is not supported: want \"ext4\" or \"xfs\"", o.Filesystem)
	}
	if strings.ContainsAny(c.label, "\x00\n") {
		return nil, fmt.Errorf("Options.Label %q holds a NUL or newline", c.label)
	}
	typ, ok := diskimage.RootGPTTypes[c.arch]
	if !ok {
		var archs []string
		for a := range diskimage.RootGPTTypes {
			archs = append(archs, a)
		}
		sort.Strings(archs)
		return nil, fmt.Errorf("Options.Arch %q has no GPT root partition type (known: %s)", c.arch, strings.Join(archs, ", "))
	}
	c.rootType = typ
	if o.Size <= 0 {
		return nil, fmt.Errorf("Options.Size is required (got %d bytes)", o.Size)
	}
	c.size = (o.Size + mib - 1) / mib * mib
	if min := rootStart + minPart + tailGap; c.size < min {
		return nil, fmt.Errorf("Options.Size %s is too small: a disk with an %s root filesystem takes at least %s",
			human(o.Size), c.fs, human(min))
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
		return nil, fmt.Errorf("source rootfs %s is a %s, want a directory or a tar archive", src, kind(st.Mode()))
	}
	if c.src, err = realPath(src); err != nil {
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
		if d, err := realPath(c.dir); err == nil && d == c.src || strings.HasPrefix(d, c.src+"/") {
			return nil, fmt.Errorf("destination %s lies inside the source tree %s", c.dst, c.src)
		}
		var below []string
		for _, m := range diskimage.MountsUnder(c.src) {
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

// realPath is the absolute path of the existing p, symlinks resolved.
func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

func (c *creator) logf(format string, args ...any) { c.log(fmt.Sprintf(format, args...)) }

func (c *creator) create(ctx context.Context) (_ *diskimage.Table, err error) {
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
	rootSize := c.size - rootStart - tailGap
	c.logf("partitioning %s: GPT, BIOS boot 1 MiB, %s root %s", human(c.size), c.arch, human(rootSize))
	// first-lba 34 (sfdisk would use 2048): the usual GPT, no gap that
	// sgdisk -v warns about.
	script := fmt.Sprintf("label: gpt\nfirst-lba: 34\nstart=%d, size=%d, type=%s, name=\"BIOS boot\"\nstart=%d, size=%d, type=%s, name=\"root\"\n",
		biosStart/512, biosSize/512, diskimage.GPTTypeBIOSBoot, rootStart/512, rootSize/512, c.rootType)
	if _, _, err := run(ctx, strings.NewReader(script), "sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", tmp); err != nil {
		return nil, err
	}
	tab, err := diskimage.ReadTable(img, c.size)
	if err != nil {
		return nil, fmt.Errorf("read back the new table: %w", err)
	}
	part, ok := tab.Partition(2)
	if !ok || part.Start != rootStart || part.Size != rootSize || part.Type != c.rootType {
		return nil, fmt.Errorf("sfdisk wrote an unexpected table: %v", tab.Partitions)
	}

	var fsys diskimage.FS
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
	if tab, err = diskimage.ReadTable(img, c.size); err != nil {
		return nil, fmt.Errorf("read back the new table: %w", err)
	}
	if err := img.Close(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := publish(tmp, c.dst); err != nil {
		return nil, err
	}
	published = true
	c.logf("created %s (%s, root %s %s label %q UUID %s) in %s", c.dst, human(c.size), c.fs,
		human(part.Size), fsys.Label, fsys.UUID, time.Since(t0).Round(time.Millisecond))
	return tab, nil
}

// publish gives tmp the name dst without replacing an existing dst
// (a hard link, then the temporary name is removed), and syncs the folder.
func publish(tmp, dst string) error {
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
