package initramfs

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// targetTree is a target root for --modules-dir: lib/modules/KVER holding
// kmodtest_base (kmodtest_dep's dependency, absent from the images) and
// lib/firmware holding kmodtest_param's firmware.
func targetTree(t *testing.T) (modulesDir string, firmware []byte) {
	t.Helper()
	kver := fixture.KVER(t)
	root := t.TempDir()
	modulesDir = filepath.Join(root, "lib/modules", kver)
	firmware = []byte("kmodtest firmware blob\n")
	for p, b := range map[string][]byte{
		filepath.Join(modulesDir, "extra/kmodtest_base.ko"):       readFile(t, fixture.TestModule(t, "kmodtest_base")),
		filepath.Join(root, "lib/firmware/kmodtest/firmware.bin"): firmware,
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return modulesDir, firmware
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(t testing.TB, p string) [32]byte {
	t.Helper()
	return sha256.Sum256(readFile(t, p))
}

// entryState is what a path holds after all archives: its last record and
// the SHA-256 of its data (for hard link groups: of the inode's data).
type entryState struct {
	rec    cpio.Record
	target string
	sum    [32]byte
}

// finalState reads an image the way the kernel unpacks it, with our model.
func finalState(t *testing.T, path string) (map[string]entryState, *Image) {
	t.Helper()
	im, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	j := &injection{im: im, raw: map[int][]byte{}}
	for i, seg := range im.Segments {
		if seg.Compression == compress.None {
			j.raw[i] = im.Bytes()[seg.Offset : seg.Offset+seg.Length]
		}
	}
	if err := j.buildTree(nil, path); err != nil {
		t.Fatal(err)
	}
	out := map[string]entryState{}
	for _, n := range j.vt.nodes() {
		s := entryState{rec: n.rec, target: n.target}
		if n.ino != nil {
			s.sum = sha256.Sum256(n.ino.data)
		}
		out[n.path()] = s
	}
	return out, im
}

// modprobeDepends runs the host's modprobe on an extracted tree.
func modprobeDepends(t *testing.T, root, kver, module string) string {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, "modprobe"), "-d", root, "-S", kver, "--show-depends", module).CombinedOutput()
	if err != nil {
		t.Fatalf("modprobe --show-depends %s: %v\n%s", module, err, out)
	}
	return string(out)
}

// TestInjectFixtures injects kmodtest_dep (its dependency kmodtest_base
// from --modules-dir), kmodtest_param (with its firmware) and
// kmodtest_marker into each fixture image in both modes with --load, checks
// the result and (unless -short) boots it to the marker's console line.
func TestInjectFixtures(t *testing.T) {
	kver := fixture.KVER(t)
	modulesDir, firmware := targetTree(t)
	mods := []string{fixture.TestModule(t, "kmodtest_dep"), fixture.TestModule(t, "kmodtest_param"), fixture.TestModule(t, "kmodtest_marker")}
	for _, name := range fixture.InitrdNames {
		for _, mode := range []InjectMode{Append, Rewrite} {
			t.Run(name+"/"+string(mode), func(t *testing.T) {
				shortImages(t, name)
				t.Parallel()
				src := fixture.Initrd(t, name)
				img := filepath.Join(t.TempDir(), "initrd.img")
				fixture.CopyFile(t, src, img)
				orig := readFile(t, src)
				before, origIm := finalState(t, src)
				res, err := Inject(img, WithModules(mods...), WithModulesDir(modulesDir), WithMode(mode), WithLoad(true))
				if err != nil {
					t.Fatal(err)
				}
				checkInjected(t, name, mode, kver, img, orig, origIm, before, res, firmware)
				if !testing.Short() && !t.Failed() {
					bootMarker(t, name, img)
				}
			})
		}
	}
}

