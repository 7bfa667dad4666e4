package compress

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// UnitReader decompresses the one compressed unit at the start of a byte
// slice and tells how many bytes of it the unit spans, as the kernel's
// decompressors consume an initramfs (lib/decompress_*.c): one gzip member,
// one zstd frame, one xz stream, one lzma stream, the lz4 legacy chunks up to
// a zero size or the end, bzip2 streams. Whatever follows (NUL padding, the
// next unit) is left alone.
//
// For zstd, xz and lz4 the unit's extent is found from its framing before
// decoding (Len is valid at once); for gzip, lzma and bzip2 the decoder reads
// its input byte by byte with no read-ahead and Len is valid after io.EOF.
type UnitReader struct {
	f      Format
	src    []byte
	br     *bytes.Reader
	r      io.Reader
	n      int64
	zd     *zstd.Decoder
	eof    bool
	closed bool
}

// NewUnitReader starts decoding the unit of format f at the start of b.
func NewUnitReader(b []byte, f Format) (*UnitReader, error) {
	u := &UnitReader{f: f, src: b, n: -1}
	var err error
	switch f {
	case Gzip:
		u.br = bytes.NewReader(b)
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(u.br); err == nil {
			zr.Multistream(false)
			u.r = zr
		}
	case Zstd:
		if u.n, err = ZstdFrameLen(b); err == nil {
			u.zd, err = zstd.NewReader(bytes.NewReader(b[:u.n]),
				zstd.WithDecoderConcurrency(4), zstd.WithDecoderMaxWindow(1<<27))
			u.r = u.zd
		}
	case XZ:
		if u.n, err = XZStreamLen(b); err == nil {
			u.r, err = xz.ReaderConfig{SingleStream: true}.NewReader(bytes.NewReader(b[:u.n]))
		}
	case Lzma:
		u.br = bytes.NewReader(b)
		u.r, err = lzma.NewReader(u.br)
	case LZ4:
		if u.n, err = LZ4LegacyLen(b); err == nil {
			u.r = newLZ4LegacyReader(bytes.NewReader(b[:u.n]))
		}
	case Bzip2:
		u.br = bytes.NewReader(b)
		u.r = bzip2.NewReader(u.br)
	case LZO:
		err = ErrLZO
	default:
		err = fmt.Errorf("unsupported compression %q", f)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, unexpected(err))
	}
	return u, nil
}

// Read reads decompressed bytes.
func (u *UnitReader) Read(p []byte) (int, error) {
	if u.eof {
		return 0, io.EOF
	}
	n, err := u.r.Read(p)
	if err == nil {
		return n, nil
	}
	if err == io.EOF {
		u.eof = true
		if u.n < 0 {
			u.n = int64(len(u.src) - u.br.Len())
		}
		return n, io.EOF
	}
	if u.f == Bzip2 && u.endOfBzip2(err) {
		return n, io.EOF
	}
	return n, fmt.Errorf("%s: %w", u.f, unexpected(err))
}

// endOfBzip2 recognises the end of the last bzip2 stream when more data
// follows: after a complete stream (its CRC checked), compress/bzip2 reads
// two bytes looking for another "BZ" and fails on anything else.
func (u *UnitReader) endOfBzip2(err error) bool {
	var se bzip2.StructuralError
	if !errors.As(err, &se) || string(se) != "bad magic value in continuation file" {
		return false
	}
	u.eof = true
	u.n = int64(len(u.src)-u.br.Len()) - 2
	return true
}

// Len is the number of bytes of the unit: known at once for zstd, xz and lz4,
// after Read returned io.EOF for the others (-1 before).
func (u *UnitReader) Len() int64 { return u.n }

// Close releases the decoder.
func (u *UnitReader) Close() error {
	if !u.closed && u.zd != nil {
		u.zd.Close()
	}
	u.closed = true
	return nil
}

var errTruncated = io.ErrUnexpectedEOF

// ZstdFrameLen returns the length of the zstd frame at the start of b, found
// from its header and block headers (RFC 8878) without decoding.
func ZstdFrameLen(b []byte) (int64, error) {
	if len(b) < 6 {
		return 0, errTruncated
	}
	if !bytes.HasPrefix(b, magicZstd) {
		return 0, errors.New("not a zstd frame")
	}
	fhd := b[4]
	if fhd&0x08 != 0 {
		return 0, errors.New("zstd frame header has the reserved bit set")
	}
	single := fhd&0x20 != 0
	p := 5
	if !single {
		p++
	}
	p += [4]int{0, 1, 2, 4}[fhd&3]
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcs = 1
	}
	p += fcs
	for {
		if p+3 > len(b) {
			return 0, errTruncated
		}
		h := uint32(b[p]) | uint32(b[p+1])<<8 | uint32(b[p+2])<<16
		p += 3
		size := int(h >> 3)
		if size > 128<<10 {
			return 0, fmt.Errorf("zstd block of %d bytes exceeds 128 KiB", size)
		}
		switch h >> 1 & 3 {
		case 0, 2:
			p += size
		case 1:
			p++
		default:
			return 0, errors.New("zstd block of the reserved type 3")
		}
		if p > len(b) {
			return 0, errTruncated
		}
		if h&1 != 0 {
			break
		}
	}
	if fhd&0x04 != 0 {
		p += 4
	}
	if p > len(b) {
		return 0, errTruncated
	}
	return int64(p), nil
}

