package kmod

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// KernelSymbol is one symbol a target kernel exports to modules.
type KernelSymbol struct {
	Name string
	// CRC is the modversions CRC of the export, when HasCRC.
	CRC    uint32
	HasCRC bool
	// Owner is "vmlinux" or the (normalized) name of the exporting module.
	Owner string
	// GPL is set for EXPORT_SYMBOL_GPL exports.
	GPL bool
	// Namespace is the symbol namespace (EXPORT_SYMBOL_NS), if any.
	Namespace string
}

// Vmlinux is the Owner of symbols exported by the kernel image itself.
const Vmlinux = "vmlinux"

// Kernel describes a target kernel as far as module loading is concerned:
// what it exports, which modules it ships and which vermagic it expects.
// Build one with LoadKernel.
type Kernel struct {
	// Release is the kernel release (uname -r), e.g. "6.1.0-56-amd64".
	Release string
	// Vermagic is the vermagic string the kernel (and its in-tree modules)
	// carry, e.g. "6.1.0-56-amd64 SMP preempt mod_unload modversions ".
	// Empty when unknown.
	Vermagic string
	// HasModversions reports CONFIG_MODVERSIONS: the kernel checks the
	// __versions CRCs of modules against its exports.
	HasModversions bool
	// ForceLoad reports CONFIG_MODULE_FORCE_LOAD: modules without vermagic
	// or __versions load with a taint instead of being refused. Only known
	// when a kernel config was read (ConfigKnown).
	ForceLoad bool
	// AllowMissingNamespaceImports reports
	// CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS (only a warning then).
	AllowMissingNamespaceImports bool
	// ConfigKnown is set when a kernel .config was read.
	ConfigKnown bool
	// Machine is the ELF machine of the kernel's modules (0 when unknown).
	Machine elf.Machine
	// Exports maps symbol name to export, for vmlinux and in-tree modules.
	Exports map[string]KernelSymbol
	// VmlinuxKnown is set when vmlinux's exports were loaded (from a
	// Module.symvers or a System.map); without them a symbol missing from
	// Exports may still be exported by vmlinux.
	VmlinuxKnown bool
	// Modules maps the normalized name ('-' → '_') of every module the
	// kernel ships to its file (empty when only known from Module.symvers).
	Modules map[string]string
	// Builtin holds the normalized names of modules built into the kernel
	// image (modules.builtin).
	Builtin map[string]bool
	// InTree maps the normalized name of each module of the kernel's own
	// tree to its path relative to the module directory: modules.dep's
	// entries (or, without one, the files WithModulesDir found) outside
	// updates/, extra/ and weak-updates/, where out-of-tree modules go.
	InTree map[string]string
	// Aliases maps a device alias pattern to the in-tree modules that claim
	// it (modules.alias, or the alias= fields of the files WithModulesDir
	// parsed), in the order read.
	Aliases map[string][]string
	// Sources lists the files and directories the model was built from.
	Sources []string
	// Warnings lists inconsistencies found between the sources, e.g. a
	// Module.symvers CRC that disagrees with the module file's.
	Warnings []string
	// config is the merged kernel config (nil when none was read), for
	// the questions the fields above do not answer (CanVerify).
	config map[string]string
}

// KernelOption adds a source of information to LoadKernel.
type KernelOption func(*kernelLoader) error

type kernelLoader struct {
	modulesDirs []string
	symvers     []string
	systemMaps  []string
	headers     []string
	configs     []string
	deps        []string
	aliases     []string
	builtins    []string
	release     string
}

// WithModulesDir reads a /lib/modules/<release> directory: every *.ko,
// *.ko.xz, *.ko.zst and *.ko.gz under it (except build/ and source/) is
// parsed, in parallel, for its name, exports (with CRCs) and vermagic;
// modules.builtin is read if present, and build/Module.symvers (with the
// rest of the headers tree) when the build link resolves.
func WithModulesDir(dir string) KernelOption {
	return pathOption("WithModulesDir", dir, func(l *kernelLoader) *[]string { return &l.modulesDirs })
}

// WithSymvers reads a Module.symvers file (exports of vmlinux and modules
// with their CRCs, export types and namespaces).
func WithSymvers(path string) KernelOption {
	return pathOption("WithSymvers", path, func(l *kernelLoader) *[]string { return &l.symvers })
}

// WithSystemMap reads a System.map: each __ksymtab_<name> symbol is an
// export of vmlinux (GPL-only when it lies between __start___ksymtab_gpl and
// __stop___ksymtab_gpl). __crc_<name> symbols give CRCs only when absolute
// (type A, kernels before 5.19); since 5.19 they are addresses of the CRC
// in __kcrctab, so a modern System.map carries no CRCs. A System.map never
// tells namespaces.
func WithSystemMap(path string) KernelOption {
	return pathOption("WithSystemMap", path, func(l *kernelLoader) *[]string { return &l.systemMaps })
}

