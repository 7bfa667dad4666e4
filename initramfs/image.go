// Package initramfs reads, extracts and edits Linux initramfs images: the
// concatenation of uncompressed and compressed newc cpio archives the kernel
// unpacks at boot (Documentation/driver-api/early-userspace/buffer-format.rst,
// init/initramfs.c).
//
// Read splits an image into segments the way the kernel walks it: NUL bytes
// are padding; a '0' at a 4-byte aligned offset starts an uncompressed
// archive (early microcode, mkinitcpio's early cpio), which ends at its
// trailer; any other byte starts a compressed unit recognised by its magic
// (gzip, zstd, xz, lzma, lz4 legacy, bzip2; lzo is refused) whose decompressed
// cpio stream must end on a record boundary. Later records override earlier
// ones, so every segment is read. Decompression is bounded by Limits.
package initramfs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// Limits bound what reading an image may decompress, so that a bomb fails
// early with ErrTooLarge instead of exhausting memory or disk.
type Limits struct {
	MaxTotal   int64 // decompressed bytes over all segments
	MaxEntry   int64 // body bytes of one record
	MaxEntries int   // records over all segments
}

// DefaultLimits: 2 GiB decompressed, 1 GiB per entry, a million records.
var DefaultLimits = Limits{MaxTotal: 2 << 30, MaxEntry: 1 << 30, MaxEntries: 1 << 20}

// check refuses negative limits (zero means the default).
func (l Limits) check() error {
	if l.MaxTotal < 0 || l.MaxEntry < 0 || l.MaxEntries < 0 {
		return fmt.Errorf("negative limit in %+v", l)
	}
	return nil
}

// ErrTooLarge is wrapped by errors for images beyond the Limits.
var ErrTooLarge = compress.ErrTooLarge

// Option configures Open and Read; an invalid one makes them fail.
type Option func(*options) error

type options struct {
	limits Limits
	name   string
	keep   *streamKeeper // Inject: keep the decoded streams
}

// newOptions applies opts over DefaultLimits and the name name.
func newOptions(name string, opts []Option) (options, error) {
	o := options{limits: DefaultLimits, name: name}
	for _, f := range opts {
		if err := f(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// WithLimits replaces DefaultLimits; zero fields keep their default,
// negative ones are an error.
func WithLimits(l Limits) Option {
	return func(o *options) error {
		if err := l.check(); err != nil {
			return err
		}
		if l.MaxTotal > 0 {
			o.limits.MaxTotal = l.MaxTotal
		}
		if l.MaxEntry > 0 {
			o.limits.MaxEntry = l.MaxEntry
		}
		if l.MaxEntries > 0 {
			o.limits.MaxEntries = l.MaxEntries
		}
		return nil
	}
}

// WithName names the image in errors (Open uses the path).
func WithName(name string) Option {
	return func(o *options) error {
		o.name = name
		return nil
	}
}

// Segment is one unit of an image: an uncompressed cpio archive or one
// compressed unit.
type Segment struct {
	Offset      int64           // first byte in the image
	Length      int64           // bytes in the image (compressed size)
	Compression compress.Format // compress.None for an uncompressed archive
	Entries     int             // records, trailers not counted
	Trailers    int             // TRAILER!!! records
	Size        int64           // bytes of the (decompressed) cpio stream
	Padding     int64           // NUL bytes after the segment, up to the next or the end
}

// CompressionName is Compression, or "none".
func (s Segment) CompressionName() string {
	if s.Compression == compress.None {
		return "none"
	}
	return string(s.Compression)
}

// MarshalJSON writes snake_case keys and "none" for no compression.
func (s Segment) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Offset      int64  `json:"offset"`
		Length      int64  `json:"length"`
		Compression string `json:"compression"`
		Entries     int    `json:"entries"`
		Trailers    int    `json:"trailers"`
		Size        int64  `json:"uncompressed_size"`
		Padding     int64  `json:"padding"`
	}{s.Offset, s.Length, s.CompressionName(), s.Entries, s.Trailers, s.Size, s.Padding})
}

