package compress

import (
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// libraryLZ4Legacy is github.com/pierrec/lz4/v4's legacy-frame writer at
// the level compressLZ4Legacy uses.
func libraryLZ4Legacy(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := lz4.NewWriter(&out)
	if err := w.Apply(lz4.LegacyOption(true), lz4.CompressionLevelOption(lz4.Level9)); err != nil {
		t.Fatal(err)
	}
	got, err := writeAll(w, &out, b)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestLZ4LegacyWriterMatchesLibrary: the hand-written legacy writer and the
// library's write the same bytes, on random and text input, empty, small,
// exactly one 8 MiB chunk and several chunks.
func TestLZ4LegacyWriterMatchesLibrary(t *testing.T) {
	r := rand.New(rand.NewSource(42))
	random := func(n int) []byte {
		b := make([]byte, n)
		r.Read(b)
		return b
	}
	words := strings.Fields("the kernel unpacks every archive of an initramfs in order and later entries replace earlier ones module depmod firmware 070701 usr lib modules")
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			b.WriteString(words[r.Intn(len(words))])
			if r.Intn(12) == 0 {
				b.WriteByte('\n')
			} else {
				b.WriteByte(' ')
			}
		}
		return b.Bytes()[:n]
	}
	const mib = 1 << 20
	sizes := []int{0, 1, 15, 16, 300, 64 << 10, mib + 3, 8 * mib, 8*mib + 1, 21*mib + 7}
	for _, kind := range []struct {
		name string
		gen  func(int) []byte
	}{{"random", random}, {"text", text}, {"zeros", func(n int) []byte { return make([]byte, n) }}, {"sample", func(n int) []byte {
		s := sampleData()
		return bytes.Repeat(s, n/len(s)+1)[:n]
	}}} {
		for _, n := range sizes {
			t.Run(fmt.Sprintf("%s-%d", kind.name, n), func(t *testing.T) {
				in := kind.gen(n)
				old, err := compressLZ4Legacy(in)
				if err != nil {
					t.Fatal(err)
				}
				lib := libraryLZ4Legacy(t, in)
				if !bytes.Equal(old, lib) {
					i := 0
					for i < min(len(old), len(lib)) && old[i] == lib[i] {
						i++
					}
					t.Fatalf("differ: hand-written %d bytes, library %d, first difference at %d", len(old), len(lib), i)
				}
				back, err := Decompress(lib, LZ4, 0)
				if err != nil || !bytes.Equal(back, in) {
					t.Fatalf("library output does not read back: %v", err)
				}
			})
		}
	}
}