// WithHeaders reads a kernel headers/build tree (e.g.
// /usr/src/linux-headers-<release>): its Module.symvers, the release from
// include/generated/utsrelease.h (else include/config/kernel.release) and
// the .config, from which the vermagic is derived the way
// include/linux/vermagic.h builds it.
func WithHeaders(dir string) KernelOption {
	return pathOption("WithHeaders", dir, func(l *kernelLoader) *[]string { return &l.headers })
}

// WithConfig reads a kernel .config (e.g. /boot/config-<release>) for
// CONFIG_MODVERSIONS, CONFIG_MODULE_FORCE_LOAD and the vermagic flags.
func WithConfig(path string) KernelOption {
	return pathOption("WithConfig", path, func(l *kernelLoader) *[]string { return &l.configs })
}

// WithModulesDep reads a modules.dep ("path: dependencies" lines) for the
// kernel's in-tree modules (Kernel.InTree), without parsing module files:
// what a check of shadowing needs when only the index of the tree is at
// hand.
func WithModulesDep(path string) KernelOption {
	return pathOption("WithModulesDep", path, func(l *kernelLoader) *[]string { return &l.deps })
}

// WithModulesAlias reads a modules.alias ("alias PATTERN MODULE" lines)
// for the device aliases of the kernel's in-tree modules (Kernel.Aliases);
// aliases of modules that are not in-tree (WithModulesDep, WithModulesDir)
// are left out.
func WithModulesAlias(path string) KernelOption {
	return pathOption("WithModulesAlias", path, func(l *kernelLoader) *[]string { return &l.aliases })
}

// WithModulesBuiltin reads a modules.builtin (the modules built into the
// kernel image, Kernel.Builtin).
func WithModulesBuiltin(path string) KernelOption {
	return pathOption("WithModulesBuiltin", path, func(l *kernelLoader) *[]string { return &l.builtins })
}

// pathOption appends a file or folder to a list of the loader; an empty
// path is a mistake of the caller, not "none".
func pathOption(name, p string, list func(*kernelLoader) *[]string) KernelOption {
	return func(l *kernelLoader) error {
		if p == "" {
			return fmt.Errorf("%s: empty path", name)
		}
		*list(l) = append(*list(l), p)
		return nil
	}
}

// WithRelease sets the kernel release, overriding what the sources say.
func WithRelease(release string) KernelOption {
	return func(l *kernelLoader) error {
		if release == "" || strings.ContainsAny(release, " \t\n") {
			return fmt.Errorf("bad kernel release %q", release)
		}
		l.release = release
		return nil
	}
}

// kernelBuild accumulates the sources before LoadKernel settles the model.
type kernelBuild struct {
	k *Kernel
	// src remembers where each export came from, for warnings.
	src map[string]string
	// config is the merged kernel config (nil when none was read).
	config map[string]string
	// releases and vermagics found, by source, in priority order.
	utsRelease, fileRelease, dirRelease string
	vermagicSample                      string
	// randstructHash from a headers tree, when present.
	randstructHash string
	headersDirs    []string
	// aliases are the modules.alias entries read, in order; finish keeps
	// those of in-tree modules.
	aliases []moduleAlias
}

// moduleAlias is one "alias PATTERN MODULE" entry.
type moduleAlias struct{ pattern, module string }

// LoadKernel builds a Kernel from the given sources. At least one option is
// required. Sources are merged: module files are authoritative for the
// exports of modules, Module.symvers for vmlinux (with GPL and namespace
// information), a System.map only adds vmlinux exports not known otherwise.
func LoadKernel(opts ...KernelOption) (*Kernel, error) {
	l := &kernelLoader{}
	for _, o := range opts {
		if err := o(l); err != nil {
			return nil, err
		}
	}
	if len(l.modulesDirs)+len(l.symvers)+len(l.systemMaps)+len(l.headers)+len(l.configs)+len(l.deps)+len(l.aliases)+len(l.builtins) == 0 {
		return nil, errors.New("LoadKernel: no source given (WithModulesDir, WithHeaders, WithSymvers, WithSystemMap, WithConfig, WithModulesDep, WithModulesAlias or WithModulesBuiltin)")
	}
	b := &kernelBuild{
		k: &Kernel{
			Exports: map[string]KernelSymbol{},
			Modules: map[string]string{},
			Builtin: map[string]bool{},
			InTree:  map[string]string{},
			Aliases: map[string][]string{},
		},
		src: map[string]string{},
	}
	for _, dir := range l.headers {
		if err := b.loadHeaders(dir, true); err != nil {
			return nil, err
		}
	}
	for _, p := range l.configs {
		if err := b.loadConfig(p); err != nil {
			return nil, err
		}
	}
	for _, p := range l.symvers {
		if err := b.loadSymvers(p); err != nil {
			return nil, err
		}
	}
	for _, p := range l.systemMaps {
		if err := b.loadSystemMap(p); err != nil {
			return nil, err
		}
	}
	for _, p := range l.deps {
		if err := b.readModulesDep(p); err != nil {
			return nil, err
		}
	}
	for _, p := range l.aliases {
		if err := b.readModulesAlias(p); err != nil {
			return nil, err
		}
	}
	for _, p := range l.builtins {
		if err := b.readModulesBuiltin(p, true); err != nil {
			return nil, err
		}
	}
	for _, dir := range l.modulesDirs {
		if err := b.loadModulesDir(dir); err != nil {
			return nil, err
		}
	}
	if err := b.finish(l.release); err != nil {
		return nil, err
	}
	return b.k, nil
}

