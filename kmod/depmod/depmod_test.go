package depmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/kmodctl/packer-plugin-kmod/compress"

	"github.com/kmodctl/packer-plugin-kmod/internal/elftest"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// These tests run kmod's own depmod (kmod 30 on the build machine) and
// Generate/Write over the same trees and require every output file
// to be byte-identical.

// depmodOutputNames are the files kmod 30's depmod writes, in its order.
var outputNames = []string{
	"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
	"modules.softdep", "modules.symbols", "modules.symbols.bin",
	"modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname",
}

// linkTree makes dst a copy of the folder src whose files are hard links:
// depmod replaces its outputs by rename, so the originals stay untouched.
func linkTree(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-al", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -al %s %s: %v\n%s", src, dst, err, out)
	}
}

// realDepmod runs kmod's depmod -b base on kver with the configuration
// paths given (an empty folder when none: the host's must not leak in) and
// returns its standard error.
func realDepmod(t testing.TB, base, kver string, cfg []string, extra ...string) string {
	t.Helper()
	tool := fixture.Tool(t, "/usr/sbin/depmod")
	if len(cfg) == 0 {
		empty := filepath.Join(t.TempDir(), "empty-depmod.d")
		if err := os.Mkdir(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg = []string{empty}
	}
	args := []string{"-b", base}
	for _, c := range cfg {
		args = append(args, "-C", c)
	}
	args = append(append(args, extra...), kver)
	var stderr bytes.Buffer
	cmd := exec.Command(tool, args...)
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("depmod %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return stderr.String()
}

// depmodSupportsGzip reports whether the installed depmod reads .ko.gz
// (Debian's kmod 30 is built without zlib).
func depmodSupportsGzip(t testing.TB) bool {
	out, err := exec.Command(fixture.Tool(t, "/usr/sbin/depmod"), "-V").Output()
	if err != nil {
		t.Fatal(err)
	}
	return !strings.Contains(string(out), "-ZLIB")
}

// hostDepmodExtensions is the module file endings of the installed depmod.
func hostDepmodExtensions(t testing.TB) Option {
	if depmodSupportsGzip(t) {
		return WithExtensions(defaultExtensions...)
	}
	return WithExtensions(".ko", ".ko.xz", ".ko.zst")
}

// compareDepmod checks that out holds exactly the files kmod wrote into
// moddir, byte for byte.
func compareDepmod(t testing.TB, moddir string, out *Output) {
	t.Helper()
	var names []string
	for _, f := range out.Files {
		names = append(names, f.Name)
	}
	if !slices.Equal(names, outputNames) {
		t.Errorf("files %v, want %v", names, outputNames)
	}
	total := 0
	defer func() { t.Logf("compared %d files, %d bytes", len(out.Files), total) }()
	for _, f := range out.Files {
		total += len(f.Data)
		want, err := os.ReadFile(filepath.Join(moddir, f.Name))
		if err != nil {
			t.Errorf("%s: kmod wrote no such file: %v", f.Name, err)
			continue
		}
		if msg := diffBytes(f.Name, f.Data, want); msg != "" {
			t.Error(msg)
		}
	}
	// Nothing kmod writes is missing from ours.
	ents, err := os.ReadDir(moddir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "modules.") && !slices.Contains(names, n) &&
			n != "modules.order" && n != "modules.builtin" && n != "modules.builtin.modinfo" {
			t.Errorf("kmod wrote %s, Generate did not", n)
		}
	}
}

// diffBytes describes the first difference of got and want: the line of a
// text file, the offset of a binary one; "" when they are equal.
func diffBytes(name string, got, want []byte) string {
	if bytes.Equal(got, want) {
		return ""
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	if !strings.HasSuffix(name, ".bin") {
		line := bytes.Count(want[:i], []byte("\n")) + 1
		start := bytes.LastIndexByte(want[:i], '\n') + 1
		return fmt.Sprintf("%s differs at line %d (byte %d; %d bytes, want %d):\n got: %q\nwant: %q",
			name, line, i, len(got), len(want), lineAt(got, start), lineAt(want, start))
	}
	return fmt.Sprintf("%s differs at offset %#x (%d bytes, want %d):\n got: % x\nwant: % x",
		name, i, len(got), len(want), window(got, i), window(want, i))
}

func lineAt(b []byte, start int) string {
	if start >= len(b) {
		return "<end of file>"
	}
	b = b[start:]
	if j := bytes.IndexByte(b, '\n'); j >= 0 {
		b = b[:j]
	}
	return string(b)
}

func window(b []byte, i int) []byte {
	lo := max(0, i-8)
	if lo >= len(b) {
		return nil
	}
	return b[lo:min(len(b), i+24)]
}

// TestFullTree: the whole fixture kernel (about 4000 modules with
// modules.order, modules.builtin and modules.builtin.modinfo).
func TestFullTree(t *testing.T) {
	kver := fixture.KVER(t)
	src := fixture.KernelRoot(t)
	ref := filepath.Join(t.TempDir(), "ref")
	linkTree(t, src, ref)
	realDepmod(t, ref, kver, nil)
	var warnings []string
	out, err := Generate(os.DirFS(src), kver, hostDepmodExtensions(t), WithWarnings(func(m string) { warnings = append(warnings, m) }))
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, filepath.Join(ref, "lib/modules", kver), out)
	if len(warnings) > 0 {
		t.Errorf("warnings: %q", warnings)
	}

	// Write on another copy writes the same files.
	ours := filepath.Join(t.TempDir(), "ours")
	linkTree(t, src, ours)
	if _, err := Write(ours, kver, hostDepmodExtensions(t), WithoutConfig()); err != nil {
		t.Fatal(err)
	}
	for _, n := range outputNames {
		got, err := os.ReadFile(filepath.Join(ours, "lib/modules", kver, n))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(filepath.Join(ref, "lib/modules", kver, n))
		if msg := diffBytes(n, got, want); msg != "" {
			t.Error("Write: " + msg)
		}
	}
}

// fixtureDeps is the fixture tree's modules.dep as a map from module path
// (below the module folder) to its dependencies, in modules.dep order.
var fixtureDeps struct {
	sync.Mutex
	order []string
	deps  map[string][]string
}

func loadFixtureDeps(t testing.TB) ([]string, map[string][]string) {
	t.Helper()
	fixtureDeps.Lock()
	defer fixtureDeps.Unlock()
	if fixtureDeps.deps != nil {
		return fixtureDeps.order, fixtureDeps.deps
	}
	kver := fixture.KVER(t)
	out, err := Generate(os.DirFS(fixture.KernelRoot(t)), kver)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	deps := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(out.File("modules.dep")), "\n"), "\n") {
		mod, rest, _ := strings.Cut(line, ":")
		order = append(order, mod)
		deps[mod] = strings.Fields(rest)
	}
	fixtureDeps.order, fixtureDeps.deps = order, deps
	return order, deps
}

