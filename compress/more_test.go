package compress

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os/exec"
	"strings"
	"testing"
)

func tool(t *testing.T, in []byte, name string, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed", name)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

func sampleData() []byte {
	r := rand.New(rand.NewSource(1))
	var b bytes.Buffer
	for b.Len() < 3<<20 {
		if r.Intn(3) == 0 {
			var x [64]byte
			r.Read(x[:])
			b.Write(x[:])
		} else {
			b.WriteString("070701 cpio kernel module initramfs ")
		}
	}
	return b.Bytes()
}

// Our lzma and lz4 legacy output is what lzma(1) and lz4 -l read, and we
// read theirs.
func TestMoreFormatsAgainstTools(t *testing.T) {
	data := sampleData()
	cases := []struct {
		f        Format
		compress []string
		check    []string
	}{
		{Lzma, []string{"lzma", "-c"}, []string{"lzma", "-d", "-c"}},
		{LZ4, []string{"lz4", "-l", "-q", "-c"}, []string{"lz4", "-d", "-q", "-c"}},
		{Bzip2, []string{"bzip2", "-c"}, nil},
	}
	for _, c := range cases {
		theirs := tool(t, data, c.compress[0], c.compress[1:]...)
		if Detect(theirs) != c.f {
			t.Errorf("Detect(%s output) = %q", c.compress[0], Detect(theirs))
		}
		got, err := Decompress(theirs, c.f, 0)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: reading %s output: %v", c.f, c.compress[0], err)
		}
		if c.check == nil {
			if _, err := Compress(data, c.f); !errors.Is(err, ErrNoBzip2Writer) {
				t.Errorf("bzip2 compression: %v", err)
			}
			continue
		}
		ours, err := Compress(data, c.f)
		if err != nil {
			t.Fatal(err)
		}
		if back := tool(t, ours, c.check[0], c.check[1:]...); !bytes.Equal(back, data) {
			t.Errorf("%s rejects our %s output", c.check[0], c.f)
		}
	}
}

func TestLZ4LegacyIncompressible(t *testing.T) {
	data := make([]byte, 9<<20) // two chunks, random
	rand.New(rand.NewSource(2)).Read(data)
	c, err := Compress(data, LZ4)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decompress(c, LZ4, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("round trip: %v", err)
	}
	if back := tool(t, c, "lz4", "-d", "-q", "-c"); !bytes.Equal(back, data) {
		t.Fatal("lz4 rejects our incompressible legacy chunks")
	}
}

func TestLZO(t *testing.T) {
	b := []byte{0x89, 'L', 'Z', 'O', 0, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2}
	if Detect(b) != LZO {
		t.Fatal("lzop magic not detected")
	}
	if _, err := NewReader(bytes.NewReader(b), LZO); !errors.Is(err, ErrLZO) || !strings.Contains(err.Error(), "lzo is not supported") {
		t.Fatalf("lzo: %v", err)
	}
}

// A unit's length is found exactly whatever follows it: NUL padding, another
// unit, garbage.
func TestUnitLen(t *testing.T) {
	data := sampleData()[:500000]
	units := map[Format][]byte{}
	for _, f := range []Format{Gzip, Zstd, XZ, Lzma, LZ4} {
		c, err := Compress(data, f)
		if err != nil {
			t.Fatal(err)
		}
		units[f] = c
	}
	units[Bzip2] = tool(t, data, "bzip2", "-c")
	units[Zstd+"-tool"] = tool(t, data, "zstd", "-q", "-c", "--no-check")
	units[XZ+"-tool"] = tool(t, data, "xz", "--check=crc32", "-c")
	units[Gzip+"-tool"] = tool(t, data, "gzip", "-c")
	tails := [][]byte{nil, {0, 0, 0, 0}, units[Gzip], []byte("0707010000")}
	for name, u := range units {
		f := Format(strings.TrimSuffix(string(name), "-tool"))
		for _, tail := range tails {
			if f == LZ4 && len(tail) > 0 && tail[0] != 0 {
				continue // lz4 legacy needs NUL bytes after it
			}
			b := append(bytes.Clone(u), tail...)
			r, err := NewUnitReader(b, f)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s + %d bytes: %v", name, len(tail), err)
			}
			if r.Len() != int64(len(u)) {
				t.Errorf("%s + %x...: Len %d, want %d", name, tail[:min(len(tail), 4)], r.Len(), len(u))
			}
			r.Close()
		}
		// Truncated units fail.
		r, err := NewUnitReader(u[:len(u)-5], f)
		if err == nil {
			_, err = io.ReadAll(r)
		}
		if err == nil {
			t.Errorf("%s: truncated unit accepted", name)
		}
	}
}
