package kmod

import (
	"debug/elf"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
)

// ProblemKind classifies a Problem.
type ProblemKind string

// The kinds of problems and notes Check reports.
const (
	// KindArch: the module is for another ELF machine.
	KindArch ProblemKind = "arch"
	// KindVermagic: the vermagic strings disagree.
	KindVermagic ProblemKind = "vermagic"
	// KindModversions: the module has no __versions table.
	KindModversions ProblemKind = "modversions"
	// KindUnresolved: an undefined symbol nobody exports.
	KindUnresolved ProblemKind = "unresolved"
	// KindCRC: the __versions CRC disagrees with the exporter's.
	KindCRC ProblemKind = "crc"
	// KindGPL: a GPL-only symbol used by a module that is not GPL-compatible.
	KindGPL ProblemKind = "gpl"
	// KindNamespace: a namespaced symbol used without import_ns.
	KindNamespace ProblemKind = "namespace"
	// KindDepends: a depends= entry no module provides.
	KindDepends ProblemKind = "depends"
	// KindDuplicate: the module exports a symbol someone else exports, or
	// has the name of another module.
	KindDuplicate ProblemKind = "duplicate"
	// KindShadow: the module has the name of an in-tree module, which it
	// replaces (InTreeConflicts).
	KindShadow ProblemKind = "shadow"
	// KindAlias: the module claims device aliases of an in-tree module
	// (InTreeConflicts).
	KindAlias ProblemKind = "alias"
	// KindSignature: the kernel cannot verify signatures of a key type or
	// digest (Kernel.CanVerify); not tied to a module.
	KindSignature ProblemKind = "signature"
)

// Problem is one finding about one module, or about the kernel. As a
// problem it means the kernel would refuse the module; as a note it is
// informational.
type Problem struct {
	// Module is the module's name; empty for a finding about the kernel
	// (KindSignature).
	Module string
	// Symbol is the symbol concerned, if any.
	Symbol string
	Kind   ProblemKind
	// Reason says what is wrong, in the kernel's terms.
	Reason string
	// InTree is the in-tree module concerned (KindShadow, KindAlias).
	InTree string
}

// String is "module: symbol S: reason" (the symbol part only when set;
// the reason alone for a finding about the kernel).
func (p Problem) String() string {
	if p.Module == "" {
		return p.Reason
	}
	if p.Symbol != "" {
		return fmt.Sprintf("%s: symbol %s: %s", p.Module, p.Symbol, p.Reason)
	}
	return fmt.Sprintf("%s: %s", p.Module, p.Reason)
}

// ModuleResult is the verdict on one module.
type ModuleResult struct {
	Module   string
	Path     string
	Problems []Problem
	Notes    []Problem
}

// OK reports whether the module has no problems.
func (r *ModuleResult) OK() bool { return len(r.Problems) == 0 }

// Report is the outcome of Check.
type Report struct {
	// Release and Vermagic describe the kernel checked against.
	Release, Vermagic string
	// Modules has one result per checked module, in input order.
	Modules []ModuleResult
	// Problems and Notes collect all modules' findings, in module order.
	Problems []Problem
	Notes    []Problem
}

// OK reports whether no module has a problem.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// AddProblems adds findings to the report as problems: each to its
// module's result (the first of that name) and to Problems. A finding
// about the kernel (empty Module) goes to Problems only.
func (r *Report) AddProblems(ps ...Problem) {
	for _, p := range ps {
		if m := r.module(p.Module); m != nil {
			m.Problems = append(m.Problems, p)
		}
		r.Problems = append(r.Problems, p)
	}
}

// AddNotes adds findings to the report as notes, like AddProblems.
func (r *Report) AddNotes(ps ...Problem) {
	for _, p := range ps {
		if m := r.module(p.Module); m != nil {
			m.Notes = append(m.Notes, p)
		}
		r.Notes = append(r.Notes, p)
	}
}

