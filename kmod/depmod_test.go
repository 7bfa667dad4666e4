package kmod

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/compress"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// These tests run kmod's own depmod (kmod 30 on the build machine) and
// GenerateDepmod/Depmod over the same trees and require every output file
// to be byte-identical.

// depmodOutputNames are the files kmod 30's depmod writes, in its order.
var depmodOutputNames = []string{
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
func hostDepmodExtensions(t testing.TB) DepmodOption {
	if depmodSupportsGzip(t) {
		return WithDepmodExtensions(defaultDepmodExtensions...)
	}
	return WithDepmodExtensions(".ko", ".ko.xz", ".ko.zst")
}

// compareDepmod checks that out holds exactly the files kmod wrote into
// moddir, byte for byte.
func compareDepmod(t testing.TB, moddir string, out *DepmodOutput) {
	t.Helper()
	var names []string
	for _, f := range out.Files {
		names = append(names, f.Name)
	}
	if !slices.Equal(names, depmodOutputNames) {
		t.Errorf("files %v, want %v", names, depmodOutputNames)
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
			t.Errorf("kmod wrote %s, GenerateDepmod did not", n)
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

// TestDepmodFullTree: the whole fixture kernel (about 4000 modules with
// modules.order, modules.builtin and modules.builtin.modinfo).
func TestDepmodFullTree(t *testing.T) {
	kver := fixture.KVER(t)
	src := fixture.KernelRoot(t)
	ref := filepath.Join(t.TempDir(), "ref")
	linkTree(t, src, ref)
	realDepmod(t, ref, kver, nil)
	var warnings []string
	out, err := GenerateDepmod(os.DirFS(src), kver, hostDepmodExtensions(t), WithDepmodErrors(func(m string) { warnings = append(warnings, m) }))
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, filepath.Join(ref, "lib/modules", kver), out)
	if len(warnings) > 0 {
		t.Errorf("warnings: %q", warnings)
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
	out, err := GenerateDepmod(os.DirFS(fixture.KernelRoot(t)), kver)
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
// GenerateDepmod on the same copy, and compares all files.
func compareWithKmod(t *testing.T, root string, cfg []string, opts ...DepmodOption) *DepmodOutput {
	t.Helper()
	kver := fixture.KVER(t)
	ref := filepath.Join(t.TempDir(), "ref")
	linkTree(t, root, ref)
	var hostCfg []string
	for _, c := range cfg {
		hostCfg = append(hostCfg, filepath.Join(ref, c))
	}
	realDepmod(t, ref, kver, hostCfg)
	if cfg != nil {
		opts = append([]DepmodOption{WithDepmodConfig(cfg...)}, opts...)
	} else {
		opts = append([]DepmodOption{WithDepmodConfig()}, opts...)
	}
	// The tree kmod read, listed in the same readdir order (which decides
	// between two files of a module name at equal rank).
	dir, err := DepmodDir(ref)
	if err != nil {
		t.Fatal(err)
	}
	out, err := GenerateDepmod(dir, kver, append([]DepmodOption{hostDepmodExtensions(t)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, filepath.Join(ref, "lib/modules", kver), out)
	return out
}

// TestDepmodSubset: an initramfs-sized tree of about 60 modules with
// dependencies and a matching modules.order.
func TestDepmodSubset(t *testing.T) {
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

// TestDepmodUpdates: out-of-tree modules below updates/ and updates/dkms,
// one of them shadowing an in-tree module.
func TestDepmodUpdates(t *testing.T) {
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

// TestDepmodCompressed: modules compressed with xz and zstd (and gzip,
// which Debian's kmod ignores) keep their file names in modules.dep, and
// modules.order still orders them.
func TestDepmodCompressed(t *testing.T) {
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
	all, err := GenerateDepmod(os.DirFS(root), fixture.KVER(t), WithDepmodConfig())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(all.File("modules.dep")), ".ko.gz:"); n != compressed[compress.Gzip] {
		t.Errorf("%d .ko.gz modules in modules.dep, want %d", n, compressed[compress.Gzip])
	}
}

// TestDepmodModprobe: kmod's modprobe finds modules, dependencies, soft
// dependencies, aliases and symbols in what Depmod wrote.
func TestDepmodModprobe(t *testing.T) {
	modprobe := fixture.Tool(t, "/usr/sbin/modprobe")
	kver := fixture.KVER(t)
	root, moddir, _ := updatesTree(t)
	if err := Depmod(root, kver, WithDepmodConfig()); err != nil {
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

// TestDepmodConfig: depmod.d search, override, exclude and external lines,
// against kmod given the same files with -C.
func TestDepmodConfig(t *testing.T) {
	kver := fixture.KVER(t)
	// An external folder: kmod reads its path on the host, GenerateDepmod
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
			// kmod gets the folders with -C; GenerateDepmod finds them at
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
