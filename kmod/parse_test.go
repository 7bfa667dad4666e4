package kmod

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod/internal/modfile"
)

// symversRow is one line of a Module.symvers.
type symversRow struct {
	CRC       uint32
	Name      string
	Module    string
	Type      string
	Namespace string
}

func readSymvers(t testing.TB, path string) []symversRow {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []symversRow
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) < 4 {
			t.Fatalf("%s: bad line %q", path, sc.Text())
		}
		crc, err := strconv.ParseUint(strings.TrimPrefix(cols[0], "0x"), 16, 32)
		if err != nil {
			t.Fatalf("%s: bad CRC in %q", path, sc.Text())
		}
		r := symversRow{CRC: uint32(crc), Name: cols[1], Module: cols[2], Type: cols[3]}
		if len(cols) > 4 {
			r.Namespace = cols[4]
		}
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// rowExport is the Export a Module.symvers row describes.
func rowExport(r symversRow) Export {
	return Export{Name: r.Name, GPL: r.Type == "EXPORT_SYMBOL_GPL", Namespace: r.Namespace, CRC: r.CRC, HasCRC: true}
}

func parseFixture(t testing.TB, path string) *Module {
	t.Helper()
	m, err := ParseFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func findModule(t testing.TB, name string) string {
	t.Helper()
	for _, p := range treeModules(t, fixture.ModulesDir(t)) {
		if ModuleNameFromPath(p) == name {
			return p
		}
	}
	t.Fatalf("module %s not in the fixture tree", name)
	return ""
}

func TestParseTestModuleExports(t *testing.T) {
	m := parseFixture(t, fixture.TestModule(t, "kmodtest_base"))
	rows := readSymvers(t, fixture.Path(t, "testmods/Module.symvers"))
	var want []Export
	for _, r := range rows {
		if filepath.Base(r.Module) == "kmodtest_base" {
			want = append(want, rowExport(r))
		}
	}
	if len(want) == 0 || want[0].Name != "kmodtest_base_value" || !want[0].GPL {
		t.Fatalf("unexpected testmods/Module.symvers: %+v", rows)
	}
	if !reflect.DeepEqual(m.Exports, want) {
		t.Errorf("Exports = %+v, want %+v", m.Exports, want)
	}
	if m.Class != elf.ELFCLASS64 || m.ByteOrder != binary.LittleEndian || m.Machine != elf.EM_X86_64 {
		t.Errorf("Class/ByteOrder/Machine = %v/%v/%v", m.Class, m.ByteOrder, m.Machine)
	}
	if m.Name() != "kmodtest_base" || m.Intree() || m.Signature != nil || m.Size != m.ContentSize {
		t.Errorf("Name %q Intree %v Signature %v Size %d ContentSize %d", m.Name(), m.Intree(), m.Signature, m.Size, m.ContentSize)
	}
}

func TestParseTestModuleVersions(t *testing.T) {
	m := parseFixture(t, fixture.TestModule(t, "kmodtest_dep"))
	rows := readSymvers(t, fixture.Path(t, "testmods/Module.symvers"))
	versions := map[string]uint64{}
	for _, v := range m.Versions {
		versions[v.Name] = v.CRC
	}
	crc, ok := versions["kmodtest_base_value"]
	if !ok || crc != uint64(rows[0].CRC) {
		t.Errorf("__versions kmodtest_base_value = %#x (present %v), Module.symvers has %#x", crc, ok, rows[0].CRC)
	}
	// module_layout was dropped from __versions in 6.0 (its CRC is no
	// longer exported): expect it exactly when the fixture kernel's own
	// modules carry it.
	dummy := parseFixture(t, findModule(t, "dummy"))
	_, kernelHas := modVersion(dummy, "module_layout")
	if _, has := versions["module_layout"]; has != kernelHas {
		t.Errorf("kmodtest_dep has module_layout: %v, in-tree dummy: %v", has, kernelHas)
	}
	t.Logf("module_layout in __versions: %v", kernelHas)
	if !slices.Contains(m.Undefined, "kmodtest_base_value") {
		t.Errorf("Undefined %v lacks kmodtest_base_value", m.Undefined)
	}
	if !slices.Equal(m.Depends(), []string{"kmodtest_base"}) {
		t.Errorf("Depends() = %q", m.Depends())
	}
	// modpost writes one __versions entry per import with a known CRC.
	for _, v := range m.Versions {
		if v.Name != "module_layout" && !slices.Contains(m.Undefined, v.Name) {
			t.Errorf("__versions entry %s is not an undefined symbol", v.Name)
		}
	}
}

func modVersion(m *Module, name string) (uint64, bool) {
	for _, v := range m.Versions {
		if v.Name == name {
			return v.CRC, true
		}
	}
	return 0, false
}

func TestParseTestModuleUndefined(t *testing.T) {
	m := parseFixture(t, fixture.TestModule(t, "kmodtest_unresolved"))
	if !slices.Contains(m.Undefined, "kallsyms_lookup_name") {
		t.Errorf("Undefined %v lacks kallsyms_lookup_name", m.Undefined)
	}
	if len(m.WeakUndefined) != 0 {
		t.Errorf("WeakUndefined = %v", m.WeakUndefined)
	}
}

// TestParseDepmodUnknownSymbols checks Undefined/WeakUndefined against
// `depmod -e`: the symbols it reports as "needs unknown symbol" are the
// Undefined ones nobody exports; a weak undefined symbol is not reported.
func TestParseDepmodUnknownSymbols(t *testing.T) {
	depmod := fixture.Tool(t, "depmod")
	objcopy := fixture.Tool(t, "objcopy")
	kver := fixture.KVER(t)
	symvers := filepath.Join(fixture.Headers(t), "Module.symvers")
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules", kver, "extra")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range globFixtures(t, "testmods/*.ko") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A copy of kmodtest_unresolved whose missing import is weak.
	weak := filepath.Join(dir, "kmodtest_weak.ko")
	if out, err := exec.Command(objcopy, "--weaken-symbol=kallsyms_lookup_name", fixture.TestModule(t, "kmodtest_unresolved"), weak).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v: %s", err, out)
	}
	wm := parseFixture(t, weak)
	if slices.Contains(wm.Undefined, "kallsyms_lookup_name") || !slices.Contains(wm.WeakUndefined, "kallsyms_lookup_name") {
		t.Errorf("weakened module: Undefined %v, WeakUndefined %v", wm.Undefined, wm.WeakUndefined)
	}

	known := map[string]bool{}
	for _, r := range readSymvers(t, symvers) {
		known[r.Name] = true
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.ko"))
	var mods []*Module
	for _, f := range files {
		m := parseFixture(t, f)
		mods = append(mods, m)
		for _, x := range m.Exports {
			known[x.Name] = true
		}
	}
	var want []string
	for _, m := range mods {
		for _, u := range m.Undefined {
			if !known[u] {
				want = append(want, m.Path+" needs unknown symbol "+u)
			}
		}
	}
	slices.Sort(want)

	cmd := exec.Command(depmod, "-b", root, "-e", "-E", symvers, "-n", kver)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("depmod: %v: %s", err, stderr.Bytes())
	}
	var got []string
	for line := range strings.SplitSeq(stderr.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "depmod: WARNING: "); ok && strings.Contains(rest, " needs unknown symbol ") {
			got = append(got, rest)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("depmod -e reports\n%s\nUndefined implies\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(want) == 0 {
		t.Error("expected kmodtest_unresolved to need an unknown symbol")
	}
}

// TestParseTreeExportsMatchSymvers compares the exports of every in-tree
// module with the rows of the headers' Module.symvers.
func TestParseTreeExportsMatchSymvers(t *testing.T) {
	dir := fixture.ModulesDir(t)
	rows := readSymvers(t, filepath.Join(fixture.Headers(t), "Module.symvers"))
	want := map[string][]Export{}
	for _, r := range rows {
		if r.Module != "vmlinux" {
			want[r.Module] = append(want[r.Module], rowExport(r))
		}
	}
	files := treeModules(t, dir)
	mods := parseAll(t, files)
	// __versions: every CRC a module expects equals the exporter's.
	crcs := map[string]uint32{}
	for _, r := range rows {
		crcs[r.Name] = r.CRC
	}
	checked := 0
	for i, m := range mods {
		for _, v := range m.Versions {
			if crc, ok := crcs[v.Name]; ok {
				checked++
				if uint64(crc) != v.CRC {
					t.Errorf("%s: __versions %s = %#x, Module.symvers %#x", files[i], v.Name, v.CRC, crc)
				}
			} else {
				t.Errorf("%s: __versions %s not in Module.symvers", files[i], v.Name)
			}
		}
	}
	exporting, exports := 0, 0
	for i, f := range files {
		rel, _ := filepath.Rel(filepath.Join(dir, "kernel"), f)
		key := strings.TrimSuffix(rel, ".ko")
		w := want[key]
		delete(want, key)
		slices.SortFunc(w, func(a, b Export) int { return strings.Compare(a.Name, b.Name) })
		if !reflect.DeepEqual(mods[i].Exports, w) && !(len(w) == 0 && len(mods[i].Exports) == 0) {
			t.Errorf("%s: Exports differ from Module.symvers:\n got %+v\nwant %+v", rel, mods[i].Exports, w)
		}
		if len(w) > 0 {
			exporting++
			exports += len(w)
		}
	}
	for k := range want {
		t.Errorf("Module.symvers module %s has no file in the tree", k)
	}
	if exporting == 0 {
		t.Fatal("no exporting module found")
	}
	t.Logf("%d modules, %d of them exporting %d symbols, and %d __versions entries match Module.symvers", len(files), exporting, exports, checked)
}

// TestParseTreeUndefinedMatchesNm compares Undefined with binutils' `nm -u`
// over the whole tree, and checks that every __versions entry is an import.
func TestParseTreeUndefinedMatchesNm(t *testing.T) {
	nm := fixture.Tool(t, "nm")
	files := treeModules(t, fixture.ModulesDir(t))
	want := map[string][]string{}
	var mu sync.Mutex
	var chunks [][]string
	for c := range slices.Chunk(files, 500) {
		chunks = append(chunks, c)
	}
	parallelFor(len(chunks), func(i int) {
		out, err := exec.Command(nm, append([]string{"-u", "-A"}, chunks[i]...)...).Output()
		if err != nil {
			t.Errorf("nm: %v", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
			// "path:                 U name"
			file, rest, _ := strings.Cut(line, ":")
			f := strings.Fields(rest)
			if len(f) != 2 {
				t.Errorf("nm line %q", line)
				continue
			}
			key := file
			if f[0] == "w" {
				key += " (weak)"
			}
			want[key] = append(want[key], f[1])
		}
	})
	mods := parseAll(t, files)
	for i, f := range files {
		m := mods[i]
		for _, c := range []struct {
			key string
			got []string
		}{{f, m.Undefined}, {f + " (weak)", m.WeakUndefined}} {
			got := slices.Sorted(slices.Values(c.got))
			w := want[c.key]
			slices.Sort(w)
			if !slices.Equal(got, w) {
				t.Errorf("%s: undefined symbols differ from nm -u:\n got %v\nwant %v", c.key, got, w)
			}
		}
		for _, v := range m.Versions {
			if v.Name != "module_layout" && !slices.Contains(m.Undefined, v.Name) && !slices.Contains(m.WeakUndefined, v.Name) {
				t.Errorf("%s: __versions entry %s is no undefined symbol", f, v.Name)
			}
		}
	}
}

// parseAll parses files in parallel, failing on any error.
func parseAll(t testing.TB, files []string) []*Module {
	t.Helper()
	mods := make([]*Module, len(files))
	errs := make([]error, len(files))
	parallelFor(len(files), func(i int) { mods[i], errs[i] = ParseFile(files[i]) })
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return mods
}

// TestParseForeign checks the armhf (ELF32 LE) and s390x (ELF64 BE)
// modules: header fields, and exports' CRCs against the __versions CRCs
// with which vfat imports them from fat.
func TestParseForeign(t *testing.T) {
	for _, c := range []struct {
		arch  string
		class elf.Class
		order binary.ByteOrder
		mach  elf.Machine
	}{
		{"armhf", elf.ELFCLASS32, binary.LittleEndian, elf.EM_ARM},
		{"s390x", elf.ELFCLASS64, binary.BigEndian, elf.EM_S390},
	} {
		t.Run(c.arch, func(t *testing.T) {
			fat := parseFixture(t, fixture.Path(t, filepath.Join("foreign", c.arch, "fat.ko")))
			vfat := parseFixture(t, fixture.Path(t, filepath.Join("foreign", c.arch, "vfat.ko")))
			for _, m := range []*Module{fat, vfat} {
				if m.Class != c.class || m.ByteOrder != c.order || m.Machine != c.mach {
					t.Errorf("%s: Class/ByteOrder/Machine = %v/%v/%v", m.Path, m.Class, m.ByteOrder, m.Machine)
				}
				if m.Signature == nil {
					t.Errorf("%s: no signature", m.Path)
				}
			}
			crcs := map[string]Export{}
			for _, x := range fat.Exports {
				crcs[x.Name] = x
			}
			checked := 0
			for _, v := range vfat.Versions {
				x, ok := crcs[v.Name]
				if !ok {
					continue
				}
				checked++
				if !x.HasCRC || uint64(x.CRC) != v.CRC {
					t.Errorf("%s: fat exports CRC %#x (HasCRC %v), vfat expects %#x", v.Name, x.CRC, x.HasCRC, v.CRC)
				}
				if !slices.Contains(vfat.Undefined, v.Name) {
					t.Errorf("vfat Undefined lacks %s", v.Name)
				}
			}
			if checked < 5 {
				t.Errorf("only %d fat symbols in vfat's __versions", checked)
			}
			if !slices.Equal(vfat.Depends(), []string{"fat"}) {
				t.Errorf("vfat Depends() = %q", vfat.Depends())
			}
		})
	}
}

// TestParseFileMatchesParse checks that ParseFile's piecewise reading gives
// exactly what Parse gives on the whole file.
func TestParseFileMatchesParse(t *testing.T) {
	files := treeModules(t, fixture.ModulesDir(t))
	for _, pattern := range []string{"testmods/*.ko", "compressed/*", "foreign/*/*.ko"} {
		files = append(files, globFixtures(t, pattern)...)
	}
	var n atomic.Int64
	parallelFor(len(files), func(i int) {
		a, err := ParseFile(files[i])
		if err != nil {
			t.Error(err)
			return
		}
		data, err := os.ReadFile(files[i])
		if err != nil {
			t.Error(err)
			return
		}
		b, err := Parse(data)
		if err != nil {
			t.Errorf("%s: %v", files[i], err)
			return
		}
		b.Path = files[i]
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: ParseFile and Parse differ", files[i])
		}
		n.Add(1)
	})
	t.Logf("%d files", n.Load())
}