func checkInjected(t *testing.T, name string, mode InjectMode, kver, img string, orig []byte, origIm *Image, before map[string]entryState, res *InjectResult, firmware []byte) {
	out := readFile(t, img)
	if res.SizeBefore != int64(len(orig)) || res.SizeAfter != int64(len(out)) {
		t.Errorf("sizes %d -> %d, files %d -> %d", res.SizeBefore, res.SizeAfter, len(orig), len(out))
	}
	moddir := "usr/lib/modules/" + kver
	if len(res.Modules) != 3 || len(res.Dependencies) != 1 || res.Dependencies[0].Path != moddir+"/extra/kmodtest_base.ko" ||
		len(res.Firmware) != 1 || res.Firmware[0].Path != "usr/lib/firmware/kmodtest/firmware.bin" || len(res.MissingFirmware) != 0 {
		t.Errorf("result: %+v", res)
	}
	// Existing bytes: all of them (append), the early microcode (rewrite).
	switch mode {
	case Append:
		if !bytes.HasPrefix(out, orig) {
			t.Errorf("append changed existing bytes")
		}
	case Rewrite:
		keep := origIm.Segments[res.KeptSegments].Offset
		if !bytes.Equal(out[:keep], orig[:keep]) {
			t.Errorf("rewrite changed the %d bytes of the early archives", keep)
		}
		if name == fixture.InitrdToolsZstdUcode && res.KeptSegments != 1 {
			t.Errorf("kept %d early segments, want the microcode one", res.KeptSegments)
		}
	}
	if name == fixture.InitrdToolsZstdUcode {
		s := origIm.Segments[0]
		if !bytes.Equal(out[s.Offset:s.Offset+s.Length], orig[s.Offset:s.Offset+s.Length]) {
			t.Errorf("the early microcode archive changed")
		}
	}
	after, im := finalState(t, img)
	// Our listing: the union of the old paths and the new ones.
	listed := map[string]bool{}
	for _, p := range im.List() {
		listed[cleanPath(p)] = true
	}
	for p := range before {
		if !listed[p] {
			t.Errorf("%s no longer listed", p)
		}
	}
	added := []string{moddir + "/updates/kmodtest_dep.ko", moddir + "/updates/kmodtest_param.ko", moddir + "/updates/kmodtest_marker.ko",
		moddir + "/extra/kmodtest_base.ko", "usr/lib/firmware/kmodtest/firmware.bin", moddir + "/modules.dep.bin", res.LoadConfig}
	for _, p := range added {
		if !listed[p] {
			t.Errorf("%s not listed", p)
		}
	}
	// Unchanged paths keep their records and data exactly (rewrite:
	// hard links, symlinks and device nodes included).
	overridden := map[string]bool{}
	for _, p := range res.Overridden {
		overridden[p] = true
	}
	for p, b := range before {
		a, ok := after[p]
		if overridden[p] {
			continue
		}
		if !ok {
			t.Errorf("%s lost", p)
			continue
		}
		if a.rec != b.rec || a.target != b.target || a.sum != b.sum {
			t.Errorf("%s changed: %+v %q -> %+v %q", p, b.rec, b.target, a.rec, a.target)
		}
	}
	// The distributions' listers still read the image; they stop after the
	// first archives, so an appended one stays invisible to them.
	var lister []string
	if flavorOf(name) == Dracut {
		lister = lsinitrd(t, img)
	} else {
		lister = lsinitramfs(t, img)
	}
	seen := map[string]bool{}
	for _, p := range lister {
		seen[cleanPath(p)] = true
	}
	for _, p := range added {
		if _, existed := before[p]; existed {
			continue
		}
		if seen[p] != (mode == Rewrite) {
			t.Errorf("lister sees %s: %v (mode %s)", p, seen[p], mode)
		}
	}
	if mode == Rewrite {
		compareSets(t, "lister", im.List(), lister)
	}
	// Extracting gives the bytes we put in; modprobe resolves the
	// dependency with the depmod files we generated.
	root := t.TempDir()
	if _, err := Extract(im, root, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, m := range res.Modules {
		if got := readFile(t, filepath.Join(root, m.Path)); !bytes.Equal(got, readFile(t, m.Source)) {
			t.Errorf("%s: extracted bytes differ from %s", m.Path, m.Source)
		}
	}
	if got := readFile(t, filepath.Join(root, "usr/lib/firmware/kmodtest/firmware.bin")); !bytes.Equal(got, firmware) {
		t.Errorf("firmware differs")
	}
	deps := modprobeDepends(t, root, kver, "kmodtest_dep")
	if !strings.Contains(deps, "extra/kmodtest_base.ko") || !strings.Contains(deps, "updates/kmodtest_dep.ko") {
		t.Errorf("modprobe --show-depends kmodtest_dep:\n%s", deps)
	}
	// Early loading.
	conf := string(readFile(t, filepath.Join(root, res.LoadConfig)))
	switch flavorOf(name) {
	case InitramfsTools:
		if res.LoadConfig != "conf/modules" {
			t.Errorf("load config %s", res.LoadConfig)
		}
	case Dracut:
		if res.LoadConfig != dracutModulesLoadFile {
			t.Errorf("load config %s", res.LoadConfig)
		}
	}
	if old, ok := before[res.LoadConfig]; ok && old.rec.FileSize > 0 {
		t.Logf("%s existed (%d bytes)", res.LoadConfig, old.rec.FileSize)
	}
	for _, m := range []string{"kmodtest_dep", "kmodtest_param", "kmodtest_marker"} {
		if !strings.Contains(conf, m+"\n") {
			t.Errorf("%s lacks %s:\n%s", res.LoadConfig, m, conf)
		}
	}
}

// TestInjectDepmodMatchesKmod: the depmod files Inject writes into the image
// equal those the host's depmod (kmod) writes for the same extracted tree.
func TestInjectDepmodMatchesKmod(t *testing.T) {
	kver := fixture.KVER(t)
	depmod := fixture.Tool(t, "depmod")
	modulesDir, _ := targetTree(t)
	for _, mode := range []InjectMode{Append, Rewrite} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			img := filepath.Join(t.TempDir(), "initrd.img")
			fixture.CopyFile(t, fixture.Initrd(t, fixture.InitrdToolsZstd), img)
			res, err := Inject(img, WithModules(fixture.TestModule(t, "kmodtest_dep"), fixture.TestModule(t, "kmodtest_param")), WithModulesDir(modulesDir), WithMode(mode))
			if err != nil {
				t.Fatal(err)
			}
			im, err := Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			root := t.TempDir()
			if _, err := Extract(im, root, ExtractOptions{}); err != nil {
				t.Fatal(err)
			}
			// kmod's depmod over a copy of the extracted module tree, with
			// no configuration (the image has none).
			base := t.TempDir()
			ours := filepath.Join(root, "usr/lib/modules", kver)
			theirs := filepath.Join(base, "lib/modules", kver)
			if out, err := exec.Command("cp", "-a", ours, filepath.Dir(theirs)+"/").CombinedOutput(); err != nil {
				os.MkdirAll(filepath.Dir(theirs), 0o755)
				if out, err := exec.Command("cp", "-a", ours, filepath.Dir(theirs)+"/").CombinedOutput(); err != nil {
					t.Fatalf("cp: %v %s", err, out)
				}
				_ = out
			}
			if out, err := exec.Command(depmod, "-b", base, "-C", t.TempDir(), kver).CombinedOutput(); err != nil {
				t.Fatalf("depmod: %v\n%s", err, out)
			}
			if len(res.Depmod) == 0 {
				t.Fatal("no depmod file written")
			}
			for _, f := range []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
				"modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname"} {
				want, err := os.ReadFile(filepath.Join(theirs, f))
				if err != nil {
					continue
				}
				if got := readFile(t, filepath.Join(ours, f)); !bytes.Equal(got, want) {
					t.Errorf("%s differs from kmod's (%d vs %d bytes)", f, len(got), len(want))
				}
			}
		})
	}
}

