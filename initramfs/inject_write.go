package initramfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
)

// writableCompression reports whether Inject can write a segment in f.
func writableCompression(f compress.Format) bool {
	switch f {
	case compress.None, compress.Gzip, compress.XZ, compress.Zstd, compress.Lzma, compress.LZ4:
		return true
	}
	return false
}

// segmentWriter compresses a cpio archive the way the kernel's initramfs
// unpacker reads it: one gzip member, one xz stream with a CRC32 check
// (XZ Embedded has no CRC64), one zstd frame; lzma and lz4 (legacy) go
// through package compress whole.
type segmentWriter struct {
	f   compress.Format
	dst io.Writer
	w   io.WriteCloser
	buf *bytes.Buffer // lzma, lz4: compressed at Close
}

// compressionEffort trades time for size.
type compressionEffort int

const (
	// effortDefault: github.com/klauspost/compress's zstd "default" level
	// (about zstd -3), gzip -6. Measured on the 131 MB initramfs-tools
	// image: 0.5 s, 16% larger than zstd -9; zstd "better" (about -7) took
	// twice as long for 13%, so it is not offered.
	effortDefault compressionEffort = iota
	// effortBest: zstd "best" (about zstd -11; 2.5% larger than zstd -9,
	// about 8 times slower), gzip -9.
	effortBest
)