// XZStreamLen returns the length of the xz stream at the start of b (stream
// padding excluded), walking its block headers, LZMA2 chunk headers, index
// and footer without decoding.
func XZStreamLen(b []byte) (int64, error) {
	if len(b) < 12 {
		return 0, errTruncated
	}
	if !bytes.HasPrefix(b, magicXZ) {
		return 0, errors.New("not an xz stream")
	}
	if b[6] != 0 || b[7]&0xf0 != 0 {
		return 0, fmt.Errorf("xz stream flags %02x %02x unsupported", b[6], b[7])
	}
	if crc32.ChecksumIEEE(b[6:8]) != binary.LittleEndian.Uint32(b[8:12]) {
		return 0, errors.New("xz stream header CRC32 mismatch")
	}
	checkSize := [16]int{0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64}[b[7]&0x0f]
	p := 12
	for {
		if p >= len(b) {
			return 0, errTruncated
		}
		if b[p] == 0 {
			break // index indicator
		}
		hsize := (int(b[p]) + 1) * 4
		if p+hsize > len(b) {
			return 0, errTruncated
		}
		hdr := b[p : p+hsize]
		if crc32.ChecksumIEEE(hdr[:hsize-4]) != binary.LittleEndian.Uint32(hdr[hsize-4:]) {
			return 0, fmt.Errorf("xz block header at %d: CRC32 mismatch", p)
		}
		flags := hdr[1]
		if flags&0x3c != 0 {
			return 0, fmt.Errorf("xz block header at %d: reserved flags %02x", p, flags)
		}
		q, csize := 2, int64(-1)
		var err error
		if flags&0x40 != 0 {
			if csize, q, err = uvarint(hdr[:hsize-4], q); err != nil {
				return 0, err
			}
		}
		end := p + hsize
		if csize >= 0 {
			if csize > int64(len(b)) {
				return 0, errTruncated
			}
			end += int(csize)
		} else if end, err = lzma2Len(b, end); err != nil {
			return 0, err
		}
		end += int(pad4(int64(end - p)))
		end += checkSize
		if end > len(b) {
			return 0, errTruncated
		}
		p = end
	}
	// Index: indicator, record count, (unpadded, uncompressed) sizes, padding, CRC32.
	q := p + 1
	n, q, err := uvarint(b, q)
	if err != nil {
		return 0, err
	}
	if n > int64(len(b)) {
		return 0, errors.New("xz index: too many records")
	}
	for i := int64(0); i < 2*n; i++ {
		if _, q, err = uvarint(b, q); err != nil {
			return 0, err
		}
	}
	q += int(pad4(int64(q - p)))
	if q+4+12 > len(b) {
		return 0, errTruncated
	}
	if crc32.ChecksumIEEE(b[p:q]) != binary.LittleEndian.Uint32(b[q:q+4]) {
		return 0, errors.New("xz index CRC32 mismatch")
	}
	q += 4
	f := b[q : q+12]
	if !bytes.Equal(f[10:12], []byte("YZ")) || !bytes.Equal(f[8:10], b[6:8]) ||
		crc32.ChecksumIEEE(f[4:10]) != binary.LittleEndian.Uint32(f[0:4]) {
		return 0, errors.New("xz stream footer mismatch")
	}
	if back := (int64(binary.LittleEndian.Uint32(f[4:8])) + 1) * 4; back != int64(q-p) {
		return 0, fmt.Errorf("xz footer backward size %d, index is %d bytes", back, q-p)
	}
	return int64(q + 12), nil
}

func pad4(n int64) int64 { return (4 - n&3) & 3 }

// uvarint decodes an xz multibyte integer at b[p:].
func uvarint(b []byte, p int) (int64, int, error) {
	var v uint64
	for i := 0; i < 9; i++ {
		if p >= len(b) {
			return 0, p, errTruncated
		}
		c := b[p]
		p++
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if v > 1<<62 {
				return 0, p, errors.New("xz integer too large")
			}
			return int64(v), p, nil
		}
	}
	return 0, p, errors.New("xz integer too long")
}

// lzma2Len returns the offset just past the LZMA2 data starting at b[p]: the
// chunk headers carry their sizes, the control byte 0 ends the data.
func lzma2Len(b []byte, p int) (int, error) {
	for {
		if p >= len(b) {
			return 0, errTruncated
		}
		c := b[p]
		switch {
		case c == 0:
			return p + 1, nil
		case c == 1 || c == 2:
			if p+3 > len(b) {
				return 0, errTruncated
			}
			p += 3 + (int(b[p+1])<<8 | int(b[p+2])) + 1
		case c >= 0x80:
			if p+5 > len(b) {
				return 0, errTruncated
			}
			hl := 5
			if c >= 0xc0 {
				hl = 6 // new properties byte
			}
			p += hl + (int(b[p+3])<<8 | int(b[p+4])) + 1
		default:
			return 0, fmt.Errorf("invalid LZMA2 control byte %#02x", c)
		}
		if p > len(b) {
			return 0, errTruncated
		}
	}
}

// LZ4LegacyLen returns the length of the lz4 legacy frame at the start of b:
// its chunks up to the end of b or a zero chunk size (not included), as the
// kernel's unlz4 reads them.
func LZ4LegacyLen(b []byte) (int64, error) {
	if len(b) < 4 || binary.LittleEndian.Uint32(b) != lz4LegacyMagic {
		return 0, errors.New("not an lz4 legacy frame")
	}
	bound := int64(lz4.CompressBlockBound(lz4LegacyChunk))
	p := int64(4)
	for {
		if p+4 > int64(len(b)) {
			for _, c := range b[p:] {
				if c != 0 {
					return 0, errTruncated
				}
			}
			return p, nil
		}
		size := int64(binary.LittleEndian.Uint32(b[p:]))
		switch {
		case size == lz4LegacyMagic:
			p += 4
			continue
		case size == 0:
			return p, nil
		case size > bound:
			return 0, fmt.Errorf("lz4 chunk of %d bytes at %d exceeds the legacy format's bound", size, p)
		}
		p += 4 + size
		if p > int64(len(b)) {
			return 0, errTruncated
		}
	}
}
