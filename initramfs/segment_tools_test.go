package initramfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// run pipes in through a system tool.
func run(t testing.TB, in []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(fixture.Tool(t, name), args...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, stderr.String())
	}
	return out
}

// gnuCpio archives the tree at root with GNU cpio -o -H format, names sorted.
func gnuCpio(t testing.TB, root, format string) []byte {
	t.Helper()
	var names []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		names = append(names, rel)
		return nil
	})
	sort.Strings(names)
	cmd := exec.Command(fixture.Tool(t, "cpio"), "-o", "-H", format, "--quiet")
	cmd.Dir = root
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cpioList is GNU cpio -t's listing of an archive stream.
func cpioList(t testing.TB, archive []byte) []string {
	t.Helper()
	out := run(t, archive, "cpio", "-t", "--quiet")
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
}

// tree builds a small root with a busybox-like hard link group, symlinks and
// a kernel module folder.
func tree(t testing.TB) string {
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/modules/6.1.0-99-amd64/kernel", "conf", "scripts/init-top", "etc"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "usr/bin/busybox"), bytes.Repeat([]byte("busybox\x00\x01"), 3000), 0o755)
	for _, n := range []string{"sh", "ls", "cat", "mount"} {
		if err := os.Link(filepath.Join(root, "usr/bin/busybox"), filepath.Join(root, "usr/bin", n)); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("usr/bin", filepath.Join(root, "bin"))
	os.Symlink("usr/lib", filepath.Join(root, "lib"))
	os.WriteFile(filepath.Join(root, "conf/initramfs.conf"), []byte("MODULES=most\n"), 0o644)
	os.WriteFile(filepath.Join(root, "init"), []byte("#!/bin/sh\nexec /sbin/init\n"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/lib/modules/6.1.0-99-amd64/kernel/dummy.ko"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 1, 2, 3}, 5000), 0o644)
	os.WriteFile(filepath.Join(root, "etc/empty"), nil, 0o600)
	return root
}

var toolCompressors = map[compress.Format][]string{
	compress.Gzip:  {"gzip", "-n", "-9", "-c"},
	compress.Zstd:  {"zstd", "-q", "-19", "-c"},
	compress.XZ:    {"xz", "--check=crc32", "-c"},
	compress.Lzma:  {"lzma", "-c"},
	compress.LZ4:   {"lz4", "-l", "-q", "-c"},
	compress.Bzip2: {"bzip2", "-c"},
}

// TestSystemToolImages reads images made only with system tools: an early
// GNU cpio microcode archive, the main archive through each compressor, NUL
// padding, and a second compressed archive after it; the listing equals
// GNU cpio's of each archive and every segment's stream is rewritten byte
// for byte by our codec.
func TestSystemToolImages(t *testing.T) {
	early := t.TempDir()
	os.MkdirAll(filepath.Join(early, "kernel/x86/microcode"), 0o755)
	os.WriteFile(filepath.Join(early, "kernel/x86/microcode/GenuineIntel.bin"), bytes.Repeat([]byte("UCODE"), 999), 0o644)
	earlyCpio := gnuCpio(t, early, "newc")
	mainCpio := gnuCpio(t, tree(t), "newc")
	extra := t.TempDir()
	os.MkdirAll(filepath.Join(extra, "conf"), 0o755)
	os.WriteFile(filepath.Join(extra, "conf/modules"), []byte("dummy\n"), 0o644)
	extraCpio := gnuCpio(t, extra, "crc")
	for f, argv := range toolCompressors {
		t.Run(string(f), func(t *testing.T) {
			mainZ := run(t, mainCpio, argv[0], argv[1:]...)
			extraZ := run(t, extraCpio, argv[0], argv[1:]...)
			img := append(bytes.Clone(earlyCpio), mainZ...)
			img = append(img, 0, 0, 0, 0)
			img = append(img, extraZ...)
			im := readImage(t, img)
			if len(im.Segments) != 3 {
				t.Fatalf("%d segments: %+v", len(im.Segments), im.Segments)
			}
			wantComp := []compress.Format{compress.None, f, f}
			wantLen := []int{0, len(mainZ), len(extraZ)}
			for i, s := range im.Segments {
				if s.Compression != wantComp[i] || (i > 0 && s.Length != int64(wantLen[i])) {
					t.Errorf("segment %d: %+v", i, s)
				}
			}
			if s := im.Segments[1]; s.Size != int64(len(mainCpio)) || s.Padding != 4 {
				t.Errorf("main segment: %+v (cpio %d bytes)", s, len(mainCpio))
			}
			var want []string
			seen := map[string]bool{}
			for _, a := range [][]byte{earlyCpio, mainCpio, extraCpio} {
				for _, n := range cpioList(t, a) {
					if !seen[n] {
						seen[n] = true
						want = append(want, n)
					}
				}
			}
			if got := im.List(); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("List:\n%s\nwant (cpio -t):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for i, stream := range [][]byte{earlyCpio, mainCpio, extraCpio} {
				got := segmentStream(t, im, i)
				if !bytes.Equal(got, stream) {
					t.Errorf("segment %d decompresses to %d bytes, want the %d cpio bytes", i, len(got), len(stream))
				}
				if re := rewriteStream(t, got); !bytes.Equal(re, got) {
					t.Errorf("segment %d: rewrite differs", i)
				}
			}
		})
	}
}

func segmentStream(t testing.TB, im *Image, i int) []byte {
	t.Helper()
	rc, err := im.SegmentReader(i)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if im.Segments[i].Compression == compress.None {
		// The archive padding after the trailer is NUL padding of the image.
		b = append(b, im.Bytes()[im.Segments[i].Offset+im.Segments[i].Length:][:im.Segments[i].Padding]...)
	}
	return b
}

// rewriteStream reads a cpio stream with our reader and writes it back with
// our writer, padding included.
func rewriteStream(t testing.TB, data []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := cpio.NewWriter(&out)
	if err := cpio.Copy(w, cpio.NewReader(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestTruncatedSegments cuts each kind of segment short: a clear error that
// names the image, the segment and its offset.
func TestTruncatedSegments(t *testing.T) {
	early := microcode(t)
	for f := range toolCompressors {
		if _, err := exec.LookPath(toolCompressors[f][0]); err != nil {
			continue
		}
		z := run(t, mainArchive(t), toolCompressors[f][0], toolCompressors[f][1:]...)
		img := append(bytes.Clone(early), z[:len(z)*2/3]...)
		_, err := Read(bytes.NewReader(img), int64(len(img)), WithName("cut.img"))
		want := fmt.Sprintf("cut.img: segment 1 (%s at offset %d): ", f, len(early))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: %v, want prefix %q", f, err, want)
		}
	}
	_, err := Read(bytes.NewReader(early[:700]), 700, WithName("cut.img"))
	if err == nil || !strings.Contains(err.Error(), "cut.img: segment 0 (none at offset 0): cpio: offset 700: entry \"kernel/x86/microcode/GenuineIntel.bin\": truncated body") || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated early archive: %v", err)
	}
}

// zstdRLEBomb is a hand-made zstd frame of n RLE blocks of 128 KiB of NUL
// bytes: 4 bytes in, 128 KiB out each. NUL bytes are valid padding to the
// kernel, so only the size limit stops it.
func zstdRLEBomb(n int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3} // no content size, 128 KiB window
	for i := 0; i < n; i++ {
		h := uint32(1<<1 | 128<<10<<3) // RLE, 128 KiB
		if i == n-1 {
			h |= 1 // last block
		}
		b = binary.LittleEndian.AppendUint32(b, h)[:len(b)+3]
		b = append(b, 0)
	}
	return b
}

func TestZstdBomb(t *testing.T) {
	bomb := zstdRLEBomb(24 << 10) // 96 KiB expanding to 3 GiB
	img := append(microcode(t), bomb...)
	start := time.Now()
	_, err := Read(bytes.NewReader(img), int64(len(img)), WithName("bomb.img"))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "bomb.img: segment 1 (zstd at offset") {
		t.Fatalf("bomb: %v", err)
	}
	t.Logf("%d-byte bomb refused after %v: %v", len(bomb), time.Since(start), err)
	// A smaller limit stops it sooner.
	_, err = Read(bytes.NewReader(img), int64(len(img)), WithLimits(Limits{MaxTotal: 32 << 20}))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 33554432 bytes") {
		t.Fatalf("bomb under 32 MiB: %v", err)
	}
	// The same frame within the limit is only padding.
	small := append(microcode(t), zstdRLEBomb(4)...)
	if im, err := Read(bytes.NewReader(small), int64(len(small))); err != nil || im.Segments[1].Size != 4*128<<10 || im.Segments[1].Entries != 0 {
		t.Fatalf("small RLE frame: %v", err)
	}
}

// TestKernelRejects: data the kernel refuses is refused with its reason.
func TestKernelRejects(t *testing.T) {
	early := microcode(t)
	main := compressed(t, mainArchive(t), compress.Zstd)
	skippable := append([]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0}, 1, 2, 3, 4)
	cases := []struct {
		name string
		img  []byte
		want string
	}{
		{"pzstd skippable frame", append(append(bytes.Clone(early), skippable...), main...), "invalid magic 502a4d18"},
		{"unaligned cpio", append(append(bytes.Clone(early), 0), archive(t, reg("x", "y"))...), "not 4-byte aligned"},
		{"garbage after", append(bytes.Clone(main), 'j', 'u', 'n', 'k'), "invalid magic 6a756e6b"},
		{"odc archive", []byte("070707" + strings.Repeat("0", 110)), "old portable (odc, 070707) cpio: the kernel needs newc"},
	}
	for _, c := range cases {
		_, err := Read(bytes.NewReader(c.img), int64(len(c.img)), WithName("x.img"))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
