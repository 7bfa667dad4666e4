package compress

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestRoundTripAndTools(t *testing.T) {
	data := bytes.Repeat([]byte("kernel module bytes \x00\x01\x02"), 5000)
	tools := map[Format][]string{Gzip: {"gzip", "-t"}, XZ: {"xz", "-t"}, Zstd: {"zstd", "-q", "-t"}}
	for _, f := range []Format{Gzip, XZ, Zstd} {
		c, err := Compress(data, f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if got := Detect(c); got != f {
			t.Errorf("Detect = %q, want %q", got, f)
		}
		d, err := Decompress(c, f, 0)
		if err != nil || !bytes.Equal(d, data) {
			t.Fatalf("%s: round trip failed: %v", f, err)
		}
		// The system's own tool accepts what we write.
		if _, err := exec.LookPath(tools[f][0]); err == nil {
			p := filepath.Join(t.TempDir(), "m.ko"+f.Extension())
			if err := os.WriteFile(p, c, 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(tools[f][0], append(tools[f][1:], p)...).CombinedOutput(); err != nil {
				t.Errorf("%s rejects our %s: %v %s", tools[f][0], f, err, out)
			}
		}
	}
}

// The kernel's XZ Embedded verifies CRC32 but not CRC64: the stream flags
// (bytes 6-7 of the header) must name CRC32 (0x01).
func TestXZUsesCRC32(t *testing.T) {
	c, err := Compress([]byte("hello"), XZ)
	if err != nil {
		t.Fatal(err)
	}
	if c[6] != 0 || c[7] != 0x01 {
		t.Fatalf("xz stream flags %02x %02x, want 00 01 (CRC32)", c[6], c[7])
	}
}

func TestDecompressLimitAndCorruption(t *testing.T) {
	big := make([]byte, 10<<20)
	for _, f := range []Format{Gzip, XZ, Zstd} {
		c, err := Compress(big, f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Decompress(c, f, 1<<20); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: a 10 MiB stream under a 1 MiB limit: %v", f, err)
		}
		if _, err := Decompress(c[:len(c)/2], f, 0); err == nil {
			t.Errorf("%s: truncated stream decompressed without error", f)
		}
	}
	if Detect([]byte("\x7fELF")) != None {
		t.Error("ELF detected as compressed")
	}
}