// normalizeModName is the kernel's module name form: '-' becomes '_'.
func normalizeModName(s string) string { return strings.ReplaceAll(s, "-", "_") }

func (b *kernelBuild) warnf(format string, args ...any) {
	b.k.Warnings = append(b.k.Warnings, fmt.Sprintf(format, args...))
}

// addExport merges one export; override says whether it replaces an
// existing entry (true for module files and Module.symvers).
func (b *kernelBuild) addExport(s KernelSymbol, source string, override bool) {
	old, ok := b.k.Exports[s.Name]
	if ok {
		if old.HasCRC && s.HasCRC && old.CRC != s.CRC && old.Owner == s.Owner {
			b.warnf("%s and %s disagree about the CRC of %s: 0x%08x vs 0x%08x",
				b.src[s.Name], source, s.Name, old.CRC, s.CRC)
		}
		if !override {
			if !old.HasCRC && s.HasCRC && old.Owner == s.Owner {
				old.CRC, old.HasCRC = s.CRC, true
				b.k.Exports[s.Name] = old
			}
			return
		}
		if !s.HasCRC && old.HasCRC && old.Owner == s.Owner {
			s.CRC, s.HasCRC = old.CRC, true
		}
		if s.Namespace == "" && old.Owner == s.Owner {
			s.Namespace = old.Namespace
		}
	}
	b.k.Exports[s.Name] = s
	b.src[s.Name] = source
}

// loadSymvers reads a Module.symvers. Rows are tab-separated:
//
//	0x%08x  symbol  module|vmlinux  EXPORT_SYMBOL[_GPL]  namespace   (5.10+)
//	0x%08x  symbol  namespace  module  EXPORT_SYMBOL[_GPL]          (5.4–5.9)
//	0x%08x  symbol  module  EXPORT_SYMBOL[_GPL]                     (older)
func (b *kernelBuild) loadSymvers(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	syms, err := parseSymvers(path, data)
	if err != nil {
		return err
	}
	b.k.Sources = append(b.k.Sources, path)
	for _, s := range syms {
		if s.Owner == Vmlinux {
			b.k.VmlinuxKnown = true
		} else if _, ok := b.k.Modules[s.Owner]; !ok {
			b.k.Modules[s.Owner] = ""
		}
		b.addExport(s, path, true)
	}
	return nil
}

func parseSymvers(path string, data []byte) ([]KernelSymbol, error) {
	var syms []KernelSymbol
	line := 0
	for len(data) > 0 {
		var text []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			text, data = data[:i], data[i+1:]
		} else {
			text, data = data, nil
		}
		line++
		s := strings.TrimSuffix(string(text), "\r")
		if strings.TrimSpace(s) == "" {
			continue
		}
		f := strings.Split(s, "\t")
		if len(f) < 4 || len(f) > 5 {
			return nil, fmt.Errorf("%s:%d: expected 4 or 5 tab-separated fields (CRC, symbol, module, export type, namespace), got %d", path, line, len(f))
		}
		var crcStr, name, owner, typ, ns string
		switch {
		case strings.HasPrefix(f[3], "EXPORT_"):
			crcStr, name, owner, typ = f[0], f[1], f[2], f[3]
			if len(f) == 5 {
				ns = f[4]
			}
		case len(f) == 5 && strings.HasPrefix(f[4], "EXPORT_"):
			crcStr, name, ns, owner, typ = f[0], f[1], f[2], f[3], f[4]
		default:
			return nil, fmt.Errorf("%s:%d: bad export type %q (want EXPORT_SYMBOL...)", path, line, f[3])
		}
		if !strings.HasPrefix(crcStr, "0x") && !strings.HasPrefix(crcStr, "0X") {
			return nil, fmt.Errorf("%s:%d: bad CRC %q", path, line, crcStr)
		}
		crc, err := strconv.ParseUint(crcStr[2:], 16, 32)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: bad CRC %q", path, line, crcStr)
		}
		if name == "" || strings.ContainsAny(name, " ") {
			return nil, fmt.Errorf("%s:%d: bad symbol name %q", path, line, name)
		}
		if owner == "" {
			return nil, fmt.Errorf("%s:%d: empty module field for symbol %s", path, line, name)
		}
		if owner != Vmlinux {
			owner = ModuleNameFromPath(owner)
		}
		syms = append(syms, KernelSymbol{
			Name:      name,
			CRC:       uint32(crc),
			HasCRC:    true,
			Owner:     owner,
			GPL:       typ == "EXPORT_SYMBOL_GPL",
			Namespace: ns,
		})
	}
	// Without CONFIG_MODVERSIONS modpost writes 0x00000000 everywhere.
	allZero := true
	for _, s := range syms {
		if s.CRC != 0 {
			allZero = false
			break
		}
	}
	if allZero {
		for i := range syms {
			syms[i].HasCRC = false
		}
	}
	return syms, nil
}