func (r *Report) module(name string) *ModuleResult {
	if name == "" {
		return nil
	}
	for i := range r.Modules {
		if r.Modules[i].Module == name {
			return &r.Modules[i]
		}
	}
	return nil
}

// Write prints the report: a summary line, then for every module with
// findings its problems and notes, one per line, each naming module,
// symbol (if any) and reason.
func (r *Report) Write(w io.Writer) error {
	bad := 0
	for i := range r.Modules {
		if !r.Modules[i].OK() {
			bad++
		}
	}
	verdict := "OK"
	if !r.OK() {
		verdict = "FAIL"
	}
	if _, err := fmt.Fprintf(w, "%s: %d module(s) checked against kernel %s (vermagic %q): %d failed, %d problem(s), %d note(s)\n",
		verdict, len(r.Modules), r.Release, r.Vermagic, bad, len(r.Problems), len(r.Notes)); err != nil {
		return err
	}
	for _, list := range []struct {
		prefix string
		ps     []Problem
	}{{"error", r.Problems}, {"note", r.Notes}} {
		for _, p := range list.ps {
			if p.Module != "" {
				continue
			}
			if _, err := fmt.Fprintf(w, "%s: %s [%s]\n", list.prefix, p, p.Kind); err != nil {
				return err
			}
		}
	}
	for i := range r.Modules {
		m := &r.Modules[i]
		for _, p := range m.Problems {
			if _, err := fmt.Fprintf(w, "error: %s [%s]\n", p, p.Kind); err != nil {
				return err
			}
		}
		for _, p := range m.Notes {
			if _, err := fmt.Fprintf(w, "note: %s [%s]\n", p, p.Kind); err != nil {
				return err
			}
		}
	}
	return nil
}

// String is the report as Write prints it.
func (r *Report) String() string {
	var sb strings.Builder
	_ = r.Write(&sb)
	return sb.String()
}

// gplCompatible is include/linux/license.h license_is_gpl_compatible.
func gplCompatible(license string) bool {
	switch license {
	case "GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL":
		return true
	}
	return false
}

// ignoredUndefined is kernel/module/main.c ignore_undef_symbol: undefined
// symbols the loader leaves alone on some architectures.
func ignoredUndefined(machine elf.Machine, name string) bool {
	switch machine {
	case elf.EM_386:
		return name == "_GLOBAL_OFFSET_TABLE_"
	case elf.EM_PPC64:
		return name == ".TOC."
	}
	return false
}

// exporter is who provides a symbol to a module being checked.
type exporter struct {
	owner     string
	crc       uint32
	hasCRC    bool
	gpl       bool
	namespace string
	// set is the index of the exporting module among the checked ones,
	// or -1 for the kernel (vmlinux or an in-tree module).
	set int
}

