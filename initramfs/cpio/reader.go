package cpio

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// ErrNoHeader is wrapped by the error Next returns when, at a record
// boundary, the next byte after any NUL padding cannot start a record: it is
// not '0', or it is not 4-byte aligned. The reader stays at that byte
// (Offset), so a caller splitting an initramfs can hand it to a decompressor.
var ErrNoHeader = errors.New("no cpio header")

// ErrChecksum is wrapped by the error for a crc-format regular file whose
// body does not sum to its check field (the kernel's "bad data checksum").
var ErrChecksum = errors.New("bad data checksum")

// FormatError is a malformed archive: what is wrong, at which stream offset,
// in which record (when its name is known).
type FormatError struct {
	Offset int64  // stream offset of the offending byte or field
	Name   string // record name, "" when not yet known
	Msg    string
	Err    error // ErrNoHeader, ErrChecksum, io.ErrUnexpectedEOF or nil
}

func (e *FormatError) Error() string {
	s := fmt.Sprintf("cpio: offset %d: ", e.Offset)
	if e.Name != "" {
		s += fmt.Sprintf("entry %q: ", e.Name)
	}
	return s + e.Msg
}

func (e *FormatError) Unwrap() error { return e.Err }

// Reader reads the records of newc/crc archives in sequence, the way the
// kernel does: NUL bytes between records are skipped, archives may follow
// each other, and trailers are returned as records so the caller sees where
// each archive ends. After Next, Read reads the record's body.
type Reader struct {
	br      *bufio.Reader
	off     int64 // stream offset of the next byte of br
	hdrOff  int64
	name    string
	have    bool
	remain  int64 // unread body bytes
	bodyPad int64
	verify  bool // crc regular file: check the sum at the end of the body
	checked bool
	sum     uint32
	check   uint32
	skipped int64
	err     error // sticky
	scratch []byte
}

// NewReader reads an archive stream from r, whose first byte is offset 0.
func NewReader(r io.Reader) *Reader { return NewReaderOffset(r, 0) }

// NewReaderOffset reads an archive stream from r whose first byte is at
// offset in the enclosing stream (an image): offsets in errors and Offset
// count from there, and headers must be 4-byte aligned in that stream.
func NewReaderOffset(r io.Reader, offset int64) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), off: offset}
}

// Offset is the stream offset of the next byte the reader will consume:
// after Next, the start of the body; after io.EOF or ErrNoHeader, the end of
// the data it accepted (NUL padding included).
func (r *Reader) Offset() int64 { return r.off }

// HeaderOffset is the stream offset of the current record's header.
func (r *Reader) HeaderOffset() int64 { return r.hdrOff }

// Skipped is the number of NUL padding bytes Next skipped before the current
// record (or before the end of the stream). Writer.WritePadding reproduces it.
func (r *Reader) Skipped() int64 { return r.skipped }

func (r *Reader) fail(off int64, msg string, err error) error {
	return &FormatError{Offset: off, Name: r.name, Msg: msg, Err: err}
}

// Next advances to the next record, skipping the rest of the current body.
// It returns io.EOF at the end of the stream (after any NUL padding).
func (r *Reader) Next() (*Record, error) {
	if r.err != nil {
		return nil, r.err
	}
	rec, err := r.next()
	if err != nil {
		r.err = err
		r.have = false
		return nil, err
	}
	return rec, nil
}