func TestModuleAccessors(t *testing.T) {
	m := &Module{Path: "/lib/modules/x/kernel/sound/snd-hda-intel.ko.xz", Info: []Field{
		{"alias", "a"}, {"depends", "snd,snd-pcm,,x"}, {"alias", "b"}, {"vermagic", "6.1.0 SMP"}, {"intree", ""},
	}}
	if m.Name() != "snd_hda_intel" {
		t.Errorf("Name() = %q", m.Name())
	}
	if v, ok := m.Get("alias"); !ok || v != "a" {
		t.Errorf("Get(alias) = %q, %v", v, ok)
	}
	if _, ok := m.Get("license"); ok {
		t.Error("Get(license) found a value")
	}
	if !slices.Equal(m.All("alias"), []string{"a", "b"}) || m.All("license") != nil {
		t.Errorf("All: %q %q", m.All("alias"), m.All("license"))
	}
	if !slices.Equal(m.Depends(), []string{"snd", "snd-pcm", "x"}) {
		t.Errorf("Depends() = %q", m.Depends())
	}
	if m.Vermagic() != "6.1.0 SMP" || !m.Intree() {
		t.Errorf("Vermagic() = %q, Intree() = %v", m.Vermagic(), m.Intree())
	}
	m.Info = append(m.Info, Field{"name", "real_name"}, Field{"depends", "ignored"})
	if m.Name() != "real_name" {
		t.Errorf("Name() = %q with a name= field", m.Name())
	}
	if (&Module{Info: []Field{{"depends", ""}}}).Depends() != nil {
		t.Error("empty depends= gives dependencies")
	}
}

