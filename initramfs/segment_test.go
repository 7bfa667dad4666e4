package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// file is one record of a test archive.
type file struct {
	name   string
	mode   uint32
	body   string // data, or symlink target
	nlink  uint32
	ino    uint32
	rmajor uint32
	rminor uint32
}

func dir(name string) file       { return file{name: name, mode: cpio.TypeDir | 0o755} }
func reg(name, body string) file { return file{name: name, mode: cpio.TypeReg | 0o644, body: body} }
func symlink(name, target string) file {
	return file{name: name, mode: cpio.TypeSymlink | 0o777, body: target}
}

// archive writes files as a newc archive with a trailer, padded to 512 like
// GNU cpio.
func archive(t testing.TB, files ...file) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	for i, f := range files {
		rec := cpio.Record{Name: f.name, Mode: f.mode, Nlink: max(f.nlink, 1), Ino: uint32(i + 100), Mtime: 1700000000,
			FileSize: uint32(len(f.body)), RdevMajor: f.rmajor, RdevMinor: f.rminor}
		if f.ino != 0 {
			rec.Ino = f.ino
		}
		if err := w.WriteHeader(&rec); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.WriteTrailer(); err != nil {
		t.Fatal(err)
	}
	if err := w.PadTo(512); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func compressed(t testing.TB, b []byte, f compress.Format) []byte {
	t.Helper()
	c, err := compress.Compress(b, f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func microcode(t testing.TB) []byte {
	return archive(t, dir("kernel"), dir("kernel/x86"), dir("kernel/x86/microcode"),
		reg("kernel/x86/microcode/GenuineIntel.bin", strings.Repeat("\x01ucode", 100)))
}

func mainArchive(t testing.TB) []byte {
	return archive(t, dir("."), dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"), dir("usr/bin"),
		symlink("bin", "usr/bin"), reg("init", "#!/bin/sh\n"), dir("conf"), reg("conf/initramfs.conf", "MODULES=most\n"),
		dir("scripts"), dir("scripts/init-top"), dir("usr/lib/modules"), dir("usr/lib/modules/6.1.0-99-amd64"),
		reg("usr/lib/modules/6.1.0-99-amd64/modules.dep", "kernel/a.ko:\n"))
}

func TestSegmentsMicrocodeAndCompressed(t *testing.T) {
	for _, f := range []compress.Format{compress.Zstd, compress.Gzip, compress.XZ, compress.Lzma, compress.LZ4} {
		t.Run(string(f), func(t *testing.T) {
			early := microcode(t)
			main := compressed(t, mainArchive(t), f)
			img := append(bytes.Clone(early), main...)
			img = append(img, make([]byte, 8)...) // NUL padding the kernel skips
			second := compressed(t, archive(t, reg("conf/modules", "dummy\n")), f)
			img = append(img, second...)
			im, err := Read(bytes.NewReader(img), int64(len(img)), WithName("test.img"))
			if err != nil {
				t.Fatal(err)
			}
			want := []Segment{
				{Offset: 0, Length: int64(len(early)), Compression: compress.None, Entries: 4, Trailers: 1, Size: int64(len(early))},
				{Offset: int64(len(early)), Length: int64(len(main)), Compression: f, Entries: 14, Trailers: 1, Padding: 8},
				{Offset: int64(len(early) + len(main) + 8), Length: int64(len(second)), Compression: f, Entries: 1, Trailers: 1},
			}
			if f == compress.None {
				want[0].Padding = 0
			}
			// GNU-style padding to 512 inside the archive counts as trailer padding.
			want[0].Length = im.Segments[0].Length
			want[0].Size = want[0].Length
			want[0].Padding = int64(len(early)) - want[0].Length
			if len(im.Segments) != 3 {
				t.Fatalf("%d segments: %+v", len(im.Segments), im.Segments)
			}
			for i := range want {
				got := im.Segments[i]
				want[i].Size = got.Size
				if got != want[i] {
					t.Errorf("segment %d: %+v, want %+v", i, got, want[i])
				}
			}
			if im.Flavor() != InitramfsTools || fmt.Sprint(im.Kernels()) != "[6.1.0-99-amd64]" || !im.UsrMerged() {
				t.Errorf("flavor %s kernels %v usr-merged %v", im.Flavor(), im.Kernels(), im.UsrMerged())
			}
			n := 0
			err = im.Walk(func(seg int, r *cpio.Record, body io.Reader) error {
				b, err := io.ReadAll(body)
				if err != nil {
					return err
				}
				if len(b) != int(r.FileSize) {
					return fmt.Errorf("%s: %d bytes", r.Name, len(b))
				}
				n++
				return nil
			})
			if err != nil || n != 19 {
				t.Fatalf("walk: %d records, %v", n, err)
			}
		})
	}
}

func TestSegmentErrors(t *testing.T) {
	main := compressed(t, mainArchive(t), compress.Zstd)
	early := microcode(t)
	cases := []struct {
		name string
		img  []byte
		want string
	}{
		{"truncated zstd", main[:len(main)-10], "segment 0 (zstd at offset 0)"},
		{"bad magic", append(bytes.Clone(early), 'x', 'y', 'z', 'w'), fmt.Sprintf("offset %d: invalid magic 78797a77 at start of compressed archive", len(early))},
		{"lzo", append(bytes.Clone(early), 0x89, 'L', 'Z', 'O', 0, 0xd, 0xa, 0x1a, 0xa), "lzo is not supported"},
		{"empty", make([]byte, 16), "no cpio data"},
		{"junk in compressed", compressed(t, append(archive(t, reg("a", "b")), 'j'), compress.Gzip), "junk in compressed archive"},
	}
	for _, c := range cases {
		_, err := Read(bytes.NewReader(c.img), int64(len(c.img)), WithName("test.img"))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "test.img: ") {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

func TestLimits(t *testing.T) {
	big := archive(t, reg("big", strings.Repeat("\x00", 4<<20)))
	img := compressed(t, big, compress.Zstd)
	_, err := Read(bytes.NewReader(img), int64(len(img)), WithLimits(Limits{MaxEntry: 1 << 20}))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `entry "big"`) {
		t.Errorf("entry limit: %v", err)
	}
	_, err = Read(bytes.NewReader(img), int64(len(img)), WithLimits(Limits{MaxTotal: 1 << 20}))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("total limit: %v", err)
	}
}
