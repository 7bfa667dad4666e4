package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// kernelMagic names the compression of a unit by its first two bytes, as the
// kernel's decompress_method (lib/decompress.c) does.
func kernelMagic(b []byte) compress.Format {
	if len(b) < 2 {
		return compress.None
	}
	switch [2]byte{b[0], b[1]} {
	case [2]byte{0x1f, 0x8b}, [2]byte{0x1f, 0x9e}:
		return compress.Gzip
	case [2]byte{'B', 'Z'}:
		return compress.Bzip2
	case [2]byte{0x5d, 0x00}:
		return compress.Lzma
	case [2]byte{0xfd, '7'}:
		return compress.XZ
	case [2]byte{0x89, 'L'}:
		return compress.LZO
	case [2]byte{0x02, 0x21}:
		return compress.LZ4
	case [2]byte{0x28, 0xb5}:
		return compress.Zstd
	}
	return compress.None
}

// scanner indexes an image in one pass.
type scanner struct {
	im    *Image
	total int64         // decompressed bytes so far
	keep  *streamKeeper // nil: streams are not kept
}

func parse(data []byte, o options) (*Image, error) {
	im := &Image{Name: o.name, Size: int64(len(data)), data: data, limits: o.limits}
	s := &scanner{im: im, keep: o.keep}
	off := int64(0)
	n := int64(len(data))
	for off < n {
		if data[off] == 0 {
			start := off
			for off < n && data[off] == 0 {
				off++
			}
			if k := len(im.Segments); k > 0 {
				im.Segments[k-1].Padding += off - start
			} else {
				im.LeadingPadding += off - start
			}
			continue
		}
		var end int64
		var err error
		if data[off] == '0' && off&3 == 0 {
			end, err = s.scanCpio(off)
		} else {
			end, err = s.scanUnit(off)
		}
		if err != nil {
			return nil, err
		}
		off = end
	}
	if len(im.Segments) == 0 {
		return nil, &Error{Image: im.Name, Segment: -1, Offset: 0, Err: errNoSegments}
	}
	return im, nil
}

// addEntry indexes a record of segment seg, enforcing the limits.
func (s *scanner) addEntry(seg int, off int64, rec *cpio.Record, cr *cpio.Reader) error {
	im := s.im
	if rec.IsTrailer() {
		im.Segments[seg].Trailers++
		return nil
	}
	if int64(rec.FileSize) > im.limits.MaxEntry {
		return im.segErr(seg, rec.Name, fmt.Errorf("%w: body of %d bytes exceeds the %d-byte entry limit", ErrTooLarge, rec.FileSize, im.limits.MaxEntry))
	}
	if len(im.Entries) >= im.limits.MaxEntries {
		return im.segErr(seg, rec.Name, fmt.Errorf("%w: more than %d records", ErrTooLarge, im.limits.MaxEntries))
	}
	e := Entry{Record: *rec, Segment: seg, Offset: off}
	if rec.IsSymlink() {
		t, err := cr.ReadLink()
		if err != nil {
			return im.segErr(seg, rec.Name, err)
		}
		e.Target = t
	}
	im.Segments[seg].Entries++
	im.Entries = append(im.Entries, e)
	return nil
}

// scanCpio reads the uncompressed archive at off up to its trailer, or up to
// the last record before data that is not a header, and returns its end.
func (s *scanner) scanCpio(off int64) (int64, error) {
	im := s.im
	seg := len(im.Segments)
	im.Segments = append(im.Segments, Segment{Offset: off})
	left := im.limits.MaxTotal - s.total
	lr := &limitedReader{r: bytes.NewReader(im.data[off:]), left: left, max: im.limits.MaxTotal}
	cr := cpio.NewReaderOffset(lr, off)
	end := off
	for {
		rec, err := cr.Next()
		if err == io.EOF || errors.Is(err, cpio.ErrNoHeader) {
			break
		}
		if err != nil {
			return 0, im.segErr(seg, "", err)
		}
		hdr := cr.HeaderOffset()
		if err := s.addEntry(seg, hdr, rec, cr); err != nil {
			return 0, err
		}
		end = hdr + recordLen(hdr, rec)
		if rec.IsTrailer() {
			if _, err := io.Copy(io.Discard, cr); err != nil {
				return 0, im.segErr(seg, rec.Name, err)
			}
			if end > int64(len(im.data)) {
				return 0, im.segErr(seg, rec.Name, fmt.Errorf("truncated trailer padding: %w", io.ErrUnexpectedEOF))
			}
			break
		}
	}
	sg := &im.Segments[seg]
	sg.Length = end - off
	sg.Size = sg.Length
	s.total += sg.Size
	return end, nil
}

// recordLen is the size of a record whose header is at hdr: header, name and
// body, each padded to 4 bytes.
func recordLen(hdr int64, rec *cpio.Record) int64 {
	n := hdr + cpio.HeaderSize + int64(len(rec.Name)) + 1
	n += (4 - n&3) & 3
	b := int64(rec.FileSize)
	return n - hdr + b + (4-b&3)&3
}

// scanUnit decodes the compressed unit at off and returns its end.
func (s *scanner) scanUnit(off int64) (int64, error) {
	im := s.im
	b := im.data[off:]
	f := kernelMagic(b)
	if f == compress.None {
		msg := fmt.Sprintf("invalid magic %x at start of compressed archive", b[:min(len(b), 4)])
		if b[0] == '0' {
			msg = "cpio archive not 4-byte aligned (the kernel takes it for compressed data): " + msg
		}
		return 0, &Error{Image: im.Name, Segment: -1, Offset: off, Err: errors.New(msg)}
	}
	seg := len(im.Segments)
	im.Segments = append(im.Segments, Segment{Offset: off, Compression: f})
	left := im.limits.MaxTotal - s.total
	var u unitDecoder
	var mapped *mappedUnit
	if s.keep != nil {
		// Kept whole: decoded into memory by the host's tool where it can.
		if mapped = hostDecodeToMemory(b, f, left); mapped != nil {
			s.keep.releases = append(s.keep.releases, mapped.release)
			u = mapped
		}
	}
	if u == nil {
		var err error
		if u, err = newUnitDecoder(b, f); err != nil {
			return 0, im.segErr(seg, "", err)
		}
	}
	defer u.Close()
	var src io.Reader = u
	var kept *keptStream
	if s.keep != nil && mapped == nil {
		// Room for a 64-fold expansion of what is left of the image:
		// initramfs content compresses 3-5 fold; a stream beyond that is
		// decoded again by Inject rather than kept.
		if kept = s.keep.start(min(left+1, 64*int64(len(b))+1<<20)); kept != nil {
			src = io.TeeReader(u, kept)
		}
	}
	lr := &limitedReader{r: src, left: left, max: im.limits.MaxTotal}
	cr := cpio.NewReader(lr)
	for {
		rec, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, cpio.ErrNoHeader) {
				err = fmt.Errorf("junk in compressed archive: %w", err)
			}
			return 0, im.segErr(seg, "", err)
		}
		if err := s.addEntry(seg, cr.HeaderOffset(), rec, cr); err != nil {
			return 0, err
		}
	}
	sg := &im.Segments[seg]
	sg.Length = u.Len()
	sg.Size = lr.n
	s.total += lr.n
	if mapped != nil {
		s.keep.finishMapped(seg, mapped.data)
	} else if s.keep != nil {
		s.keep.finish(seg, kept, lr.n)
	}
	if sg.Length <= 0 || sg.Length > int64(len(b)) {
		return 0, im.segErr(seg, "", fmt.Errorf("%s: cannot tell where the compressed data ends", f))
	}
	return off + sg.Length, nil
}