// subsetTree builds, below a new temporary root, lib/modules/KVER with
// hard links to the fixture modules at paths (below the module folder),
// modules.order cut down to them, and the fixture's modules.builtin and
// modules.builtin.modinfo. It returns the root.
func subsetTree(t testing.TB, paths []string) string {
	t.Helper()
	kver := fixture.KVER(t)
	src := fixture.ModulesDir(t)
	root := filepath.Join(t.TempDir(), "root")
	dst := filepath.Join(root, "lib/modules", kver)
	want := map[string]bool{}
	for _, p := range paths {
		want[p] = true
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(src, p), filepath.Join(dst, p)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"modules.builtin", "modules.builtin.modinfo"} {
		if err := os.Link(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
			t.Fatal(err)
		}
	}
	order, err := os.ReadFile(filepath.Join(src, "modules.order"))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(order), "\n") {
		if want[strings.TrimSuffix(line, "\n")] {
			b.WriteString(line)
		}
	}
	writeTestFile(t, filepath.Join(dst, "modules.order"), b.String())
	return root
}

func writeTestFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// initramfsSubset picks about n fixture modules the way an initramfs
// holds them: modules with dependencies together with all they need,
// topped up with modules that need nothing.
func initramfsSubset(t testing.TB, n int) []string {
	t.Helper()
	order, deps := loadFixtureDeps(t)
	var picked []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			picked = append(picked, p)
		}
	}
	for i, p := range order {
		if len(picked) >= n*2/3 {
			break
		}
		if i%7 != 0 || len(deps[p]) < 2 {
			continue
		}
		add(p)
		for _, d := range deps[p] {
			add(d)
		}
	}
	for i := len(order) - 1; i >= 0 && len(picked) < n; i -= 13 {
		if len(deps[order[i]]) == 0 {
			add(order[i])
		}
	}
	return picked
}

