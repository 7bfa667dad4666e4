package diskimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

const synthSize = 64 << 20

// synthImage writes a sparse raw image of size bytes: random data at its
// start, in the middle (one run unaligned to blocks) and at its end, and a
// 2 MiB run of written zeros (allocated, but all zero) at 20 MiB.
func synthImage(t testing.TB, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "src.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewChaCha8([32]byte{1, 2, 3}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for _, w := range []struct {
		off  int64
		data []byte
	}{
		{0, random(1 << 20)},
		{10 << 20, random(3 << 20)},
		{20 << 20, make([]byte, 2<<20)},
		{33<<20 + 4097, random(5000)},
		{size - 1<<20, random(1 << 20)},
	} {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// randomImage is a raw image of random bytes only (slow to convert).
func randomImage(t testing.TB, path string, size int) {
	t.Helper()
	rng := rand.New(rand.NewChaCha8([32]byte{4}))
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sha(t testing.TB, path string) string {
	t.Helper()
	s, err := SHA256File(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// qemuInfoJSON is `qemu-img info --output=json` of path, decoded.
func qemuInfoJSON(t testing.TB, path, format string) map[string]any {
	t.Helper()
	args := []string{"info", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	out, err := exec.Command("qemu-img", append(args, path)...).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// formatData is info["format-specific"]["data"][key].
func formatData(m map[string]any, key string) any {
	fs, _ := m["format-specific"].(map[string]any)
	data, _ := fs["data"].(map[string]any)
	return data[key]
}

// progressLog records WithProgress calls and checks them.
type progressLog struct {
	mu    sync.Mutex
	calls [][2]int64
}

func (p *progressLog) fn(done, total int64) {
	p.mu.Lock()
	p.calls = append(p.calls, [2]int64{done, total})
	p.mu.Unlock()
}

func (p *progressLog) check(t *testing.T, total int64) {
	t.Helper()
	if len(p.calls) == 0 {
		t.Fatal("progress never called")
	}
	var last int64
	for _, c := range p.calls {
		if c[1] != total || c[0] < last || c[0] > total {
			t.Fatalf("progress call %v: want done non-decreasing up to total %d (calls %v)", c, total, p.calls)
		}
		last = c[0]
	}
	if last != total {
		t.Errorf("last progress %d, want %d", last, total)
	}
}

// noQemuImgFor fails if a process still names dir on its command line.
func noQemuImgFor(t *testing.T, dir string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(dir)) {
			t.Errorf("process %s still runs: %q", filepath.Dir(p), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestConvertFormats(t *testing.T) {
	fixture.NeedTools(t, "qemu-img")
	ctx := context.Background()
	src := synthImage(t, t.TempDir(), synthSize)
	srcSum := sha(t, src)
	srcSt, _ := os.Stat(src)

	qemuFormat := map[string]string{"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhd": "vpc"}
	for _, format := range []string{"raw", "qcow2", "vmdk", "vhd"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "out"+OutputFormats[format])
			var pl progressLog
			start := time.Now()
			if err := Convert(ctx, src, dst, format, WithProgress(pl.fn)); err != nil {
				t.Fatal(err)
			}
			t.Logf("raw -> %s: %v", format, time.Since(start))
			pl.check(t, synthSize)
			if names := dirNames(t, dir); len(names) != 1 {
				t.Errorf("files in the destination folder: %v, want only the output", names)
			}
			st, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o644 {
				t.Errorf("mode %v, want 0644", st.Mode())
			}

			info, err := Inspect(ctx, dst)
			if err != nil {
				t.Fatal(err)
			}
			if info.Format != qemuFormat[format] || info.VirtualSize != synthSize || info.BackingFile != "" || info.ActualSize <= 0 {
				t.Errorf("Inspect: %+v, want format %s, size %d", info, qemuFormat[format], synthSize)
			}
			if format == "qcow2" || format == "vmdk" {
				fixture.Run(t, "qemu-img", "check", "-f", format, dst)
			}
			fixture.Run(t, "qemu-img", "compare", "-f", "raw", "-F", qemuFormat[format], src, dst)

			// Back to raw, format detected: the source's bytes.
			back := filepath.Join(dir, "back.raw")
			if err := Convert(ctx, dst, back, "raw"); err != nil {
				t.Fatal(err)
			}
			if got := sha(t, back); got != srcSum {
				t.Errorf("%s converted back to raw: sha256 %s, want the source's %s", format, got, srcSum)
			}

			switch format {
			case "raw":
				// Only the data blocks are allocated (not the zero run).
				if alloc := st.Sys().(*syscall.Stat_t).Blocks * 512; alloc > 6<<20 {
					t.Errorf("raw copy allocates %d bytes, want at most 6 MiB (sparse)", alloc)
				}
			case "qcow2":
				m := qemuInfoJSON(t, dst, "qcow2")
				if c := formatData(m, "compat"); c != "1.1" {
					t.Errorf("qcow2 compat %v, want 1.1", c)
				}
			case "vmdk":
				m := qemuInfoJSON(t, dst, "vmdk")
				if c := formatData(m, "create-type"); c != "streamOptimized" {
					t.Errorf("vmdk create type %v, want streamOptimized", c)
				}
			case "vhd":
				if st.Size() != synthSize+512 {
					t.Errorf("vhd file size %d, want %d", st.Size(), synthSize+512)
				}
				b := make([]byte, 512)
				f, err := os.Open(dst)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := f.ReadAt(b, st.Size()-512); err != nil {
					t.Fatal(err)
				}
				if string(b[:8]) != "conectix" {
					t.Fatalf("vhd footer cookie %q, want conectix", b[:8])
				}
				if typ := binary.BigEndian.Uint32(b[60:64]); typ != 2 {
					t.Errorf("vhd disk type %d, want 2 (fixed)", typ)
				}
				if orig, cur := binary.BigEndian.Uint64(b[40:48]), binary.BigEndian.Uint64(b[48:56]); orig != synthSize || cur != synthSize {
					t.Errorf("vhd sizes original %d current %d, want %d", orig, cur, synthSize)
				}
				// Named explicitly (the alias) too.
				back2 := filepath.Join(dir, "back2.raw")
				if err := Convert(ctx, dst, back2, "raw", WithSourceFormat("vhd")); err != nil {
					t.Fatal(err)
				}
				if got := sha(t, back2); got != srcSum {
					t.Errorf("vhd (WithSourceFormat) back to raw: sha256 %s, want %s", got, srcSum)
				}
			}
		})
	}

	st, _ := os.Stat(src)
	if !st.ModTime().Equal(srcSt.ModTime()) || sha(t, src) != srcSum {
		t.Errorf("source changed: mtime %v -> %v", srcSt.ModTime(), st.ModTime())
	}
}

func TestConvertQcow2Compression(t *testing.T) {
	fixture.NeedTools(t, "qemu-img")
	dir := t.TempDir()
	src := synthImage(t, dir, synthSize)
	dst := filepath.Join(dir, "c.qcow2")
	if err := Convert(context.Background(), src, dst, "qcow2", WithCompression(true)); err != nil {
		t.Fatal(err)
	}
	out := fixture.Run(t, "qemu-img", "check", "--output=json", "-f", "qcow2", dst)
	var chk struct {
		Compressed int64 `json:"compressed-clusters"`
	}
	if err := json.Unmarshal([]byte(out), &chk); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if chk.Compressed == 0 {
		t.Errorf("no compressed clusters: %s", out)
	}
	fixture.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", src, dst)
}

func TestConvertVHDXSource(t *testing.T) {
	fixture.NeedTools(t, "qemu-img")
	dir := t.TempDir()
	src := synthImage(t, dir, synthSize)
	vhdx := filepath.Join(dir, "src.vhdx")
	fixture.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", src, vhdx)
	back := filepath.Join(dir, "back.raw")
	if err := Convert(context.Background(), vhdx, back, "raw"); err != nil {
		t.Fatal(err)
	}
	if got, want := sha(t, back), sha(t, src); got != want {
		t.Errorf("vhdx to raw: sha256 %s, want %s", got, want)
	}
}

// TestConvertCloudImage converts the 2 GiB fixture raw -> qcow2 -> raw and
// the qcow2 fixture to raw; both raws equal the fixture.
func TestConvertCloudImage(t *testing.T) {
	fixture.NeedTools(t, "qemu-img")
	raw := fixture.CloudImageRaw(t)
	qcow := fixture.CloudImageQcow2(t)
	rawSt, _ := os.Stat(raw)
	qcowSt, _ := os.Stat(qcow)
	ctx := context.Background()
	dir := t.TempDir()
	step := func(src, dst, format string) {
		t.Helper()
		var pl progressLog
		start := time.Now()
		if err := Convert(ctx, src, dst, format, WithProgress(pl.fn)); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s -> %s: %v", filepath.Base(src), filepath.Base(dst), time.Since(start).Round(time.Millisecond))
		pl.check(t, 2<<30)
	}
	q := filepath.Join(dir, "rt.qcow2")
	step(raw, q, "qcow2")
	fixture.Run(t, "qemu-img", "check", "-f", "qcow2", q)
	rt := filepath.Join(dir, "rt.raw")
	step(q, rt, "raw")
	fixture.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, rt)
	fromFixture := filepath.Join(dir, "fromqcow2.raw")
	step(qcow, fromFixture, "raw")
	fixture.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, fromFixture)
	for _, p := range []string{rt, fromFixture} {
		if st, err := os.Stat(p); err != nil || st.Size() != 2<<30 {
			t.Errorf("%s: size %v (%v), want 2 GiB", p, st.Size(), err)
		}
	}
	for _, c := range []struct {
		p  string
		st os.FileInfo
	}{{raw, rawSt}, {qcow, qcowSt}} {
		st, _ := os.Stat(c.p)
		if !st.ModTime().Equal(c.st.ModTime()) || st.Size() != c.st.Size() {
			t.Errorf("fixture %s changed", c.p)
		}
	}
}

func TestConvertCancel(t *testing.T) {
	fixture.NeedTools(t, "qemu-img")
	srcDir := t.TempDir()
	src := filepath.Join(srcDir, "random.raw")
	randomImage(t, src, synthSize)

	for _, format := range []string{"vmdk", "qcow2", "raw"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "out"+OutputFormats[format])
			// An existing destination stays as it was.
			if err := os.WriteFile(dst, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var canceledAt int64 = -1
			opts := []ConvertOption{WithProgress(func(done, total int64) {
				if canceledAt < 0 && done > 0 && done < total {
					canceledAt = done
					cancel()
				}
			})}
			if format == "qcow2" {
				opts = append(opts, WithCompression(true)) // slower: surely cancelled midway
			}
			err := Convert(ctx, src, dst, format, opts...)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Convert cancelled at %d: error %v, want context.Canceled", canceledAt, err)
			}
			if names := dirNames(t, dir); len(names) != 1 || names[0] != filepath.Base(dst) {
				t.Errorf("destination folder holds %v, want only the old destination", names)
			}
			if b, _ := os.ReadFile(dst); string(b) != "old" {
				t.Errorf("destination changed to %d bytes", len(b))
			}
			noQemuImgFor(t, dir)
		})
	}

	t.Run("before", func(t *testing.T) {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := Convert(ctx, src, filepath.Join(dir, "x.qcow2"), "qcow2"); !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want context.Canceled", err)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Errorf("destination folder holds %v", names)
		}
	})
}