// Check judges whether the modules would load, together, into kernel k,
// applying the loader's rules (kernel/module/main.c, version.c):
// vermagic, undefined symbols, __versions CRCs, GPL-only exports,
// namespaces, depends= and duplicate exports. Modules in mods may resolve
// each other's symbols and shadow in-tree modules of the same name.
// k must not be nil.
func Check(k *Kernel, mods []*Module) *Report {
	r := &Report{Release: k.Release, Vermagic: k.Vermagic}
	names := make([]string, len(mods))
	inSet := map[string]int{}
	setExports := map[string]exporter{}
	for i, m := range mods {
		names[i] = normalizeModName(m.Name())
		if _, dup := inSet[names[i]]; !dup {
			inSet[names[i]] = i
		}
	}
	setOwners := map[string][]string{}
	for i, m := range mods {
		for _, e := range m.Exports {
			setOwners[e.Name] = append(setOwners[e.Name], names[i])
			if _, ok := setExports[e.Name]; ok {
				continue
			}
			setExports[e.Name] = exporter{owner: names[i], crc: e.CRC, hasCRC: e.HasCRC,
				gpl: e.GPL, namespace: e.Namespace, set: i}
		}
	}
	resolve := func(sym string) (exporter, bool) {
		if s, ok := k.Exports[sym]; ok && s.Owner == Vmlinux {
			return exporter{owner: Vmlinux, crc: s.CRC, hasCRC: s.HasCRC, gpl: s.GPL, namespace: s.Namespace, set: -1}, true
		}
		if e, ok := setExports[sym]; ok {
			return e, true
		}
		if s, ok := k.Exports[sym]; ok {
			if _, shadowed := inSet[s.Owner]; !shadowed {
				return exporter{owner: s.Owner, crc: s.CRC, hasCRC: s.HasCRC, gpl: s.GPL, namespace: s.Namespace, set: -1}, true
			}
		}
		return exporter{}, false
	}
	// A module is proprietary when its license is not GPL-compatible
	// (set_license), or when it uses symbols of a proprietary module of the
	// set and so inherits its taint (inherit_taint).
	license := make([]string, len(mods))
	proprietary := make([]bool, len(mods))
	inherited := make([]string, len(mods))
	for i, m := range mods {
		lic, ok := m.Get("license")
		if !ok {
			lic = "unspecified" // what set_license assumes
		}
		license[i] = lic
		proprietary[i] = !gplCompatible(lic)
	}
	for changed := true; changed; {
		changed = false
		for i, m := range mods {
			if proprietary[i] {
				continue
			}
			for _, u := range m.Undefined {
				if e, ok := resolve(u); ok && e.set >= 0 && e.set != i && proprietary[e.set] {
					proprietary[i], inherited[i] = true, e.owner
					changed = true
					break
				}
			}
		}
	}

	for i, m := range mods {
		c := &checker{k: k, m: m, name: names[i], res: ModuleResult{Module: names[i], Path: m.Path}}
		if first := inSet[names[i]]; first != i {
			c.problem("", KindDuplicate, fmt.Sprintf("module %s is already in the checked set (%s); loading it again fails with EEXIST", names[i], mods[first].Path))
		}
		c.checkArch()
		c.checkVermagic()
		c.checkModversions()
		c.checkUndefined(resolve, license[i], proprietary[i], inherited[i])
		c.checkDepends(inSet)
		c.checkExports(inSet, setOwners)
		r.Modules = append(r.Modules, c.res)
		r.Problems = append(r.Problems, c.res.Problems...)
		r.Notes = append(r.Notes, c.res.Notes...)
	}
	return r
}

type checker struct {
	k    *Kernel
	m    *Module
	name string
	res  ModuleResult
}

func (c *checker) problem(sym string, kind ProblemKind, reason string) {
	c.res.Problems = append(c.res.Problems, Problem{Module: c.name, Symbol: sym, Kind: kind, Reason: reason})
}

func (c *checker) note(sym string, kind ProblemKind, reason string) {
	c.res.Notes = append(c.res.Notes, Problem{Module: c.name, Symbol: sym, Kind: kind, Reason: reason})
}

func (c *checker) hasVersions() bool { return len(c.m.Versions) > 0 }

func (c *checker) checkArch() {
	if c.k.Machine != 0 && c.m.Machine != 0 && c.m.Machine != c.k.Machine {
		c.problem("", KindArch, fmt.Sprintf("module is for %v, kernel is %v (ENOEXEC)", c.m.Machine, c.k.Machine))
	}
}

// forceOrRefuse reports what try_to_force_load does: with
// CONFIG_MODULE_FORCE_LOAD the kernel only taints itself (a note), without
// it the module is refused (a problem); with the config unknown, a note.
func (c *checker) forceOrRefuse(kind ProblemKind, what string) {
	switch {
	case c.k.ConfigKnown && c.k.ForceLoad:
		c.note("", kind, what+": the kernel force-loads it (CONFIG_MODULE_FORCE_LOAD) and taints itself")
	case c.k.ConfigKnown:
		c.problem("", kind, what+": refused without CONFIG_MODULE_FORCE_LOAD (ENOEXEC)")
	default:
		c.note("", kind, what+": refused unless the kernel has CONFIG_MODULE_FORCE_LOAD (kernel config unknown)")
	}
}

