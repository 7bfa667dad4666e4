package compress

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz/lzma"
)

// The formats the kernel's initramfs unpacker knows besides gzip, xz and zstd
// (lib/decompress.c).
var (
	magicLzma  = []byte{0x5d, 0x00, 0x00}
	magicLZ4   = []byte{0x02, 0x21, 0x4c, 0x18}
	magicBzip2 = []byte("BZh")
	magicLZO   = []byte{0x89, 'L', 'Z', 'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a}
)

// ErrLZO is returned for lzo (lzop) data: no maintained pure-Go lzo
// decompressor exists.
var ErrLZO = errors.New("lzo is not supported (no maintained pure-Go lzo decompressor): recompress the image, e.g. with zstd")

// ErrNoBzip2Writer is returned when asked to bzip2-compress: Go's standard
// library only decompresses bzip2.
var ErrNoBzip2Writer = errors.New("bzip2 compression is not supported (Go has a bzip2 decompressor only)")

const (
	lz4LegacyMagic = 0x184c2102
	// lz4LegacyChunk is the uncompressed size of each legacy chunk: lz4 -l
	// writes 8 MiB chunks and the kernel decompresses into an 8 MiB buffer.
	lz4LegacyChunk = 8 << 20
)

func moreExtension(f Format) string {
	switch f {
	case Lzma:
		return ".lzma"
	case LZ4:
		return ".lz4"
	case Bzip2:
		return ".bz2"
	case LZO:
		return ".lzo"
	}
	return ""
}

func detectMore(b []byte) Format {
	switch {
	case bytes.HasPrefix(b, magicLZ4):
		return LZ4
	case bytes.HasPrefix(b, magicBzip2):
		return Bzip2
	case bytes.HasPrefix(b, magicLZO):
		return LZO
	case bytes.HasPrefix(b, magicLzma):
		return Lzma
	}
	return None
}

func newMoreReader(r io.Reader, f Format) (io.ReadCloser, error) {
	switch f {
	case Lzma:
		lr, err := lzma.NewReader(r)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(lr), nil
	case LZ4:
		return io.NopCloser(newLZ4LegacyReader(r)), nil
	case Bzip2:
		return io.NopCloser(bzip2.NewReader(r)), nil
	case LZO:
		return nil, ErrLZO
	}
	return nil, fmt.Errorf("unsupported compression %q", f)
}

func compressMore(b []byte, f Format) ([]byte, error) {
	var out bytes.Buffer
	switch f {
	case Lzma:
		// lzma(1)'s layout: unknown size in the header, end marker.
		w, err := lzma.NewWriter(&out)
		if err != nil {
			return nil, err
		}
		return writeAll(w, &out, b)
	case LZ4:
		return compressLZ4Legacy(b)
	case Bzip2:
		return nil, ErrNoBzip2Writer
	case LZO:
		return nil, ErrLZO
	}
	return nil, fmt.Errorf("unsupported compression %q", f)
}

// compressLZ4Legacy writes the legacy frame format of lz4 -l: the magic, then
// for each 8 MiB of input a little-endian compressed size and an LZ4 block.
func compressLZ4Legacy(b []byte) ([]byte, error) {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	c := lz4.CompressorHC{Level: lz4.Level9}
	dst := make([]byte, lz4.CompressBlockBound(lz4LegacyChunk))
	for len(b) > 0 {
		chunk := b[:min(len(b), lz4LegacyChunk)]
		b = b[len(chunk):]
		n, err := c.CompressBlock(chunk, dst)
		if err != nil {
			return nil, fmt.Errorf("lz4: %w", err)
		}
		block := dst[:n]
		if n == 0 {
			// Incompressible: the legacy format has no stored blocks,
			// so encode one run of literals.
			block = literalBlock(dst[:0], chunk)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(len(block)))
		out = append(out, block...)
	}
	return out, nil
}

// literalBlock appends an LZ4 block holding lit as a single literal run.
func literalBlock(dst, lit []byte) []byte {
	n := len(lit)
	if n < 15 {
		dst = append(dst, byte(n<<4))
	} else {
		dst = append(dst, 0xf0)
		for n -= 15; n >= 255; n -= 255 {
			dst = append(dst, 255)
		}
		dst = append(dst, byte(n))
	}
	return append(dst, lit...)
}

// lz4LegacyReader decodes legacy frames from a stream, reading exactly the
// bytes it decodes: it stops at the end of the input or at a zero chunk size
// (the padding the kernel needs after an lz4 unit that is not the last).
type lz4LegacyReader struct {
	r       io.Reader
	started bool
	in, out []byte
	pending []byte
	err     error
}

func newLZ4LegacyReader(r io.Reader) *lz4LegacyReader { return &lz4LegacyReader{r: r} }

func (l *lz4LegacyReader) Read(p []byte) (int, error) {
	for len(l.pending) == 0 {
		if l.err != nil {
			return 0, l.err
		}
		l.err = l.chunk()
	}
	n := copy(p, l.pending)
	l.pending = l.pending[n:]
	return n, nil
}

func (l *lz4LegacyReader) chunk() error {
	var hdr [4]byte
	if !l.started {
		if _, err := io.ReadFull(l.r, hdr[:]); err != nil {
			return unexpected(err)
		}
		if binary.LittleEndian.Uint32(hdr[:]) != lz4LegacyMagic {
			return errors.New("lz4: not a legacy frame (lz4 -l)")
		}
		l.started = true
	}
	for {
		n, err := io.ReadFull(l.r, hdr[:])
		if n == 0 && err == io.EOF {
			return io.EOF
		}
		if err != nil {
			return unexpected(err)
		}
		size := binary.LittleEndian.Uint32(hdr[:])
		switch {
		case size == lz4LegacyMagic:
			continue
		case size == 0:
			return io.EOF
		case int64(size) > int64(lz4.CompressBlockBound(lz4LegacyChunk)):
			return fmt.Errorf("lz4: chunk of %d bytes exceeds the legacy format's bound", size)
		}
		if cap(l.in) < int(size) {
			l.in = make([]byte, size)
		}
		in := l.in[:size]
		if _, err := io.ReadFull(l.r, in); err != nil {
			return unexpected(err)
		}
		if l.out == nil {
			l.out = make([]byte, lz4LegacyChunk)
		}
		m, err := lz4.UncompressBlock(in, l.out)
		if err != nil {
			return fmt.Errorf("lz4: %w", err)
		}
		l.pending = l.out[:m]
		return nil
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
