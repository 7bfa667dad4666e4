package diskimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