// checkVermagic follows check_modinfo and same_magic: with __versions CRCs
// (and a modversions kernel) the release word is skipped.
func (c *checker) checkVermagic() {
	mv := c.m.Vermagic()
	kv := c.k.Vermagic
	if mv == "" {
		c.forceOrRefuse(KindVermagic, "module has no vermagic")
		return
	}
	if kv == "" {
		c.note("", KindVermagic, fmt.Sprintf("kernel vermagic unknown, module's %q not checked", mv))
		return
	}
	if c.k.HasModversions && c.hasVersions() {
		mRel, mRest := splitVermagic(mv)
		kRel, kRest := splitVermagic(kv)
		if mRest != kRest {
			c.problem("", KindVermagic, fmt.Sprintf("vermagic mismatch: module has %q, kernel has %q (%s; the release word is ignored because the module has modversions CRCs)", mv, kv, flagDiff(mRest, kRest)))
			return
		}
		if mRel != kRel {
			c.note("", KindVermagic, fmt.Sprintf("release differs (%s vs %s) but modversions CRCs decide", mRel, kRel))
		}
		return
	}
	if mv != kv {
		why := "compared in full: the module has no __versions CRCs"
		if !c.k.HasModversions {
			why = "compared in full: the kernel has no CONFIG_MODVERSIONS"
		}
		mRel, mRest := splitVermagic(mv)
		kRel, kRest := splitVermagic(kv)
		var diff []string
		if mRel != kRel {
			diff = append(diff, fmt.Sprintf("release %s vs %s", mRel, kRel))
		}
		if mRest != kRest {
			diff = append(diff, flagDiff(mRest, kRest))
		}
		c.problem("", KindVermagic, fmt.Sprintf("vermagic mismatch: module has %q, kernel has %q (%s; %s)", mv, kv, strings.Join(diff, "; "), why))
	}
}

// checkModversions: without __versions, check_modstruct_version and every
// check_version go through try_to_force_load.
func (c *checker) checkModversions() {
	if c.k.HasModversions && !c.hasVersions() {
		c.forceOrRefuse(KindModversions, "module has no __versions CRCs but the kernel has CONFIG_MODVERSIONS")
	}
}

// splitVermagic splits the release word from the flags (the kernel skips
// up to the first space, keeping the space).
func splitVermagic(v string) (release, rest string) {
	if i := strings.IndexByte(v, ' '); i >= 0 {
		return v[:i], v[i:]
	}
	return v, ""
}

// flagDiff describes which vermagic flag words differ.
func flagDiff(m, k string) string {
	mw, kw := strings.Fields(m), strings.Fields(k)
	has := func(ws []string, w string) bool {
		for _, x := range ws {
			if x == w {
				return true
			}
		}
		return false
	}
	var only []string
	for _, w := range mw {
		if !has(kw, w) {
			only = append(only, "module-only "+w)
		}
	}
	for _, w := range kw {
		if !has(mw, w) {
			only = append(only, "kernel-only "+w)
		}
	}
	if len(only) == 0 {
		return fmt.Sprintf("flags %q vs %q differ in order or spacing", m, k)
	}
	return "flags differ: " + strings.Join(only, ", ")
}

// versionCRC finds the module's __versions entry for sym.
func (c *checker) versionCRC(sym string) (uint64, bool) {
	for _, v := range c.m.Versions {
		if v.Name == sym {
			return v.CRC, true
		}
	}
	return 0, false
}

