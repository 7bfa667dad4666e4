package kmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// writeFile writes data to name in a fresh temp dir and returns the path.
func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// rawVermagic reads the vermagic= string straight from a module's bytes.
func rawVermagic(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(data, []byte("\x00vermagic="))
	if i < 0 {
		t.Fatalf("%s: no vermagic", path)
	}
	rest := data[i+len("\x00vermagic="):]
	return string(rest[:bytes.IndexByte(rest, 0)])
}

func TestKernelSymversOnly(t *testing.T) {
	symvers := filepath.Join(fixture.Headers(t), "Module.symvers")
	k, err := LoadKernel(WithSymvers(symvers))
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Exports) < 20000 {
		t.Fatalf("only %d exports from %s", len(k.Exports), symvers)
	}
	if !k.VmlinuxKnown || !k.HasModversions {
		t.Errorf("VmlinuxKnown=%v HasModversions=%v, want both (non-zero CRCs)", k.VmlinuxKnown, k.HasModversions)
	}
	if k.Vermagic != "" || k.ConfigKnown {
		t.Errorf("Vermagic=%q ConfigKnown=%v from a Module.symvers alone", k.Vermagic, k.ConfigKnown)
	}
	// Three rows of this kernel's Module.symvers read by the test's own
	// reader (the CRCs differ between builds): a plain export, a GPL one
	// and the first namespaced one of vmlinux.
	want := map[string]KernelSymbol{}
	for _, r := range readSymvers(t, symvers) {
		namespaced := r.Namespace != "" && r.Module == "vmlinux" && want["namespaced"].Name == ""
		if r.Name != "module_layout" && r.Name != "init_uts_ns" && !namespaced {
			continue
		}
		key := r.Name
		if namespaced {
			key = "namespaced"
		}
		want[key] = KernelSymbol{Name: r.Name, CRC: r.CRC, HasCRC: true, Owner: Vmlinux, GPL: strings.HasSuffix(r.Type, "_GPL"), Namespace: r.Namespace}
	}
	if len(want) != 3 || want["module_layout"].GPL || !want["init_uts_ns"].GPL {
		t.Fatalf("%s: want module_layout (plain), init_uts_ns (GPL) and a namespaced vmlinux export, found %+v", symvers, want)
	}
	for _, w := range want {
		if got := k.Exports[w.Name]; got != w {
			t.Errorf("Exports[%s] = %+v, want %+v", w.Name, got, w)
		}
	}
	// Module-owned rows name the module by path; the owner is its name.
	owners := map[string]bool{}
	for _, s := range k.Exports {
		owners[s.Owner] = true
	}
	for _, o := range []string{"drm", "kvm", "mlx5_core", "sunrpc"} {
		if !owners[o] {
			t.Errorf("no export owned by %s", o)
		}
		if _, ok := k.Modules[o]; !ok {
			t.Errorf("module %s not known from Module.symvers", o)
		}
	}
	for o := range owners {
		if strings.Contains(o, "/") || strings.Contains(o, "-") {
			t.Errorf("owner %q not normalized", o)
		}
	}
}

func TestKernelSymversFormats(t *testing.T) {
	data := "0x0000abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n" + // 5.10+: namespace last, empty
		"0x00001234\tbar\tdrivers/x/my-drv\tEXPORT_SYMBOL_GPL\tMY_NS\n" +
		"0x00000042\tbaz\tOLD_NS\tfs/old-mod\tEXPORT_SYMBOL_GPL\n" + // 5.4-5.9: namespace third
		"0x00000007\tqux\tvmlinux\tEXPORT_SYMBOL\n" + // before 5.4
		"\n"
	k, err := LoadKernel(WithSymvers(writeFile(t, "Module.symvers", data)))
	if err != nil {
		t.Fatal(err)
	}
	want := []KernelSymbol{
		{Name: "bar", CRC: 0x1234, HasCRC: true, Owner: "my_drv", GPL: true, Namespace: "MY_NS"},
		{Name: "baz", CRC: 0x42, HasCRC: true, Owner: "old_mod", GPL: true, Namespace: "OLD_NS"},
		{Name: "foo", CRC: 0xabcd, HasCRC: true, Owner: Vmlinux},
		{Name: "qux", CRC: 7, HasCRC: true, Owner: Vmlinux},
	}
	for _, w := range want {
		if got := k.Exports[w.Name]; got != w {
			t.Errorf("Exports[%s] = %+v, want %+v", w.Name, got, w)
		}
	}
	if len(k.Exports) != len(want) {
		t.Errorf("%d exports, want %d", len(k.Exports), len(want))
	}

	// Without CONFIG_MODVERSIONS modpost writes zero CRCs: no CRCs then.
	k, err = LoadKernel(WithSymvers(writeFile(t, "Module.symvers", "0x00000000\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n")))
	if err != nil {
		t.Fatal(err)
	}
	if k.HasModversions || k.Exports["foo"].HasCRC {
		t.Errorf("all-zero CRCs: HasModversions=%v HasCRC=%v, want false", k.HasModversions, k.Exports["foo"].HasCRC)
	}
}