// TestInjectRealDependencies: a Debian module the image lacks, with its
// dependency chain from the rootfs's own module tree: snd-hda-intel pulls
// snd-hda-codec, snd-hda-core, snd-pcm, ... (snd and soundcore are in the
// image already).
func TestInjectRealDependencies(t *testing.T) {
	kver := fixture.KVER(t)
	tree := filepath.Join(fixture.Rootfs(t), "lib/modules", kver)
	mod := filepath.Join(tree, "kernel/sound/pci/hda/snd-hda-intel.ko")
	img := filepath.Join(t.TempDir(), "initrd.img")
	fixture.CopyFile(t, fixture.Initrd(t, fixture.InitrdToolsZstd), img)
	res, err := Inject(img, WithModules(mod), WithModulesDir(tree))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range res.Dependencies {
		names = append(names, d.Name)
		if !strings.HasPrefix(d.Path, "usr/lib/modules/"+kver+"/kernel/sound/") {
			t.Errorf("dependency %s at %s", d.Name, d.Path)
		}
	}
	t.Logf("dependencies: %v; missing firmware: %v", names, res.MissingFirmware)
	for _, want := range []string{"snd_hda_codec", "snd_hda_core", "snd_pcm"} {
		if !strings.Contains(" "+strings.Join(names, " ")+" ", " "+want+" ") {
			t.Errorf("dependency %s not pulled: %v", want, names)
		}
	}
	im, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	root := t.TempDir()
	if _, err := Extract(im, root, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	deps := modprobeDepends(t, root, kver, "snd_hda_intel")
	for _, n := range []string{"soundcore.ko", "snd.ko", "snd-pcm.ko", "snd-hda-core.ko", "updates/snd-hda-intel.ko"} {
		if !strings.Contains(deps, n) {
			t.Errorf("modprobe --show-depends lacks %s:\n%s", n, deps)
		}
	}
}

// TestInjectRewriteDeterministic: the same inputs give the same bytes.
func TestInjectRewriteDeterministic(t *testing.T) {
	var sums [][32]byte
	for i := 0; i < 2; i++ {
		img, _ := injectCopy(t, fixture.InitrdToolsZstdUcode, Rewrite, true)
		sums = append(sums, sha(t, img))
	}
	if sums[0] != sums[1] {
		t.Fatal("two rewrites of the same inputs differ")
	}
}

// TestInjectRewriteAfterAppend: rewriting an appended image merges both
// archives; busybox's group, split by a replaced name, keeps the other 255
// names with busybox's data and its link count follows.
func TestInjectRewriteAfterAppend(t *testing.T) {
	replacement := []byte("#!/bin/sh\necho not busybox\n")
	img, _ := injectCopy(t, fixture.InitrdToolsZstd, Append, false, WithFile(busyboxLink, replacement, 0o755))
	before, _ := finalState(t, img)
	if _, err := Inject(img, WithModules(fixture.TestModule(t, "kmodtest_base")), WithMode(Rewrite)); err != nil {
		t.Fatal(err)
	}
	after, im := finalState(t, img)
	if len(im.Segments) != 1 {
		t.Errorf("rewrite left %d segments", len(im.Segments))
	}
	bb, sh := after["usr/bin/busybox"], after["usr/bin/sh"]
	if bb.sum != before["usr/bin/busybox"].sum || sh.sum != bb.sum || bb.rec.Nlink != 255 || sh.rec.Ino != bb.rec.Ino {
		t.Errorf("busybox %+v, sh %+v", bb.rec, sh.rec)
	}
	if x := after[busyboxLink]; x.sum != sha256.Sum256(replacement) || x.rec.Nlink != 1 {
		t.Errorf("%s: %+v", busyboxLink, x.rec)
	}
}

// TestInjectBackupAndOwner: the image keeps its mode and owner, the backup
// holds the old bytes.
func TestInjectBackupAndOwner(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "initrd.img")
	fixture.CopyFile(t, fixture.Initrd(t, fixture.InitrdToolsZstd), img)
	if err := os.Chmod(img, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		if err := os.Chown(img, 1234, 5678); err != nil {
			t.Fatal(err)
		}
	}
	old := sha(t, img)
	res, err := Inject(img, WithModules(fixture.TestModule(t, "kmodtest_marker")), WithBackup())
	if err != nil {
		t.Fatal(err)
	}
	if res.Backup != img+".bak" || sha(t, img+".bak") != old || sha(t, img) == old {
		t.Errorf("backup %q", res.Backup)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	if sys := st.Sys().(*syscall.Stat_t); os.Getuid() == 0 && (sys.Uid != 1234 || sys.Gid != 5678) {
		t.Errorf("owner %d:%d", sys.Uid, sys.Gid)
	}
	// A second backup replaces the first.
	if _, err := Inject(img, WithModules(fixture.TestModule(t, "kmodtest_base")), WithBackupFile(filepath.Join(dir, "keep.img"))); err != nil {
		t.Fatal(err)
	}
	if sha(t, filepath.Join(dir, "keep.img")) == old {
		t.Error("custom backup holds the first image")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("left files: %v", ents)
	}
}

// TestInjectErrors: bad inputs fail with a clear error and leave the image
// byte for byte as it was.
func TestInjectErrors(t *testing.T) {
	kver := fixture.KVER(t)
	marker := fixture.TestModule(t, "kmodtest_marker")
	good := readFile(t, fixture.Initrd(t, fixture.InitrdToolsZstd))
	foreign := fixture.Path(t, "foreign/armhf/dummy.ko")
	mainTree := func(extra ...file) []byte {
		files := append([]file{dir("."), dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"), dir("conf"),
			reg("conf/initramfs.conf", "MODULES=most\n"), dir("usr/lib/modules"), dir("usr/lib/modules/" + kver)}, extra...)
		return compressed(t, archive(t, files...), compress.Zstd)
	}
	for _, tc := range []struct {
		name  string
		image []byte
		opts  []InjectOption
		want  string
		is    error
	}{
		{"truncated", good[:len(good)/2], nil, "unexpected EOF", io.ErrUnexpectedEOF},
		{"bad magic", append([]byte("MZ\x90\x00not an initramfs"), good...), nil, "invalid magic", nil},
		{"traversal", mainTree(reg("../../etc/evil", "x")), nil, `climbs out of the root`, ErrHostile},
		{"symlink escape", mainTree(symlink("usr/lib/modules/"+kver+"/updates", "../../../../../tmp")), nil, "escapes the image root", ErrHostile},
		{"zstd bomb", append(microcode(t), zstdRLEBomb(24<<10)...), nil, "more than", ErrTooLarge},
		{"vermagic", good, []InjectOption{WithModules(foreign)}, "dummy", nil},
		{"missing dependency", good, []InjectOption{WithModules(fixture.TestModule(t, "kmodtest_dep"))}, "kmodtest_base", nil},
		{"unknown flavor", compressed(t, archive(t, dir("."), dir("lib"), dir("lib/modules"), dir("lib/modules/"+kver)), compress.Gzip),
			[]InjectOption{WithLoad(true)}, "flavor is unknown", nil},
		{"no kernel", compressed(t, archive(t, dir("."), dir("conf"), reg("conf/initramfs.conf", "")), compress.Gzip), nil, "no lib/modules", nil},
		{"other kernel", good, []InjectOption{WithKernelRelease("5.10.0-99-amd64")}, "no modules for kernel 5.10.0-99-amd64", nil},
		{"bad mode", good, []InjectOption{WithMode("merge")}, "unknown mode", nil},
		{"bad release", good, []InjectOption{WithKernelRelease("../5.10.0-99-amd64")}, "invalid kernel release", nil},
		{"empty backup path", good, []InjectOption{WithBackupFile("")}, "empty backup path", nil},
		{"negative limit", good, []InjectOption{WithInjectLimits(Limits{MaxTotal: -1})}, "negative limit", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "initrd.img")
			if err := os.WriteFile(img, tc.image, 0o644); err != nil {
				t.Fatal(err)
			}
			before := sha(t, img)
			opts := append([]InjectOption{WithModules(marker)}, tc.opts...)
			_, err := Inject(img, opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			t.Logf("%v", err)
			if sha(t, img) != before {
				t.Fatal("the image changed")
			}
			ents, _ := os.ReadDir(filepath.Dir(img))
			if len(ents) != 1 {
				t.Errorf("left files: %v", ents)
			}
		})
	}
}