// checkCRC is check_version: only when the kernel and the module have CRCs
// and the exporter supplied one.
func (c *checker) checkCRC(sym string, e exporter) {
	if !c.k.HasModversions || !c.hasVersions() {
		return
	}
	want, ok := c.versionCRC(sym)
	if !e.hasCRC {
		if ok {
			c.note(sym, KindCRC, fmt.Sprintf("%s supplies no CRC for %s; module's 0x%08x not checked", e.owner, sym, want))
		}
		return
	}
	if !ok {
		c.note(sym, KindCRC, fmt.Sprintf("no symbol version for %s (the kernel only warns)", sym))
		return
	}
	if want != uint64(e.crc) {
		side := "kernel"
		if e.owner != Vmlinux {
			side = e.owner
		}
		c.problem(sym, KindCRC, fmt.Sprintf("CRC mismatch for symbol %s: module expects 0x%08x, %s has 0x%08x (disagrees about version of symbol %s)", sym, want, side, e.crc, sym))
	}
}

// checkUndefined resolves every undefined symbol the way resolve_symbol
// does and applies the GPL, namespace and CRC rules to it. A proprietary
// module may not use GPL-only symbols; inherited names the proprietary
// module of the set it became proprietary through, if its own license is
// GPL-compatible.
func (c *checker) checkUndefined(resolve func(string) (exporter, bool), license string, proprietary bool, inherited string) {
	if c.k.HasModversions && c.hasVersions() {
		// check_modstruct_version: module_layout must match vmlinux's.
		if s, ok := c.k.Exports["module_layout"]; ok && s.Owner == Vmlinux {
			c.checkCRC("module_layout", exporter{owner: Vmlinux, crc: s.CRC, hasCRC: s.HasCRC, set: -1})
		}
	}
	imports := map[string]bool{}
	for _, ns := range c.m.All("import_ns") {
		imports[ns] = true
	}
	seen := map[string]bool{}
	for _, sym := range c.m.Undefined {
		if sym == "" || seen[sym] || ignoredUndefined(c.m.Machine, sym) {
			continue
		}
		seen[sym] = true
		e, ok := resolve(sym)
		if !ok {
			if c.k.VmlinuxKnown {
				c.problem(sym, KindUnresolved, fmt.Sprintf("unresolved symbol %s (Unknown symbol, err -2)", sym))
			} else {
				c.note(sym, KindUnresolved, fmt.Sprintf("symbol %s is not exported by any loaded source; vmlinux exports unknown (add Module.symvers or System.map)", sym))
			}
			continue
		}
		if e.gpl && proprietary {
			switch inherited {
			case "":
				c.problem(sym, KindGPL, fmt.Sprintf("module license %q is not GPL-compatible but uses GPL-only symbol %s exported by %s (the kernel treats it as unknown)", license, sym, e.owner))
			default:
				c.problem(sym, KindGPL, fmt.Sprintf("module using GPL-only symbol %s (exported by %s) uses symbols from proprietary module %s", sym, e.owner, inherited))
			}
		}
		if e.namespace != "" && !imports[e.namespace] {
			reason := fmt.Sprintf("module uses symbol %s from namespace %s, but does not import it (import_ns=%s missing)", sym, e.namespace, e.namespace)
			if c.k.AllowMissingNamespaceImports {
				c.note(sym, KindNamespace, reason+"; allowed by CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS")
			} else {
				c.problem(sym, KindNamespace, reason)
			}
		}
		c.checkCRC(sym, e)
	}
}

func (c *checker) checkDepends(inSet map[string]int) {
	for _, d := range c.m.Depends() {
		n := normalizeModName(d)
		if n == "" {
			continue
		}
		if _, ok := inSet[n]; ok {
			continue
		}
		if _, ok := c.k.Modules[n]; ok {
			continue
		}
		if c.k.Builtin[n] {
			continue
		}
		c.problem("", KindDepends, fmt.Sprintf("depends on %s, which is not a module of kernel %s, not built in and not among the checked modules", n, c.k.Release))
	}
}