func TestKernelSymversMalformed(t *testing.T) {
	good := "0x0000abcd\tfoo\tvmlinux\tEXPORT_SYMBOL\t\n"
	for _, tc := range []struct{ line, want string }{
		{"0xzz\tbar\tvmlinux\tEXPORT_SYMBOL\t", `Module.symvers:2: bad CRC "0xzz"`},
		{"1234\tbar\tvmlinux\tEXPORT_SYMBOL\t", `Module.symvers:2: bad CRC "1234"`},
		{"0x1234567890\tbar\tvmlinux\tEXPORT_SYMBOL\t", `Module.symvers:2: bad CRC "0x1234567890"`},
		{"0x00001234 bar vmlinux EXPORT_SYMBOL", `Module.symvers:2: expected 4 or 5 tab-separated fields`},
		{"0x00001234\tbar\tvmlinux\tEXPORT_SOMETHING_ELSE\tNS\textra", `Module.symvers:2: expected 4 or 5 tab-separated fields`},
		{"0x00001234\tbar\tvmlinux\tSYMBOL_GPL\t", `Module.symvers:2: bad export type "SYMBOL_GPL"`},
		{"0x00001234\t\tvmlinux\tEXPORT_SYMBOL\t", `Module.symvers:2: bad symbol name ""`},
	} {
		p := writeFile(t, "Module.symvers", good+tc.line+"\n")
		_, err := LoadKernel(WithSymvers(p))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("line %q: error %v, want it to contain %q", tc.line, err, tc.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), p+":") {
			t.Errorf("error %q does not start with the file path", err)
		}
	}
	if _, err := LoadKernel(WithSymvers(filepath.Join(t.TempDir(), "missing"))); err == nil {
		t.Error("missing Module.symvers: no error")
	}
	if _, err := LoadKernel(); err == nil {
		t.Error("LoadKernel(): no error without sources")
	}
}

// systemMapFrom writes a System.map laid out as a real x86_64 one: vmlinux
// exports of Module.symvers as __ksymtab_<name> entries inside the
// __ksymtab / __ksymtab_gpl ranges, __kstrtab/__kstrtabns strings, and
// __crc_<name> either as 6.1 emits them (labels in __kcrctab, type r) or as
// absolute values (type A, before 5.19).
func systemMapFrom(t *testing.T, syms []KernelSymbol, absoluteCRCs bool) string {
	t.Helper()
	var plain, gpl []KernelSymbol
	for _, s := range syms {
		if s.GPL {
			gpl = append(gpl, s)
		} else {
			plain = append(plain, s)
		}
	}
	type line struct {
		addr uint64
		typ  byte
		name string
	}
	var lines []line
	add := func(addr uint64, typ byte, name string) { lines = append(lines, line{addr, typ, name}) }
	add(0xffffffff81000000, 'T', "_text")
	add(0xffffffff81000100, 'T', "startup_64")
	addr := uint64(0xffffffff82a00000)
	add(addr, 'R', "__start___ksymtab")
	for _, s := range plain {
		add(addr, 'r', "__ksymtab_"+s.Name)
		addr += 12
	}
	add(addr, 'R', "__stop___ksymtab")
	add(addr, 'R', "__start___ksymtab_gpl")
	for _, s := range gpl {
		add(addr, 'r', "__ksymtab_"+s.Name)
		addr += 12
	}
	add(addr, 'R', "__stop___ksymtab_gpl")
	addr += 0x100
	add(addr, 'R', "__start___kcrctab")
	for _, s := range append(append([]KernelSymbol{}, plain...), gpl...) {
		if absoluteCRCs {
			add(uint64(s.CRC), 'A', "__crc_"+s.Name)
		} else {
			add(addr, 'r', "__crc_"+s.Name)
			addr += 4
		}
	}
	add(addr, 'R', "__stop___kcrctab")
	addr += 0x100
	add(addr, 'R', "__start___ksymtab_strings")
	for _, s := range syms {
		add(addr, 'r', "__kstrtab_"+s.Name)
		addr += uint64(len(s.Name) + 1)
		add(addr, 'r', "__kstrtabns_"+s.Name)
		addr++
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].addr < lines[j].addr })
	var sb strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&sb, "%016x %c %s\n", l.addr, l.typ, l.name)
	}
	return writeFile(t, "System.map-test", sb.String())
}

