package initramfs

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/kmodctl/packer-plugin-kmod/internal/compress"
)

// chunkSize is the unit of a chunkedStream: decompressed segments are read
// into chunks rather than one buffer grown by doubling (or sized in advance,
// which the speculative read cannot do), so memory stays at the stream's
// size.
const chunkSize = 8 << 20

// chunkedStream is a decompressed cpio stream held in memory.
type chunkedStream struct {
	chunks [][]byte
	size   int64
}

var errStopped = errors.New("stopped")

// readChunks reads r to its end, failing with ErrTooLarge beyond limit
// bytes and with errStopped once stop is closed.
func readChunks(r io.Reader, limit int64, stop <-chan struct{}) (*chunkedStream, error) {
	c := &chunkedStream{}
	for {
		select {
		case <-stop:
			return nil, errStopped
		default:
		}
		if c.size > limit {
			return nil, ErrTooLarge
		}
		buf := make([]byte, chunkSize)
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			c.chunks = append(c.chunks, buf[:n:n])
			c.size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if c.size > limit {
				return nil, ErrTooLarge
			}
			return c, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// slice returns n bytes at off: a slice of a chunk, or a copy when they
// straddle chunks. The caller checked the bounds.
func (c *chunkedStream) slice(off, n int64) []byte {
	i, o := off/chunkSize, off%chunkSize
	if o+n <= int64(len(c.chunks[i])) {
		return c.chunks[i][o : o+n : o+n]
	}
	out := make([]byte, 0, n)
	for n > 0 {
		k := min(n, int64(len(c.chunks[i]))-o)
		out = append(out, c.chunks[i][o:o+k]...)
		n -= k
		i, o = i+1, 0
	}
	return out
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
	stream *chunkedStream
	n      int64 // compressed length of the unit
	err    error
}

// speculate starts decoding the unit at the start of the file at path when
// it begins with a compression magic; nil otherwise. limit bounds the
// decompressed size (a bomb is Open's to report).
func speculate(path string, limit int64) *speculation {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	st, err := f.Stat()
	if err != nil || st.Size() < 16 || int64(int(st.Size())) != st.Size() {
		f.Close()
		return nil
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	f.Close()
	if err != nil {
		return nil
	}
	format := kernelMagic(data)
	if format == compress.None || format == compress.LZO {
		syscall.Munmap(data)
		return nil
	}
	s := &speculation{done: make(chan struct{}), stop: make(chan struct{}), f: format}
	go func() {
		defer close(s.done)
		defer syscall.Munmap(data)
		u, err := compress.NewUnitReader(data, format)
		if err != nil {
			s.err = err
			return
		}
		defer u.Close()
		s.stream, s.err = readChunks(u, limit, s.stop)
		s.n = u.Len()
	}()
	return s
}

// result waits for the speculation and returns its stream when it decoded
// exactly segment seg (at offset 0); nil otherwise.
func (s *speculation) result(seg Segment) *chunkedStream {
	if s == nil {
		return nil
	}
	<-s.done
	if s.err != nil || seg.Offset != 0 || seg.Compression != s.f || s.n != seg.Length || s.stream.size != seg.Size {
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
