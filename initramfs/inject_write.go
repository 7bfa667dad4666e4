package initramfs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kmodctl/packer-plugin-kmod/compress"
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
