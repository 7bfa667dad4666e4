//go:build linux

package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

type treeSize struct {
	data   int64 // bytes the files' content takes in 4 KiB blocks
	inodes int64 // entries, hard links counted once
}

// measure sums what the tree at root takes: regular files in 4 KiB
// blocks (holes not counted), one block per folder and long symlink.
func measure(ctx context.Context, root string) (treeSize, error) {
	var s treeSize
	type key struct{ dev, ino uint64 }
	seen := map[key]bool{}
	round := func(n int64) int64 { return (n + ext4Block - 1) / ext4Block * ext4Block }
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
			s.data += max(ext4Block, min(round(fi.Size()), round(st.Blocks*512)))
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			s.data += ext4Block
		}
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("measure the tree %s: %w", root, err)
	}
	return s, nil
}

// metadataOverhead is a lower estimate of the metadata a new filesystem of
// part bytes takes, and the number of inodes it offers (0: no limit).
func metadataOverhead(fsType string, part int64) (overhead, inodes int64) {
	if fsType == "xfs" {
		return min(64*mib, part/4) + part/100, 0
	}
	// mkfs.ext4 with our -b/-i/-I: inode tables plus the default journal
	// (e2fsprogs' ext2fs_default_journal_size).
	blocks := part / ext4Block
	inodes = part / ext4InodeRatio
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
	return inodes*ext4InodeSize + journal*ext4Block, inodes
}

func (c *creator) fits(s treeSize, part int64) bool {
	over, inodes := metadataOverhead(c.fs, part)
	data := s.data
	if c.fs == "xfs" {
		data += s.inodes * xfsInodeSize
	}
	return data+over <= part && (inodes == 0 || s.inodes+11 <= inodes)
}

// checkFits fails early when the tree clearly does not fit a partition of
// part bytes.
func (c *creator) checkFits(s treeSize, part int64) error {
	if c.fits(s, part) {
		return nil
	}
	return c.tooSmall(s, part, "", nil)
}

// tooSmall is the error for a Size too small for the tree: it names the
// sizes and suggests a Size that fits with 10% to spare.
func (c *creator) tooSmall(s treeSize, part int64, what string, cause error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Options.Size %s is too small for %s: ", human(c.size), c.src)
	if what != "" {
		fmt.Fprintf(&b, "%s in the %s root partition of %s", what, c.fs, human(part))
	} else {
		over, inodes := metadataOverhead(c.fs, part)
		fmt.Fprintf(&b, "the %s root partition would be %s, with about %s of it %s metadata", c.fs, human(part), human(over), c.fs)
		if inodes > 0 {
			fmt.Fprintf(&b, " and %d inodes", inodes)
		}
	}
	if s.inodes > 0 {
		fmt.Fprintf(&b, ", but the tree holds %d files with %s of data", s.inodes, human(s.data))
		// The smallest Size (in MiB) the estimate accepts, plus 10%.
		need := s.data + rootStart + tailGap
		for !c.fits(s, need-rootStart-tailGap) {
			need += max(need/32, mib)
		}
		need = (need + need/10 + mib - 1) / mib * mib
		fmt.Fprintf(&b, "; use a Size of at least %s", human(need))
	} else if fi, err := os.Stat(c.src); err == nil {
		fmt.Fprintf(&b, " (the archive is %s, compressed)", human(fi.Size()))
	}
	if cause != nil {
		fmt.Fprintf(&b, ": %v", cause)
	}
	return errors.New(b.String())
}

// human prints a byte count in MiB or GiB, with the exact bytes.
func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%mib == 0:
		return fmt.Sprintf("%d MiB", n/mib)
	case n >= mib:
		return fmt.Sprintf("%.1f MiB (%d bytes)", float64(n)/mib, n)
	}
	return fmt.Sprintf("%d bytes", n)
}