// loadSystemMap reads a System.map (nm output: "address type name").
func (b *kernelBuild) loadSystemMap(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	syms, err := parseSystemMap(path, data)
	if err != nil {
		return err
	}
	b.k.Sources = append(b.k.Sources, path)
	b.k.VmlinuxKnown = true
	for _, s := range syms {
		b.addExport(s, path, false)
	}
	return nil
}

func parseSystemMap(path string, data []byte) ([]KernelSymbol, error) {
	ksymtab := map[string]uint64{}
	crcs := map[string]uint64{}
	markers := map[string]uint64{}
	line := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line++
		s := sc.Text()
		if line == 1 && strings.Contains(s, "The real System.map is in") {
			// Debian's linux-image packages ship this one-line stand-in.
			return nil, fmt.Errorf("%s: placeholder System.map without symbols (%q)", path, strings.TrimSpace(s))
		}
		if strings.TrimSpace(s) == "" {
			continue
		}
		f := strings.Fields(s)
		if len(f) < 3 || len(f) > 4 {
			return nil, fmt.Errorf("%s:%d: expected \"address type name\", got %q", path, line, s)
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: bad address %q", path, line, f[0])
		}
		if len(f[1]) != 1 {
			return nil, fmt.Errorf("%s:%d: bad symbol type %q", path, line, f[1])
		}
		if len(f) == 4 {
			// /proc/kallsyms style "[module]" column: not vmlinux.
			continue
		}
		name, typ := f[2], f[1][0]
		switch {
		case strings.HasPrefix(name, "__start___ksymtab"), strings.HasPrefix(name, "__stop___ksymtab"):
			markers[name] = addr
		case strings.HasPrefix(name, "__ksymtab_"):
			ksymtab[name[len("__ksymtab_"):]] = addr
		case strings.HasPrefix(name, "__crc_"):
			if typ == 'A' || typ == 'a' {
				crcs[name[len("__crc_"):]] = addr
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %v", path, line+1, err)
	}
	if len(ksymtab) == 0 {
		return nil, fmt.Errorf("%s: no exported symbols (__ksymtab_*) found", path)
	}
	inRange := func(a uint64, start, stop string) (bool, bool) {
		lo, ok1 := markers[start]
		hi, ok2 := markers[stop]
		if !ok1 || !ok2 {
			return false, false
		}
		return a >= lo && a < hi, true
	}
	var syms []KernelSymbol
	for name, addr := range ksymtab {
		gpl, gplKnown := inRange(addr, "__start___ksymtab_gpl", "__stop___ksymtab_gpl")
		plain, plainKnown := inRange(addr, "__start___ksymtab", "__stop___ksymtab")
		if gplKnown && plainKnown && !gpl && !plain {
			// __ksymtab_* names outside the export tables are not exports
			// (e.g. section markers of other tables).
			continue
		}
		s := KernelSymbol{Name: name, Owner: Vmlinux, GPL: gpl}
		if c, ok := crcs[name]; ok && c <= 0xffffffff {
			s.CRC, s.HasCRC = uint32(c), true
		}
		syms = append(syms, s)
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].Name < syms[j].Name })
	return syms, nil
}

// loadHeaders reads a headers/build tree. strict requires the .config too.
func (b *kernelBuild) loadHeaders(dir string, strict bool) error {
	if err := b.loadSymvers(filepath.Join(dir, "Module.symvers")); err != nil {
		return fmt.Errorf("headers %s: %w", dir, err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "include/generated/utsrelease.h")); err == nil {
		rel, err := parseUTSRelease(data)
		if err != nil {
			return fmt.Errorf("%s: %v", filepath.Join(dir, "include/generated/utsrelease.h"), err)
		}
		b.utsRelease = rel
	}
	if data, err := os.ReadFile(filepath.Join(dir, "include/config/kernel.release")); err == nil {
		b.fileRelease = strings.TrimSpace(string(data))
	}
	cfg := filepath.Join(dir, ".config")
	if _, err := os.Stat(cfg); err != nil {
		cfg = filepath.Join(dir, "include/config/auto.conf")
	}
	if err := b.loadConfig(cfg); err != nil {
		if strict {
			return fmt.Errorf("headers %s: %w", dir, err)
		}
		b.warnf("headers %s: %v", dir, err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "include/generated/randstruct_hash.h")); err == nil {
		for _, ln := range strings.Split(string(data), "\n") {
			f := strings.Fields(ln)
			if len(f) == 3 && f[0] == "#define" && f[1] == "RANDSTRUCT_HASHED_SEED" {
				b.randstructHash = strings.Trim(f[2], "\"")
			}
		}
	}
	b.headersDirs = append(b.headersDirs, dir)
	return nil
}

