package diskimage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestSparseCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// Data at the start, in the middle (with explicitly written zeros
	// around it) and in the last partial megabyte.
	data := bytes.Repeat([]byte("kmodctl!"), 512)
	for _, off := range []int64{0, 20<<20 + 12345, size - 100} {
		n := min(int64(len(data)), size-off)
		if _, err := f.WriteAt(data[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt(make([]byte, 8<<20), 30<<20); err != nil { // written zeros
		t.Fatal(err)
	}
	f.Close()
	dst := filepath.Join(dir, "dst")
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	var last, total int64
	if err := SparseCopy(context.Background(), out, src, func(d, t int64) { last, total = d, t }); err != nil {
		t.Fatal(err)
	}
	out.Close()
	if a, b := sha(t, src), sha(t, dst); a != b {
		t.Fatalf("copy differs: %s vs %s", a, b)
	}
	if last != size || total != size {
		t.Errorf("last progress %d/%d, want %d/%d", last, total, size, size)
	}
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if a := st.Sys().(*syscall.Stat_t).Blocks * 512; a > 4<<20 {
		t.Errorf("copy takes %d bytes on disk, want a sparse copy (< 4 MiB)", a)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out2, err := os.Create(filepath.Join(dir, "dst2"))
	if err != nil {
		t.Fatal(err)
	}
	defer out2.Close()
	if err := SparseCopy(ctx, out2, src, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled copy: %v", err)
	}
	if err := SparseCopy(context.Background(), out2, filepath.Join(dir, "missing"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing source: %v", err)
	}
}

// TestCopyRawSourceSHA256: CopyRaw writes in place into a sized, empty file
// and, with WithSourceSHA256, hashes the source from the same read: the
// sum is sha256sum's of the whole source file (holes included) for a raw
// source, and of the qcow2 file for a qcow2 one; the copies are the same.
func TestCopyRawSourceSHA256(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 48 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("kmodctl?"), 4096)
	for _, off := range []int64{4096, 17<<20 + 3, size - 10} {
		if _, err := f.WriteAt(data[:min(int64(len(data)), size-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt(make([]byte, 4<<20), 30<<20); err != nil { // written zeros
		t.Fatal(err)
	}
	f.Close()
	qcow := filepath.Join(dir, "src.qcow2")
	if err := Convert(context.Background(), src, qcow, "qcow2"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ src, format string }{{src, "raw"}, {qcow, "qcow2"}} {
		out, err := os.Create(filepath.Join(dir, "copy-"+c.format))
		if err != nil {
			t.Fatal(err)
		}
		if err := out.Truncate(size); err != nil {
			t.Fatal(err)
		}
		var sum string
		if err := CopyRaw(context.Background(), c.src, out, WithSourceFormat(c.format), WithSourceSHA256(&sum)); err != nil {
			t.Fatal(err)
		}
		out.Close()
		if want := sha(t, c.src); sum != want {
			t.Errorf("%s: source sha256 %s, want %s", c.format, sum, want)
		}
		if a, b := sha(t, src), sha(t, out.Name()); a != b {
			t.Errorf("%s: copy differs from the raw source", c.format)
		}
		if st, err := os.Stat(out.Name()); err != nil || st.Size() != size || st.Sys().(*syscall.Stat_t).Blocks*512 > 8<<20 {
			t.Errorf("%s: copy %+v %v, want %d bytes, sparse", c.format, st, err, size)
		}
	}
}

// TestConvertSHA256: the sum Convert computes while fsyncing is the sha256
// of the file it renamed into place.
func TestConvertSHA256(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, bytes.Repeat([]byte("kmod-image"), 300000), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"qcow2", "raw"} {
		var sum string
		dst := filepath.Join(dir, "out."+format)
		if err := Convert(context.Background(), src, dst, format, WithSHA256(&sum)); err != nil {
			t.Fatal(err)
		}
		if want := sha(t, dst); sum != want {
			t.Errorf("%s: sum %q, want %s", format, sum, want)
		}
	}
}
