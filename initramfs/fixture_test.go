package initramfs

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// The initrd images `make fixtures` generates with the distributions' own
// tools (scripts/fixtures.sh initrd).
var fixtureImages = []struct {
	rel    string
	flavor Flavor
	comps  []compress.Format
}{
	{"initrd/initramfs-tools-zstd.img", InitramfsTools, []compress.Format{compress.Zstd}},
	{"initrd/initramfs-tools-gzip.img", InitramfsTools, []compress.Format{compress.Gzip}},
	{"initrd/initramfs-tools-xz.img", InitramfsTools, []compress.Format{compress.XZ}},
	{"initrd/initramfs-tools-zstd-ucode.img", InitramfsTools, []compress.Format{compress.None, compress.Zstd}},
	{"initrd/dracut.img", Dracut, []compress.Format{compress.Gzip}},
}

// TestFixtureImages: segments, flavor, kernel, usr-merge and Debian's busybox
// hard link group (256 names, data once) of real images; every segment's
// stream is reproduced byte for byte by reading and rewriting it, so device
// nodes, hard links and symlinks keep their metadata exactly.
func TestFixtureImages(t *testing.T) {
	kver := fixture.KVER(t)
	for _, fi := range fixtureImages {
		t.Run(filepath.Base(fi.rel), func(t *testing.T) {
			shortImages(t, fi.rel)
			im, err := Open(fixture.Path(t, fi.rel))
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			var comps []compress.Format
			for _, s := range im.Segments {
				comps = append(comps, s.Compression)
			}
			if fmt.Sprint(comps) != fmt.Sprint(fi.comps) {
				t.Errorf("segments %+v, want compressions %v", im.Segments, fi.comps)
			}
			if end := im.Segments[len(im.Segments)-1]; end.Offset+end.Length+end.Padding != im.Size {
				t.Errorf("segments end at %d, image has %d bytes", end.Offset+end.Length+end.Padding, im.Size)
			}
			if im.Flavor() != fi.flavor || fmt.Sprint(im.Kernels()) != "["+kver+"]" || !im.UsrMerged() {
				t.Errorf("flavor %s, kernels %v, usr-merged %v", im.Flavor(), im.Kernels(), im.UsrMerged())
			}
			for i := range im.Segments {
				stream := segmentStream(t, im, i)
				if re := rewriteStream(t, stream); !bytes.Equal(re, stream) {
					t.Errorf("segment %d: rewrite of %d bytes differs", i, len(stream))
				}
			}
			if fi.flavor != InitramfsTools {
				return
			}
			groups := map[cpio.LinkKey][]*Entry{}
			for i := range im.Entries {
				if e := &im.Entries[i]; e.IsHardLink() {
					groups[e.Key()] = append(groups[e.Key()], e)
				}
			}
			var busybox []*Entry
			for _, g := range groups {
				if len(g) > len(busybox) {
					busybox = g
				}
			}
			if len(busybox) != 256 {
				t.Fatalf("largest hard link group has %d names, want busybox's 256", len(busybox))
			}
			for i, e := range busybox {
				if e.Nlink != 256 || (i < 255) != (e.FileSize == 0) {
					t.Errorf("busybox link %d %s: nlink %d size %d", i, e.Name, e.Nlink, e.FileSize)
				}
			}
		})
	}
}

// shortImages skips the initrd image rel (a path under initrd/, or an
// Initrd name) under -short (the alternate-kernel run of make test) unless
// it is the zstd or dracut image: the others differ from zstd only in
// compression (gzip, xz, the early-microcode cpio in front), while what
// depends on the kernel is the module tree inside, the same in all of them;
// the main run reads every image.
func shortImages(t *testing.T, rel string) {
	t.Helper()
	name := strings.TrimSuffix(filepath.Base(rel), ".img")
	if testing.Short() && name != fixture.InitrdToolsZstd && name != fixture.InitrdDracut {
		t.Skip("-short: the zstd and dracut images only")
	}
}

// TestFixtureHookImagesCopied: initrd/'s zstd and dracut images are the
// ones the packages' hooks wrote into the rootfs trees, byte for byte, so
// what is proven of the copies holds for the hooks' images.
func TestFixtureHookImagesCopied(t *testing.T) {
	kver := fixture.KVER(t)
	for copied, hook := range map[string]string{
		"initrd/initramfs-tools-zstd.img": "rootfs/boot/initrd.img-" + kver,
		"initrd/dracut.img":               "rootfs-dracut/boot/initrd.img-" + kver,
	} {
		a, err := os.ReadFile(fixture.Path(t, copied))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(fixture.Path(t, hook))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s", copied, hook)
		}
	}
}