func TestKernelSystemMapOnly(t *testing.T) {
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
	sort.Slice(vmlinux, func(i, j int) bool { return vmlinux[i].Name < vmlinux[j].Name })

	for _, absolute := range []bool{false, true} {
		t.Run(fmt.Sprintf("absoluteCRCs=%v", absolute), func(t *testing.T) {
			k, err := LoadKernel(WithSystemMap(systemMapFrom(t, vmlinux, absolute)))
			if err != nil {
				t.Fatal(err)
			}
			if !k.VmlinuxKnown || len(k.Exports) != len(vmlinux) {
				t.Fatalf("VmlinuxKnown=%v, %d exports, want %d", k.VmlinuxKnown, len(k.Exports), len(vmlinux))
			}
			if k.HasModversions != absolute {
				t.Errorf("HasModversions = %v, want %v", k.HasModversions, absolute)
			}
			for _, w := range vmlinux {
				got := k.Exports[w.Name]
				if got.Owner != Vmlinux || got.GPL != w.GPL || got.HasCRC != absolute || (absolute && got.CRC != w.CRC) {
					t.Fatalf("Exports[%s] = %+v, want GPL=%v CRC=0x%08x (HasCRC %v)", w.Name, got, w.GPL, w.CRC, absolute)
				}
				if got.Namespace != "" {
					t.Fatalf("Exports[%s] has namespace %q: System.map does not tell", w.Name, got.Namespace)
				}
			}
		})
	}
}

func TestKernelSystemMapMalformed(t *testing.T) {
	// Debian ships a one-line placeholder; the real map is in the -dbg package.
	placeholder := filepath.Join(fixture.KernelRoot(t), "boot", "System.map-"+fixture.KVER(t))
	_, err := LoadKernel(WithSystemMap(placeholder))
	if err == nil || !strings.Contains(err.Error(), "placeholder System.map") {
		t.Errorf("Debian placeholder: error %v, want a placeholder error", err)
	}
	head := "ffffffff81000000 T _text\nffffffff82a00000 r __ksymtab_foo\n"
	for _, tc := range []struct{ line, want string }{
		{"zzzzffff81000000 T bar", `System.map:3: bad address "zzzzffff81000000"`},
		{"ffffffff81000000 TT bar", `System.map:3: bad symbol type "TT"`},
		{"ffffffff81000000 bar", `System.map:3: expected "address type name"`},
		{"ffffffff81000000 T bar baz qux", `System.map:3: expected "address type name"`},
	} {
		p := writeFile(t, "System.map", head+tc.line+"\n")
		_, err := LoadKernel(WithSystemMap(p))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("line %q: error %v, want it to contain %q", tc.line, err, tc.want)
		}
	}
	_, err = LoadKernel(WithSystemMap(writeFile(t, "System.map", "ffffffff81000000 T _text\n")))
	if err == nil || !strings.Contains(err.Error(), "no exported symbols") {
		t.Errorf("map without exports: error %v", err)
	}
}