// Entry is one record of the image (trailers excluded), as indexed by Read.
type Entry struct {
	cpio.Record
	Segment int    // index in Image.Segments
	Offset  int64  // header offset in the segment's cpio stream (image offset for uncompressed segments)
	Target  string // symlink target
}

// Image is a parsed initramfs. The segments are decoded once by Read to
// index the records; Walk and Extract decode them again for the bodies.
type Image struct {
	Name     string // path or WithName, for errors
	Size     int64
	Segments []Segment
	// LeadingPadding is the number of NUL bytes before the first segment.
	LeadingPadding int64
	// Entries are the records of all segments in order, trailers excluded.
	Entries []Entry

	data   []byte
	unmap  func() error
	limits Limits
}

// Error is a failure reading an image, naming the image and, where known,
// the segment, its offset and the entry.
type Error struct {
	Image       string
	Segment     int   // index, -1 when outside any segment
	Offset      int64 // image offset of the segment, or of the offending byte
	Compression compress.Format
	Entry       string
	Err         error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Image)
	if e.Segment >= 0 {
		fmt.Fprintf(&b, ": segment %d (%s at offset %d)", e.Segment, Segment{Compression: e.Compression}.CompressionName(), e.Offset)
	} else {
		fmt.Fprintf(&b, ": offset %d", e.Offset)
	}
	if e.Entry != "" {
		fmt.Fprintf(&b, ": entry %q", e.Entry)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Open maps the image at path and reads it. Close releases it.
func Open(path string, opts ...Option) (*Image, error) {
	o, err := newOptions(path, opts)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	size := st.Size()
	var data []byte
	var unmap func() error
	if size > 0 && int64(int(size)) == size {
		if m, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED); err == nil {
			data = m
			unmap = func() error { return syscall.Munmap(m) }
		}
	}
	if data == nil {
		if data, err = io.ReadAll(f); err != nil {
			return nil, err
		}
	}
	im, err := parse(data, o)
	if err != nil {
		if unmap != nil {
			unmap()
		}
		return nil, err
	}
	im.unmap = unmap
	return im, nil
}

// Read reads an image of size bytes from r (into memory).
func Read(r io.ReaderAt, size int64, opts ...Option) (*Image, error) {
	o, err := newOptions("initramfs", opts)
	if err != nil {
		return nil, err
	}
	data := make([]byte, size)
	if n, err := r.ReadAt(data, 0); int64(n) < size {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return parse(data, o)
}

// Close releases the image's mapping; the Image must not be used after.
func (im *Image) Close() error {
	if im.unmap == nil {
		return nil
	}
	err := im.unmap()
	im.unmap, im.data = nil, nil
	return err
}

// Bytes returns the whole image, valid until Close.
func (im *Image) Bytes() []byte { return im.data }

// SegmentBytes returns the bytes of segment i as stored (compressed), valid
// until Close: an unchanged segment can be copied as is.
func (im *Image) SegmentBytes(i int) []byte {
	s := im.Segments[i]
	return im.data[s.Offset : s.Offset+s.Length]
}

// Limits returns the limits the image was read with.
func (im *Image) Limits() Limits { return im.limits }

func (im *Image) segErr(i int, entry string, err error) error {
	s := im.Segments[i]
	return &Error{Image: im.Name, Segment: i, Offset: s.Offset, Compression: s.Compression, Entry: entry, Err: err}
}

// SegmentReader returns the decompressed cpio stream of segment i, bounded
// by the image's MaxTotal.
func (im *Image) SegmentReader(i int) (io.ReadCloser, error) {
	s := im.Segments[i]
	if s.Compression == compress.None {
		return io.NopCloser(&limitedReader{r: bytes.NewReader(im.SegmentBytes(i)), left: im.limits.MaxTotal, max: im.limits.MaxTotal}), nil
	}
	u, err := newUnitDecoder(im.data[s.Offset:], s.Compression)
	if err != nil {
		return nil, im.segErr(i, "", err)
	}
	return &unitStream{limitedReader{r: u, left: im.limits.MaxTotal, max: im.limits.MaxTotal}, u}, nil
}

type unitStream struct {
	limitedReader
	u unitDecoder
}

func (s *unitStream) Close() error { return s.u.Close() }

// CpioReader returns a cpio reader of segment i's stream, positioned so that
// offsets are image offsets for an uncompressed segment and stream offsets
// for a compressed one. Close the returned closer when done.
func (im *Image) CpioReader(i int) (*cpio.Reader, io.Closer, error) {
	rc, err := im.SegmentReader(i)
	if err != nil {
		return nil, nil, err
	}
	var base int64
	if im.Segments[i].Compression == compress.None {
		base = im.Segments[i].Offset
	}
	return cpio.NewReaderOffset(rc, base), rc, nil
}

// WalkFunc is called for each record; body reads its data (the target of a
// symlink). Returning fs.SkipAll stops the walk without error.
type WalkFunc func(seg int, r *cpio.Record, body io.Reader) error

// Walk calls fn for the records of all segments in order, as the kernel
// unpacks them (trailers excluded).
func (im *Image) Walk(fn WalkFunc) error {
	for i := range im.Segments {
		if err := im.WalkSegment(i, fn); err != nil {
			if err == fs.SkipAll {
				return nil
			}
			return err
		}
	}
	return nil
}

// WalkSegment calls fn for the records of segment i (trailers excluded). An
// error from fn is returned as is.
func (im *Image) WalkSegment(i int, fn WalkFunc) error {
	cr, c, err := im.CpioReader(i)
	if err != nil {
		return err
	}
	defer c.Close()
	for {
		rec, err := cr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return im.segErr(i, "", err)
		}
		if rec.IsTrailer() {
			continue
		}
		if int64(rec.FileSize) > im.limits.MaxEntry {
			return im.segErr(i, rec.Name, fmt.Errorf("%w: body of %d bytes exceeds the %d-byte entry limit", ErrTooLarge, rec.FileSize, im.limits.MaxEntry))
		}
		if err := fn(i, rec, cr); err != nil {
			return err
		}
	}
}

