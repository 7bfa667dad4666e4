package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// testImage writes an image: an early microcode archive, a zstd main archive
// and, when extra is given, a gzip archive of extra records appended.
func testImage(t *testing.T, extra ...cpio.Record) string {
	t.Helper()
	archive := func(recs []cpio.Record, bodies map[string]string) []byte {
		var buf bytes.Buffer
		w := cpio.NewWriter(&buf)
		for _, r := range recs {
			r.FileSize = uint32(len(bodies[r.Name]))
			if err := w.WriteHeader(&r); err != nil {
				t.Fatal(err)
			}
			w.Write([]byte(bodies[r.Name]))
		}
		w.WriteTrailer()
		w.PadTo(512)
		return buf.Bytes()
	}
	d := func(n string) cpio.Record { return cpio.Record{Name: n, Mode: cpio.TypeDir | 0o755, Nlink: 2} }
	f := func(n string) cpio.Record { return cpio.Record{Name: n, Mode: cpio.TypeReg | 0o644, Nlink: 1} }
	early := archive([]cpio.Record{d("kernel"), d("kernel/x86"), d("kernel/x86/microcode"), f("kernel/x86/microcode/GenuineIntel.bin")},
		map[string]string{"kernel/x86/microcode/GenuineIntel.bin": "UCODE"})
	main := archive([]cpio.Record{d("."), d("conf"), f("conf/initramfs.conf"), d("usr"), d("usr/lib"),
		{Name: "lib", Mode: cpio.TypeSymlink | 0o777, Nlink: 1}, d("usr/lib/modules"), d("usr/lib/modules/6.1.0-9-amd64"), f("init")},
		map[string]string{"conf/initramfs.conf": "MODULES=most\n", "lib": "usr/lib", "init": "#!/bin/sh\n"})
	z, err := compress.Compress(main, compress.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	img := append(early, z...)
	if len(extra) > 0 {
		g, err := compress.Compress(archive(extra, map[string]string{}), compress.Gzip)
		if err != nil {
			t.Fatal(err)
		}
		img = append(img, g...)
	}
	p := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInitramfsLs(t *testing.T) {
	img := testImage(t, cpio.Record{Name: "conf/modules", Mode: cpio.TypeReg | 0o644, Nlink: 1}, cpio.Record{Name: "init", Mode: cpio.TypeReg | 0o755, Nlink: 1})
	out, stderr, code := kmodctl(t, "initramfs", "ls", img)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := "kernel\nkernel/x86\nkernel/x86/microcode\nkernel/x86/microcode/GenuineIntel.bin\n.\nconf\nconf/initramfs.conf\nusr\nusr/lib\nlib\nusr/lib/modules\nusr/lib/modules/6.1.0-9-amd64\ninit\nconf/modules\n"
	if out != want {
		t.Fatalf("ls:\n%s\nwant:\n%s", out, want)
	}
}

func TestInitramfsInfo(t *testing.T) {
	img := testImage(t)
	out, stderr, code := kmodctl(t, "initramfs", "info", img)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, s := range []string{"flavor:      initramfs-tools", "kernels:     6.1.0-9-amd64", "usr-merged:  yes", "segments:    2", " none ", " zstd "} {
		if !strings.Contains(out, s) {
			t.Errorf("info lacks %q:\n%s", s, out)
		}
	}
	out, stderr, code = kmodctl(t, "initramfs", "info", "--json", img)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var info struct {
		Image     string   `json:"image"`
		Flavor    string   `json:"flavor"`
		Kernels   []string `json:"kernels"`
		UsrMerged bool     `json:"usr_merged"`
		Entries   int      `json:"entries"`
		Segments  []struct {
			Offset      int64  `json:"offset"`
			Length      int64  `json:"length"`
			Compression string `json:"compression"`
			Entries     int    `json:"entries"`
			Size        int64  `json:"uncompressed_size"`
		} `json:"segments"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if info.Image != img || info.Flavor != "initramfs-tools" || len(info.Kernels) != 1 || !info.UsrMerged || info.Entries != 13 ||
		len(info.Segments) != 2 || info.Segments[0].Compression != "none" || info.Segments[1].Compression != "zstd" ||
		info.Segments[1].Entries != 9 || info.Segments[1].Offset != 1024 {
		t.Errorf("info: %+v", info)
	}
}

func TestInitramfsExtract(t *testing.T) {
	img := testImage(t)
	dir := filepath.Join(t.TempDir(), "out")
	out, stderr, code := kmodctl(t, "initramfs", "extract", img, dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "files") {
		t.Errorf("extract summary: %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "conf/initramfs.conf")); err != nil || string(b) != "MODULES=most\n" {
		t.Errorf("conf/initramfs.conf: %q %v", b, err)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "lib")); l != "usr/lib" {
		t.Errorf("lib -> %q", l)
	}
	// A hostile appended segment: the error names the image, the segment
	// and the entry.
	bad := testImage(t, cpio.Record{Name: "../escape", Mode: cpio.TypeReg | 0o644, Nlink: 1})
	_, stderr, code = kmodctl(t, "initramfs", "extract", bad, filepath.Join(t.TempDir(), "x"))
	if code == 0 || !strings.Contains(stderr, bad+": segment 2 (gzip at offset ") || !strings.Contains(stderr, `entry "../escape": unsafe path`) {
		t.Errorf("hostile extract: exit %d: %s", code, stderr)
	}
}

func TestInitramfsErrors(t *testing.T) {
	img := testImage(t)
	b, _ := os.ReadFile(img)
	cut := filepath.Join(t.TempDir(), "cut.img")
	os.WriteFile(cut, b[:len(b)-20], 0o644)
	for _, args := range [][]string{{"ls", cut}, {"info", cut}, {"extract", cut, t.TempDir()}} {
		_, stderr, code := kmodctl(t, append([]string{"initramfs"}, args...)...)
		if code != 1 || !strings.HasPrefix(stderr, "kmodctl: "+cut+": segment 1 (zstd at offset 1024): ") {
			t.Errorf("%v: exit %d: %s", args, code, stderr)
		}
	}
	_, stderr, code := kmodctl(t, "initramfs", "ls", filepath.Join(t.TempDir(), "missing.img"))
	if code != 1 || !strings.Contains(stderr, "missing.img: no such file") {
		t.Errorf("missing image: exit %d: %s", code, stderr)
	}
}

// TestInitramfsLsFixture: the early microcode archive and the main archive of
// the real zstd image are both listed, each path once.
func TestInitramfsLsFixture(t *testing.T) {
	img := fixture.Path(t, "initrd/initramfs-tools-zstd-ucode.img")
	out, stderr, code := kmodctl(t, "initramfs", "ls", img)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	seen := map[string]bool{}
	for _, l := range lines {
		if seen[l] {
			t.Errorf("%q listed twice", l)
		}
		seen[l] = true
	}
	for _, p := range []string{"kernel/x86/microcode/GenuineIntel.bin", ".", "init", "conf/initramfs.conf", "usr/bin/busybox"} {
		if !seen[p] {
			t.Errorf("%q not listed", p)
		}
	}
}