func TestKernelHeaders(t *testing.T) {
	kver := fixture.KVER(t)
	k, err := LoadKernel(WithHeaders(fixture.Headers(t)))
	if err != nil {
		t.Fatal(err)
	}
	// Debian's include/config/kernel.release holds the upstream version
	// (6.1.192); the release modules carry is UTS_RELEASE.
	if k.Release != kver {
		t.Errorf("Release = %q, want %q", k.Release, kver)
	}
	if !k.ConfigKnown || !k.HasModversions || !k.ForceLoad || k.Machine != elf.EM_X86_64 {
		t.Errorf("ConfigKnown=%v HasModversions=%v ForceLoad=%v Machine=%v", k.ConfigKnown, k.HasModversions, k.ForceLoad, k.Machine)
	}
	// The derived vermagic is byte for byte what in-tree modules carry.
	fat := filepath.Join(fixture.ModulesDir(t), "kernel/fs/fat/fat.ko")
	if want := rawVermagic(t, fat); k.Vermagic != want {
		t.Errorf("Vermagic = %q, in-tree fat.ko has %q", k.Vermagic, want)
	}
	if k.Vermagic != kver+" SMP preempt mod_unload modversions " {
		t.Errorf("Vermagic = %q", k.Vermagic)
	}
	if len(k.Warnings) != 0 {
		t.Errorf("warnings: %q", k.Warnings)
	}
	// The boot config of the image gives the same flags.
	k2, err := LoadKernel(WithConfig(filepath.Join(fixture.KernelRoot(t), "boot", "config-"+kver)), WithRelease(kver))
	if err != nil {
		t.Fatal(err)
	}
	if k2.Vermagic != k.Vermagic {
		t.Errorf("vermagic from boot config %q, from headers %q", k2.Vermagic, k.Vermagic)
	}
}

func TestKernelConfigVermagic(t *testing.T) {
	for _, tc := range []struct{ config, want string }{
		{"CONFIG_X86_64=y\nCONFIG_SMP=y\nCONFIG_PREEMPT_BUILD=y\nCONFIG_MODULE_UNLOAD=y\nCONFIG_MODVERSIONS=y\n", "SMP preempt mod_unload modversions "},
		{"CONFIG_X86_64=y\nCONFIG_SMP=y\n# CONFIG_PREEMPT_BUILD is not set\nCONFIG_PREEMPT_RT=y\nCONFIG_MODULE_UNLOAD=y\n", "SMP preempt_rt mod_unload "},
		{"CONFIG_X86_32=y\nCONFIG_M686=y\nCONFIG_MODULE_UNLOAD=y\n", "mod_unload 686 "},
		{"CONFIG_ARM64=y\nCONFIG_SMP=y\nCONFIG_PREEMPT_BUILD=y\nCONFIG_MODULE_UNLOAD=y\nCONFIG_MODVERSIONS=y\n", "SMP preempt mod_unload modversions aarch64"},
		{"CONFIG_RISCV=y\nCONFIG_SMP=y\nCONFIG_MODULE_UNLOAD=y\n", "SMP mod_unload riscv"},
		{"CONFIG_PPC=y\nCONFIG_PPC64=y\nCONFIG_SMP=y\nCONFIG_MODULE_UNLOAD=y\nCONFIG_MODVERSIONS=y\nCONFIG_RELOCATABLE=y\n", "SMP mod_unload modversions relocatable "},
	} {
		k, err := LoadKernel(WithConfig(writeFile(t, "config", tc.config)), WithRelease("9.9.9-test"))
		if err != nil {
			t.Errorf("%q: %v", tc.config, err)
			continue
		}
		if want := "9.9.9-test " + tc.want; k.Vermagic != want {
			t.Errorf("config %q: vermagic %q, want %q", tc.config, k.Vermagic, want)
		}
	}
	_, err := LoadKernel(WithConfig(writeFile(t, "config", "CONFIG_SMP=y\nSMP=y\n")))
	if err == nil || !strings.Contains(err.Error(), "config:2: expected CONFIG_NAME=value") {
		t.Errorf("malformed config: error %v", err)
	}
	_, err = LoadKernel(WithConfig(writeFile(t, "config", "CONFIG_X86_64=y\nCONFIG_RANDSTRUCT_FULL=y\n")), WithRelease("9.9.9"))
	if err != nil {
		t.Errorf("randstruct without hash file and no headers: %v (should only warn)", err)
	}
}

