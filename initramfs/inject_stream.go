package initramfs

import (
	"errors"
	"io"
	"syscall"
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
	// Huge pages: a 130 MB stream written into 4 KiB pages spends more
	// time in page faults than in copying. Advice only: errors ignored.
	_ = syscall.Madvise(b, syscall.MADV_HUGEPAGE)
	return &anonBuffer{b}, nil
}

// free releases the buffer; slices of it must no longer be used.
func (a *anonBuffer) free() {
	if a != nil && a.b != nil {
		syscall.Munmap(a.b)
		a.b = nil
	}
}

// streamKeeper keeps the decompressed streams of an image's compressed
// segments as Open decodes them to index the records (keepStreams), so that
// Inject's model takes its bodies from them instead of decoding every
// segment a second time.
type streamKeeper struct {
	bufs     []*anonBuffer
	releases []func() // of mapped streams
	streams  map[int][]byte
}

// keepStreams makes Open keep each compressed segment's stream in k; the
// streams live until k.free.
func keepStreams(k *streamKeeper) Option {
	return func(o *options) error {
		o.keep = k
		return nil
	}
}

// start returns the writer that keeps segment seg's stream, of at most max
// bytes (address space reserved, memory used as written); nil when it
// cannot be reserved (the segment is then decoded again when needed).
func (k *streamKeeper) start(max int64) *keptStream {
	buf, err := newAnonBuffer(max)
	if err != nil {
		return nil
	}
	k.bufs = append(k.bufs, buf)
	return &keptStream{b: buf.b}
}

// finish records the stream of segment seg when w kept all of its size
// bytes.
func (k *streamKeeper) finish(seg int, w *keptStream, size int64) {
	if w == nil || w.over || w.n != size {
		return
	}
	if k.streams == nil {
		k.streams = map[int][]byte{}
	}
	k.streams[seg] = w.b[:w.n:w.n]
}

// finishMapped records segment seg's stream decoded into memory.
func (k *streamKeeper) finishMapped(seg int, data []byte) {
	if k.streams == nil {
		k.streams = map[int][]byte{}
	}
	k.streams[seg] = data[:len(data):len(data)]
}

// stream is segment seg's kept stream, or nil.
func (k *streamKeeper) stream(seg int) []byte {
	if k == nil {
		return nil
	}
	return k.streams[seg]
}

// free releases the buffers: the streams must no longer be used.
func (k *streamKeeper) free() {
	if k == nil {
		return
	}
	for _, b := range k.bufs {
		b.free()
	}
	for _, r := range k.releases {
		r()
	}
	k.bufs, k.releases, k.streams = nil, nil, nil
}

// keptStream copies a stream into its buffer, dropping it (over) when it
// does not fit.
type keptStream struct {
	b    []byte
	n    int64
	over bool
}

func (w *keptStream) Write(p []byte) (int, error) {
	if w.over || int64(len(p)) > int64(len(w.b))-w.n {
		w.over = true
		return len(p), nil
	}
	w.n += int64(copy(w.b[w.n:], p))
	return len(p), nil
}