// lsinitramfs runs the fixture rootfs's own lsinitramfs (initramfs-tools'
// unmkinitramfs) on the host's tools, temporary files in a test folder.
func lsinitramfs(t *testing.T, image string) []string {
	t.Helper()
	root := fixture.Path(t, "rootfs")
	script := filepath.Join(root, "usr/bin/unmkinitramfs")
	if _, err := os.Stat(script); err != nil {
		fixture.Missing(t, script)
	}
	for _, tool := range []string{"cpio", "zstd", "gzip", "xzcat"} {
		fixture.Tool(t, tool)
	}
	cmd := exec.Command("sh", script, "--list", "--", image)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("unmkinitramfs --list %s: %v", image, err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
}

// lsinitrd runs the dracut fixture's lsinitrd and returns the paths of its
// listing (cpio -tv lines between the last two separators).
func lsinitrd(t *testing.T, image string) []string {
	t.Helper()
	script := filepath.Join(fixture.Path(t, "rootfs-dracut"), "usr/bin/lsinitrd")
	if _, err := os.Stat(script); err != nil {
		fixture.Missing(t, script)
	}
	cmd := exec.Command(fixture.Tool(t, "bash"), script, image)
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("lsinitrd %s: %v", image, err)
	}
	lines := strings.Split(string(out), "\n")
	var seps []int
	for i, l := range lines {
		if strings.HasPrefix(l, "=====") {
			seps = append(seps, i)
		}
	}
	if len(seps) < 2 {
		t.Fatalf("lsinitrd output without a listing:\n%s", out)
	}
	var paths []string
	for _, l := range lines[seps[len(seps)-2]+1 : seps[len(seps)-1]] {
		f := strings.Fields(l)
		n := 8
		if strings.HasPrefix(l, "c") || strings.HasPrefix(l, "b") {
			n = 9 // "major, minor"
		}
		if len(f) <= n {
			continue
		}
		name := strings.Join(f[n:], " ")
		if i := strings.Index(name, " -> "); i >= 0 && strings.HasPrefix(l, "l") {
			name = name[:i]
		}
		paths = append(paths, name)
	}
	return paths
}

func sortedSet(s []string) []string {
	m := map[string]bool{}
	for _, x := range s {
		m[x] = true
	}
	out := make([]string, 0, len(m))
	for x := range m {
		out = append(out, x)
	}
	sort.Strings(out)
	return out
}

func compareSets(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := sortedSet(got), sortedSet(want)
	if len(got) != len(g) {
		t.Errorf("List repeats paths: %d names, %d distinct", len(got), len(g))
	}
	if strings.Join(g, "\n") == strings.Join(w, "\n") {
		return
	}
	gm := map[string]bool{}
	for _, x := range g {
		gm[x] = true
	}
	wm := map[string]bool{}
	for _, x := range w {
		wm[x] = true
		if !gm[x] {
			t.Errorf("%s lists %q, we do not", what, x)
		}
	}
	for _, x := range g {
		if !wm[x] {
			t.Errorf("we list %q, %s does not", x, what)
		}
	}
}

// TestFixtureListMatchesDistroListers: our List equals, as a set, what
// lsinitramfs (initramfs-tools) and lsinitrd (dracut) print for the
// unmodified images, the ones the packages' hooks wrote into the rootfs
// fixtures included.
// The images the hooks wrote into the rootfs trees are not listed again:
// scripts/fixtures.sh copies them byte for byte to initrd/ (zstd and
// dracut.img), and a test below checks they are the same.
func TestFixtureListMatchesDistroListers(t *testing.T) {
	for _, fi := range fixtureImages {
		rel := fi.rel
		t.Run(strings.ReplaceAll(rel, "/", "_"), func(t *testing.T) {
			shortImages(t, rel)
			p := fixture.Path(t, rel)
			im, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			got := im.List()
			compareSets(t, "lsinitramfs", got, lsinitramfs(t, p))
			if strings.Contains(rel, "dracut") {
				compareSets(t, "lsinitrd", got, lsinitrd(t, p))
			}
		})
	}
}

// TestFixtureExtract unpacks the initramfs-tools image and compares a few
// files with the rootfs they came from.
func TestFixtureExtract(t *testing.T) {
	kver := fixture.KVER(t)
	im, err := Open(fixture.Path(t, "initrd/initramfs-tools-zstd-ucode.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	dir := t.TempDir()
	st, err := Extract(im, dir, ExtractOptions{Devices: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.HardLinks < 255 || st.Files < 100 {
		t.Errorf("stats %+v", st)
	}
	root := fixture.Path(t, "rootfs")
	for _, rel := range []string{"usr/bin/busybox", "usr/lib/modules/" + kver + "/modules.order"} {
		want, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, want %d (%v)", rel, len(got), len(want), err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kernel/x86/microcode/GenuineIntel.bin")); err != nil || !bytes.HasPrefix(b, []byte("KMODTEST-UCODE")) {
		t.Errorf("microcode: %v", err)
	}
	var st1, st2 os.FileInfo
	st1, _ = os.Stat(filepath.Join(dir, "usr/bin/busybox"))
	st2, _ = os.Stat(filepath.Join(dir, "usr/bin/sh"))
	if st1 == nil || st2 == nil || !os.SameFile(st1, st2) {
		t.Errorf("busybox and sh are not one inode")
	}
}
