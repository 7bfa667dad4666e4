package kmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

func parseTestModules(t *testing.T, names ...string) []*Module {
	t.Helper()
	var mods []*Module
	for _, n := range names {
		m, err := ParseFile(fixture.TestModule(t, n))
		if err != nil {
			t.Fatal(err)
		}
		mods = append(mods, m)
	}
	return mods
}

// parseBytes parses a patched copy of a module, written to a temp file.
func parseBytes(t *testing.T, name string, data []byte) *Module {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := ParseFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readTestModule(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(fixture.TestModule(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// replaceOnce replaces the single occurrence of old in data (same length).
func replaceOnce(t *testing.T, data []byte, old, new string) []byte {
	t.Helper()
	if len(old) != len(new) {
		t.Fatalf("patch %q -> %q changes the length", old, new)
	}
	if n := bytes.Count(data, []byte(old)); n != 1 {
		t.Fatalf("%q occurs %d times, want once", old, n)
	}
	out := bytes.Clone(data)
	i := bytes.Index(out, []byte(old))
	copy(out[i:], new)
	return out
}

// otherRelease derives another kernel release of the same length from
// kver (its last digit changed), whatever release the fixture holds.
func otherRelease(t *testing.T, kver string) string {
	t.Helper()
	i := strings.LastIndexAny(kver, "0123456789")
	if i < 0 {
		t.Fatalf("kernel release %q has no digit", kver)
	}
	return kver[:i] + string('0'+(kver[i]-'0'+1)%10) + kver[i+1:]
}

// sectionRange returns the file offset and size of the named section.
func sectionRange(t *testing.T, data []byte, name string) (uint64, uint64) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(name)
	if s == nil {
		t.Fatalf("no section %s", name)
	}
	return s.Offset, s.Size
}

// patchVersionCRC sets the CRC of sym in the __versions section.
func patchVersionCRC(t *testing.T, data []byte, sym string, crc uint64) []byte {
	t.Helper()
	out := bytes.Clone(data)
	off, size := sectionRange(t, out, "__versions")
	for e := off; e+64 <= off+size; e += 64 {
		name := out[e+8 : e+64]
		if string(name[:bytes.IndexByte(name, 0)]) == sym {
			binary.LittleEndian.PutUint64(out[e:], crc)
			return out
		}
	}
	t.Fatalf("no __versions entry for %s", sym)
	return nil
}

func findProblem(r *Report, module, symbol string, kind ProblemKind) *Problem {
	for i, p := range r.Problems {
		if p.Module == module && p.Symbol == symbol && p.Kind == kind {
			return &r.Problems[i]
		}
	}
	return nil
}

func findNote(r *Report, module string, kind ProblemKind, substr string) *Problem {
	for i, p := range r.Notes {
		if p.Module == module && p.Kind == kind && strings.Contains(p.Reason, substr) {
			return &r.Notes[i]
		}
	}
	return nil
}

func requireOK(t *testing.T, r *Report) {
	t.Helper()
	if !r.OK() {
		t.Fatalf("report not OK:\n%s", r)
	}
}

func TestCheckInTreeModulesClean(t *testing.T) {
	k := loadFixtureKernel(t)
	start := time.Now()
	mods := parseTree(t, fixture.ModulesDir(t))
	t.Logf("parsed %d modules in %v", len(mods), time.Since(start))

	start = time.Now()
	r := Check(k, mods)
	t.Logf("Check of %d modules together took %v; %d notes", len(mods), time.Since(start), len(r.Notes))
	requireOK(t, r)
	// Notes are only "cannot be loaded together" duplicates (alternative
	// drivers exporting the same symbol); nothing about versions.
	kinds := map[ProblemKind]int{}
	for _, n := range r.Notes {
		kinds[n.Kind]++
	}
	t.Logf("note kinds: %v", kinds)
	for kind := range kinds {
		if kind != KindDuplicate {
			t.Errorf("unexpected %s notes, e.g. %s", kind, firstNote(r, kind))
		}
	}

	// Each module alone resolves against the kernel's own modules.
	start = time.Now()
	for _, m := range mods {
		if r := Check(k, []*Module{m}); !r.OK() {
			t.Fatalf("%s alone:\n%s", m.Path, r)
		}
	}
	t.Logf("Check of %d modules one by one took %v", len(mods), time.Since(start))
}

func firstNote(r *Report, kind ProblemKind) string {
	for _, n := range r.Notes {
		if n.Kind == kind {
			return n.String()
		}
	}
	return ""
}

func TestCheckTestModules(t *testing.T) {
	k := loadFixtureKernel(t)
	r := Check(k, parseTestModules(t, "kmodtest_base", "kmodtest_dep", "kmodtest_param"))
	requireOK(t, r)
	if len(r.Modules) != 3 || len(r.Notes) != 0 {
		t.Errorf("%d results, notes %v", len(r.Modules), r.Notes)
	}
	if !strings.HasPrefix(r.String(), "OK: 3 module(s) checked against kernel "+fixture.KVER(t)) {
		t.Errorf("String() = %q", r.String())
	}

	r = Check(k, parseTestModules(t, "kmodtest_dep"))
	if r.OK() {
		t.Fatal("kmodtest_dep alone passes")
	}
	p := findProblem(r, "kmodtest_dep", "kmodtest_base_value", KindUnresolved)
	if p == nil || !strings.Contains(p.Reason, "unresolved symbol kmodtest_base_value") {
		t.Errorf("no unresolved-symbol problem:\n%s", r)
	}
	p = findProblem(r, "kmodtest_dep", "", KindDepends)
	if p == nil || !strings.Contains(p.Reason, "depends on kmodtest_base") {
		t.Errorf("no depends problem:\n%s", r)
	}
	if len(r.Problems) != 2 {
		t.Errorf("want exactly 2 problems:\n%s", r)
	}
	out := r.String()
	for _, want := range []string{
		"FAIL: 1 module(s) checked",
		"error: kmodtest_dep: symbol kmodtest_base_value: unresolved symbol kmodtest_base_value",
		"error: kmodtest_dep: depends on kmodtest_base",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if r.Modules[0].OK() || r.Modules[0].Path == "" {
		t.Errorf("module result %+v", r.Modules[0])
	}
}

func TestCheckUnresolved(t *testing.T) {
	k := loadFixtureKernel(t)
	r := Check(k, parseTestModules(t, "kmodtest_unresolved", "kmodtest_marker"))
	p := findProblem(r, "kmodtest_unresolved", "kallsyms_lookup_name", KindUnresolved)
	if p == nil || !strings.Contains(p.Reason, "unresolved symbol kallsyms_lookup_name") || len(r.Problems) != 1 {
		t.Fatalf("want one unresolved kallsyms_lookup_name problem:\n%s", r)
	}
	if !r.Modules[1].OK() {
		t.Errorf("kmodtest_marker: %v", r.Modules[1].Problems)
	}
}

func TestCheckVermagic(t *testing.T) {
	k := loadFixtureKernel(t)
	kver := fixture.KVER(t)
	orig := readTestModule(t, "kmodtest_param")
	good := "vermagic=" + kver + " SMP preempt mod_unload modversions "

	t.Run("flags", func(t *testing.T) {
		// A non-preempt build: "preempt " dropped, the string NUL-padded.
		bad := "vermagic=" + kver + " SMP mod_unload modversions "
		bad += strings.Repeat("\x00", len(good)-len(bad))
		m := parseBytes(t, "kmodtest_param.ko", replaceOnce(t, orig, good, bad))
		r := Check(k, []*Module{m})
		p := findProblem(r, "kmodtest_param", "", KindVermagic)
		want := fmt.Sprintf("vermagic mismatch: module has %q, kernel has %q (flags differ: kernel-only preempt", kver+" SMP mod_unload modversions ", k.Vermagic)
		if p == nil || !strings.HasPrefix(p.Reason, want) || len(r.Problems) != 1 {
			t.Fatalf("want %q:\n%s", want, r)
		}
	})
	t.Run("release only", func(t *testing.T) {
		other := otherRelease(t, kver)
		m := parseBytes(t, "kmodtest_param.ko", replaceOnce(t, orig, "vermagic="+kver, "vermagic="+other))
		r := Check(k, []*Module{m})
		requireOK(t, r)
		want := fmt.Sprintf("release differs (%s vs %s) but modversions CRCs decide", other, kver)
		if findNote(r, "kmodtest_param", KindVermagic, want) == nil {
			t.Errorf("no note %q:\n%s", want, r)
		}
	})
	t.Run("release without versions", func(t *testing.T) {
		other := otherRelease(t, kver)
		data := replaceOnce(t, orig, "vermagic="+kver, "vermagic="+other)
		// Rename __versions so the loader does not find it.
		data = replaceOnce(t, data, "\x00__versions\x00", "\x00__versionz\x00")
		m := parseBytes(t, "kmodtest_param.ko", data)
		if len(m.Versions) != 0 {
			t.Fatal("__versions still parsed")
		}
		r := Check(k, []*Module{m})
		p := findProblem(r, "kmodtest_param", "", KindVermagic)
		if p == nil || !strings.Contains(p.Reason, fmt.Sprintf("vermagic mismatch: module has %q", other+" SMP preempt mod_unload modversions ")) ||
			!strings.Contains(p.Reason, "release "+other+" vs "+kver) {
			t.Fatalf("no release mismatch problem:\n%s", r)
		}
		// Debian has CONFIG_MODULE_FORCE_LOAD: no __versions only taints.
		if findNote(r, "kmodtest_param", KindModversions, "force-loads") == nil {
			t.Errorf("no force-load note:\n%s", r)
		}
	})
	t.Run("no versions same release", func(t *testing.T) {
		m := parseBytes(t, "kmodtest_param.ko", replaceOnce(t, orig, "\x00__versions\x00", "\x00__versionz\x00"))
		r := Check(k, []*Module{m})
		requireOK(t, r)
		if findNote(r, "kmodtest_param", KindModversions, "force-loads") == nil {
			t.Errorf("no force-load note:\n%s", r)
		}
	})
}

func TestCheckCRCMismatch(t *testing.T) {
	k := loadFixtureKernel(t)
	base := parseTestModules(t, "kmodtest_base")[0]
	dep := readTestModule(t, "kmodtest_dep")

	m := parseBytes(t, "kmodtest_dep.ko", patchVersionCRC(t, dep, "kmodtest_base_value", 0xdeadbeef))
	r := Check(k, []*Module{base, m})
	p := findProblem(r, "kmodtest_dep", "kmodtest_base_value", KindCRC)
	want := "CRC mismatch for symbol kmodtest_base_value: module expects 0xdeadbeef, kmodtest_base has 0x603c7473"
	if p == nil || !strings.HasPrefix(p.Reason, want) || len(r.Problems) != 1 {
		t.Fatalf("want %q:\n%s", want, r)
	}

	// A vmlinux symbol and module_layout.
	for _, sym := range []string{"module_layout", "_printk"} {
		m := parseBytes(t, "kmodtest_dep.ko", patchVersionCRC(t, dep, sym, 0x12345678))
		r := Check(k, []*Module{base, m})
		p := findProblem(r, "kmodtest_dep", sym, KindCRC)
		want := fmt.Sprintf("CRC mismatch for symbol %s: module expects 0x12345678, kernel has 0x%08x", sym, k.Exports[sym].CRC)
		if p == nil || !strings.HasPrefix(p.Reason, want) {
			t.Errorf("want %q:\n%s", want, r)
		}
	}
}

func TestCheckGPLAndNamespace(t *testing.T) {
	k := loadFixtureKernel(t)
	base := parseTestModules(t, "kmodtest_base")[0]
	m := parseBytes(t, "kmodtest_dep.ko", replaceOnce(t, readTestModule(t, "kmodtest_dep"), "license=GPL\x00", "license=MIT\x00"))
	r := Check(k, []*Module{base, m})
	p := findProblem(r, "kmodtest_dep", "kmodtest_base_value", KindGPL)
	if p == nil || !strings.Contains(p.Reason, `module license "MIT" is not GPL-compatible but uses GPL-only symbol kmodtest_base_value exported by kmodtest_base`) {
		t.Fatalf("no GPL problem:\n%s", r)
	}

	// A proprietary exporter: its GPL user may not use it.
	pbase := parseBytes(t, "kmodtest_base.ko", replaceOnce(t, readTestModule(t, "kmodtest_base"), "license=GPL\x00", "license=MIT\x00"))
	dep := parseTestModules(t, "kmodtest_dep")[0]
	r = Check(k, []*Module{pbase, dep})
	if p := findProblem(r, "kmodtest_dep", "kmodtest_base_value", KindGPL); p == nil || !strings.Contains(p.Reason, "proprietary module kmodtest_base") {
		t.Errorf("no proprietary-exporter problem:\n%s", r)
	}

	// An in-tree module that imports a namespace, with the import removed.
	path := filepath.Join(fixture.ModulesDir(t), "kernel/sound/hda/snd-intel-dspcfg.ko")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	orig, err := ParseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	requireOK(t, Check(k, []*Module{orig}))
	nm := parseBytes(t, "snd-intel-dspcfg.ko", replaceOnce(t, data, "import_ns=SND_INTEL_SOUNDWIRE_ACPI", "import_nx=SND_INTEL_SOUNDWIRE_ACPI"))
	r = Check(k, []*Module{nm})
	if r.OK() {
		t.Fatal("namespace import removed but OK")
	}
	for _, p := range r.Problems {
		if p.Kind != KindNamespace || k.Exports[p.Symbol].Namespace != "SND_INTEL_SOUNDWIRE_ACPI" ||
			!strings.Contains(p.Reason, "from namespace SND_INTEL_SOUNDWIRE_ACPI, but does not import it") {
			t.Errorf("unexpected problem %s", p)
		}
	}
}

func TestCheckWithSymversOnly(t *testing.T) {
	k, err := LoadKernel(WithSymvers(filepath.Join(fixture.Headers(t), "Module.symvers")))
	if err != nil {
		t.Fatal(err)
	}
	r := Check(k, parseTestModules(t, "kmodtest_base", "kmodtest_dep", "kmodtest_param"))
	requireOK(t, r)
	if findNote(r, "kmodtest_dep", KindVermagic, "kernel vermagic unknown") == nil {
		t.Errorf("no vermagic-unknown note:\n%s", r)
	}
	// CRCs are checked from Module.symvers alone.
	m := parseBytes(t, "kmodtest_dep.ko", patchVersionCRC(t, readTestModule(t, "kmodtest_dep"), "_printk", 1))
	r = Check(k, parseTestModules(t, "kmodtest_base"))
	r = Check(k, append(parseTestModules(t, "kmodtest_base"), m))
	if findProblem(r, "kmodtest_dep", "_printk", KindCRC) == nil {
		t.Errorf("no CRC problem:\n%s", r)
	}
	r = Check(k, parseTestModules(t, "kmodtest_unresolved"))
	if findProblem(r, "kmodtest_unresolved", "kallsyms_lookup_name", KindUnresolved) == nil {
		t.Errorf("no unresolved problem:\n%s", r)
	}
}

func TestCheckWithSystemMapOnly(t *testing.T) {
	ref, err := LoadKernel(WithSymvers(filepath.Join(fixture.Headers(t), "Module.symvers")))
	if err != nil {
		t.Fatal(err)
	}
	var vmlinux []KernelSymbol
	for _, s := range ref.Exports {
		if s.Owner == Vmlinux {
			vmlinux = append(vmlinux, s)
		}
	}
	k, err := LoadKernel(WithSystemMap(systemMapFrom(t, vmlinux, false)), WithRelease(fixture.KVER(t)))
	if err != nil {
		t.Fatal(err)
	}
	r := Check(k, parseTestModules(t, "kmodtest_base", "kmodtest_dep", "kmodtest_param"))
	requireOK(t, r)
	r = Check(k, parseTestModules(t, "kmodtest_unresolved"))
	if findProblem(r, "kmodtest_unresolved", "kallsyms_lookup_name", KindUnresolved) == nil {
		t.Errorf("no unresolved problem:\n%s", r)
	}
}