// InTreeConflicts reports the modules of mods that would displace a module
// of k's own tree (Kernel.InTree, Kernel.Aliases): one of the same name,
// which it replaces because depmod ranks updates/ above the kernel's tree
// (KindShadow), and one whose device aliases it claims, so that modprobe
// loads both for such a device and the first to bind wins (KindAlias). A
// module that is the in-tree file itself conflicts with nothing. Check
// leaves these out because replacing an in-tree module can be intended;
// callers that forbid it add them to the report (Report.AddProblems), or
// as notes when allowed.
func InTreeConflicts(k *Kernel, mods []*Module) []Problem {
	var res []Problem
	for _, m := range mods {
		name := normalizeModName(m.Name())
		if k.isInTreeFile(name, m.Path) {
			continue
		}
		if rel, ok := k.InTree[name]; ok {
			res = append(res, Problem{Module: name, Kind: KindShadow, InTree: name,
				Reason: fmt.Sprintf("shadows the in-tree module %s (%s): depmod ranks updates/ above the kernel's own tree, so this one would load instead of it", name, rel)})
		}
		claimed := map[string][]string{}
		for _, a := range m.All("alias") {
			for _, owner := range k.Aliases[a] {
				if owner != name {
					claimed[owner] = append(claimed[owner], a)
				}
			}
		}
		owners := make([]string, 0, len(claimed))
		for o := range claimed {
			owners = append(owners, o)
		}
		sort.Strings(owners)
		for _, o := range owners {
			res = append(res, Problem{Module: name, Kind: KindAlias, InTree: o,
				Reason: fmt.Sprintf("claims %d device alias(es) of the in-tree module %s (e.g. %s): for such a device modprobe loads both, in modules.alias order, and the first to bind wins", len(claimed[o]), o, claimed[o][0])})
		}
	}
	return res
}

// isInTreeFile tells whether the file at p is the kernel's own module
// name: the file WithModulesDir found, or one at its modules.dep path
// below /lib/modules/<release>.
func (k *Kernel) isInTreeFile(name, p string) bool {
	if p == "" {
		return false
	}
	p = absPath(p)
	if f := k.Modules[name]; f != "" && absPath(f) == p {
		return true
	}
	rel, ok := k.InTree[name]
	return ok && k.Release != "" && strings.HasSuffix(filepath.ToSlash(p), "/lib/modules/"+k.Release+"/"+rel)
}

// absPath is p made absolute when it can be, else cleaned.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return filepath.Clean(p)
}

// checkExports is verify_exported_symbols: an export that vmlinux already
// has is refused; one another module exports only clashes when both load.
func (c *checker) checkExports(inSet map[string]int, setOwners map[string][]string) {
	if c.k.Builtin[c.name] {
		c.note("", KindDuplicate, fmt.Sprintf("module %s is built into kernel %s; loading fails if /sys/module/%s exists", c.name, c.k.Release, c.name))
	}
	var others []string
	for _, e := range c.m.Exports {
		if s, ok := c.k.Exports[e.Name]; ok {
			switch {
			case s.Owner == Vmlinux:
				c.problem(e.Name, KindDuplicate, fmt.Sprintf("exports duplicate symbol %s (owned by kernel)", e.Name))
			case s.Owner != c.name:
				if _, shadowed := inSet[s.Owner]; !shadowed {
					others = append(others, fmt.Sprintf("%s (also exported by %s)", e.Name, s.Owner))
				}
			}
		}
		for _, o := range setOwners[e.Name] {
			if o != c.name {
				others = append(others, fmt.Sprintf("%s (also exported by %s)", e.Name, o))
			}
		}
	}
	if len(others) > 0 {
		sort.Strings(others)
		c.note("", KindDuplicate, "cannot be loaded together with the other exporter of "+strings.Join(others, ", "))
	}
}