var (
	fixtureKernelOnce sync.Once
	fixtureKernel     *Kernel
	fixtureKernelErr  error
	fixtureKernelTime time.Duration
)

// loadFixtureKernel is the fixture kernel from its modules tree and headers,
// loaded once per test binary.
func loadFixtureKernel(t *testing.T) *Kernel {
	t.Helper()
	dir, headers := fixture.ModulesDir(t), fixture.Headers(t)
	fixtureKernelOnce.Do(func() {
		start := time.Now()
		fixtureKernel, fixtureKernelErr = LoadKernel(WithModulesDir(dir), WithHeaders(headers))
		fixtureKernelTime = time.Since(start)
	})
	if fixtureKernelErr != nil {
		t.Fatal(fixtureKernelErr)
	}
	return fixtureKernel
}

// parseTree parses every module under dir in parallel.
func parseTree(t *testing.T, dir string) []*Module {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && isModuleFile(d.Name()) {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(paths)
	mods := make([]*Module, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	ch := make(chan int)
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				mods[i], errs[i] = ParseFile(paths[i])
			}
		}()
	}
	for i := range paths {
		ch <- i
	}
	close(ch)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return mods
}

func TestKernelModulesDir(t *testing.T) {
	k := loadFixtureKernel(t)
	t.Logf("LoadKernel(modules dir + headers) took %v with GOMAXPROCS=%d", fixtureKernelTime, runtime.GOMAXPROCS(0))
	kver := fixture.KVER(t)
	if k.Release != kver || k.Vermagic != kver+" SMP preempt mod_unload modversions " {
		t.Errorf("Release %q Vermagic %q", k.Release, k.Vermagic)
	}
	if len(k.Modules) < 4000 {
		t.Errorf("%d in-tree modules", len(k.Modules))
	}
	for _, n := range []string{"snd_hda_intel", "fat", "vfat", "kvm_intel"} {
		if p := k.Modules[n]; !strings.HasPrefix(p, fixture.ModulesDir(t)) {
			t.Errorf("Modules[%s] = %q", n, p)
		}
	}
	if !k.Builtin["ext4"] && !k.Builtin["unix"] {
		t.Errorf("modules.builtin not read: %d builtins", len(k.Builtin))
	}
	// Module files and the headers' Module.symvers agree: same build.
	if len(k.Warnings) != 0 {
		t.Errorf("warnings: %q", k.Warnings)
	}
	if s := k.Exports["snd_hda_codec_configure"]; s.Owner != "snd_hda_codec" || !s.HasCRC || !s.GPL {
		t.Errorf("snd_hda_codec_configure: %+v", s)
	}

	// The modules tree alone: module exports only, vmlinux unknown.
	start := time.Now()
	k2, err := LoadKernel(WithModulesDir(fixture.ModulesDir(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("LoadKernel(modules dir) took %v", time.Since(start))
	if k2.VmlinuxKnown || k2.Vermagic != k.Vermagic || !k2.HasModversions {
		t.Errorf("modules dir only: VmlinuxKnown=%v Vermagic=%q HasModversions=%v", k2.VmlinuxKnown, k2.Vermagic, k2.HasModversions)
	}
	for n, s := range k2.Exports {
		if s.Owner == Vmlinux {
			t.Fatalf("vmlinux export %s from modules only", n)
		}
		if w := k.Exports[n]; w != s {
			t.Fatalf("export %s: %+v from modules, %+v with headers", n, s, w)
		}
	}
}

func TestKernelModulesDirLayout(t *testing.T) {
	headers := fixture.Headers(t)
	base, err := os.ReadFile(fixture.TestModule(t, "kmodtest_base"))
	if err != nil {
		t.Fatal(err)
	}
	param, err := os.ReadFile(fixture.TestModule(t, "kmodtest_param"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), fixture.KVER(t))
	put := func(rel string, data []byte, f compress.Format) {
		t.Helper()
		if f != compress.None {
			var err error
			if data, err = compress.Compress(data, f); err != nil {
				t.Fatal(err)
			}
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put("kernel/misc/kmodtest_base.ko.xz", base, compress.XZ)
	put("updates/dkms/kmodtest_base.ko.zst", base, compress.Zstd)
	put("kernel/misc/kmodtest_param.ko.gz", param, compress.Gzip)
	put("modules.builtin", []byte("kernel/fs/ext4/ext4.ko\nkernel/drivers/foo-bar.ko\n"), compress.None)
	if err := os.Symlink(headers, filepath.Join(dir, "build")); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKernel(WithModulesDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	// build/Module.symvers names the in-tree modules that export symbols.
	if p, ok := k.Modules["drm"]; !ok || p != "" {
		t.Errorf("drm: %q, %v: build/Module.symvers not read", p, ok)
	}
	if p := k.Modules["kmodtest_base"]; p != filepath.Join(dir, "updates/dkms/kmodtest_base.ko.zst") {
		t.Errorf("kmodtest_base from %q, want the updates/ copy", p)
	}
	if len(k.Warnings) != 1 || !strings.Contains(k.Warnings[0], "module kmodtest_base found twice") {
		t.Errorf("warnings %q", k.Warnings)
	}
	if !k.Builtin["ext4"] || !k.Builtin["foo_bar"] || !k.VmlinuxKnown || k.Release != fixture.KVER(t) || !k.ConfigKnown {
		t.Errorf("Builtin %v VmlinuxKnown %v Release %q ConfigKnown %v", k.Builtin, k.VmlinuxKnown, k.Release, k.ConfigKnown)
	}
	if s := k.Exports["kmodtest_base_value"]; s.Owner != "kmodtest_base" || s.CRC != 0x603c7473 || !s.GPL {
		t.Errorf("kmodtest_base_value: %+v", s)
	}
	dep, err := ParseFile(fixture.TestModule(t, "kmodtest_dep"))
	if err != nil {
		t.Fatal(err)
	}
	if r := Check(k, []*Module{dep}); !r.OK() {
		t.Errorf("kmodtest_dep against a tree with kmodtest_base:\n%s", r)
	}

	put("modules.builtin", []byte("kernel/fs/ext4/ext4.ko\nnot a module path\n"), compress.None)
	_, err = LoadKernel(WithModulesDir(dir))
	if err == nil || !strings.Contains(err.Error(), "modules.builtin:2: expected a .ko path") {
		t.Errorf("malformed modules.builtin: %v", err)
	}
}

// A module tree inside a mounted image: its absolute build link names a path
// of the image, so the headers must come from under the image root, not from
// the host's /usr/src.
func TestKernelModulesDirInImageRoot(t *testing.T) {
	headers := fixture.Headers(t)
	kver := fixture.KVER(t)
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules", kver)
	if err := os.MkdirAll(filepath.Join(dir, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The image's headers: only Module.symvers, with one extra export the
	// host's copy does not have, so we can tell which one was read.
	symvers, err := os.ReadFile(filepath.Join(headers, "Module.symvers"))
	if err != nil {
		t.Fatal(err)
	}
	symvers = append(symvers, []byte("0x12345678\tkmodctl_image_only_symbol\tvmlinux\tEXPORT_SYMBOL\t\n")...)
	ih := filepath.Join(root, "usr/src", "linux-headers-"+kver)
	if err := os.MkdirAll(ih, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ih, "Module.symvers"), symvers, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/src/linux-headers-"+kver, filepath.Join(dir, "build")); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKernel(WithModulesDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Exports["kmodctl_image_only_symbol"]; !ok || !k.VmlinuxKnown {
		t.Fatalf("headers not read from the image root (VmlinuxKnown=%v)", k.VmlinuxKnown)
	}
	// Without the link, <root>/usr/src/linux-headers-<release> is found too.
	if err := os.Remove(filepath.Join(dir, "build")); err != nil {
		t.Fatal(err)
	}
	k, err = LoadKernel(WithModulesDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Exports["kmodctl_image_only_symbol"]; !ok {
		t.Fatal("headers under <root>/usr/src not found")
	}
}