func (r *Reader) next() (*Record, error) {
	if r.have {
		if err := r.finish(); err != nil {
			return nil, err
		}
		r.have = false
	}
	r.name = ""
	r.skipped = 0
	for {
		b, err := r.br.Peek(1)
		if len(b) == 0 {
			if err == io.EOF {
				return nil, io.EOF
			}
			return nil, err
		}
		if b[0] != 0 {
			break
		}
		b, _ = r.br.Peek(r.br.Buffered())
		n := zeroPrefix(b)
		r.br.Discard(n)
		r.off += int64(n)
		r.skipped += int64(n)
	}
	r.hdrOff = r.off
	first, _ := r.br.Peek(1)
	if first[0] != '0' {
		return nil, r.fail(r.off, fmt.Sprintf("%s: byte %#02x", ErrNoHeader, first[0]), ErrNoHeader)
	}
	if r.off&3 != 0 {
		return nil, r.fail(r.off, ErrNoHeader.Error()+": record not 4-byte aligned (broken padding)", ErrNoHeader)
	}
	h, err := r.br.Peek(HeaderSize)
	if len(h) < HeaderSize {
		return nil, r.truncated(r.off, "header", err)
	}
	rec := &Record{}
	if err := parseHeader(h, rec); err != nil {
		var fe *FormatError
		if errors.As(err, &fe) {
			fe.Offset += r.off
		}
		return nil, err
	}
	nameSize := int64(hexField(h, 11))
	if nameSize == 0 {
		return nil, r.fail(r.off+94, "name size 0", nil)
	}
	if nameSize > MaxNameSize {
		return nil, r.fail(r.off+94, fmt.Sprintf("name size %d exceeds %d (PATH_MAX)", nameSize, MaxNameSize), nil)
	}
	total := HeaderSize + nameSize
	total += pad4(r.off + total)
	h, err = r.br.Peek(int(total))
	if int64(len(h)) < total {
		return nil, r.truncated(r.off+HeaderSize, "name", err)
	}
	name := h[HeaderSize : HeaderSize+nameSize]
	if name[nameSize-1] != 0 {
		return nil, r.fail(r.off+HeaderSize, fmt.Sprintf("name %q not NUL-terminated", name), nil)
	}
	if i := bytes.IndexByte(name, 0); i < int(nameSize-1) {
		return nil, r.fail(r.off+HeaderSize+int64(i), fmt.Sprintf("name %q contains a NUL byte", name[:nameSize-1]), nil)
	}
	rec.Name = string(name[:nameSize-1])
	r.name = rec.Name
	for i, c := range h[HeaderSize+nameSize:] {
		if c != 0 {
			return nil, r.fail(r.off+HeaderSize+nameSize+int64(i), fmt.Sprintf("name padding byte %#02x is not NUL", c), nil)
		}
	}
	if rec.IsSymlink() && rec.FileSize > MaxSymlinkSize {
		return nil, r.fail(r.off+54, fmt.Sprintf("symlink target of %d bytes exceeds %d (PATH_MAX)", rec.FileSize, MaxSymlinkSize), nil)
	}
	r.br.Discard(int(total))
	r.off += total
	r.have = true
	r.remain = int64(rec.FileSize)
	r.bodyPad = pad4(int64(rec.FileSize))
	r.verify = rec.Format == CRC && rec.IsRegular()
	r.checked = false
	r.sum = 0
	r.check = rec.Check
	return rec, nil
}

func (r *Reader) truncated(off int64, what string, err error) error {
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != io.ErrUnexpectedEOF {
		return err
	}
	return r.fail(off, "truncated "+what, io.ErrUnexpectedEOF)
}

var zeroBlock [4096]byte

// zeroPrefix counts the leading NUL bytes of b (long runs of padding, or a
// bomb of NULs, go at memory speed).
func zeroPrefix(b []byte) int {
	n := 0
	for len(b)-n >= len(zeroBlock) && bytes.Equal(b[n:n+len(zeroBlock)], zeroBlock[:]) {
		n += len(zeroBlock)
	}
	for n < len(b) && b[n] == 0 {
		n++
	}
	return n
}

// parseHeader decodes a 110-byte header into rec (all but Name). Offsets in
// its errors are relative to the header.
func parseHeader(h []byte, rec *Record) error {
	switch Format(h[:6]) {
	case Newc, CRC:
		rec.Format = Format(h[:6])
	case ODC:
		return &FormatError{Msg: "old portable (odc, 070707) cpio: the kernel needs newc (cpio -H newc)"}
	default:
		return &FormatError{Msg: fmt.Sprintf("bad magic %q (want 070701 or 070702)", h[:6])}
	}
	upper, lower := false, false
	for i := 6; i < HeaderSize; i++ {
		switch c := h[i]; {
		case c >= '0' && c <= '9':
		case c >= 'A' && c <= 'F':
			upper = true
		case c >= 'a' && c <= 'f':
			lower = true
		default:
			f := (i - 6) / 8
			return &FormatError{Offset: int64(i), Msg: fmt.Sprintf("field %s: %q is not hex", fieldNames[f], h[6+f*8:14+f*8])}
		}
	}
	rec.HexLower = lower && !upper
	rec.Ino = hexField(h, 0)
	rec.Mode = hexField(h, 1)
	rec.UID = hexField(h, 2)
	rec.GID = hexField(h, 3)
	rec.Nlink = hexField(h, 4)
	rec.Mtime = hexField(h, 5)
	rec.FileSize = hexField(h, 6)
	rec.DevMajor = hexField(h, 7)
	rec.DevMinor = hexField(h, 8)
	rec.RdevMajor = hexField(h, 9)
	rec.RdevMinor = hexField(h, 10)
	rec.Check = hexField(h, 12)
	return nil
}