func TestConvertErrors(t *testing.T) {
	fixture.NeedTools(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	src := synthImage(t, dir, synthSize)
	out := t.TempDir()
	dst := filepath.Join(out, "out.img")

	wantErr := func(name string, err error, parts ...string) {
		t.Helper()
		if err == nil {
			t.Errorf("%s: no error", name)
			return
		}
		for _, p := range parts {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("%s: error %q does not say %q", name, err, p)
			}
		}
		if names := dirNames(t, out); len(names) != 0 {
			t.Errorf("%s: destination folder holds %v", name, names)
		}
	}

	err := Convert(ctx, filepath.Join(dir, "missing.raw"), dst, "qcow2")
	wantErr("missing source", err, "missing.raw")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing source: %v is not ErrNotExist", err)
	}
	wantErr("unknown output format", Convert(ctx, src, dst, "vdi"), `"vdi"`, "qcow2")
	wantErr("unknown source format", Convert(ctx, src, dst, "raw", WithSourceFormat("bochs")), `"bochs"`)
	err = Convert(ctx, src, filepath.Join(out, "nodir", "x.raw"), "raw")
	wantErr("missing destination folder", err, "nodir")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing destination folder: %v is not ErrNotExist", err)
	}
	wantErr("destination is the source", Convert(ctx, src, src, "raw"), "is the source")

	odd := filepath.Join(dir, "odd.raw")
	fixture.Run(t, "qemu-img", "create", "-q", "-f", "raw", odd, "65M")
	if err := os.Truncate(odd, 65<<20+512); err != nil {
		t.Fatal(err)
	}
	wantErr("vhd of a size not a whole MiB", Convert(ctx, odd, dst, "vhd"), "MiB", "68157952", "69206016")

	qed := filepath.Join(dir, "x.qed")
	fixture.Run(t, "qemu-img", "create", "-q", "-f", "qed", qed, "1M")
	wantErr("qed source", Convert(ctx, qed, dst, "raw"), `"qed"`)

	// Images reading other files: Inspect names the file, Convert refuses.
	base := filepath.Join(dir, "base.qcow2")
	fixture.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	overlay := filepath.Join(dir, "overlay.qcow2")
	fixture.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
	dataFile := filepath.Join(dir, "data.qcow2")
	fixture.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.bin"), dataFile, "1M")
	flat := filepath.Join(dir, "flat.vmdk")
	fixture.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat, "1M")
	for img, other := range map[string]string{overlay: base, dataFile: "data.bin", flat: "flat-flat.vmdk"} {
		info, err := Inspect(ctx, img)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(info.BackingFile, other) {
			t.Errorf("Inspect %s: backing file %q, want %s", filepath.Base(img), info.BackingFile, other)
		}
		wantErr(filepath.Base(img), Convert(ctx, img, dst, "raw"), other)
	}
	// A monolithic sparse vmdk names itself as its extent: no backing file.
	sparse := filepath.Join(dir, "sparse.vmdk")
	fixture.Run(t, "qemu-img", "create", "-q", "-f", "vmdk", sparse, "1M")
	if info, err := Inspect(ctx, sparse); err != nil || info.BackingFile != "" || info.Format != "vmdk" {
		t.Errorf("Inspect sparse vmdk: %+v, %v", info, err)
	}
	if _, err := Inspect(ctx, filepath.Join(dir, "missing.qcow2")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Inspect of a missing file: %v", err)
	}
}