func parseUTSRelease(data []byte) (string, error) {
	for _, ln := range strings.Split(string(data), "\n") {
		f := strings.Fields(ln)
		if len(f) >= 3 && f[0] == "#define" && f[1] == "UTS_RELEASE" {
			v := strings.Join(f[2:], " ")
			if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
				return "", fmt.Errorf("bad UTS_RELEASE %s", v)
			}
			return v[1 : len(v)-1], nil
		}
	}
	return "", errors.New("no UTS_RELEASE definition")
}

// loadConfig reads a kernel .config; later files override earlier ones.
func (b *kernelBuild) loadConfig(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	cfg, err := parseKernelConfig(path, data)
	if err != nil {
		return err
	}
	if b.config == nil {
		b.config = map[string]string{}
	}
	for k, v := range cfg {
		b.config[k] = v
	}
	b.k.Sources = append(b.k.Sources, path)
	return nil
}

// parseKernelConfig parses CONFIG_X=value lines ("# CONFIG_X is not set"
// and other comments are skipped); values keep their quotes stripped.
func parseKernelConfig(path string, data []byte) (map[string]string, error) {
	cfg := map[string]string{}
	for i, ln := range strings.Split(string(data), "\n") {
		ln = strings.TrimSpace(strings.TrimSuffix(ln, "\r"))
		if ln == "" || ln[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(ln, "=")
		if !ok || !strings.HasPrefix(k, "CONFIG_") || len(k) == len("CONFIG_") {
			return nil, fmt.Errorf("%s:%d: expected CONFIG_NAME=value, got %q", path, i+1, ln)
		}
		if strings.HasPrefix(v, "\"") {
			if len(v) < 2 || !strings.HasSuffix(v, "\"") {
				return nil, fmt.Errorf("%s:%d: unterminated string value for %s", path, i+1, k)
			}
			v = v[1 : len(v)-1]
		}
		cfg[k] = v
	}
	return cfg, nil
}

// configVermagicFlags returns what follows "<release> " in VERMAGIC_STRING
// for the config (include/linux/vermagic.h, arch/*/include/asm/vermagic.h).
func configVermagicFlags(cfg map[string]string, randstructHash string) (string, error) {
	on := func(k string) bool { v := cfg["CONFIG_"+k]; return v == "y" || v == "m" }
	var sb strings.Builder
	if on("SMP") {
		sb.WriteString("SMP ")
	}
	switch {
	case on("PREEMPT_BUILD"):
		sb.WriteString("preempt ")
	case on("PREEMPT_RT"):
		sb.WriteString("preempt_rt ")
	}
	if on("MODULE_UNLOAD") {
		sb.WriteString("mod_unload ")
	}
	if on("MODVERSIONS") {
		sb.WriteString("modversions ")
	}
	arch, err := archVermagic(cfg, on)
	if err != nil {
		return "", err
	}
	sb.WriteString(arch)
	if on("RANDSTRUCT_FULL") || on("RANDSTRUCT_PERFORMANCE") || on("GCC_PLUGIN_RANDSTRUCT") {
		if randstructHash == "" {
			return "", errors.New("CONFIG_RANDSTRUCT is set but include/generated/randstruct_hash.h is missing")
		}
		sb.WriteString("RANDSTRUCT_" + randstructHash)
	}
	return sb.String(), nil
}

var x86Families = []struct{ config, family string }{
	{"M486SX", "486SX "}, {"M486", "486 "}, {"M586", "586 "}, {"M586TSC", "586TSC "},
	{"M586MMX", "586MMX "}, {"MCORE2", "CORE2 "}, {"MATOM", "ATOM "}, {"M686", "686 "},
	{"MPENTIUMII", "PENTIUMII "}, {"MPENTIUMIII", "PENTIUMIII "}, {"MPENTIUMM", "PENTIUMM "},
	{"MPENTIUM4", "PENTIUM4 "}, {"MK6", "K6 "}, {"MK7", "K7 "}, {"MK8", "K8 "},
	{"MELAN", "ELAN "}, {"MCRUSOE", "CRUSOE "}, {"MEFFICEON", "EFFICEON "},
	{"MWINCHIPC6", "WINCHIPC6 "}, {"MWINCHIP3D", "WINCHIP3D "}, {"MCYRIXIII", "CYRIXIII "},
	{"MVIAC3_2", "VIAC3-2 "}, {"MVIAC7", "VIAC7 "}, {"MGEODEGX1", "GEODEGX1 "}, {"MGEODE_LX", "GEODE "},
}

func archVermagic(cfg map[string]string, on func(string) bool) (string, error) {
	switch {
	case on("X86_64"):
		return "", nil
	case on("X86_32"):
		for _, f := range x86Families {
			if on(f.config) {
				return f.family, nil
			}
		}
		return "", errors.New("x86_32 config without a known processor family")
	case on("ARM64"):
		return "aarch64", nil
	case on("RISCV"):
		return "riscv", nil
	case on("PPC"):
		s := ""
		if on("MPROFILE_KERNEL") {
			s += "mprofile-kernel "
		}
		if on("RELOCATABLE") {
			s += "relocatable "
		}
		return s, nil
	}
	return "", errors.New("cannot derive the architecture part of vermagic from this config (supported: x86, arm64, riscv, powerpc)")
}

func configMachine(cfg map[string]string) elf.Machine {
	on := func(k string) bool { return cfg["CONFIG_"+k] == "y" }
	switch {
	case on("X86_64"):
		return elf.EM_X86_64
	case on("X86_32"):
		return elf.EM_386
	case on("ARM64"):
		return elf.EM_AARCH64
	case on("ARM"):
		return elf.EM_ARM
	case on("RISCV"):
		return elf.EM_RISCV
	case on("PPC64"):
		return elf.EM_PPC64
	case on("PPC32"):
		return elf.EM_PPC
	case on("S390"):
		return elf.EM_S390
	}
	return 0
}

// readModulesBuiltin reads modules.builtin ("kernel/path/name.ko" lines).
// A missing file is an error only when required.
func (b *kernelBuild) readModulesBuiltin(path string, required bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !required {
			return nil
		}
		return err
	}
	for i, ln := range strings.Split(string(data), "\n") {
		ln = strings.TrimSpace(ln)
		if ln == "" {
			continue
		}
		if !strings.HasSuffix(ln, ".ko") {
			return fmt.Errorf("%s:%d: expected a .ko path, got %q", path, i+1, ln)
		}
		b.k.Builtin[ModuleNameFromPath(ln)] = true
	}
	b.k.Sources = append(b.k.Sources, path)
	return nil
}