var fieldNames = [13]string{"c_ino", "c_mode", "c_uid", "c_gid", "c_nlink", "c_mtime",
	"c_filesize", "c_devmajor", "c_devminor", "c_rdevmajor", "c_rdevminor", "c_namesize", "c_check"}

// hexField decodes field i (0 = c_ino) of a header already checked to be hex.
func hexField(h []byte, i int) uint32 {
	var v uint32
	for _, c := range h[6+i*8 : 14+i*8] {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		v = v<<4 | uint32(c)
	}
	return v
}

// Read reads the current record's body; io.EOF at its end. For a crc-format
// regular file the last read fails with ErrChecksum if the sum is wrong.
func (r *Reader) Read(p []byte) (int, error) {
	if !r.have {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	if r.remain == 0 {
		if err := r.verifySum(); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	if int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	n, err := r.br.Read(p)
	if r.verify {
		r.sum = addSum(r.sum, p[:n])
	}
	r.off += int64(n)
	r.remain -= int64(n)
	if r.remain == 0 {
		if err := r.verifySum(); err != nil {
			return n, err
		}
		return n, nil
	}
	if err == io.EOF || (n == 0 && err == nil) {
		err = r.truncated(r.off, "body", nil)
		r.err = err
	}
	return n, err
}

// WriteTo copies the rest of the current body to w.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.have && r.remain > 0 {
		b, err := r.br.Peek(1)
		if len(b) == 0 {
			if err == io.EOF || err == nil {
				err = r.truncated(r.off, "body", nil)
			}
			r.err = err
			return total, err
		}
		b, _ = r.br.Peek(r.br.Buffered())
		if int64(len(b)) > r.remain {
			b = b[:r.remain]
		}
		n, err := w.Write(b)
		if r.verify {
			r.sum = addSum(r.sum, b[:n])
		}
		r.br.Discard(n)
		r.off += int64(n)
		r.remain -= int64(n)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	if r.have {
		return total, r.verifySum()
	}
	return total, nil
}

// ReadBody returns the whole current body (the rest of it after Reads).
func (r *Reader) ReadBody() ([]byte, error) {
	// FileSize is not trusted for the allocation: the data may be short.
	buf := bytes.NewBuffer(make([]byte, 0, min(r.remain, 64<<10)))
	_, err := r.WriteTo(buf)
	return buf.Bytes(), err
}

// ReadLink returns the target of the current record, a symlink.
func (r *Reader) ReadLink() (string, error) {
	b, err := r.ReadBody()
	return string(b), err
}

func (r *Reader) verifySum() error {
	if !r.verify || r.checked {
		return nil
	}
	r.checked = true
	if r.sum != r.check {
		err := r.fail(r.hdrOff+102, fmt.Sprintf("%s: body sums to %08X, header says %08X", ErrChecksum, r.sum, r.check), ErrChecksum)
		r.err = err
		return err
	}
	return nil
}

// finish skips the rest of the body and its padding.
func (r *Reader) finish() error {
	if r.err != nil {
		return r.err
	}
	if r.remain > 0 {
		if r.verify {
			if _, err := r.WriteTo(io.Discard); err != nil {
				return err
			}
		} else {
			n, err := r.br.Discard(int(min(r.remain, 1<<62)))
			r.off += int64(n)
			r.remain -= int64(n)
			if r.remain > 0 {
				return r.truncated(r.off, "body", err)
			}
		}
	}
	if err := r.verifySum(); err != nil {
		return err
	}
	if r.bodyPad > 0 {
		b, err := r.br.Peek(int(r.bodyPad))
		if int64(len(b)) < r.bodyPad {
			return r.truncated(r.off, "body padding", err)
		}
		for i, c := range b {
			if c != 0 {
				return r.fail(r.off+int64(i), fmt.Sprintf("body padding byte %#02x is not NUL", c), nil)
			}
		}
		r.br.Discard(int(r.bodyPad))
		r.off += r.bodyPad
		r.bodyPad = 0
	}
	return nil
}