// TestInjectMkinitcpio: MODULES in /config is merged (no mkinitcpio fixture:
// a hand-made image with mkinitcpio's layout).
func TestInjectMkinitcpio(t *testing.T) {
	kver := fixture.KVER(t)
	img := filepath.Join(t.TempDir(), "initramfs-linux.img")
	data := compressed(t, archive(t, dir("."), dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"), dir("hooks"),
		reg("buildconfig", "HOOKS=(base udev)\n"), reg("config", "MODULES=\"ext4\"\nHOOKS=\"udev\"\n"),
		dir("usr/lib/modules"), dir("usr/lib/modules/"+kver)), compress.Zstd)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Inject(img, WithModules(fixture.TestModule(t, "kmodtest_marker")), WithLoad(true))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := finalState(t, img)
	im, _ := Open(img)
	defer im.Close()
	var conf []byte
	im.Walk(func(_ int, r *cpio.Record, body io.Reader) error {
		if r.Name == "config" {
			conf, _ = io.ReadAll(body)
		}
		return nil
	})
	if res.Flavor != Mkinitcpio || res.LoadConfig != "config" || string(conf) != "MODULES=\"ext4 kmodtest_marker\"\nHOOKS=\"udev\"\n" {
		t.Errorf("flavor %s, config %s: %q", res.Flavor, res.LoadConfig, conf)
	}
	if _, ok := st["usr/lib/modules/"+kver+"/updates/kmodtest_marker.ko"]; !ok {
		t.Error("module not under usr/lib")
	}
}