// outOfTree tells the paths (relative to the module directory) where
// depmod's search order and the distributions put modules that are not the
// kernel's own.
func outOfTree(rel string) bool {
	for _, d := range []string{"updates/", "extra/", "weak-updates/"} {
		if strings.HasPrefix(rel, d) {
			return true
		}
	}
	return false
}

// readModulesDep reads modules.dep ("path: dependencies" lines) into
// InTree.
func (b *kernelBuild) readModulesDep(path string) error {
	err := scanModulesDep(path, func(p string, _ []string) {
		if !outOfTree(p) {
			b.k.InTree[ModuleNameFromPath(p)] = p
		}
	})
	if err != nil {
		return err
	}
	b.k.Sources = append(b.k.Sources, path)
	return nil
}

// scanModulesDep calls f for each entry of a modules.dep: a module's path
// and its dependencies' (relative to the module directory).
func scanModulesDep(path string, f func(p string, deps []string)) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if strings.TrimSpace(text) == "" || strings.HasPrefix(text, "#") {
			continue
		}
		p, deps, ok := strings.Cut(text, ":")
		if !ok || strings.TrimSpace(p) == "" {
			return fmt.Errorf("%s:%d: expected \"path: dependencies\", got %q", path, line, text)
		}
		f(p, strings.Fields(deps))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// DepClosure returns the dependencies, direct and indirect, of the modules
// at rels as the modules.dep at path lists them: paths relative to the
// module directory, each once, depth first in modules.dep's order, without
// the modules of rels themselves.
func DepClosure(path string, rels []string) ([]string, error) {
	deps := map[string][]string{}
	if err := scanModulesDep(path, func(p string, d []string) { deps[p] = d }); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, r := range rels {
		seen[r] = true
	}
	var order []string
	var visit func(string)
	visit = func(p string) {
		for _, d := range deps[p] {
			if !seen[d] {
				seen[d] = true
				order = append(order, d)
				visit(d)
			}
		}
	}
	for _, r := range rels {
		visit(r)
	}
	return order, nil
}

