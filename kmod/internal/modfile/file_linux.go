//go:build linux

package modfile

import (
	"fmt"
	"io"
	"syscall"
)

// File is a module file read with pread(2) on a bare descriptor. An
// os.File would register the descriptor with the runtime poller (epoll_ctl,
// several fcntl calls) on every open, which cost more than the reads when
// parsing a whole module tree.
type File int

// OpenFile opens path for reading and returns its size. O_NONBLOCK
// keeps the open of a FIFO from blocking; it is refused as not regular.
func OpenFile(path string) (File, int64, error) {
	var fd int
	var err error
	for {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return -1, 0, fmt.Errorf("open: %w", err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return -1, 0, fmt.Errorf("stat: %w", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		syscall.Close(fd)
		return -1, 0, fmt.Errorf("not a regular file (mode %#o)", st.Mode)
	}
	return File(fd), st.Size, nil
}

// ReadAt implements io.ReaderAt.
func (f File) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := syscall.Pread(int(f), p[n:], off+int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("read: %w", err)
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

// Close closes the descriptor.
func (f File) Close() error { return syscall.Close(int(f)) }
