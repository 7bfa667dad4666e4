package initramfs

import (
	"bufio"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kmodctl/packer-plugin-kmod/compress"
)

var errStopped = errors.New("stopped")

// readStream reads r to its end into buf, failing with ErrTooLarge when it
// holds more than len(buf) bytes and with errStopped once stop is closed.
func readStream(r io.Reader, buf []byte, stop <-chan struct{}) ([]byte, error) {
	n := 0
	for {
		select {
		case <-stop:
			return nil, errStopped
		default:
		}
		if n == len(buf) {
			var one [1]byte
			if k, err := io.ReadFull(r, one[:]); k > 0 {
				return nil, ErrTooLarge
			} else if err == io.EOF {
				return buf[:n:n], nil
			} else {
				return nil, err
			}
		}
		k, err := r.Read(buf[n:min(len(buf), n+4<<20)])
		n += k
		if err == io.EOF {
			return buf[:n:n], nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// anonBuffer reserves size bytes of address space for a stream of unknown
// length: pages cost memory only once written, so the stream ends up
// contiguous at its own size, without a buffer grown by doubling or chunks.
type anonBuffer struct{ b []byte }

func newAnonBuffer(size int64) (*anonBuffer, error) {
	if int64(int(size)) != size || size <= 0 {
		return nil, ErrTooLarge
	}
	b, err := syscall.Mmap(-1, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	return &anonBuffer{b}, nil
}

// free releases the buffer; slices of it must no longer be used.
func (a *anonBuffer) free() {
	if a != nil && a.b != nil {
		syscall.Munmap(a.b)
		a.b = nil
	}
}

// speculation decodes the compressed unit at the start of an image while
// Open indexes it (Open decodes every segment once and keeps no data, so
// Inject would otherwise decode the main segment twice in a row): on two
// cores the second decoding costs no wall time. Open's segments decide
// whether the result is used.
type speculation struct {
	done   chan struct{}
	stop   chan struct{}
	once   sync.Once
	f      compress.Format
	buf    *anonBuffer
	stream []byte
	err    error
}

// speculate starts decoding the unit at the start of the file at path when
// it begins with the magic of gzip, zstd or xz; nil otherwise. The file is
// read, not mapped (Open maps it; a second mapping would count twice in the
// resident memory). Decoding stops at the end of a gzip member or an xz
// stream; a zstd decoder goes on through following frames, which then makes
// the size differ from Open's first segment and the result unused. limit
// bounds the decompressed size (a bomb is Open's to report).
func speculate(path string, limit int64) *speculation {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	var magic [6]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil {
		f.Close()
		return nil
	}
	format := kernelMagic(magic[:])
	var newReader func(io.Reader) (io.Reader, func(), error)
	switch format {
	case compress.Gzip:
		newReader = func(r io.Reader) (io.Reader, func(), error) {
			zr, err := kgzip.NewReader(r)
			if err != nil {
				return nil, nil, err
			}
			zr.Multistream(false)
			return zr, func() { zr.Close() }, nil
		}
	case compress.Zstd:
		newReader = func(r io.Reader) (io.Reader, func(), error) {
			zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(1<<27))
			if err != nil {
				return nil, nil, err
			}
			return zr, zr.Close, nil
		}
	case compress.XZ:
		newReader = func(r io.Reader) (io.Reader, func(), error) {
			xr, err := xz.ReaderConfig{SingleStream: true}.NewReader(r)
			return xr, func() {}, err
		}
	default:
		f.Close()
		return nil
	}
	buf, err := newAnonBuffer(limit)
	if err != nil {
		f.Close()
		return nil
	}
	s := &speculation{done: make(chan struct{}), stop: make(chan struct{}), f: format, buf: buf}
	go func() {
		defer close(s.done)
		defer f.Close()
		zr, closeZ, err := newReader(bufio.NewReaderSize(f, 1<<20))
		if err != nil {
			s.err = err
			return
		}
		defer closeZ()
		s.stream, s.err = readStream(zr, buf.b, s.stop)
	}()
	return s
}

// result waits for the speculation and returns its stream when it decoded
// exactly segment seg (at offset 0); nil otherwise. The stream lives until
// release.
func (s *speculation) result(seg Segment) []byte {
	if s == nil {
		return nil
	}
	<-s.done
	if s.err != nil || seg.Offset != 0 || seg.Compression != s.f || int64(len(s.stream)) != seg.Size {
		return nil
	}
	return s.stream
}

// cancel stops the speculation and waits for it.
func (s *speculation) cancel() {
	if s == nil {
		return
	}
	s.once.Do(func() { close(s.stop) })
	<-s.done
}

// release cancels the speculation and frees its buffer: the stream it
// returned must no longer be used.
func (s *speculation) release() {
	if s == nil {
		return
	}
	s.cancel()
	s.buf.free()
}
