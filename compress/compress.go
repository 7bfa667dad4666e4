// Package compress detects and undoes the compressions that kernel modules and
// initramfs segments use, and redoes them the way the kernel accepts them
// (xz with a CRC32 check, lz4 legacy frames).
//
// Detect names a format from its magic; NewReader streams and Decompress
// reads whole with a size limit; Compress writes gzip, xz, zstd, lzma and lz4
// (bzip2 is read only, lzo only detected). An initramfs is a concatenation of
// such streams: NewUnitReader and the *Len functions find where each one ends
// without decompressing more than needed.
package compress

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Format names a compression.
type Format string

const (
	None Format = ""
	Gzip Format = "gzip"
	XZ   Format = "xz"
	Zstd Format = "zstd"
	// Formats only initramfs images use (more.go).
	Lzma  Format = "lzma"  // LZMA "alone" (.lzma, lzma(1))
	LZ4   Format = "lz4"   // LZ4 legacy frames (lz4 -l), the kernel's lz4
	Bzip2 Format = "bzip2" // bzip2; decompression only
	LZO   Format = "lzo"   // lzop; detected, not supported
)

// Extension is the file-name suffix modules carry for f (".xz", ...).
func (f Format) Extension() string {
	switch f {
	case Gzip:
		return ".gz"
	case XZ:
		return ".xz"
	case Zstd:
		return ".zst"
	}
	return moreExtension(f)
}

var (
	magicGzip = []byte{0x1f, 0x8b, 0x08}
	magicXZ   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Detect names the compression of b by its magic bytes; None when unknown.
func Detect(b []byte) Format {
	switch {
	case bytes.HasPrefix(b, magicGzip):
		return Gzip
	case bytes.HasPrefix(b, magicXZ):
		return XZ
	case bytes.HasPrefix(b, magicZstd):
		return Zstd
	}
	return detectMore(b)
}

// ErrTooLarge is returned when decompressed data exceeds the caller's limit.
var ErrTooLarge = errors.New("decompressed data exceeds the size limit")

// NewReader returns a reader of the decompressed stream r in format f.
func NewReader(r io.Reader, f Format) (io.ReadCloser, error) {
	switch f {
	case None:
		return io.NopCloser(r), nil
	case Gzip:
		return gzip.NewReader(r)
	case XZ:
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(xr), nil
	case Zstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return newMoreReader(r, f)
}

// Decompress returns the decompressed form of b (b itself when f is None),
// refusing to produce more than limit bytes (0: no limit) so a bomb fails
// early instead of exhausting memory.
func Decompress(b []byte, f Format, limit int64) ([]byte, error) {
	if f == None {
		return b, nil
	}
	r, err := NewReader(bytes.NewReader(b), f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	defer r.Close()
	var src io.Reader = r
	if limit > 0 {
		src = io.LimitReader(r, limit+1)
	}
	var out bytes.Buffer
	out.Grow(len(b) * 3)
	if _, err := out.ReadFrom(src); err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	if limit > 0 && int64(out.Len()) > limit {
		return nil, fmt.Errorf("%s: %w (%d bytes)", f, ErrTooLarge, limit)
	}
	return out.Bytes(), nil
}

// Compress compresses b in format f with the settings the kernel's module
// loader needs: xz with a CRC32 check (XZ Embedded has no CRC64) and a 1 MiB
// dictionary, as DKMS and Kbuild use.
func Compress(b []byte, f Format) ([]byte, error) {
	var out bytes.Buffer
	var w io.WriteCloser
	var err error
	switch f {
	case None:
		return b, nil
	case Gzip:
		w, err = gzip.NewWriterLevel(&out, gzip.BestCompression)
	case XZ:
		cfg := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}
		w, err = cfg.NewWriter(&out)
	case Zstd:
		w, err = zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	default:
		return compressMore(b, f)
	}
	if err != nil {
		return nil, err
	}
	return writeAll(w, &out, b)
}

// writeAll writes b through the compressor w into out and closes w.
func writeAll(w io.WriteCloser, out *bytes.Buffer, b []byte) ([]byte, error) {
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