func TestProgressWriter(t *testing.T) {
	var got []int64
	w := &progressWriter{total: 1000, fn: func(done, total int64) { got = append(got, done) }}
	out := "    (0.00/100%)\r    (12.50/100%)\r    (12.50/100%)\r    (100.00/100%)\r"
	// Written in awkward pieces.
	for i := 0; i < len(out); i += 7 {
		w.Write([]byte(out[i:min(i+7, len(out))]))
	}
	w.Write([]byte("garbage\r(x/100%)\r"))
	want := []int64{0, 125, 125, 1000}
	if len(got) != len(want) {
		t.Fatalf("progress %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("progress %v, want %v", got, want)
		}
	}
}

func TestSHA256FileAndChecksums(t *testing.T) {
	dir := t.TempDir()
	src := synthImage(t, dir, synthSize)
	var last, calls int64
	sum, err := SHA256File(context.Background(), src, func(done, total int64) {
		calls++
		if total != synthSize || done < last {
			t.Fatalf("progress (%d, %d)", done, total)
		}
		last = done
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != synthSize || calls < 2 {
		t.Errorf("progress ended at %d after %d calls", last, calls)
	}
	if _, err := lookPath("sha256sum"); err == nil {
		if want := strings.Fields(fixture.Run(t, "sha256sum", src))[0]; sum != want {
			t.Errorf("SHA256File %s, sha256sum %s", sum, want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := SHA256File(ctx, src, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled SHA256File: %v", err)
	}

	other := filepath.Join(dir, "a.img")
	if err := os.WriteFile(other, []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	otherSum := sha(t, other)
	list := filepath.Join(dir, "SHA256SUMS")
	if err := WriteChecksums(list, map[string]string{src: strings.ToUpper(sum), "a.img": otherSum}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	if want := otherSum + "  a.img\n" + sum + "  src.raw\n"; string(b) != want {
		t.Errorf("SHA256SUMS:\n%s\nwant:\n%s", b, want)
	}
	if _, err := lookPath("sha256sum"); err == nil {
		c := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
		c.Dir = dir
		if out, err := c.CombinedOutput(); err != nil {
			t.Errorf("sha256sum --check: %v\n%s", err, out)
		}
	}
	for name, sums := range map[string]map[string]string{
		"short sum":    {"x": "abcd"},
		"not hex":      {"x": strings.Repeat("g", 64)},
		"newline name": {"a\nb": otherSum},
		"same base":    {"d1/x": otherSum, "d2/x": otherSum},
	} {
		if err := WriteChecksums(list, sums); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if b2, _ := os.ReadFile(list); !bytes.Equal(b2, b) {
		t.Errorf("a refused WriteChecksums changed the list")
	}
}