// compareWithKmod runs kmod's depmod on a hard-linked copy of root, then
// Generate on the same copy, and compares all files.
func compareWithKmod(t *testing.T, root string, cfg []string, opts ...Option) *Output {
	t.Helper()
	kver := fixture.KVER(t)
	ref := filepath.Join(t.TempDir(), "ref")
	linkTree(t, root, ref)
	var hostCfg []string
	for _, c := range cfg {
		hostCfg = append(hostCfg, filepath.Join(ref, c))
	}
	realDepmod(t, ref, kver, hostCfg)
	if len(cfg) > 0 {
		opts = append([]Option{WithConfig(cfg...)}, opts...)
	} else {
		opts = append([]Option{WithoutConfig()}, opts...)
	}
	// The tree kmod read, listed in the same readdir order (which decides
	// between two files of a module name at equal rank).
	dir, err := Dir(ref)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Generate(dir, kver, append([]Option{hostDepmodExtensions(t)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, filepath.Join(ref, "lib/modules", kver), out)
	return out
}

// TestSubset: an initramfs-sized tree of about 60 modules with
// dependencies and a matching modules.order.
func TestSubset(t *testing.T) {
	paths := initramfsSubset(t, 60)
	if len(paths) < 50 {
		t.Fatalf("only %d modules picked", len(paths))
	}
	out := compareWithKmod(t, subsetTree(t, paths), nil)
	withDeps := 0
	for _, line := range strings.Split(string(out.File("modules.dep")), "\n") {
		if strings.Contains(line, ": ") {
			withDeps++
		}
	}
	if withDeps < 10 {
		t.Errorf("only %d modules with dependencies", withDeps)
	}
}

// updatesTree is a subset tree plus out-of-tree modules below updates/
// and updates/dkms/, and a copy of an in-tree module that others need
// below updates/ (which wins over kernel/ by default).
func updatesTree(t *testing.T) (root, moddir, shadowed string) {
	t.Helper()
	paths := initramfsSubset(t, 60)
	_, deps := loadFixtureDeps(t)
	// The in-tree module the most picked modules need.
	users := map[string]int{}
	for _, p := range paths {
		for _, d := range deps[p] {
			users[d]++
		}
	}
	for _, p := range paths {
		if shadowed == "" || users[p] > users[shadowed] {
			shadowed = p
		}
	}
	root = subsetTree(t, paths)
	moddir = filepath.Join(root, "lib/modules", fixture.KVER(t))
	for dst, src := range map[string]string{
		"updates/kmodtest_base.ko":           fixture.TestModule(t, "kmodtest_base"),
		"updates/dkms/kmodtest_dep.ko":       fixture.TestModule(t, "kmodtest_dep"),
		"updates/dkms/kmodtest_param.ko":     fixture.TestModule(t, "kmodtest_param"),
		"updates/dkms/kmodtest_marker.ko":    fixture.TestModule(t, "kmodtest_marker"),
		"updates/" + filepath.Base(shadowed): filepath.Join(fixture.ModulesDir(t), shadowed),
		// The same module twice below updates: dkms/ and updates/ are
		// both "updates" to the default search list.
		"updates/dkms/" + filepath.Base(shadowed): filepath.Join(fixture.ModulesDir(t), shadowed),
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(moddir, dst)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(src, filepath.Join(moddir, dst)); err != nil {
			t.Fatal(err)
		}
	}
	return root, moddir, shadowed
}

// TestUpdates: out-of-tree modules below updates/ and updates/dkms,
// one of them shadowing an in-tree module.
func TestUpdates(t *testing.T) {
	root, _, shadowed := updatesTree(t)
	out := compareWithKmod(t, root, nil)
	dep := string(out.File("modules.dep"))
	if !strings.Contains(dep, "\nupdates/dkms/kmodtest_dep.ko: updates/kmodtest_base.ko\n") {
		t.Errorf("modules.dep lacks kmodtest_dep's line:\n%s", dep)
	}
	if strings.Contains(dep, shadowed+":") {
		t.Errorf("the in-tree %s was not replaced by the copy below updates/", shadowed)
	}
}

// TestCompressed: modules compressed with xz and zstd (and gzip,
// which Debian's kmod ignores) keep their file names in modules.dep, and
// modules.order still orders them.
func TestCompressed(t *testing.T) {
	paths := initramfsSubset(t, 60)
	root := subsetTree(t, paths)
	moddir := filepath.Join(root, "lib/modules", fixture.KVER(t))
	formats := []compress.Format{compress.XZ, compress.Zstd, compress.None, compress.Gzip}
	compressed := map[compress.Format]int{}
	for i, p := range paths {
		f := formats[i%len(formats)]
		if f == compress.None {
			continue
		}
		full := filepath.Join(moddir, p)
		data, err := os.ReadFile(full)
		if err != nil {
			t.Fatal(err)
		}
		c, err := compress.Compress(data, f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(full); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full+f.Extension(), c, 0o644); err != nil {
			t.Fatal(err)
		}
		compressed[f]++
	}
	out := compareWithKmod(t, root, nil)
	dep := string(out.File("modules.dep"))
	for _, ext := range []string{".ko.xz:", ".ko.zst:"} {
		if !strings.Contains(dep, ext) {
			t.Errorf("modules.dep has no %s line", ext)
		}
	}
	// With every decompressor (the default), .ko.gz modules count too.
	all, err := Generate(os.DirFS(root), fixture.KVER(t), WithoutConfig())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(all.File("modules.dep")), ".ko.gz:"); n != compressed[compress.Gzip] {
		t.Errorf("%d .ko.gz modules in modules.dep, want %d", n, compressed[compress.Gzip])
	}
}

// TestModprobe: kmod's modprobe finds modules, dependencies, soft
// dependencies, aliases and symbols in what Write wrote.
func TestModprobe(t *testing.T) {
	modprobe := fixture.Tool(t, "/usr/sbin/modprobe")
	kver := fixture.KVER(t)
	root, moddir, _ := updatesTree(t)
	if _, err := Write(root, kver, WithoutConfig()); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "modprobe.d")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		args = append([]string{"-d", root, "-S", kver, "-C", empty}, args...)
		out, err := exec.Command(modprobe, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("modprobe %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	base := filepath.Join(moddir, "updates/kmodtest_base.ko")
	dep := filepath.Join(moddir, "updates/dkms/kmodtest_dep.ko")
	param := filepath.Join(moddir, "updates/dkms/kmodtest_param.ko")
	if got, want := run("--show-depends", "kmodtest_dep"), "insmod "+base+" \ninsmod "+dep+" \n"; got != want {
		t.Errorf("--show-depends kmodtest_dep:\n%s\nwant:\n%s", got, want)
	}
	// softdep pre: kmodtest_base, from modules.softdep.
	if got, want := run("--show-depends", "kmodtest_param"), "insmod "+base+" \ninsmod "+param+" \n"; got != want {
		t.Errorf("--show-depends kmodtest_param:\n%s\nwant:\n%s", got, want)
	}
	for alias, want := range map[string]string{
		"pci:v0000FFFFd0000FFFEsv00001234sd00005678bc02sc00i00": "kmodtest_param",
		"kmodtest-param":             "kmodtest_param",
		"symbol:kmodtest_base_value": "kmodtest_base",
	} {
		if got := strings.TrimSpace(run("--resolve-alias", alias)); got != want {
			t.Errorf("--resolve-alias %s: %q, want %q", alias, got, want)
		}
	}
	if got := run("--show-depends", "pci:v0000FFFFd0000FFFEsv00001234sd00005678bc02sc00i00"); !strings.Contains(got, "insmod "+param) {
		t.Errorf("--show-depends of kmodtest_param's PCI alias:\n%s", got)
	}
}

// TestConfig: depmod.d search, override, exclude and external lines,
// against kmod given the same files with -C.
func TestConfig(t *testing.T) {
	kver := fixture.KVER(t)
	// An external folder: kmod reads its path on the host, Generate
	// inside the root, so the test puts the same modules at both places.
	ext := filepath.Join(t.TempDir(), "ext")
	for _, c := range []struct {
		name  string
		files [][2]string                                 // config files below the root, name and text
		setup func(t *testing.T, moddir, shadowed string) // extra modules
	}{
		{name: "search dkms first", files: [][2]string{
			{"etc/depmod.d/a.conf", "search updates/dkms updates built-in\n"}}},
		{name: "search built-in first", files: [][2]string{
			{"etc/depmod.d/a.conf", "# in-tree modules win\nsearch built-in updates\n"}}},
		{name: "search over two lines and files", files: [][2]string{
			{"etc/depmod.d/a.conf", "search updates\n"},
			{"etc/depmod.d/b.conf", "search \\\n  updates/dkms\tbuilt-in\nbogus line\n"}}},
		{name: "override", files: [][2]string{
			{"etc/depmod.d/a.conf", "override SHADOWED * extra\noverride kmodtest_base 5\\.* extra\n"}},
			setup: func(t *testing.T, moddir, shadowed string) {
				linkInto(t, filepath.Join(moddir, shadowed), filepath.Join(moddir, "extra", filepath.Base(shadowed)))
				linkInto(t, fixture.TestModule(t, "kmodtest_base"), filepath.Join(moddir, "extra/kmodtest_base.ko"))
			}},
		{name: "override regex", files: [][2]string{
			{"etc/depmod.d/a.conf", "override kmodtest_base ^6\\.[0-9]+\\. extra\n"}},
			setup: func(t *testing.T, moddir, shadowed string) {
				linkInto(t, fixture.TestModule(t, "kmodtest_base"), filepath.Join(moddir, "extra/kmodtest_base.ko"))
			}},
		{name: "shadowed file names", files: [][2]string{
			{"etc/depmod.d/a.conf", "search built-in updates\n"},
			{"lib/depmod.d/a.conf", "search updates/dkms\n"},
			{"lib/depmod.d/b.conf", "override kmodtest_base * extra\n"},
			{"lib/depmod.d/c.txt", "search updates/dkms\n"},
			{"lib/depmod.d/.d.conf", "search updates/dkms\n"}},
			setup: func(t *testing.T, moddir, shadowed string) {
				linkInto(t, fixture.TestModule(t, "kmodtest_base"), filepath.Join(moddir, "extra/kmodtest_base.ko"))
			}},
		{name: "exclude", files: [][2]string{
			{"etc/depmod.d/a.conf", "exclude dkms extra\n"}},
			setup: func(t *testing.T, moddir, shadowed string) {
				linkInto(t, fixture.TestModule(t, "kmodtest_unresolved"), filepath.Join(moddir, "extra/kmodtest_unresolved.ko"))
			}},
		{name: "external", files: [][2]string{
			{"etc/depmod.d/a.conf", "search external updates built-in\nexternal 6\\.1 EXT\nexternal 5\\.4 EXT/nope\n"}},
			setup: func(t *testing.T, moddir, shadowed string) {
				root := strings.TrimSuffix(moddir, filepath.Join("/lib/modules", kver))
				for _, dir := range []string{ext, filepath.Join(root, ext)} {
					linkInto(t, filepath.Join(moddir, shadowed), filepath.Join(dir, filepath.Base(shadowed)))
					linkInto(t, fixture.TestModule(t, "kmodtest_unresolved"), filepath.Join(dir, "sub/kmodtest_unresolved.ko"))
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.RemoveAll(ext)
			root, moddir, shadowed := updatesTree(t)
			if c.setup != nil {
				c.setup(t, moddir, shadowed)
			}
			var dirs []string
			for _, f := range c.files {
				name, data := f[0], f[1]
				data = strings.ReplaceAll(data, "SHADOWED", strings.SplitN(filepath.Base(shadowed), ".", 2)[0])
				data = strings.ReplaceAll(data, "EXT", ext)
				writeTestFile(t, filepath.Join(root, name), data)
				if d := filepath.Dir(name); !slices.Contains(dirs, d) {
					dirs = append(dirs, d)
				}
			}
			// kmod gets the folders with -C; Generate finds them at
			// the default places in the root.
			out := compareWithKmod(t, root, dirs)
			t.Logf("%s", firstLines(out.File("modules.dep"), "updates/", "extra/", ext))
		})
	}
}

// linkInto hard-links src at dst, making dst's folder.
func linkInto(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(src, dst); err != nil {
		t.Fatal(err)
	}
}

// firstLines returns the lines of text that start with one of prefixes.
func firstLines(text []byte, prefixes ...string) string {
	var out []string
	for _, line := range strings.Split(string(text), "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// synthMod is a hand-made module for depmod: only the sections depmod
// reads.
type synthMod struct {
	class       elf.Class
	bo          binary.ByteOrder
	modinfo     string   // raw .modinfo
	exports     []string // __crc_ symbols (absolute)
	ksymStrings string   // raw __ksymtab_strings, if any
	needs, weak []string // undefined symbols
	versions    []string // __versions names
}

func (m synthMod) build() []byte {
	class, bo := m.class, m.bo
	if class == elf.ELFCLASSNONE {
		class, bo = elf.ELFCLASS64, binary.LittleEndian
	}
	var syms []elftest.Sym
	for i, e := range m.exports {
		syms = append(syms, elftest.Sym{Name: "__crc_" + e, Shndx: uint16(elf.SHN_ABS), Value: uint64(0x1000 + i), Bind: elf.STB_GLOBAL})
	}
	for _, n := range m.needs {
		syms = append(syms, elftest.Sym{Name: n, Bind: elf.STB_GLOBAL})
	}
	for _, n := range m.weak {
		syms = append(syms, elftest.Sym{Name: n, Bind: elf.STB_WEAK})
	}
	syms = append(syms, elftest.Sym{Name: "", Bind: elf.STB_GLOBAL}, elftest.Sym{Shndx: 1, Type: elf.STT_SECTION})
	secs := []elftest.Section{{Name: ".modinfo", Type: elf.SHT_PROGBITS, Data: []byte(m.modinfo)}}
	if len(m.versions) > 0 {
		crcSize := 4
		if class == elf.ELFCLASS64 {
			crcSize = 8
		}
		v := make([]byte, 64*len(m.versions))
		for i, n := range m.versions {
			bo.PutUint32(v[i*64+crcSize-4:], uint32(0xabc0+i))
			copy(v[i*64+crcSize:], n)
		}
		secs = append(secs, elftest.Section{Name: "__versions", Type: elf.SHT_PROGBITS, Data: v})
	}
	if m.ksymStrings != "" {
		secs = append(secs, elftest.Section{Name: "__ksymtab_strings", Type: elf.SHT_PROGBITS, Data: []byte(m.ksymStrings)})
	}
	tab, strs := elftest.Symtab(class, bo, syms)
	secs = append(secs,
		elftest.Section{Name: ".symtab", Type: elf.SHT_SYMTAB, Data: tab, Link: uint32(len(secs) + 2)},
		elftest.Section{Name: ".strtab", Type: elf.SHT_STRTAB, Data: strs})
	return elftest.Build(class, bo, elf.ET_REL, secs)
}

// synthTree writes modules and other files below a new root's module
// folder and returns the root.
func synthTree(t *testing.T, mods map[string]synthMod, files map[string]string) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	moddir := filepath.Join(root, "lib/modules", fixture.KVER(t))
	for p, m := range mods {
		writeTestFile(t, filepath.Join(moddir, p), string(m.build()))
	}
	for p, data := range files {
		writeTestFile(t, filepath.Join(moddir, p), data)
	}
	return root
}

// TestSynthetic: hand-made modules and inputs for the corners of
// kmod 30's rules, against kmod.
func TestSynthetic(t *testing.T) {
	long := strings.Repeat("long_symbol_", 92) // 1104 characters
	mods := map[string]synthMod{
		"kernel/a/alpha.ko": {
			modinfo: "\x00\x00alias=pci:v00001234d*sv*sd*bc*sc*i*\x00alias=of:N*T*Cfoo-bar\x00" +
				"alias=platform:my-dev[0-9]x\x00alias=bad]alias\x00alias=x[-y\x00alias=devname:alpha\x00" +
				"alias=char-major-10-123\x00softdep=pre: beta post: gam-ma\x00alias\x00name=alpha\x00\x00",
			exports: []string{"alpha_fn", "alpha_data"}, needs: []string{"beta_fn"},
			versions: []string{"beta_fn", "module_layout", "beta_fn"}},
		"kernel/b/beta.ko.xz": {modinfo: "alias=devname:betadev\x00alias=block-major-8-*\x00softdep=pre: alpha",
			exports: []string{"beta_fn", "shared_sym"}},
		"kernel/c/gam-ma.ko": {modinfo: "alias=char-major-1-2\x00alias=block-major-259-0\x00alias=devname:gam/ma\x00",
			exports: []string{"shared_sym"}, weak: []string{"alpha_fn", "nobody_fn"}},
		"kernel/d/delta.ko": {modinfo: "alias=devname:delta\x00alias=char-major-+7-x\x00alias=char-major- 5-6\x00",
			exports: []string{"shared_sym", "delta_fn"}},
		"kernel/e/nocrc.ko": {modinfo: "license=GPL\x00", ksymStrings: "\x00\x00ns_fn\x00\x00MYNS\x00other_fn"},
		"kernel/f/user.ko": {modinfo: "alias=usb:v*p*d*dc*dsc*dp*ic09isc*ip*in*\x00",
			needs: []string{"ns_fn", "other_fn", "shared_sym", "delta_fn", ".alpha_data"}, versions: []string{"unrelated"}},
		"kernel/g/elf32.ko": {class: elf.ELFCLASS32, bo: binary.LittleEndian, modinfo: "alias=e32\x00",
			exports: []string{"e32_fn"}, needs: []string{"alpha_fn"}, versions: []string{"alpha_fn"}},
		"kernel/h/be64.ko": {class: elf.ELFCLASS64, bo: binary.BigEndian, modinfo: "alias=be64-thing\x00",
			exports: []string{"be_fn"}, needs: []string{"e32_fn"}},
		"kernel/h/be32.ko": {class: elf.ELFCLASS32, bo: binary.BigEndian, modinfo: "",
			needs: []string{"be_fn", "beta_fn"}},
		"kernel/i/foo.bar.ko":  {modinfo: "alias=foo-alias\x00", needs: []string{"be_fn"}},
		"kernel/l/longsym.ko":  {modinfo: "alias=long\x00", exports: append([]string{long}, "after_long")},
		"kernel/l/short.ko":    {exports: []string{"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"}},
		"build/ignored.ko":     {exports: []string{"ignored_fn"}},
		"kernel/source/x.ko":   {exports: []string{"ignored_fn"}},
		"kernel/weird.ko.bak":  {exports: []string{"ignored_fn"}},
		"extra/other/other.ko": {exports: []string{"other_dir_fn"}, needs: []string{"be_fn"}},
	}
	files := map[string]string{
		"modules.order": "kernel/h/be64.ko\nkernel/a/alpha.ko\nkernel/zz/missing.ko\nkernel/i/foo.ba\n" +
			"kernel/b/beta.ko\nkernel/h/be64.ko\n\nkernel/c/gam-ma.ko\n",
		"modules.builtin": "kernel/x/builtin-one.ko\n9invalid\nkernel/noext\nkernel/x/builtin-one.ko\n" +
			"/abs/path.ko\nkernel/y/two.ko.xz\nkernel/trailing/",
		"modules.builtin.modinfo": "b1.alias=pci:v*d*\x00b1.license=GPL\x00b2.flag\x00b2.alias=lost\x00" +
			"b3.alias=x-y[a-b]\x00b3.alias=bad]\x00b4.alias=\x00.alias=nomod\x00b5.alias=a-1\x00b1.alias=pci:v*d*\x00b5.alias=unterminated",
		"kernel/.ko": "not a module",
	}
	root := synthTree(t, mods, files)
	moddir := filepath.Join(root, "lib/modules", fixture.KVER(t))
	// beta.ko.xz is compressed for real.
	beta := filepath.Join(moddir, "kernel/b/beta.ko.xz")
	raw, err := os.ReadFile(beta)
	if err != nil {
		t.Fatal(err)
	}
	xz, err := compress.Compress(raw, compress.XZ)
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, beta, string(xz))
	// A folder reached through a symbolic link, a module through another.
	if err := os.Symlink("../extra/other", filepath.Join(moddir, "kernel/linked-dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("h/be64.ko", filepath.Join(moddir, "kernel/be-link.ko")); err != nil {
		t.Fatal(err)
	}
	out := compareWithKmod(t, root, nil)
	for _, want := range []string{"\nkernel/f/user.ko: ", "kernel/c/gam-ma.ko: kernel/a/alpha.ko"} {
		if !strings.Contains(string(out.File("modules.dep")), want) {
			t.Errorf("modules.dep lacks %q:\n%s", want, out.File("modules.dep"))
		}
	}
	t.Logf("modules.dep:\n%s", out.File("modules.dep"))
	t.Logf("modules.devname:\n%s", out.File("modules.devname"))
}

// readIndex decodes a depmod .bin index into key → values (priority and
// value), checking the layout on the way.
func readIndex(t *testing.T, data []byte) map[string][]string {
	t.Helper()
	if len(data) < 12 || binary.BigEndian.Uint32(data) != indexMagic || binary.BigEndian.Uint32(data[4:]) != indexVersion {
		t.Fatalf("bad index header % x", data[:min(12, len(data))])
	}
	out := map[string][]string{}
	var walk func(ref uint32, key string)
	cstr := func(off int) (string, int) {
		end := bytes.IndexByte(data[off:], 0)
		if end < 0 {
			t.Fatalf("unterminated string at %#x", off)
		}
		return string(data[off : off+end]), off + end + 1
	}
	walk = func(ref uint32, key string) {
		off := int(ref & 0x0FFFFFFF)
		if off < 12 || off >= len(data) && ref&0xF0000000 != 0 {
			t.Fatalf("node offset %#x out of range", off)
		}
		if ref&indexNodePrefix != 0 {
			var p string
			p, off = cstr(off)
			key += p
		}
		if ref&indexNodeChildren != 0 {
			first, last := int(data[off]), int(data[off+1])
			off += 2
			for c := first; c <= last; c++ {
				if child := binary.BigEndian.Uint32(data[off:]); child != 0 {
					walk(child, key+string(rune(c)))
				}
				off += 4
			}
		}
		if ref&indexNodeValues != 0 {
			n := int(binary.BigEndian.Uint32(data[off:]))
			off += 4
			for range n {
				prio := binary.BigEndian.Uint32(data[off:])
				var v string
				v, off = cstr(off + 4)
				out[key] = append(out[key], fmt.Sprintf("%d %s", prio, v))
			}
		}
	}
	walk(binary.BigEndian.Uint32(data[8:]), "")
	return out
}

// TestLongSymbol: kmod 30 keys every symbol after the first one
// longer than 1016 characters (in hash order) with the last shorter key.
func TestLongSymbol(t *testing.T) {
	long := strings.Repeat("long_symbol_", 92)
	mods := map[string]synthMod{"kernel/longsym.ko": {exports: []string{long}}}
	var short []string
	for i := range 40 {
		short = append(short, fmt.Sprintf("short_%d", i))
	}
	mods["kernel/short.ko"] = synthMod{exports: short}
	out := compareWithKmod(t, synthTree(t, mods, nil), nil)
	idx := readIndex(t, out.File("modules.symbols.bin"))
	if _, ok := idx["symbol:"+long]; ok {
		t.Error("the long symbol has its own key")
	}
	if len(idx) >= 41 {
		t.Errorf("%d keys: no key was lost", len(idx))
	}
	text := string(out.File("modules.symbols"))
	if !strings.Contains(text, "alias symbol:"+long+" longsym\n") {
		t.Error("modules.symbols lacks the long symbol")
	}
}

// TestIndexesMatchText: on the full tree every line of the text
// files is in its index, and nothing else is.
func TestIndexesMatchText(t *testing.T) {
	out, err := Generate(os.DirFS(fixture.KernelRoot(t)), fixture.KVER(t))
	if err != nil {
		t.Fatal(err)
	}
	keys := func(name string) []string {
		var k []string
		for key, vals := range readIndex(t, out.File(name)) {
			for _, v := range vals {
				_, val, _ := strings.Cut(v, " ")
				k = append(k, key+" "+val)
			}
		}
		slices.Sort(k)
		return k
	}
	lines := func(name, prefix string, norm func(string) string) []string {
		var k []string
		for _, l := range strings.Split(strings.TrimSuffix(string(out.File(name)), "\n"), "\n") {
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				k = append(k, norm(rest))
			}
		}
		slices.Sort(k)
		return k
	}
	ident := func(s string) string { return s }
	aliasKey := func(s string) string {
		a, m, _ := strings.Cut(s, " ")
		n, _ := aliasNormalize(a)
		return n + " " + m
	}
	depKey := func(s string) string {
		p, _, _ := strings.Cut(s, ":")
		return kmod.ModuleNameFromPath(p) + " " + s
	}
	for _, c := range []struct {
		bin  string
		want []string
	}{
		{"modules.dep.bin", lines("modules.dep", "", depKey)},
		{"modules.alias.bin", lines("modules.alias", "alias ", aliasKey)},
		{"modules.symbols.bin", lines("modules.symbols", "alias ", ident)},
	} {
		got := keys(c.bin)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %d entries, the text has %d", c.bin, len(got), len(c.want))
		}
	}
}

// TestCycle: modules that need each other make kmod fail; so does
// Generate, naming them.
func TestCycle(t *testing.T) {
	root := synthTree(t, map[string]synthMod{
		"kernel/cyc_a.ko": {exports: []string{"a_fn"}, needs: []string{"b_fn"}},
		"kernel/cyc_b.ko": {exports: []string{"b_fn"}, needs: []string{"c_fn"}},
		"kernel/cyc_c.ko": {exports: []string{"c_fn"}, needs: []string{"a_fn"}},
		"kernel/user.ko":  {needs: []string{"a_fn"}},
		"kernel/fine.ko":  {exports: []string{"f_fn"}},
	}, nil)
	kver := fixture.KVER(t)
	cmd := exec.Command(fixture.Tool(t, "/usr/sbin/depmod"), "-b", root, "-C", t.TempDir(), kver)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Cycle detected") {
		t.Fatalf("kmod's depmod: %v\n%s", err, out)
	}
	_, err := Generate(os.DirFS(root), kver, WithoutConfig())
	if err == nil {
		t.Fatal("no error")
	}
	for _, m := range []string{"cyc_a", "cyc_b", "cyc_c"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not name %s", err, m)
		}
	}
	if strings.Contains(err.Error(), "fine") {
		t.Errorf("error %q names a module outside the cycle", err)
	}
	t.Log(err)
}