// List returns each path of the image once, in the order of first
// appearance, as stored (lsinitramfs prints the same set, but repeats the
// paths of each archive).
func (im *Image) List() []string {
	seen := make(map[string]bool, len(im.Entries))
	out := make([]string, 0, len(im.Entries))
	for i := range im.Entries {
		n := im.Entries[i].Name
		k := cleanPath(n)
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, n)
	}
	return out
}

// cleanPath is the path a record name denotes relative to the root: "./x",
// "/x" and "x" alike.
func cleanPath(name string) string {
	p := path.Clean("/" + name)
	if p == "/" {
		return "."
	}
	return p[1:]
}

// Info summarises an image.
type Info struct {
	Image     string    `json:"image"`
	Size      int64     `json:"size"`
	Flavor    Flavor    `json:"flavor"`
	Kernels   []string  `json:"kernels"`
	UsrMerged bool      `json:"usr_merged"`
	Entries   int       `json:"entries"`
	Paths     int       `json:"paths"`
	Segments  []Segment `json:"segments"`
}

// Info returns the image's segments, flavor and kernels.
func (im *Image) Info() Info {
	k := im.Kernels()
	if k == nil {
		k = []string{}
	}
	return Info{
		Image:     im.Name,
		Size:      im.Size,
		Flavor:    im.Flavor(),
		Kernels:   k,
		UsrMerged: im.UsrMerged(),
		Entries:   len(im.Entries),
		Paths:     len(im.List()),
		Segments:  im.Segments,
	}
}

// limitedReader fails with ErrTooLarge once more than max bytes were read.
type limitedReader struct {
	r    io.Reader
	left int64
	max  int64
	n    int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// One byte more proves the limit is exceeded; EOF first is fine.
		var b [1]byte
		n, err := l.r.Read(b[:])
		if n > 0 {
			return 0, fmt.Errorf("%w: more than %d bytes decompressed", ErrTooLarge, l.max)
		}
		return 0, err
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	l.n += int64(n)
	return n, err
}

var errNoSegments = errors.New("no cpio data (empty or all NUL)")