// TestInjectAgain: a second inject with --load keeps the first one's
// modules in conf/modules (the appended file replaces the whole file), and
// a compressed module keeps its compression and name.
func TestInjectAgain(t *testing.T) {
	kver := fixture.KVER(t)
	img, _ := injectCopy(t, fixture.InitrdToolsZstd, Append, true)
	xzMod := fixture.Path(t, "compressed/kmodtest_param.ko.xz")
	res, err := Inject(img, WithModules(xzMod), WithLoad(true))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Modules) != 1 || res.Modules[0].Path != "usr/lib/modules/"+kver+"/updates/kmodtest_param.ko.xz" || res.Modules[0].Name != "kmodtest_param" {
		t.Errorf("modules: %+v", res.Modules)
	}
	overridden := strings.Join(res.Overridden, " ")
	if !strings.Contains(overridden, "conf/modules") {
		t.Errorf("conf/modules not replaced: %v", res.Overridden)
	}
	im, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if len(im.Segments) != 3 {
		t.Errorf("%d segments after two appends", len(im.Segments))
	}
	root := t.TempDir()
	if _, err := Extract(im, root, ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	if conf := string(readFile(t, filepath.Join(root, "conf/modules"))); conf != "kmodtest_marker\nkmodtest_param\n" {
		t.Errorf("conf/modules: %q", conf)
	}
	if !bytes.Equal(readFile(t, filepath.Join(root, res.Modules[0].Path)), readFile(t, xzMod)) {
		t.Error("the .ko.xz changed")
	}
	if deps := modprobeDepends(t, root, kver, "kmodtest_param"); !strings.Contains(deps, "updates/kmodtest_param.ko.xz") {
		t.Errorf("modprobe: %s", deps)
	}
}
