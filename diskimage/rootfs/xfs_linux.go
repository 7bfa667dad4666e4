//go:build linux

package rootfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/tail"
)

func (c *creator) xfs(ctx context.Context, img *os.File, tmp string, part diskimage.Partition) (_ diskimage.FS, err error) {
	var sz treeSize
	if c.srcIsDir {
		if sz, err = measure(ctx, c.src); err != nil {
			return diskimage.FS{}, err
		}
		if err := c.checkFits(sz, part.Size); err != nil {
			return diskimage.FS{}, err
		}
	}
	mnt, err := os.MkdirTemp("", "kmodctl-create-*")
	if err != nil {
		return diskimage.FS{}, err
	}
	defer os.Remove(mnt) // after the release below
	tr := &diskimage.Tracker{Log: c.log}
	defer func() {
		if _, rerr := tr.Release(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	loop, err := tr.AttachPartition(ctx, tmp, part, false)
	if err != nil {
		return diskimage.FS{}, err
	}
	c.logf("mkfs.xfs on %s (%s at offset %d)", loop.Device, human(part.Size), part.Start)
	if _, _, err := run(ctx, nil, "mkfs.xfs", "-q", "-L", c.label, loop.Device); err != nil {
		return diskimage.FS{}, err
	}
	fsys, err := diskimage.ProbePartition(img, part)
	if err != nil {
		return diskimage.FS{}, fmt.Errorf("probe the new filesystem: %w", err)
	}
	if fsys.Type != "xfs" || fsys.Label != c.label || fsys.UUID == "" {
		return diskimage.FS{}, fmt.Errorf("new filesystem probes as %+v, want xfs labelled %q", fsys, c.label)
	}
	if err := tr.Mount(ctx, loop.Device, mnt, "xfs"); err != nil {
		return diskimage.FS{}, err
	}
	t0 := time.Now()
	var stderr string
	if c.srcIsDir {
		c.logf("copying %s (%d files, %s of data) with tar", c.src, sz.inodes, human(sz.data))
		stderr, err = tarCopy(ctx, c.src, mnt)
	} else {
		c.logf("extracting %s with tar", c.src)
		args := append([]string{"-C", mnt, "-xpf", c.src, "--same-owner"}, tarMeta...)
		_, stderr, err = run(ctx, nil, "tar", args...)
	}
	if err != nil {
		if ctx.Err() == nil && (strings.Contains(stderr, "No space left on device") || nearlyFull(mnt)) {
			return diskimage.FS{}, c.tooSmall(sz, part.Size, "tar ran out of space", err)
		}
		return diskimage.FS{}, fmt.Errorf("fill the xfs filesystem from %s: %w", c.src, err)
	}
	c.logf("copied in %s", time.Since(t0).Round(time.Millisecond))
	fst, err := inspectFstab(mnt)
	if err != nil {
		return diskimage.FS{}, err
	}
	if !fst.hasRoot {
		c.logf("fstab: %s %s / %s", map[bool]string{true: "appending to", false: "creating"}[fst.exists], fst.path, fsys.UUID)
		if err := fst.writeInto(mnt, fst.content(c.fs, fsys.UUID)); err != nil {
			return diskimage.FS{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return diskimage.FS{}, err
	}
	if rep, err := tr.Release(); err != nil {
		return diskimage.FS{}, err
	} else if len(rep) == 0 {
		return diskimage.FS{}, errors.New("release: nothing was unmounted or detached")
	}
	return fsys, nil
}

// nearlyFull tells whether the filesystem mounted at dir is (nearly) out
// of blocks or inodes: tar does not always say ENOSPC ("Wrote only 1536 of
// 10240 bytes").
func nearlyFull(dir string) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return false
	}
	return int64(st.Bavail)*st.Bsize < 4*mib || (st.Files > 0 && st.Ffree < 16)
}

// tarCopy copies the tree src into dst with a tar pipe, keeping
// owners, modes, times, xattrs, ACLs, hard links and holes. It returns the
// reader's stderr (where ENOSPC shows).
func tarCopy(ctx context.Context, src, dst string) (string, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", err
	}
	rd := command(ctx, "tar", append([]string{"-C", src, "--sparse", "-cf", "-", "."}, tarMeta...)...)
	wr := command(ctx, "tar", append([]string{"-C", dst, "-xpf", "-", "--same-owner"}, tarMeta...)...)
	rdErr, wrErr := &tail.Buffer{Max: 16 << 10}, &tail.Buffer{Max: 16 << 10}
	rd.Stdout, rd.Stderr = pw, rdErr
	wr.Stdin, wr.Stderr = pr, wrErr
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
