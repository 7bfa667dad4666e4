package cpio

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrWriteTooLong is returned when more body bytes are written than the
// record's FileSize.
var ErrWriteTooLong = errors.New("cpio: write beyond the record's FileSize")

// Writer writes newc/crc records byte-exactly: the header with the fields as
// given, the name padded to 4 bytes, the body padded to 4 bytes. It never
// adds a trailer on its own (WriteTrailer does), so reading records and
// writing them back, padding included (Reader.Skipped, WritePadding),
// reproduces an archive.
type Writer struct {
	w       io.Writer
	off     int64
	have    bool
	name    string
	remain  int64
	bodyPad int64
	verify  bool
	sum     uint32
	check   uint32
	format  Format
	buf     []byte
	err     error
}

// NewWriter writes records to w, whose first byte must be 4-byte aligned in
// the final image.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, HeaderSize+64)}
}

// Offset is the number of bytes written so far (pending body padding not
// included).
func (w *Writer) Offset() int64 { return w.off }

func (w *Writer) write(b []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(b)
	w.off += int64(n)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
	}
	return err
}

var zeros [512]byte

func (w *Writer) writeZeros(n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if err := w.write(zeros[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// finish ends the current record: its body must be complete; the body
// padding is written.
func (w *Writer) finish() error {
	if w.err != nil {
		return w.err
	}
	if !w.have {
		return nil
	}
	if w.remain > 0 {
		return fmt.Errorf("cpio: entry %q: body short by %d bytes", w.name, w.remain)
	}
	if w.verify && w.sum != w.check {
		return fmt.Errorf("cpio: entry %q: %w: body sums to %08X, header says %08X", w.name, ErrChecksum, w.sum, w.check)
	}
	w.have = false
	return w.writeZeros(w.bodyPad)
}

// WriteHeader finishes the previous record and writes rec's header and name.
// The body (FileSize bytes) follows with Write. A crc-format regular file's
// Check must be the sum of its body (Checksum); the writer verifies it.
func (w *Writer) WriteHeader(rec *Record) error {
	if err := w.finish(); err != nil {
		return err
	}
	if w.off&3 != 0 {
		return fmt.Errorf("cpio: entry %q: header at offset %d is not 4-byte aligned", rec.Name, w.off)
	}
	f := rec.Format
	switch f {
	case "":
		f = Newc
	case Newc, CRC:
	default:
		return fmt.Errorf("cpio: entry %q: unsupported format %q (want newc 070701 or crc 070702)", rec.Name, f)
	}
	if strings.IndexByte(rec.Name, 0) >= 0 {
		return fmt.Errorf("cpio: entry %q: name contains a NUL byte", rec.Name)
	}
	nameSize := len(rec.Name) + 1
	if nameSize > MaxNameSize {
		return fmt.Errorf("cpio: entry %q: name of %d bytes exceeds %d (PATH_MAX)", rec.Name, nameSize, MaxNameSize)
	}
	if rec.IsSymlink() && rec.FileSize > MaxSymlinkSize {
		return fmt.Errorf("cpio: entry %q: symlink target of %d bytes exceeds %d (PATH_MAX)", rec.Name, rec.FileSize, MaxSymlinkSize)
	}
	digits := upperHex
	if rec.HexLower {
		digits = lowerHex
	}
	b := append(w.buf[:0], f...)
	for _, v := range [13]uint32{rec.Ino, rec.Mode, rec.UID, rec.GID, rec.Nlink, rec.Mtime, rec.FileSize,
		rec.DevMajor, rec.DevMinor, rec.RdevMajor, rec.RdevMinor, uint32(nameSize), rec.Check} {
		for s := 28; s >= 0; s -= 4 {
			b = append(b, digits[v>>uint(s)&0xf])
		}
	}
	b = append(b, rec.Name...)
	b = append(b, 0)
	b = append(b, zeros[:pad4(int64(len(b)))]...)
	w.buf = b
	if err := w.write(b); err != nil {
		return err
	}
	w.have = true
	w.name = rec.Name
	w.remain = int64(rec.FileSize)
	w.bodyPad = pad4(int64(rec.FileSize))
	w.verify = f == CRC && rec.IsRegular()
	w.sum = 0
	w.check = rec.Check
	w.format = f
	return nil
}

const (
	upperHex = "0123456789ABCDEF"
	lowerHex = "0123456789abcdef"
)

// Write writes body bytes of the current record.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.have {
		return 0, ErrWriteTooLong
	}
	var tooLong bool
	if int64(len(p)) > w.remain {
		p, tooLong = p[:w.remain], true
	}
	if err := w.write(p); err != nil {
		return 0, err
	}
	if w.verify {
		w.sum = addSum(w.sum, p)
	}
	w.remain -= int64(len(p))
	if tooLong {
		return len(p), ErrWriteTooLong
	}
	return len(p), nil
}

// ReadFrom copies the body from r (exactly the remaining FileSize bytes).
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if !w.have {
		return 0, ErrWriteTooLong
	}
	want := w.remain
	n, err := io.Copy(writerOnly{w}, io.LimitReader(r, want))
	if err == nil && n < want {
		err = fmt.Errorf("cpio: entry %q: body short by %d bytes: %w", w.name, want-n, io.ErrUnexpectedEOF)
	}
	return n, err
}