// readModulesAlias reads modules.alias ("alias PATTERN MODULE" lines;
// comments and other lines are skipped, as modprobe does).
func (b *kernelBuild) readModulesAlias(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 3 && fs[0] == "alias" {
			b.aliases = append(b.aliases, moduleAlias{fs[1], normalizeModName(fs[2])})
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	b.k.Sources = append(b.k.Sources, path)
	return nil
}

// finish settles release, vermagic and modversions from what was read.
func (b *kernelBuild) finish(release string) error {
	k := b.k
	for _, a := range b.aliases {
		if _, ok := k.InTree[a.module]; ok && !slices.Contains(k.Aliases[a.pattern], a.module) {
			k.Aliases[a.pattern] = append(k.Aliases[a.pattern], a.module)
		}
	}
	k.config = b.config
	sampleRelease, _, _ := strings.Cut(b.vermagicSample, " ")
	// UTS_RELEASE wins over include/config/kernel.release: Debian's headers
	// hold the upstream version (6.1.192) there, not the ABI name modules
	// carry (6.1.0-56-amd64).
	switch {
	case release != "":
		k.Release = release
	case b.utsRelease != "":
		k.Release = b.utsRelease
	case sampleRelease != "":
		k.Release = sampleRelease
	case b.dirRelease != "":
		k.Release = b.dirRelease
	default:
		k.Release = b.fileRelease
	}
	if b.config != nil {
		k.ConfigKnown = true
		on := func(n string) bool { return b.config["CONFIG_"+n] == "y" }
		k.HasModversions = on("MODVERSIONS")
		k.ForceLoad = on("MODULE_FORCE_LOAD")
		k.AllowMissingNamespaceImports = on("MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS")
		if k.Machine == 0 {
			k.Machine = configMachine(b.config)
		}
	}
	var computed string
	if b.config != nil && k.Release != "" {
		flags, err := configVermagicFlags(b.config, b.randstructHash)
		if err != nil {
			b.warnf("vermagic not derived from the config: %v", err)
		} else {
			computed = k.Release + " " + flags
		}
	}
	switch {
	case b.vermagicSample != "":
		k.Vermagic = b.vermagicSample
		if release != "" && sampleRelease != release {
			_, flags, _ := strings.Cut(b.vermagicSample, " ")
			k.Vermagic = release + " " + flags
		}
		if computed != "" && computed != k.Vermagic {
			b.warnf("vermagic derived from the config %q differs from the modules' %q", computed, k.Vermagic)
		}
	default:
		k.Vermagic = computed
	}
	if b.config == nil {
		if k.Vermagic != "" {
			k.HasModversions = vermagicHasFlag(k.Vermagic, "modversions")
		} else {
			for _, s := range k.Exports {
				if s.HasCRC {
					k.HasModversions = true
					break
				}
			}
		}
	}
	if !k.HasModversions {
		for n, s := range k.Exports {
			s.CRC, s.HasCRC = 0, false
			k.Exports[n] = s
		}
	}
	return nil
}

// vermagicHasFlag reports whether the vermagic (after the release word)
// contains the flag word.
func vermagicHasFlag(vermagic, flag string) bool {
	f := strings.Fields(vermagic)
	for _, w := range f[min(1, len(f)):] {
		if w == flag {
			return true
		}
	}
	return false
}

// headersFor finds the headers tree belonging to a module tree: its build
// link, or <root>/usr/src/linux-headers-<release>. The tree is often inside a
// mounted image, where an absolute link names a path of the image, not of
// this host, so absolute targets are resolved under the image's root.
func headersFor(dir string) string {
	dir = filepath.Clean(dir)
	release := filepath.Base(dir)
	root := ""
	for _, suffix := range []string{"/usr/lib/modules/" + release, "/lib/modules/" + release} {
		if strings.HasSuffix(dir, suffix) {
			root = strings.TrimSuffix(dir, suffix)
			break
		}
	}
	var candidates []string
	link := filepath.Join(dir, "build")
	if target, err := os.Readlink(link); err == nil {
		if filepath.IsAbs(target) {
			// root is "" for the host's own tree and for loose trees.
			candidates = append(candidates, filepath.Join(root, target))
		} else {
			candidates = append(candidates, filepath.Join(dir, target))
		}
	} else {
		candidates = append(candidates, link)
	}
	if root != "" || strings.HasPrefix(dir, "/lib/modules/") || strings.HasPrefix(dir, "/usr/lib/modules/") {
		candidates = append(candidates, filepath.Join(root, "usr/src", "linux-headers-"+release))
	}
	for _, c := range candidates {
		if fileExists(filepath.Join(c, "Module.symvers")) {
			return c
		}
	}
	return ""
}

// loadModulesDir reads a /lib/modules/<release> tree: all modules in
// parallel (GOMAXPROCS workers), modules.builtin, and build/ when it
// resolves to a headers tree with a Module.symvers.
func (b *kernelBuild) loadModulesDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	b.k.Sources = append(b.k.Sources, dir)
	b.dirRelease = filepath.Base(filepath.Clean(dir))
	if build := headersFor(dir); build != "" {
		if err := b.loadHeaders(build, false); err != nil {
			return err
		}
	}
	if err := b.readModulesBuiltin(filepath.Join(dir, "modules.builtin"), false); err != nil {
		return err
	}
	// depmod's index, when the tree has one, says what is in-tree; else
	// the files below tell (derived after parsing them).
	depFile, aliasFile := filepath.Join(dir, "modules.dep"), filepath.Join(dir, "modules.alias")
	haveDep, haveAlias := fileExists(depFile), fileExists(aliasFile)
	if haveDep {
		if err := b.readModulesDep(depFile); err != nil {
			return err
		}
	}
	if haveAlias {
		if err := b.readModulesAlias(aliasFile); err != nil {
			return err
		}
	}
	var paths []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel, _ := filepath.Rel(dir, p); rel == "build" || rel == "source" {
				return filepath.SkipDir
			}
			return nil
		}
		if isModuleFile(d.Name()) && d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	mods := make([]*Module, len(paths))
	errs := make([]error, len(paths))
	var next atomic.Int64
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), len(paths))
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(paths) {
					return
				}
				mods[i], errs[i] = ParseFile(paths[i])
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// depmod's default search order: updates/ first, then the rest.
	chosen := map[string]int{}
	vermagics := map[string]int{}
	machines := map[elf.Machine]int{}
	for i, m := range mods {
		name := normalizeModName(m.Name())
		if j, dup := chosen[name]; dup {
			if underUpdates(dir, paths[i]) && !underUpdates(dir, paths[j]) {
				chosen[name] = i
			}
			b.warnf("module %s found twice: %s and %s; using %s", name, paths[j], paths[i], paths[chosen[name]])
			continue
		}
		chosen[name] = i
	}
	for i, m := range mods {
		rel, err := filepath.Rel(dir, paths[i])
		if err != nil || outOfTree(filepath.ToSlash(rel)) {
			continue
		}
		name := normalizeModName(m.Name())
		if !haveDep {
			b.k.InTree[name] = filepath.ToSlash(rel)
		}
		if !haveAlias {
			for _, a := range m.All("alias") {
				b.aliases = append(b.aliases, moduleAlias{a, name})
			}
		}
	}
	names := make([]string, 0, len(chosen))
	for n := range chosen {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		i := chosen[name]
		m := mods[i]
		b.k.Modules[name] = paths[i]
		if v := m.Vermagic(); v != "" {
			vermagics[v]++
		}
		machines[m.Machine]++
		for _, e := range m.Exports {
			b.addExport(KernelSymbol{Name: e.Name, CRC: e.CRC, HasCRC: e.HasCRC, Owner: name, GPL: e.GPL, Namespace: e.Namespace}, paths[i], true)
		}
	}
	best := 0
	for v, n := range vermagics {
		if n > best || n == best && v < b.vermagicSample {
			b.vermagicSample, best = v, n
		}
	}
	if len(vermagics) > 1 {
		b.warnf("%s: modules carry %d different vermagic strings; using %q (%d modules)", dir, len(vermagics), b.vermagicSample, best)
	}
	best = 0
	for mach, n := range machines {
		if n > best {
			b.k.Machine, best = mach, n
		}
	}
	return nil
}

func isModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

func underUpdates(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && strings.HasPrefix(rel, "updates"+string(filepath.Separator))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// signatureNeeds maps a module signature's key type or digest to the
// kernel config option that must be built in (=y) to verify it. Module
// signatures are checked when a module loads, possibly from the initramfs
// before any crypto module could be loaded: a verifier built as a module
// (=m) does not count. RSA and sha256 need nothing: module signing itself
// selects them.
var signatureNeeds = map[string]struct{ option, what, instead string }{
	"rsa":    {},
	"ecdsa":  {"CONFIG_CRYPTO_ECDSA", "ECDSA module signatures", "sign with an RSA key"},
	"sha256": {},
	"sha384": {"CONFIG_CRYPTO_SHA512", "sha384 module signatures", "sign with sha256"},
	"sha512": {"CONFIG_CRYPTO_SHA512", "sha512 module signatures", "sign with sha256"},
}

// Key types and digests of module signatures, as CanVerify names them.
var (
	signatureKeyTypes = []string{"rsa", "ecdsa"}
	signatureHashes   = []string{"sha256", "sha384", "sha512"}
)

// VerifiableKeyTypes lists the key types ("rsa", "ecdsa") of the module
// signatures the kernel can verify, from its config; without a config only
// what module signing always has ("rsa").
func (k *Kernel) VerifiableKeyTypes() []string { return k.verifiable(signatureKeyTypes) }

// VerifiableHashes lists the digests ("sha256", "sha384", "sha512") of the
// module signatures the kernel can verify, from its config; without a
// config only what module signing always has ("sha256").
func (k *Kernel) VerifiableHashes() []string { return k.verifiable(signatureHashes) }

func (k *Kernel) verifiable(names []string) []string {
	var res []string
	for _, n := range names {
		need := signatureNeeds[n]
		if need.option == "" || k.config[need.option] == "y" {
			res = append(res, n)
		}
	}
	return res
}

// CanVerify tells whether the kernel can verify module signatures made
// with a key of keyType ("rsa", "ecdsa") and digest hash ("sha256",
// "sha384", "sha512"; "" when only the key type matters). The error says
// which config option is missing, or that the config is unknown, and what
// to sign with instead.
func (k *Kernel) CanVerify(keyType, hash string) error {
	var needs []struct{ option, what, instead string }
	for _, n := range []struct{ name, kind string }{{keyType, "key type"}, {hash, "digest"}} {
		if n.name == "" && n.kind == "digest" {
			continue
		}
		need, ok := signatureNeeds[n.name]
		if !ok {
			return fmt.Errorf("unknown module signature %s %q (known: %s)", n.kind, n.name, strings.Join(append(slices.Clone(signatureKeyTypes), signatureHashes...), ", "))
		}
		if need.option != "" {
			needs = append(needs, need)
		}
	}
	if len(needs) == 0 {
		return nil
	}
	if k.config == nil {
		whats := make([]string, len(needs))
		for i, n := range needs {
			whats[i] = n.what
		}
		return fmt.Errorf("kernel %s: no config to tell whether it can verify %s; use an RSA key with sha256", k.Release, strings.Join(whats, " and "))
	}
	for _, n := range needs {
		v, set := k.config[n.option]
		switch {
		case v == "y":
			continue
		case set && v == "m":
			v = "=m, a module, which cannot verify the modules that load before it"
		default:
			v = "not set"
		}
		return fmt.Errorf("kernel %s cannot verify %s (%s %s); %s", k.Release, n.what, n.option, v, n.instead)
	}
	return nil
}