// TestCorruptModule: a file named like a module that is not one is
// an error naming it (kmod only warns and lists it without dependencies).
func TestCorruptModule(t *testing.T) {
	kver := fixture.KVER(t)
	for name, data := range map[string][]byte{
		"kernel/drivers/bad.ko":       []byte("this is not an ELF file"),
		"kernel/drivers/trunc.ko":     synthMod{exports: []string{"x"}}.build()[:100],
		"kernel/drivers/bad.ko.xz":    {0xfd, '7', 'z', 'X', 'Z', 0, 1, 2, 3},
		"kernel/drivers/empty.ko":     {},
		"updates/dkms/garbage.ko.zst": {0x28, 0xb5, 0x2f, 0xfd, 0, 0},
	} {
		t.Run(name, func(t *testing.T) {
			root := synthTree(t, map[string]synthMod{"kernel/good.ko": {exports: []string{"g"}}}, map[string]string{name: string(data)})
			for _, fsys := range []func() fs.FS{
				func() fs.FS { return os.DirFS(root) },
				func() fs.FS { d, _ := Dir(root); return d },
				func() fs.FS { return mapFSOf(t, root) },
			} {
				_, err := Generate(fsys(), kver, WithoutConfig())
				if err == nil || !strings.Contains(err.Error(), "lib/modules/"+kver+"/"+name+":") {
					t.Errorf("error %v does not name %s", err, name)
				}
			}
			_, err := Write(root, kver, WithoutConfig())
			if err == nil || !strings.Contains(err.Error(), filepath.Join(root, "lib/modules", kver, name)+":") {
				t.Errorf("Write: error %v does not name the file by its path", err)
			}
			if _, err := os.Stat(filepath.Join(root, "lib/modules", kver, "modules.dep")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Write wrote modules.dep after failing (%v)", err)
			}
		})
	}
}