func newSegmentWriter(dst io.Writer, f compress.Format, effort compressionEffort) (*segmentWriter, error) {
	s := &segmentWriter{f: f, dst: dst}
	var err error
	switch f {
	case compress.None:
		s.w = nopCloser{dst}
	case compress.Gzip:
		// Level 6 (gzip's default) is within a few percent of -9 on
		// initramfs content at several times the speed.
		level := 6
		if effort == effortBest {
			level = 9
		}
		s.w, err = kgzip.NewWriterLevel(dst, level)
	case compress.XZ:
		cfg := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 8 << 20}
		s.w, err = cfg.NewWriter(dst)
	case compress.Zstd:
		// One frame; an 8 MiB window, which the kernel's decompressor
		// (workspace sized from the frame header) accepts.
		level := zstd.SpeedDefault
		if effort == effortBest {
			level = zstd.SpeedBestCompression
		}
		s.w, err = zstd.NewWriter(dst,
			zstd.WithEncoderLevel(level),
			zstd.WithEncoderConcurrency(min(runtime.GOMAXPROCS(0), 4)),
			zstd.WithWindowSize(8<<20),
			zstd.WithEncoderCRC(true))
	case compress.Lzma, compress.LZ4:
		s.buf = new(bytes.Buffer)
		s.w = nopCloser{s.buf}
	default:
		return nil, fmt.Errorf("cannot write %s-compressed segments", f)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *segmentWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

func (s *segmentWriter) Close() error {
	if err := s.w.Close(); err != nil {
		return err
	}
	if s.buf != nil {
		b, err := compress.Compress(s.buf.Bytes(), s.f)
		if err != nil {
			return err
		}
		_, err = s.dst.Write(b)
		return err
	}
	return nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// writeImage replaces path atomically with what write streams
// (atomicfile.WriteFunc: mode and owner kept, fsync, rename), first keeping
// the old file as backup when backup is not empty. On any error path is
// untouched. It returns the new size.
func writeImage(path, backup string, write func(f *os.File) error) (size int64, err error) {
	if _, err := os.Stat(path); err != nil {
		return 0, err
	}
	var opts []atomicfile.Option
	if backup != "" {
		opts = append(opts, atomicfile.BeforeRename(func() error { return makeBackup(path, backup) }))
	}
	err = atomicfile.WriteFunc(path, 0o644, func(f *os.File) error {
		if err := write(f); err != nil {
			return err
		}
		var err error
		size, err = f.Seek(0, io.SeekCurrent)
		return err
	}, opts...)
	return size, err
}

func makeBackup(path, backup string) error {
	tmp := filepath.Join(filepath.Dir(backup), "."+filepath.Base(backup)+".kmodctl-tmp")
	os.Remove(tmp)
	if err := os.Link(path, tmp); err == nil {
		if err := os.Rename(tmp, backup); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("backup %s: %w", backup, err)
		}
		return atomicfile.SyncDir(filepath.Dir(backup))
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("backup %s: %w", backup, err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("backup %s: %w", backup, err)
	}
	if err := atomicfile.WriteFile(backup, old, st.Mode().Perm()); err != nil {
		return fmt.Errorf("backup %s: %w", backup, err)
	}
	return nil
}

// appendCompression is that of the last archive when Inject can write it,
// else zstd when the image already uses it, else gzip.
func (j *injection) appendCompression() compress.Format {
	segs := j.im.Segments
	last := segs[len(segs)-1].Compression
	if writableCompression(last) {
		return last
	}
	for _, s := range segs {
		if s.Compression == compress.Zstd {
			return compress.Zstd
		}
	}
	return compress.Gzip
}

// archive writes the planned records as one cpio archive.
func writeRecords(w io.Writer, recs []plannedRecord) error {
	cw := cpio.NewWriter(w)
	for _, r := range recs {
		rec := r.rec
		if err := cw.WriteHeader(&rec); err != nil {
			return err
		}
		if _, err := cw.Write(r.body); err != nil {
			return err
		}
	}
	if err := cw.WriteTrailer(); err != nil {
		return err
	}
	return cw.PadTo(512)
}

// appendArchive compresses the planned records into the new archive and
// checks that it reads back.
func (j *injection) appendArchive() ([]byte, error) {
	f := j.appendCompression()
	j.res.Compression = Segment{Compression: f}.CompressionName()
	var seg bytes.Buffer
	sw, err := newSegmentWriter(&seg, f, effortDefault)
	if err != nil {
		return nil, err
	}
	if err := writeRecords(sw, j.recs); err != nil {
		return nil, err
	}
	if err := sw.Close(); err != nil {
		return nil, err
	}
	check, err := Read(bytes.NewReader(seg.Bytes()), int64(seg.Len()), WithName("appended archive"))
	if err != nil {
		return nil, fmt.Errorf("inject: the new archive does not read back: %w", err)
	}
	if len(check.Entries) != len(j.recs) {
		return nil, fmt.Errorf("inject: the new archive reads back %d records, want %d", len(check.Entries), len(j.recs))
	}
	return seg.Bytes(), nil
}

// pendingAppend is Append's output being written: the temporary file gets
// a copy of the image, flushed to disk, while Inject decodes and plans;
// finish adds the new archive and replaces the image, abort drops it.
type pendingAppend struct {
	seg  chan []byte // the new archive; nil aborts
	done chan struct{}
	once sync.Once
	size int64
	err  error
}

var errAppendAborted = errors.New("append aborted")

// startAppend starts writing Append's output for the image at imagePath.
func (j *injection) startAppend(imagePath string) *pendingAppend {
	p := &pendingAppend{seg: make(chan []byte, 1), done: make(chan struct{})}
	sizeBefore := j.res.SizeBefore
	go func() {
		defer close(p.done)
		p.size, p.err = writeImage(imagePath, j.cfg.backup, func(w *os.File) error {
			n, err := copyImage(w, imagePath, sizeBefore)
			if err != nil {
				return err
			}
			// Flush the copy now, while the main goroutine decodes: the
			// final fsync then only has the new archive to write.
			if err := w.Sync(); err != nil {
				return err
			}
			seg := <-p.seg
			if seg == nil {
				return errAppendAborted
			}
			// j.im is read after the channel handed seg over.
			return j.appendArchiveAt(w, n, seg)
		})
	}()
	return p
}

// finish appends seg, replaces the image and returns its new size.
func (p *pendingAppend) finish(seg []byte) (int64, error) {
	p.send(seg)
	<-p.done
	return p.size, p.err
}

// abort drops the output (no-op after finish) and waits for the writer.
func (p *pendingAppend) abort() {
	p.send(nil)
	<-p.done
}

func (p *pendingAppend) send(seg []byte) {
	p.once.Do(func() { p.seg <- seg })
}

// copyImage copies the image at imagePath to w (copy_file_range where the
// file system has it) and checks it still has sizeBefore bytes.
func copyImage(w *os.File, imagePath string, sizeBefore int64) (int64, error) {
	src, err := os.Open(imagePath)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	n, err := io.Copy(w, src)
	if err != nil {
		return n, err
	}
	if n != sizeBefore {
		return n, fmt.Errorf("%s changed while inject ran (%d bytes, was %d)", imagePath, n, sizeBefore)
	}
	return n, nil
}

// appendArchiveAt writes the new archive seg after the n bytes of the old
// image in w.
func (j *injection) appendArchiveAt(w *os.File, n int64, seg []byte) error {
	// Compressed units follow each other directly: NUL padding after a
	// gzip member or zstd frame is "trailing garbage" to gzip -d and zstd
	// -d, which the distributions' listers run. An uncompressed archive
	// must start 4-byte aligned; the kernel's lz4 reader needs 4 zero
	// bytes after a unit that is not the last.
	pad := 0
	if compress.Detect(seg) == compress.None && kernelMagic(seg) == compress.None {
		pad = int((4 - n&3) & 3)
	}
	if j.im.Segments[len(j.im.Segments)-1].Compression == compress.LZ4 {
		pad += 4
	}
	if _, err := w.Write(append(make([]byte, pad, pad+len(seg)), seg...)); err != nil {
		return err
	}
	return nil
}

// rewriteImage writes the kept early archives and the model's merged tree.
func (j *injection) rewriteImage(w *os.File) error {
	segs := j.im.Segments
	main := j.firstMerged
	for i := j.firstMerged; i < len(segs); i++ {
		if segs[i].Size > segs[main].Size {
			main = i
		}
	}
	f := segs[main].Compression
	if !writableCompression(f) {
		f = compress.Zstd
	}
	j.res.Compression = Segment{Compression: f}.CompressionName()
	j.res.KeptSegments = j.firstMerged
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := bw.Write(j.early); err != nil {
		return err
	}
	effort := effortDefault
	if j.cfg.best {
		effort = effortBest
	}
	sw, err := newSegmentWriter(bw, f, effort)
	if err != nil {
		return err
	}
	if err := j.vt.serialize(sw, j.firstMerged); err != nil {
		return err
	}
	if err := sw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// serialize writes the nodes the merged archives (index >= from) and Inject
// touched, in creation order, as one cpio archive: records keep their
// stored header fields; hard link groups keep their inode and carry the
// body on the record that wrote it (else the last one); a group that lost
// names gets its new link count; inode numbers that would join unrelated
// groups are renumbered.
func (t *vtree) serialize(w io.Writer, from int) error {
	cw := cpio.NewWriter(w)
	type group struct {
		nodes   []*vnode
		carrier *vnode
		key     cpio.LinkKey
		nlink   uint32
	}
	nodes := t.nodes()
	var emit []*vnode
	if t.root.archive >= from {
		emit = append(emit, t.root)
	}
	for _, n := range nodes {
		if n.archive >= from {
			emit = append(emit, n)
		}
	}
	groups := map[*vinode]*group{}
	used := map[cpio.LinkKey]*vinode{}
	next := t.maxIno + 1
	for _, n := range emit {
		if n.ino == nil {
			continue
		}
		g, ok := groups[n.ino]
		if !ok {
			g = &group{key: n.rec.Key(), nlink: n.rec.Nlink}
			groups[n.ino] = g
		}
		g.nodes = append(g.nodes, n)
	}
	// Deterministic: groups in the order of their first name.
	var order []*vinode
	for _, n := range emit {
		if n.ino != nil && groups[n.ino].nodes[0] == n {
			order = append(order, n.ino)
		}
	}
	for _, ino := range order {
		g := groups[ino]
		g.carrier = g.nodes[len(g.nodes)-1]
		for _, n := range g.nodes {
			if n == ino.carrier {
				g.carrier = n
			}
		}
		if len(g.nodes) > 1 || g.nlink > 1 {
			if len(g.nodes) != len(ino.nodes) || ino.lost {
				g.nlink = uint32(len(g.nodes))
			}
			if other, ok := used[g.key]; ok && other != ino {
				g.key.Ino = next
				next++
			}
			used[g.key] = ino
		}
	}
	for _, n := range emit {
		rec := n.rec
		if n != t.root {
			rec.Name = keepStoredName(n.rec.Name, n.path())
		}
		var body []byte
		switch {
		case n.isSymlink():
			body = []byte(n.target)
		case n.ino != nil:
			m := n.ino.meta
			rec.Mode, rec.UID, rec.GID, rec.Mtime = m.Mode, m.UID, m.GID, m.Mtime
			g := groups[n.ino]
			if len(g.nodes) > 1 || rec.Nlink > 1 {
				rec.Nlink = g.nlink
				rec.Ino = g.key.Ino
			}
			if n.isRegular() && n == g.carrier {
				body = n.ino.data
			}
		}
		rec.FileSize = uint32(len(body))
		if rec.Format == cpio.CRC {
			rec.Check = 0
			if rec.IsRegular() {
				rec.Check = cpio.Checksum(body)
			}
		}
		if err := cw.WriteHeader(&rec); err != nil {
			return err
		}
		if _, err := cw.Write(body); err != nil {
			return err
		}
	}
	if err := cw.WriteTrailer(); err != nil {
		return err
	}
	return cw.PadTo(512)
}

// keepStoredName keeps a record's stored name ("./x", "/x" or "x") when it
// still denotes the node's path, else names the path.
func keepStoredName(stored, p string) string {
	if c, err := cleanName(stored); err == nil && c == p {
		return stored
	}
	return p
}
