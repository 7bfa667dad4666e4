//go:build linux

package rootfs

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

func (c *creator) ext4(ctx context.Context, img *os.File, tmp string, part diskimage.Partition) (diskimage.FS, error) {
	tree := c.src
	if !c.srcIsDir {
		d, err := os.MkdirTemp(c.dir, "."+c.base+".rootfs-*")
		if err != nil {
			return diskimage.FS{}, err
		}
		defer os.RemoveAll(d)
		if err := os.Chmod(d, 0o755); err != nil {
			return diskimage.FS{}, err
		}
		if err := c.extract(ctx, d); err != nil {
			return diskimage.FS{}, err
		}
		tree = d
	}
	sz, err := measure(ctx, tree)
	if err != nil {
		return diskimage.FS{}, err
	}
	if err := c.checkFits(sz, part.Size); err != nil {
		return diskimage.FS{}, err
	}
	fst, err := inspectFstab(tree)
	if err != nil {
		return diskimage.FS{}, err
	}
	rootSt, err := os.Stat(tree)
	if err != nil {
		return diskimage.FS{}, err
	}
	rst := rootSt.Sys().(*syscall.Stat_t)

	c.logf("mkfs.ext4 -d: %d files, %s of data into %s", sz.inodes, human(sz.data), human(part.Size))
	t0 := time.Now()
	args := []string{"-q", "-F", "-t", "ext4",
		"-b", strconv.Itoa(ext4Block), "-i", strconv.Itoa(ext4InodeRatio), "-I", strconv.Itoa(ext4InodeSize),
		"-L", c.label, "-d", tree,
		"-E", fmt.Sprintf("offset=%d,root_owner=%d:%d", part.Start, rst.Uid, rst.Gid),
		tmp, strconv.FormatInt(part.Size/1024, 10) + "k"}
	if _, stderr, err := run(ctx, nil, "mkfs.ext4", args...); err != nil {
		switch {
		case strings.Contains(stderr, "Could not allocate block"):
			return diskimage.FS{}, c.tooSmall(sz, part.Size, "mkfs.ext4 ran out of blocks", err)
		case strings.Contains(stderr, "Could not allocate inode"):
			return diskimage.FS{}, c.tooSmall(sz, part.Size, "mkfs.ext4 ran out of inodes", err)
		}
		return diskimage.FS{}, err
	}
	c.logf("mkfs.ext4 done in %s", time.Since(t0).Round(time.Millisecond))
	fsys, err := diskimage.ProbePartition(img, part)
	if err != nil {
		return diskimage.FS{}, fmt.Errorf("probe the new filesystem: %w", err)
	}
	if fsys.Type != "ext4" || fsys.Label != c.label || fsys.UUID == "" {
		return diskimage.FS{}, fmt.Errorf("new filesystem probes as %+v, want ext4 labelled %q", fsys, c.label)
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
			return diskimage.FS{}, err
		}
		defer os.RemoveAll(hostDir)
		host := filepath.Join(hostDir, "fstab")
		if err := os.WriteFile(host, content, 0o644); err != nil {
			return diskimage.FS{}, err
		}
		for _, d := range fst.missingDirs {
			add("cd %s", debugfsQuote(path.Dir(d)))
			add("mkdir %s", debugfsQuote(path.Base(d)))
			add("sif %s mode 040755", debugfsQuote(d))
			add("sif %s uid 0", debugfsQuote(d))
			add("sif %s gid 0", debugfsQuote(d))
		}
		add("cd %s", debugfsQuote(path.Dir(fst.path)))
		if fst.exists {
			add("rm %s", debugfsQuote(path.Base(fst.path)))
		}
		add("write %s %s", debugfsQuote(host), debugfsQuote(path.Base(fst.path)))
		add("sif %s mode 0%o", debugfsQuote(fst.path), syscall.S_IFREG|fst.mode)
		add("sif %s uid %d", debugfsQuote(fst.path), fst.uid)
		add("sif %s gid %d", debugfsQuote(fst.path), fst.gid)
		c.logf("fstab: %s %s / %s", map[bool]string{true: "appending to", false: "creating"}[fst.exists], fst.path, fsys.UUID)
	}
	add("sif / mode 0%o", uint32(syscall.S_IFDIR)|rst.Mode&0o7777)
	for _, p := range append([]string{fst.path, os.TempDir()}, fst.missingDirs...) {
		if strings.ContainsAny(p, "\"\\\n\x00") {
			return diskimage.FS{}, fmt.Errorf("path %q holds a character debugfs cannot take", p)
		}
	}
	_, stderr, err := run(ctx, strings.NewReader(strings.Join(cmds, "\n")+"\n"), "debugfs", "-w", "-f", "-", dev)
	if err != nil {
		return diskimage.FS{}, err
	}
	if msg := debugfsErrors(stderr); msg != "" {
		return diskimage.FS{}, fmt.Errorf("debugfs on the new filesystem: %s", msg)
	}
	if content != nil {
		out, _, err := run(ctx, nil, "debugfs", "-R", "cat "+debugfsQuote(fst.path), dev)
		if err != nil {
			return diskimage.FS{}, err
		}
		if out != string(content) {
			return diskimage.FS{}, fmt.Errorf("debugfs wrote %s but reads back %q, want %q", fst.path, out, content)
		}
	}
	return fsys, nil
}

// debugfsQuote quotes s for debugfs (its parser takes "..." as one argument).
func debugfsQuote(s string) string { return `"` + s + `"` }

// debugfsErrors returns debugfs's complaints: its stderr without the
// version banner.
func debugfsErrors(stderr string) string {
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
	args := append([]string{"-C", dir, "-xpf", c.src, "--same-owner"}, tarMeta...)
	if _, _, err := run(ctx, nil, "tar", args...); err != nil {
		return fmt.Errorf("extract %s: %w", c.src, err)
	}
	c.logf("extracted in %s", time.Since(t0).Round(time.Millisecond))
	return nil
}