// mapFSOf loads a folder into an in-memory fstest.MapFS.
func mapFSOf(t *testing.T, dir string) fstest.MapFS {
	t.Helper()
	m := fstest.MapFS{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		m[filepath.ToSlash(rel)] = &fstest.MapFile{Data: data, Mode: 0o644}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestMapFS: an in-memory tree below usr/lib/modules (a merged /usr
// whose lib link the fs.FS lacks), with its depmod.d below usr/lib too,
// gives what kmod gives on disk.
func TestMapFS(t *testing.T) {
	kver := fixture.KVER(t)
	root, _, _ := updatesTree(t)
	writeTestFile(t, filepath.Join(root, "lib/depmod.d/search.conf"), "search built-in updates\n")
	ref := filepath.Join(t.TempDir(), "ref")
	linkTree(t, root, ref)
	realDepmod(t, ref, kver, []string{filepath.Join(ref, "lib/depmod.d")})

	mem := fstest.MapFS{}
	for name, f := range mapFSOf(t, root) {
		mem["usr/"+name] = f
	}
	out, err := Generate(mem, kver, hostDepmodExtensions(t))
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, filepath.Join(ref, "lib/modules", kver), out)
}

// TestSymversWarnings: with Module.symvers, the unknown-symbol and
// CRC warnings are kmod's `depmod -e -E` ones, in its order.
func TestSymversWarnings(t *testing.T) {
	kver := fixture.KVER(t)
	symvers := filepath.Join(fixture.Headers(t), "Module.symvers")
	root, moddir, _ := updatesTree(t)
	linkInto(t, fixture.TestModule(t, "kmodtest_unresolved"), filepath.Join(moddir, "updates/kmodtest_unresolved.ko"))
	// A module whose __versions CRC of a vmlinux symbol is wrong, and one
	// without __versions at all.
	bad := synthMod{needs: []string{"printk", "kmodtest_base_value"}, versions: []string{"printk", "kmodtest_base_value"}}
	writeTestFile(t, filepath.Join(moddir, "updates/badcrc.ko"), string(bad.build()))
	ref := filepath.Join(t.TempDir(), "ref")
	linkTree(t, root, ref)
	stderr := realDepmod(t, ref, kver, nil, "-e", "-E", symvers)
	var want []string
	for _, l := range strings.Split(stderr, "\n") {
		if m, ok := strings.CutPrefix(l, "depmod: WARNING: "); ok && (strings.Contains(m, " needs unknown symbol ") || strings.Contains(m, " disagrees about version of symbol ")) {
			want = append(want, m)
		}
	}
	if len(want) == 0 {
		t.Fatalf("kmod reported nothing:\n%s", stderr)
	}
	data, err := os.ReadFile(symvers)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	dir, err := Dir(ref)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Generate(dir, kver, hostDepmodExtensions(t), WithSymvers(data),
		WithWarnings(func(m string) { got = append(got, m) }))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	compareDepmod(t, filepath.Join(ref, "lib/modules", kver), out)
	t.Logf("%d warnings:\n%s", len(got), strings.Join(got, "\n"))
}

// TestWrites: Write replaces the files in place, mode 0644, leaves
// no temporary files, and writes (and returns) what Generate returns.
func TestWrites(t *testing.T) {
	kver := fixture.KVER(t)
	root := subsetTree(t, initramfsSubset(t, 30))
	moddir := filepath.Join(root, "lib/modules", kver)
	writeTestFile(t, filepath.Join(moddir, "modules.dep"), "stale\n")
	written, err := Write(root, kver)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Generate(os.DirFS(root), kver)
	if err != nil {
		t.Fatal(err)
	}
	if len(written.Files) != len(out.Files) {
		t.Errorf("Write returned %d files, Generate %d", len(written.Files), len(out.Files))
	}
	for _, f := range out.Files {
		st, err := os.Stat(filepath.Join(moddir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v", f.Name, st.Mode())
		}
		data, _ := os.ReadFile(filepath.Join(moddir, f.Name))
		if msg := diffBytes(f.Name, data, f.Data); msg != "" {
			t.Error(msg)
		}
	}
	ents, _ := os.ReadDir(moddir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	// A relative base folder works too.
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	if err := os.Chdir(filepath.Dir(root)); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(filepath.Base(root), kver); err != nil {
		t.Fatal(err)
	}
}

// TestInputFiles: modules.order, modules.builtin and
// modules.builtin.modinfo missing, empty or odd, against kmod.
func TestInputFiles(t *testing.T) {
	mods := map[string]synthMod{
		"kernel/a/one.ko":   {exports: []string{"one_fn"}},
		"kernel/a/two.ko":   {needs: []string{"one_fn"}},
		"kernel/b/three.ko": {needs: []string{"one_fn"}},
		"kernel/b/four.ko":  {},
		"kernel/b/five.ko":  {},
	}
	long := strings.Repeat("x", 5000)
	for name, files := range map[string]map[string]string{
		"none":                   nil,
		"empty":                  {"modules.order": "", "modules.builtin": "", "modules.builtin.modinfo": ""},
		"order without newline":  {"modules.order": "kernel/b/four.ko\nkernel/a/two.ko"},
		"order with a long line": {"modules.order": "kernel/b/four.ko\n" + long + "\nkernel/a/two.ko\n"},
		"order with NUL":         {"modules.order": "kernel/b/four.ko\n\x00kernel/a/one.ko\nkernel/a/two.ko\n"},
		"builtin long lines": {"modules.builtin": "kernel/" + long + ".ko\nkernel/ok.ko\n",
			"modules.builtin.modinfo": "m" + long + ".alias=x\x00ok.alias=" + long + "\x00ok2.alias=y\x00"},
	} {
		t.Run(name, func(t *testing.T) {
			compareWithKmod(t, synthTree(t, mods, files), nil)
		})
	}
}

// TestSymlinkLoop: a folder linking to itself ends the walk with a
// warning instead of recursing forever.
func TestSymlinkLoop(t *testing.T) {
	kver := fixture.KVER(t)
	root := synthTree(t, map[string]synthMod{"kernel/a/one.ko": {exports: []string{"x"}}}, nil)
	if err := os.Symlink(".", filepath.Join(root, "lib/modules", kver, "kernel/a/loop")); err != nil {
		t.Fatal(err)
	}
	var warnings []string
	out, err := Generate(os.DirFS(root), kver, WithoutConfig(), WithWarnings(func(m string) { warnings = append(warnings, m) }))
	if err != nil {
		t.Fatal(err)
	}
	// Like kmod, the first copy found at equal rank stays: with the sorted
	// listing ("loop" before "one.ko") the deepest one.
	if got := string(out.File("modules.dep")); strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "/one.ko:\n") {
		t.Errorf("modules.dep: %q", got)
	}
	if len(warnings) == 0 {
		t.Error("no warning about the loop")
	}
}

// TestDiffReport: the comparison names the first differing line of
// a text file and the first differing offset of an index.
func TestDiffReport(t *testing.T) {
	msg := diffBytes("modules.dep", []byte("a.ko:\nb.ko: a.ko\n"), []byte("a.ko:\nb.ko: c.ko\n"))
	if !strings.Contains(msg, "line 2") || !strings.Contains(msg, `"b.ko: a.ko"`) || !strings.Contains(msg, `"b.ko: c.ko"`) {
		t.Errorf("text report: %s", msg)
	}
	msg = diffBytes("modules.dep.bin", []byte{0xb0, 0x07, 0xf4, 0x57, 1}, []byte{0xb0, 0x07, 0xf4, 0x57, 2})
	if !strings.Contains(msg, "offset 0x4") {
		t.Errorf("binary report: %s", msg)
	}
	if diffBytes("x", []byte("same"), []byte("same")) != "" {
		t.Error("equal inputs reported as different")
	}
}

// TestOptionErrors: an option with a bad argument fails Generate and Write
// before anything is read, naming the option.
func TestOptionErrors(t *testing.T) {
	for _, c := range []struct {
		opt  Option
		want string
	}{
		{WithConfig(), "WithConfig: no path given"},
		{WithConfig("/etc/depmod.d", ""), `WithConfig: bad path ""`},
		{WithConfigFS(nil, "/etc/depmod.d"), "WithConfigFS: nil fs.FS"},
		{WithConfigFS(fstest.MapFS{}), "WithConfigFS: no path given"},
		{WithWarnings(nil), "WithWarnings: nil function"},
		{WithExtensions(), "WithExtensions: no file name ending given"},
		{WithExtensions(".ko", "ko"), `WithExtensions: "ko" is not`},
	} {
		if _, err := Generate(fstest.MapFS{}, "6.1.0", c.opt); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Generate: error %v, want one containing %q", err, c.want)
		}
		if _, err := Write(t.TempDir(), "6.1.0", c.opt); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Write: error %v, want one containing %q", err, c.want)
		}
	}
}
