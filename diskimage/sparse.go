package diskimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"os"
	"runtime"
	"syscall"
)

// Linux lseek whence values; elsewhere the copy reads every block.
const (
	seekData = 3
	seekHole = 4
)

// SparseCopy copies the raw image (or any file) src into dst, which must be
// empty, so that the copy takes only the room of the data: only the 1 MiB
// blocks (aligned) that hold a non-zero byte are written, and holes of src
// (found with SEEK_DATA/SEEK_HOLE) are not even read. dst is truncated to
// src's size at the end. progress, if not nil, is called with the bytes
// done and src's size as the copy goes. ctx's end stops it.
func SparseCopy(ctx context.Context, dst *os.File, src string, progress func(done, total int64)) error {
	return sparseCopy(ctx, dst, src, progress, nil)
}

// sparseCopy is SparseCopy that also feeds every byte of src to h when h
// is not nil: what it reads, and zeros for the holes it skips (which read
// as zeros), so that h ends as the hash of the whole file from one read.
func sparseCopy(ctx context.Context, dst *os.File, src string, progress func(done, total int64), h hash.Hash) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("sparse copy: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("sparse copy: %w", err)
	}
	size := st.Size()
	if progress == nil {
		progress = func(int64, int64) {}
	}
	buf := make([]byte, mib)
	zero := make([]byte, mib)
	holes := runtime.GOOS == "linux"
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("sparse copy %s: %w", src, err)
		}
		dataEnd := size
		if holes {
			d, err := in.Seek(off, seekData)
			switch {
			case errors.Is(err, syscall.ENXIO): // only a hole from off on
				d = size
			case err != nil: // not supported here: copy it all
				holes = false
				d = off
			}
			d = min(d, size)
			if d > off {
				if h != nil {
					for z := off; z < d; z += mib {
						h.Write(zero[:min(mib, d-z)])
					}
				}
				off = d
				progress(off, size)
				continue
			}
			if h, err := in.Seek(off, seekHole); err == nil {
				dataEnd = min(max(h, off+1), size)
			}
		}
		for off < dataEnd {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("sparse copy %s: %w", src, err)
			}
			n := min((off/mib+1)*mib, dataEnd) - off
			if _, err := in.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("sparse copy: read %s at %d: %w", src, off, err)
			}
			if h != nil {
				h.Write(buf[:n])
			}
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, err := dst.WriteAt(buf[:n], off); err != nil {
					return fmt.Errorf("sparse copy: %w", err)
				}
			}
			off += n
			progress(off, size)
		}
	}
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("sparse copy: %w", err)
	}
	return nil
}