type writerOnly struct{ io.Writer }

// WritePadding ends the current record and writes n NUL bytes, the padding
// the kernel skips between records and archives.
func (w *Writer) WritePadding(n int64) error {
	if err := w.finish(); err != nil {
		return err
	}
	return w.writeZeros(n)
}

// PadTo ends the current record and writes NUL bytes up to a multiple of
// block bytes from the start (GNU cpio pads its output to 512).
func (w *Writer) PadTo(block int64) error {
	if err := w.finish(); err != nil {
		return err
	}
	if block <= 0 {
		return nil
	}
	return w.writeZeros((block - w.off%block) % block)
}

// WriteTrailer writes a TRAILER!!! record in the format of the last record
// (newc if none), with the fields GNU cpio gives it.
func (w *Writer) WriteTrailer() error {
	f := w.format
	if f == "" {
		f = Newc
	}
	t := Trailer(f)
	return w.WriteHeader(&t)
}

// Close ends the current record (its body must be complete) and writes its
// padding. It writes no trailer and does not close the underlying writer.
func (w *Writer) Close() error { return w.finish() }

// WriteSymlink writes a symlink record whose body is target; rec's type bits
// are set to symlink and FileSize to len(target).
func (w *Writer) WriteSymlink(rec Record, target string) error {
	rec.Mode = rec.Mode&^TypeMask | TypeSymlink
	rec.FileSize = uint32(len(target))
	if len(target) > MaxSymlinkSize {
		return fmt.Errorf("cpio: entry %q: symlink target of %d bytes exceeds %d (PATH_MAX)", rec.Name, len(target), MaxSymlinkSize)
	}
	if err := w.WriteHeader(&rec); err != nil {
		return err
	}
	_, err := io.WriteString(w, target)
	return err
}

// WriteHardLinks writes a hard link group the way GNU cpio does in newc: one
// record per name with rec's inode fields, Nlink = len(names), and the body
// only on the last record (the others have FileSize 0). The kernel creates
// the first name and links the others to it; the last one fills the inode.
func (w *Writer) WriteHardLinks(rec Record, names []string, body []byte) error {
	if len(names) == 0 {
		return nil
	}
	rec.Nlink = uint32(len(names))
	for i, name := range names {
		r := rec
		r.Name = name
		r.FileSize, r.Check = 0, 0
		if i == len(names)-1 {
			r.FileSize = uint32(len(body))
			if r.Format == CRC {
				r.Check = Checksum(body)
			}
		}
		if err := w.WriteHeader(&r); err != nil {
			return err
		}
		if i == len(names)-1 {
			if _, err := w.Write(body); err != nil {
				return err
			}
		}
	}
	return nil
}

// Copy reads every record of r until the end of its stream and writes it to
// w unchanged: headers, bodies and the NUL padding between archives, so a
// stream written by any newc/crc writer comes out byte for byte. It does
// not close w.
func Copy(w *Writer, r *Reader) error {
	for {
		rec, err := r.Next()
		if perr := w.WritePadding(r.Skipped()); perr != nil {
			return perr
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := w.WriteHeader(rec); err != nil {
			return err
		}
		if _, err := w.ReadFrom(r); err != nil {
			return err
		}
	}
}