// --- errors ---

func readFixture(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantError(t *testing.T, what string, err error, target error, contains string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %v", what, target)
		return
	}
	if !errors.Is(err, target) {
		t.Errorf("%s: error %q is not %q", what, err, target)
	}
	if !strings.Contains(err.Error(), contains) {
		t.Errorf("%s: error %q lacks %q", what, err, contains)
	}
}

func TestParseErrors(t *testing.T) {
	base := readFixture(t, fixture.TestModule(t, "kmodtest_base"))
	_, err := Parse(nil)
	wantError(t, "empty", err, ErrEmpty, "empty file")
	empty := filepath.Join(t.TempDir(), "empty.ko")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = ParseFile(empty)
	wantError(t, "empty file", err, ErrEmpty, empty+": empty file")

	_, err = ParseFile(filepath.Join(t.TempDir(), "missing.ko"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing.ko: open: ") {
		t.Errorf("missing file: %v", err)
	}
	dir := t.TempDir()
	if _, err = ParseFile(dir); err == nil || !strings.Contains(err.Error(), dir+": not a regular file") {
		t.Errorf("directory: %v", err)
	}

	_, err = Parse([]byte("#!/bin/sh\necho not a module\n"))
	wantError(t, "script", err, ErrNotELF, "not an ELF kernel module: no ELF magic (file starts with 23 21 2f 62)")
	_, err = Parse([]byte{0x7f})
	wantError(t, "one byte of magic", err, ErrTruncated, "truncated ELF: ELF identification needs 16 bytes")

	// Not relocatable: e_type patched, and a real executable.
	exec := bytes.Clone(base)
	binary.LittleEndian.PutUint16(exec[16:], uint16(elf.ET_EXEC))
	_, err = Parse(exec)
	wantError(t, "ET_EXEC", err, ErrNotELF, "ELF type is ET_EXEC, a module is ET_REL")
	if b, err := os.ReadFile("/bin/true"); err == nil {
		_, err = Parse(b)
		wantError(t, "/bin/true", err, ErrNotELF, "ELF type is ET_DYN")
	}

	// Bad ELF identification.
	bad := bytes.Clone(base)
	bad[elf.EI_CLASS] = 7
	_, err = Parse(bad)
	wantError(t, "class", err, ErrMalformed, "unknown ELF class 7")

	// No .modinfo: rename the section.
	noinfo := bytes.Clone(base)
	i := bytes.Index(noinfo, []byte(".modinfo\x00"))
	if i < 0 {
		t.Fatal("no .modinfo name")
	}
	copy(noinfo[i:], ".modinfX")
	_, err = Parse(noinfo)
	wantError(t, "no .modinfo", err, ErrNoModinfo, "missing .modinfo section")
}

// sectionHeaderOffset returns the file offset of the header of the section
// named name in an ELF64 little-endian module.
func sectionHeaderOffset(t *testing.T, data []byte, name string) int {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range f.Sections {
		if s.Name == name {
			return int(binary.LittleEndian.Uint64(data[40:])) + i*modfile.Shdr64Size
		}
	}
	t.Fatalf("no section %s", name)
	return 0
}

func TestParseTruncated(t *testing.T) {
	for _, path := range []string{fixture.TestModule(t, "kmodtest_base"), findModule(t, "dummy")} {
		data := readFixture(t, path)
		full, err := Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		// Cut inside the ELF header, the sections and the section header
		// table: the table sits at the end of the ELF content.
		for _, n := range []int{1, 4, 15, 16, 40, 63, 64, 200, full.ContentSize / 2, full.ContentSize - 64, full.ContentSize - 1} {
			_, err := Parse(data[:n])
			if err == nil || !errors.Is(err, ErrTruncated) {
				t.Errorf("%s cut to %d bytes: error %v, want %v", filepath.Base(path), n, err, ErrTruncated)
			}
		}
		_, err = Parse(data[:full.ContentSize/2])
		wantError(t, "half", err, ErrTruncated, "truncated ELF: section header table (offset 0x")
		wantError(t, "half", err, ErrTruncated, fmt.Sprintf("extends past end of file (%d bytes)", full.ContentSize/2))
	}

	// A section that claims more bytes than the file has.
	data := readFixture(t, fixture.TestModule(t, "kmodtest_base"))
	sh := sectionHeaderOffset(t, data, ".modinfo")
	binary.LittleEndian.PutUint64(data[sh+32:], uint64(len(data)))
	_, err := Parse(data)
	wantError(t, "long .modinfo", err, ErrTruncated, "truncated ELF: section .modinfo (offset 0x")
	wantError(t, "long .modinfo", err, ErrTruncated, fmt.Sprintf("extends past end of file (%d bytes)", len(data)))

	// In a signed module the ELF must end before the signature.
	signed := readFixture(t, findModule(t, "dummy"))
	m, err := Parse(signed)
	if err != nil {
		t.Fatal(err)
	}
	if m.Signature == nil {
		t.Fatal("dummy.ko has no signature")
	}
	sh = sectionHeaderOffset(t, signed, ".modinfo")
	off := binary.LittleEndian.Uint64(signed[sh+24:])
	binary.LittleEndian.PutUint64(signed[sh+32:], uint64(m.ContentSize)-off+1)
	_, err = Parse(signed)
	wantError(t, "signed", err, ErrTruncated, fmt.Sprintf("section .modinfo (offset %#x, size %#x) extends past end of module content (before the signature) (%d bytes)", off, uint64(m.ContentSize)-off+1, m.ContentSize))
}

func TestParseHostileHeaders(t *testing.T) {
	base := readFixture(t, fixture.TestModule(t, "kmodtest_base"))
	patch := func(off int, v uint64, size int) []byte {
		b := bytes.Clone(base)
		switch size {
		case 2:
			binary.LittleEndian.PutUint16(b[off:], uint16(v))
		case 4:
			binary.LittleEndian.PutUint32(b[off:], uint32(v))
		case 8:
			binary.LittleEndian.PutUint64(b[off:], v)
		}
		return b
	}
	symtab := sectionHeaderOffset(t, base, ".symtab")
	modinfo := sectionHeaderOffset(t, base, ".modinfo")
	for _, c := range []struct {
		name     string
		data     []byte
		target   error
		contains string
	}{
		{"shnum 65535", patch(60, 0xffff, 2), ErrTruncated, "section header table"},
		{"shoff huge", patch(40, 1<<63, 8), ErrTruncated, "section header table"},
		{"shoff 0", patch(40, 0, 8), ErrMalformed, "no section header table"},
		{"shentsize", patch(58, 40, 2), ErrMalformed, "section header size 40, want 64"},
		{"shstrndx", patch(62, 5000, 2), ErrMalformed, "section name table index 5000 out of range"},
		{"modinfo offset", patch(modinfo+24, 1<<62, 8), ErrTruncated, "section .modinfo"},
		{"symtab size", patch(symtab+32, 1<<62, 8), ErrTruncated, "section .symtab"},
		{"symtab link", patch(symtab+40, 9999, 4), ErrMalformed, "symbol table links to string table 9999"},
		{"section name", patch(modinfo, 1<<31, 4), ErrMalformed, "name offset 0x80000000 outside the section name table"},
	} {
		_, err := Parse(c.data)
		wantError(t, c.name, err, c.target, c.contains)
	}
}

func TestParseCompressedErrors(t *testing.T) {
	for _, ext := range []string{".gz", ".xz", ".zst"} {
		path := fixture.Path(t, "compressed/dummy.ko"+ext)
		data := readFixture(t, path)
		m, err := Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		plain := parseFixture(t, fixture.Path(t, "compressed/dummy.ko"))
		plain.Compression, plain.Path = m.Compression, ""
		if m.Compression != compress.Detect(data) || m.Compression == compress.None || !reflect.DeepEqual(m, plain) {
			t.Errorf("%s: Parse differs from the uncompressed module", path)
		}
		_, err = Parse(data[:len(data)/2])
		wantError(t, ext+" cut", err, ErrCorruptCompressed, "corrupt compressed module ("+string(m.Compression)+")")
		flipped := bytes.Clone(data)
		for i := len(data) / 3; i < len(data)/3+16; i++ {
			flipped[i] ^= 0x55
		}
		_, err = Parse(flipped)
		wantError(t, ext+" flipped", err, ErrCorruptCompressed, "corrupt compressed module")

		dir := t.TempDir()
		bad := filepath.Join(dir, "dummy.ko"+ext)
		if err := os.WriteFile(bad, data[:len(data)-10], 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = ParseFile(bad)
		wantError(t, ext+" file", err, ErrCorruptCompressed, bad+": corrupt compressed module")
	}
}

func TestParseCompressedBomb(t *testing.T) {
	if testing.Short() {
		t.Skip("decompresses 256 MiB")
	}
	bomb, err := compress.Compress(make([]byte, MaxModuleSize+1), compress.Zstd)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(bomb)
	wantError(t, "bomb", err, ErrTooLarge, "decompresses to more than")
}

func TestParseBadSignature(t *testing.T) {
	data := readFixture(t, findModule(t, "dummy"))
	// sig_len is the big-endian u32 just before the magic.
	i := len(data) - len("~Module signature appended~\n") - 4
	binary.BigEndian.PutUint32(data[i:], uint32(len(data)))
	_, err := Parse(data)
	wantError(t, "sig_len", err, ErrBadSignature, "sig_len")
	f := filepath.Join(t.TempDir(), "dummy.ko")
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err2 := ParseFile(f)
	if err2 == nil || err2.Error() != f+": "+err.Error() {
		t.Errorf("ParseFile error %q, Parse error %q", err2, err)
	}
}

// TestParseTreeMemory parses the whole fixture tree on 2 cores in a child
// process, keeping every Module, and checks the child's peak RSS (VmHWM:
// the child's rusage would include the parent's, as Go forks with
// CLONE_VM).
func TestParseTreeMemory(t *testing.T) {
	dir := fixture.ModulesDir(t)
	if os.Getenv("KMOD_PARSE_MEMORY_CHILD") == "1" {
		files := treeModules(t, dir)
		mods := parseAll(t, files)
		runtime.KeepAlive(mods)
		status, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Skip(err)
		}
		for line := range strings.SplitSeq(string(status), "\n") {
			if strings.HasPrefix(line, "VmHWM:") {
				fmt.Println("CHILD " + line)
			}
		}
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/self/status")
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestParseTreeMemory$", "-test.v")
	cmd.Env = append(os.Environ(), "KMOD_PARSE_MEMORY_CHILD=1", "GOMAXPROCS=2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	var kib int64 = -1
	for line := range strings.SplitSeq(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "CHILD VmHWM:"); ok {
			kib, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	if kib < 0 {
		t.Fatalf("no VmHWM from the child: %s", out)
	}
	t.Logf("peak RSS parsing the tree on 2 cores: %d MiB", kib>>10)
	if kib > 200<<10 {
		t.Errorf("peak RSS %d MiB exceeds 200 MiB", kib>>10)
	}
}

// BenchmarkParseTree parses every module of the fixture tree on
// GOMAXPROCS goroutines per iteration, keeping all the Modules until the
// iteration ends (as a tree-wide check does). It reports the CPU time per
// iteration besides the wall time.
func BenchmarkParseTree(b *testing.B) {
	files := treeModules(b, fixture.ModulesDir(b))
	var bytesRead int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			bytesRead += st.Size()
		}
	}
	b.SetBytes(bytesRead)
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		mods := make([]*Module, len(files))
		var failed atomic.Int64
		parallelFor(len(files), func(i int) {
			var err error
			if mods[i], err = ParseFile(files[i]); err != nil {
				failed.Add(1)
			}
		})
		if failed.Load() > 0 {
			b.Fatalf("%d modules failed to parse", failed.Load())
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/1e6/float64(b.N), "cpu-ms/op")
	b.ReportMetric(float64(len(files)), "modules/op")
}

// BenchmarkModinfoTree runs kmod's modinfo over the same files, 200 per
// process, one process at a time ("serial") or GOMAXPROCS at a time, for
// comparison with BenchmarkParseTree.
func BenchmarkModinfoTree(b *testing.B) {
	tool := fixture.Tool(b, "modinfo")
	files := treeModules(b, fixture.ModulesDir(b))
	var batches [][]string
	for c := range slices.Chunk(files, modinfoBatch) {
		batches = append(batches, c)
	}
	run := func(b *testing.B, batch []string) {
		if err := exec.Command(tool, batch...).Run(); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("serial", func(b *testing.B) {
		for range b.N {
			for _, batch := range batches {
				run(b, batch)
			}
		}
		b.ReportMetric(float64(len(files)), "modules/op")
	})
	b.Run("parallel", func(b *testing.B) {
		for range b.N {
			parallelFor(len(batches), func(i int) { run(b, batches[i]) })
		}
		b.ReportMetric(float64(len(files)), "modules/op")
	})
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
