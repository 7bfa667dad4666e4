package initramfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

func readImage(t testing.TB, img []byte) *Image {
	t.Helper()
	im, err := Read(bytes.NewReader(img), int64(len(img)), WithName("test.img"))
	if err != nil {
		t.Fatal(err)
	}
	return im
}

func TestExtract(t *testing.T) {
	early := microcode(t)
	main := compressed(t, mainArchive(t), compress.Zstd)
	// An appended segment overrides init and turns a folder into a file.
	over := compressed(t, archive(t, reg("init", "#!/bin/sh\nexec new\n"), file{name: "scripts/init-top", mode: cpio.TypeReg | 0o600, body: "x"}), compress.Gzip)
	img := append(append(bytes.Clone(early), main...), over...)
	im := readImage(t, img)
	dir := t.TempDir()
	st, err := Extract(im, dir, ExtractOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "init")); string(b) != "#!/bin/sh\nexec new\n" {
		t.Errorf("init = %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "scripts/init-top")); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("scripts/init-top: %v %v", fi, err)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "lib")); l != "usr/lib" {
		t.Errorf("lib -> %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "kernel/x86/microcode/GenuineIntel.bin")); len(b) != 600 {
		t.Errorf("microcode %d bytes", len(b))
	}
	if fi, _ := os.Stat(filepath.Join(dir, "usr/lib/modules")); fi == nil || fi.Mode().Perm() != 0o755 || fi.ModTime().Unix() != 1700000000 {
		t.Errorf("usr/lib/modules: %v", fi)
	}
	if st.Symlinks != 2 || st.Files != 6 {
		t.Errorf("stats %+v", st)
	}
}

func TestExtractHardLinksAndDevices(t *testing.T) {
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	w.WriteHeader(&cpio.Record{Name: "bin", Mode: cpio.TypeDir | 0o755, Nlink: 2})
	names := []string{"bin/busybox", "bin/sh", "bin/ls"}
	if err := w.WriteHardLinks(cpio.Record{Ino: 7, Mode: cpio.TypeReg | 0o755, DevMajor: 8}, names, []byte("BUSYBOX")); err != nil {
		t.Fatal(err)
	}
	w.WriteHeader(&cpio.Record{Name: "dev", Mode: cpio.TypeDir | 0o755, Nlink: 2})
	w.WriteHeader(&cpio.Record{Name: "dev/console", Mode: cpio.TypeChar | 0o600, Nlink: 1, RdevMajor: 5, RdevMinor: 1})
	w.WriteHeader(&cpio.Record{Name: "dev/fifo", Mode: cpio.TypeFIFO | 0o644, Nlink: 1})
	w.WriteTrailer()
	w.Close()
	im := readImage(t, buf.Bytes())
	for _, devices := range []bool{false, true} {
		dir := t.TempDir()
		st, err := Extract(im, dir, ExtractOptions{Devices: devices})
		if err != nil {
			t.Fatal(err)
		}
		var ino uint64
		for _, n := range names {
			fi, err := os.Stat(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			s := fi.Sys().(*syscall.Stat_t)
			if ino == 0 {
				ino = s.Ino
			}
			if s.Ino != ino || s.Nlink != 3 || fi.Size() != 7 {
				t.Errorf("%s: ino %d nlink %d size %d", n, s.Ino, s.Nlink, fi.Size())
			}
		}
		fi, err := os.Lstat(filepath.Join(dir, "dev/fifo"))
		if err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
			t.Errorf("fifo: %v %v", fi, err)
		}
		fi, err = os.Lstat(filepath.Join(dir, "dev/console"))
		if devices && os.Geteuid() == 0 {
			if err != nil {
				t.Fatalf("console: %v", err)
			}
			if rdev := fi.Sys().(*syscall.Stat_t).Rdev; fi.Mode()&os.ModeCharDevice == 0 || rdev != 5<<8|1 {
				t.Errorf("console: mode %v rdev %#x", fi.Mode(), rdev)
			}
		} else if err == nil || len(st.Skipped) != 1 {
			t.Errorf("console created without --devices as root: %v %+v", err, st)
		}
	}
}

func TestExtractHostile(t *testing.T) {
	outside := t.TempDir()
	cases := []struct {
		name  string
		files []file
		want  string
	}{
		{"dotdot", []file{reg("../x", "evil")}, `entry "../x": unsafe path: ".." component`},
		{"nested dotdot", []file{dir("a"), reg("a/../../x", "evil")}, `unsafe path`},
		{"absolute", []file{reg("/etc/x", "evil")}, `entry "/etc/x": unsafe path: absolute name`},
		{"symlink escape", []file{symlink("evil", outside), reg("evil/x", "evil")}, `entry "evil/x": unsafe path: parent "evil" is a symlink`},
		{"symlink inside", []file{dir("d"), symlink("l", "d"), reg("l/x", "evil")}, `parent "l" is a symlink`},
		{"relative escape", []file{symlink("up", "../../.."), dir("up/x")}, `parent "up" is a symlink`},
	}
	for _, c := range cases {
		img := compressed(t, archive(t, c.files...), compress.Gzip)
		im := readImage(t, img)
		dir := t.TempDir()
		_, err := Extract(im, dir, ExtractOptions{})
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrUnsafePath) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if !strings.HasPrefix(err.Error(), "test.img: segment 0 (gzip at offset 0): ") {
			t.Errorf("%s: error %q does not name the image and segment", c.name, err)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside: %v", ents)
	}
	// A regular file after a symlink of the same name replaces the symlink
	// instead of writing through it.
	target := filepath.Join(outside, "victim")
	os.WriteFile(target, []byte("safe"), 0o644)
	img := compressed(t, archive(t, symlink("x", target), reg("x", "evil")), compress.Gzip)
	dir := t.TempDir()
	if _, err := Extract(readImage(t, img), dir, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "safe" {
		t.Fatalf("wrote through a symlink: %q", b)
	}
	if fi, _ := os.Lstat(filepath.Join(dir, "x")); fi == nil || !fi.Mode().IsRegular() {
		t.Fatalf("x not replaced by a file: %v", fi)
	}
}

func TestExtractLimit(t *testing.T) {
	img := compressed(t, archive(t, reg("a", strings.Repeat("a", 1000)), reg("b", strings.Repeat("b", 1000))), compress.Zstd)
	_, err := Extract(readImage(t, img), t.TempDir(), ExtractOptions{MaxBytes: 1500})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `entry "b"`) {
		t.Fatalf("limit: %v", err)
	}
}
