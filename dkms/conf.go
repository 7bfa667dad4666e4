package dkms

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// MaxConfSize is the largest dkms.conf Parse accepts.
const MaxConfSize = 1 << 20

// dkmsConfVariables are the variables dkms 3.0.10 reads from a dkms.conf,
// in the order in which its safe_source re-reads them
// (dkms_conf_variables in /usr/sbin/dkms). dkms unsets them before
// sourcing, so a dkms.conf starts with them unset.
var dkmsConfVariables = strings.Fields(`CLEAN PACKAGE_NAME
   PACKAGE_VERSION POST_ADD POST_BUILD POST_INSTALL POST_REMOVE PRE_BUILD
   PRE_INSTALL BUILD_DEPENDS BUILD_EXCLUSIVE_KERNEL BUILD_EXCLUSIVE_ARCH
   BUILD_EXCLUSIVE_CONFIG
   build_exclude OBSOLETE_BY MAKE MAKE_MATCH
   PATCH PATCH_MATCH patch_array BUILT_MODULE_NAME
   built_module_name BUILT_MODULE_LOCATION built_module_location
   DEST_MODULE_NAME dest_module_name
   DEST_MODULE_LOCATION dest_module_location
   STRIP strip AUTOINSTALL NO_WEAK_MODULES
   SIGN_FILE MOK_SIGNING_KEY MOK_CERTIFICATE
   REMAKE_INITRD MODULES_CONF MODULES_CONF_OBSOLETES
   MODULES_CONF_ALIAS_TYPE MODULES_CONF_OBSOLETE_ONLY`)

// providedVariables are set by dkms when it sources a dkms.conf (read_conf's
// locals and dkms's globals that files use).
var providedVariables = []string{"kernelver", "arch", "dkms_tree", "source_tree", "install_tree", "kernel_source_dir", "kernel_config", "module", "module_version"}

// Conf is a parsed dkms.conf (a bash fragment, parsed WITHOUT executing it).
//
// String fields hold the value of the last assignment as written, with
// quotes and line continuations removed but expansions such as
// ${kernelver} left as they are ("raw"); Plan expands them for one kernel.
// An assignment inside code whose execution depends on something known
// only when dkms runs (an if on a file test, a command substitution...)
// still sets the raw field, and also puts the variable in Unknown.
type Conf struct {
	Name                 string // the name given to Parse, used in messages
	PackageName          string
	PackageVersion       string
	Modules              []ConfModule // index i of the BUILT_MODULE_NAME[i] arrays, in index order
	Make                 []string     // MAKE[i] (raw, unexpanded), in index order
	MakeMatch            []string     // MAKE_MATCH[i], in index order
	Clean                string
	AutoInstall          bool   // AUTOINSTALL is not empty (dkms 3.0 accepts any value, even "no")
	BuildExclusiveKernel string // regex, raw
	BuildExclusiveArch   string // regex, raw
	BuildExclusiveConfig string // CONFIG_ names, "!" negates, raw
	Patches              []string
	PatchMatch           []string
	PreBuild             string
	PostBuild            string
	PreInstall           string
	PostInstall          string
	PostAdd              string
	PostRemove           string
	// Vars holds every variable the file assigns, raw: "NAME" for a
	// scalar, "NAME[i]" for each element of an array (a variable ever
	// assigned with a subscript or a list), as bash's declare -p would
	// show them.
	Vars map[string]string
	// Unknown lists, sorted, the variables whose value (or set of
	// elements) is known only at build time, with why in UnknownWhy.
	Unknown    []string
	UnknownWhy map[string]string
	// Unsupported lists the constructs that were not evaluated (commands,
	// command substitution, if/case on runtime conditions, functions...),
	// each as "line N: what": they are known only at build time.
	Unsupported []string
	// Fatal, when not empty, is why bash always stops reading the file
	// before its end with an error or an exit ("line N: what"): dkms's
	// safe_source then prints nothing, so dkms reads no variable from it.
	Fatal string

	prog []*andOr
	in   *interp // the kernel-independent evaluation
}

// ConfModule is one record of the BUILT_MODULE_NAME[i],
// BUILT_MODULE_LOCATION[i], DEST_MODULE_NAME[i], DEST_MODULE_LOCATION[i]
// and STRIP[i] arrays, raw. Defaults are applied by Plan, not here: an
// empty DestName means DEST_MODULE_NAME[i] is not set.
type ConfModule struct {
	Index         int
	BuiltName     string
	BuiltLocation string
	DestName      string
	DestLocation  string
	StripDisabled bool // STRIP[i] (or STRIP[0] when STRIP[i] is empty) starts with n or N
}

// Parse reads a dkms.conf. It fails only on what bash itself would reject
// (unterminated quotes, if without fi...) and on files larger than
// MaxConfSize; errors name the file and line.
func Parse(r io.Reader, name string) (*Conf, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxConfSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > MaxConfSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, MaxConfSize)
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		line := bytes.Count(data[:i], []byte("\n")) + 1
		return nil, fmt.Errorf("%s:%d: NUL byte: not a shell fragment", name, line)
	}
	prog, err := parseShell(string(data), name)
	if err != nil {
		var se *syntaxError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("%s:%d: %s", name, se.line, se.msg)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &Conf{Name: name, prog: prog}
	in := newInterp()
	for _, v := range dkmsConfVariables {
		in.unsetKnown[v] = true
	}
	ksd := placeholder("kernel_source_dir")
	in.config = &kernelConfig{paths: []string{ksd + "/.config", placeholder("kernel_config")}, boot: "/boot/config-" + placeholder("kernelver"), srcDir: ksd}
	for _, v := range providedVariables {
		zero := int64(0)
		in.write(v, &zero, placeholder(v), true, "$"+v, 0, false)
	}
	in.runList(prog)
	c.in = in
	c.fill()
	return c, nil
}

// ParseFile parses the dkms.conf at path.
func ParseFile(path string) (*Conf, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f, path)
}

// fill sets the raw fields from the evaluation.
func (c *Conf) fill() {
	in := c.in
	c.Vars = map[string]string{}
	c.UnknownWhy = map[string]string{}
	for name, v := range in.vars {
		for idx, e := range v.elems {
			if e.line == 0 && e.raw == "" && !e.known {
				continue
			}
			c.Vars[varKey(name, v, idx)] = e.raw
		}
		if v.unknown || anyUnknown(v) || in.exhausted {
			c.UnknownWhy[name] = in.unknownWhy[name]
		}
	}
	c.Fatal = in.fatal
	if in.maybeFatal != "" && in.fatal == "" {
		for _, n := range dkmsConfVariables {
			c.UnknownWhy[n] = in.maybeFatal
		}
	}
	if in.exhausted {
		in.note(0, "evaluation budget exhausted: nothing in this file is known before build time")
	}
	for n := range c.UnknownWhy {
		c.Unknown = append(c.Unknown, n)
	}
	sort.Strings(c.Unknown)
	c.Unsupported = collapseNotes(in.notes)
	scalar := func(name string) string {
		if v, ok := in.vars[name]; ok {
			if e, ok := v.elems[0]; ok {
				return e.raw
			}
		}
		return ""
	}
	array := func(name string) []string {
		v, ok := in.vars[name]
		if !ok {
			return nil
		}
		var out []string
		for _, k := range v.sortedIndices() {
			out = append(out, v.elems[k].raw)
		}
		return out
	}
	c.PackageName = scalar("PACKAGE_NAME")
	c.PackageVersion = scalar("PACKAGE_VERSION")
	c.Make = array("MAKE")
	c.MakeMatch = array("MAKE_MATCH")
	c.Clean = scalar("CLEAN")
	c.AutoInstall = scalar("AUTOINSTALL") != ""
	if v, ok := in.vars["AUTOINSTALL"]; ok {
		if e, ok := v.elems[0]; ok && e.known {
			c.AutoInstall = e.val != ""
		}
	}
	c.BuildExclusiveKernel = scalar("BUILD_EXCLUSIVE_KERNEL")
	c.BuildExclusiveArch = scalar("BUILD_EXCLUSIVE_ARCH")
	c.BuildExclusiveConfig = scalar("BUILD_EXCLUSIVE_CONFIG")
	c.Patches = array("PATCH")
	c.PatchMatch = array("PATCH_MATCH")
	c.PreBuild = scalar("PRE_BUILD")
	c.PostBuild = scalar("POST_BUILD")
	c.PreInstall = scalar("PRE_INSTALL")
	c.PostInstall = scalar("POST_INSTALL")
	c.PostAdd = scalar("POST_ADD")
	c.PostRemove = scalar("POST_REMOVE")

	idxs := map[int64]bool{}
	for _, n := range []string{"BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION"} {
		if v, ok := in.vars[n]; ok {
			for k := range v.elems {
				idxs[k] = true
			}
		}
	}
	var sorted []int64
	for k := range idxs {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	elemRaw := func(name string, i int64) string {
		if v, ok := in.vars[name]; ok {
			if e, ok := v.elems[i]; ok {
				return e.raw
			}
		}
		return ""
	}
	for _, i := range sorted {
		strip := elemRaw("STRIP", i)
		if strip == "" {
			strip = elemRaw("STRIP", 0)
		}
		c.Modules = append(c.Modules, ConfModule{
			Index:         int(i),
			BuiltName:     elemRaw("BUILT_MODULE_NAME", i),
			BuiltLocation: elemRaw("BUILT_MODULE_LOCATION", i),
			DestName:      elemRaw("DEST_MODULE_NAME", i),
			DestLocation:  elemRaw("DEST_MODULE_LOCATION", i),
			StripDisabled: strip != "" && (strip[0] == 'n' || strip[0] == 'N'),
		})
	}
}

// collapseNotes formats notes as "line N: what", one entry per message, in
// the order of first occurrence, listing all lines of a repeated message.
func collapseNotes(notes []note) []string {
	sorted := append([]note(nil), notes...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].line < sorted[j].line })
	lines := map[string][]int{}
	var order []string
	for _, n := range sorted {
		if _, ok := lines[n.msg]; !ok {
			order = append(order, n.msg)
		}
		lines[n.msg] = append(lines[n.msg], n.line)
	}
	var out []string
	for _, msg := range order {
		ls := lines[msg]
		if len(ls) == 1 {
			out = append(out, fmt.Sprintf("line %d: %s", ls[0], msg))
			continue
		}
		var parts []string
		for i, l := range ls {
			if i == 8 {
				parts = append(parts, fmt.Sprintf("and %d more", len(ls)-8))
				break
			}
			parts = append(parts, strconv.Itoa(l))
		}
		out = append(out, fmt.Sprintf("lines %s: %s", strings.Join(parts, ", "), msg))
	}
	return out
}

func anyUnknown(v *variable) bool {
	for _, e := range v.elems {
		if !e.known {
			return true
		}
	}
	return false
}

func varKey(name string, v *variable, idx int64) string {
	if !v.array && idx == 0 {
		return name
	}
	return name + "[" + strconv.FormatInt(idx, 10) + "]"
}

// Plan is what one kernel should yield.
type Plan struct {
	Kernel   string
	Arch     string
	Excluded bool   // a BUILD_EXCLUSIVE_* directive excludes this kernel/arch
	Reason   string // why it is excluded
	Modules  []PlannedModule

	PackageName    string
	PackageVersion string
	// Make is the make command dkms runs (MAKE[i] chosen by MAKE_MATCH, or
	// dkms's default), before dkms inserts -jN KERNELRELEASE=... after
	// "make"; Clean likewise.
	Make    string
	Clean   string
	Patches []string // patches applied for this kernel (PATCH with PATCH_MATCH)
	// Vars is dkms's view of its variables for this kernel, after dkms's
	// own re-evaluation of each value (safe_source): "NAME" or "NAME[i]"
	// as in Conf.Vars. Variables in Unknown are left out.
	Vars map[string]string
	// Unknown lists variables known only at build time; the fields derived
	// from them (for example Excluded from BUILD_EXCLUSIVE_KERNEL, or
	// Modules from BUILT_MODULE_NAME) are then incomplete.
	Unknown    []string
	UnknownWhy map[string]string
	Warnings   []string
}

// PlannedModule is one module dkms builds.
type PlannedModule struct {
	Name      string // DEST_MODULE_NAME: the installed file name without .ko, which modprobe uses
	BuiltName string // BUILT_MODULE_NAME, the name kbuild gives the module
	BuiltPath string // relative to the build dir: BUILT_MODULE_LOCATION/BUILT_MODULE_NAME.ko
	DestDir   string // where dkms install puts it under /lib/modules/KVER (see PlanOptions.Distro)
	Strip     bool   // dkms strips debug symbols (strip -g) before signing and compressing
}

// PlanOptions tells Plan what dkms knows when it reads the file on the
// target.
type PlanOptions struct {
	// Distro is dkms's running_distribution: "ubuntu" for Ubuntu, else
	// /etc/os-release's ID_LIKE (all of it) or ID. DistroFromOSRelease
	// computes it. Empty means "debian".
	Distro string
	// DKMSTree, SourceTree, InstallTree default to /var/lib/dkms,
	// /usr/src and /lib/modules (framework.conf may change them).
	DKMSTree, SourceTree, InstallTree string
	// KernelSourceDir defaults to InstallTree/KVER/build.
	KernelSourceDir string
	// Module and ModuleVersion are dkms's -m and -v ($module,
	// $module_version). Empty: unknown to the file, and PACKAGE_NAME and
	// PACKAGE_VERSION stand in for dkms's default make command.
	Module, ModuleVersion string
	// KernelConfig is the kernel's .config, for BUILD_EXCLUSIVE_CONFIG and
	// the clang check; nil leaves BUILD_EXCLUSIVE_CONFIG unchecked (in
	// Unknown when set). Given, it is also what a file finds at
	// $kernel_source_dir/.config ($kernel_config): [ -f ] on it is true
	// and . on it assigns its CONFIG_ variables; nil leaves those known
	// only at build time.
	KernelConfig []byte
	// Overrides are the files dkms sources after dkms.conf, in its order:
	// /etc/dkms/MODULE.conf, MODULE-VERSION.conf, MODULE-VERSION-KVER.conf,
	// MODULE-VERSION-KVER-ARCH.conf.
	Overrides []*Conf
	// MatchERE answers [[ subject =~ pattern ]] with the target's bash for
	// the expressions whose meaning only glibc knows (\w, back references,
	// [[=a=]], ...): true or false, an *EREError when bash rejects the
	// expression (status 2), another error when it cannot tell. Nil leaves
	// the variables such expressions decide (BUILD_EXCLUSIVE_KERNEL,
	// BUILD_EXCLUSIVE_ARCH, MAKE_MATCH, PATCH_MATCH) known only at build
	// time. BUILD_EXCLUSIVE_CONFIG, which dkms greps, is not asked: grep -E
	// reads malformed expressions differently from bash.
	MatchERE func(pattern, subject string) (bool, error)
}

// Plan evaluates the file for one kernel as dkms 3.0.10 would on Debian
// or Ubuntu: it expands $kernelver, ${kernelver}, $arch, $dkms_tree,
// $source_tree, $install_tree, $kernel_source_dir and the variables
// assigned earlier in the file, applies dkms's defaults
// (BUILT_MODULE_LOCATION "", DEST_MODULE_NAME = BUILT_MODULE_NAME,
// BUILT_MODULE_NAME = PACKAGE_NAME when there is a single
// DEST_MODULE_LOCATION), matches BUILD_EXCLUSIVE_KERNEL,
// BUILD_EXCLUSIVE_ARCH, MAKE_MATCH and PATCH_MATCH as bash's =~ and
// BUILD_EXCLUSIVE_CONFIG as dkms's grep -E do (glibc's POSIX extended
// regular expressions: regex.go answers the subset it is sure of,
// PlanOptions.MatchERE the rest, or the verdict is in Plan.Unknown), and
// checks the file as dkms's read_conf does. A file that stops bash reading
// it (exit, set -e or set -u failing, an arithmetic error) gives dkms
// nothing: a *ConfError naming the line.
//
// DestDir: dkms 3.0 ignores DEST_MODULE_LOCATION on Debian, Ubuntu and Arch
// and installs into /updates/dkms (override_dest_module_location in
// /usr/sbin/dkms); it still requires DEST_MODULE_LOCATION[i] to be set and
// to start with /kernel, /updates or /extra. Use PlanWith for other
// distributions.
func (c *Conf) Plan(kernelver, arch string) (*Plan, error) {
	return c.PlanWith(kernelver, arch, PlanOptions{})
}

// ConfError lists what makes dkms reject a dkms.conf ("Bad conf file",
// exit status 8).
type ConfError struct {
	Name     string
	Problems []string
}

func (e *ConfError) Error() string {
	return fmt.Sprintf("%s: dkms would reject this dkms.conf: %s", e.Name, strings.Join(e.Problems, "; "))
}

// PlanWith is Plan with options.
func (c *Conf) PlanWith(kernelver, arch string, o PlanOptions) (*Plan, error) {
	o = o.withDefaults(kernelver)
	ev, err := c.evaluate(kernelver, arch, o)
	if err != nil {
		return nil, err
	}
	sh := ev.final
	warnings := ev.warnings
	p := &Plan{Kernel: kernelver, Arch: arch, Vars: map[string]string{}, UnknownWhy: map[string]string{}}
	var problems []string
	if ev.fatal != "" {
		problems = append(problems, ev.fatal)
	}
	for _, n := range dkmsConfVariables {
		v, ok := sh.vars[n]
		if !ok {
			continue
		}
		if v.unknown || anyUnknown(v) {
			p.UnknownWhy[n] = ev.why[n]
			if p.UnknownWhy[n] == "" {
				p.UnknownWhy[n] = sh.unknownWhy[n]
			}
			continue
		}
		for idx, e := range v.elems {
			key := n
			if ev.arrays[n] || idx != 0 {
				key = n + "[" + strconv.FormatInt(idx, 10) + "]"
			}
			p.Vars[key] = e.val
		}
	}
	for n := range p.UnknownWhy {
		p.Unknown = append(p.Unknown, n)
	}
	sort.Strings(p.Unknown)
	known := func(n string) bool { _, u := p.UnknownWhy[n]; return !u }
	// markUnknown is for a value the evaluator knows whose effect on the
	// plan (a regular expression's verdict) only the target can tell.
	markUnknown := func(n, why string) {
		if !known(n) {
			return
		}
		p.Unknown = append(p.Unknown, n)
		sort.Strings(p.Unknown)
		p.UnknownWhy[n] = why
		for k := range p.Vars {
			if k == n || strings.HasPrefix(k, n+"[") {
				delete(p.Vars, k)
			}
		}
	}
	regexMatch := regexMatcher(o.MatchERE)

	r := &resolver{in: sh}
	p.PackageName = r.scalar("PACKAGE_NAME")
	p.PackageVersion = r.scalar("PACKAGE_VERSION")
	if known("PACKAGE_NAME") && p.PackageName == "" {
		problems = append(problems, "no PACKAGE_NAME")
	}
	if known("PACKAGE_VERSION") && p.PackageVersion == "" {
		problems = append(problems, "no PACKAGE_VERSION")
	}

	// modules (read_conf: the count of the largest of the four arrays)
	arrays := []string{"BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION"}
	modulesKnown := true
	size := 0
	for _, n := range arrays {
		if !known(n) {
			modulesKnown = false
		}
		if l := r.count(n); l > size {
			size = l
		}
	}
	if !known("STRIP") || !known("PACKAGE_NAME") {
		modulesKnown = false
	}
	strip0 := ""
	for i := 0; i < size; i++ {
		idx := int64(i)
		built := r.elem("BUILT_MODULE_NAME", idx)
		loc := r.elem("BUILT_MODULE_LOCATION", idx)
		dest := r.elem("DEST_MODULE_NAME", idx)
		destLoc := r.elem("DEST_MODULE_LOCATION", idx)
		stripVal := r.elem("STRIP", idx)
		var strip string
		switch {
		case stripVal != "" && (stripVal[0] == 'n' || stripVal[0] == 'N'):
			strip = "no"
		case stripVal != "" && (stripVal[0] == 'y' || stripVal[0] == 'Y'):
			strip = "yes"
		case stripVal == "":
			strip = strip0
			if strip == "" {
				strip = "yes"
			}
		default:
			strip = "" // dkms leaves strip[i] unset: strips
		}
		if i == 0 {
			strip0 = strip
		}
		if built == "" && known("DEST_MODULE_LOCATION") && r.count("DEST_MODULE_LOCATION") == 1 {
			built = p.PackageName
		}
		if dest == "" {
			dest = built
		}
		if loc != "" && !strings.HasSuffix(loc, "/") {
			loc += "/"
		}
		if built == "" {
			if modulesKnown {
				problems = append(problems, fmt.Sprintf("no BUILT_MODULE_NAME for record #%d", i))
			}
			continue
		}
		if strings.HasSuffix(built, ".o") || strings.HasSuffix(built, ".ko") {
			problems = append(problems, fmt.Sprintf("BUILT_MODULE_NAME ends in .o or .ko in record #%d", i))
		}
		if strings.HasSuffix(dest, ".o") || strings.HasSuffix(dest, ".ko") {
			problems = append(problems, fmt.Sprintf("DEST_MODULE_NAME ends in .o or .ko in record #%d", i))
		}
		switch {
		case destLoc == "":
			if known("DEST_MODULE_LOCATION") {
				problems = append(problems, fmt.Sprintf("no DEST_MODULE_LOCATION for record #%d", i))
			}
		case strings.HasPrefix(destLoc, "/kernel"), strings.HasPrefix(destLoc, "/updates"), strings.HasPrefix(destLoc, "/extra"):
		default:
			problems = append(problems, fmt.Sprintf("DEST_MODULE_LOCATION %q of record #%d does not begin with /kernel, /updates or /extra", destLoc, i))
		}
		p.Modules = append(p.Modules, PlannedModule{
			Name:      dest,
			BuiltName: built,
			BuiltPath: loc + built + ".ko",
			DestDir:   overrideDestDir(o.Distro, destLoc),
			Strip:     strip != "no",
		})
	}
	if size == 0 && known("DEST_MODULE_LOCATION") {
		problems = append(problems, "no DEST_MODULE_LOCATION")
	}

	// make and clean commands
	module, moduleVersion := o.Module, o.ModuleVersion
	if module == "" {
		module = p.PackageName
	}
	if moduleVersion == "" {
		moduleVersion = p.PackageVersion
	}
	if known("MAKE") && known("MAKE_MATCH") {
		mk := ""
		if r.elem("MAKE_MATCH", 0) == "" {
			mk = r.elem("MAKE", 0)
		}
		// The last MAKE[i] whose MAKE_MATCH[i] matches wins: looking from
		// the end, an unknown verdict before a match leaves MAKE unknown.
		makeKnown := true
		for i := r.count("MAKE") - 1; i >= 0; i-- {
			m, mm := r.elem("MAKE", int64(i)), r.elem("MAKE_MATCH", int64(i))
			if m == "" || mm == "" {
				continue
			}
			ok, sure, err := regexMatch(mm, kernelver)
			if !sure {
				markUnknown("MAKE_MATCH", fmt.Sprintf("MAKE_MATCH[%d]: %v", i, err))
				makeKnown = false
				break
			}
			if err != nil {
				warnings = append(warnings, fmt.Sprintf("MAKE_MATCH[%d] %q: %v (bash's [[ =~ ]] fails, so dkms does not use MAKE[%d])", i, mm, err, i))
			} else if ok {
				mk = m
				break
			}
		}
		if makeKnown {
			if mk == "" {
				mk = "make -C " + o.KernelSourceDir + " M=" + o.DKMSTree + "/" + module + "/" + moduleVersion + "/build"
			}
			p.Make = mk + clangFlags(o.KernelConfig)
		}
	}
	if known("CLEAN") {
		p.Clean = r.scalar("CLEAN")
		if p.Clean == "" {
			p.Clean = "make -C " + o.KernelSourceDir + " M=" + o.DKMSTree + "/" + module + "/" + moduleVersion + "/build clean"
		}
	}
	if known("PATCH") && known("PATCH_MATCH") {
		var patches []string
		patchesKnown := true
		for i := 0; i < r.count("PATCH"); i++ {
			pt, pm := r.elem("PATCH", int64(i)), r.elem("PATCH_MATCH", int64(i))
			if pt == "" {
				continue
			}
			ok := pm == ""
			if !ok {
				m, sure, err := regexMatch(pm, kernelver)
				if !sure {
					markUnknown("PATCH_MATCH", fmt.Sprintf("PATCH_MATCH[%d]: %v", i, err))
					patchesKnown = false
					break
				}
				if err != nil {
					warnings = append(warnings, fmt.Sprintf("PATCH_MATCH[%d] %q: %v (bash's [[ =~ ]] fails, so dkms does not apply PATCH[%d])", i, pm, err, i))
				}
				ok = m
			}
			if ok {
				patches = append(patches, pt)
			}
		}
		if patchesKnown {
			p.Patches = patches
		}
	}

	// BUILD_EXCLUSIVE_*
	var reasons []string
	// dkms: [[ $BUILD_EXCLUSIVE_KERNEL && ! $1 =~ $BUILD_EXCLUSIVE_KERNEL ]]
	// && build_exclude="yes"; a malformed expression makes =~ return 2,
	// which "!" turns into true: dkms excludes.
	for _, be := range []struct{ name, what, subject string }{
		{"BUILD_EXCLUSIVE_KERNEL", "kernel", kernelver},
		{"BUILD_EXCLUSIVE_ARCH", "arch", arch},
	} {
		if !known(be.name) {
			continue
		}
		re := r.scalar(be.name)
		if re == "" {
			continue
		}
		ok, sure, err := regexMatch(re, be.subject)
		switch {
		case !sure:
			markUnknown(be.name, fmt.Sprintf("matching %s %s: %v", be.what, be.subject, err))
		case err != nil:
			reasons = append(reasons, fmt.Sprintf("%s %q does not compile (%v): bash's [[ =~ ]] fails, which dkms's negated test takes for a mismatch", be.name, re, err))
		case !ok:
			reasons = append(reasons, fmt.Sprintf("%s %q does not match %s %s", be.name, re, be.what, be.subject))
		}
	}
	if cfg := r.scalar("BUILD_EXCLUSIVE_CONFIG"); cfg != "" && known("BUILD_EXCLUSIVE_CONFIG") {
		if o.KernelConfig == nil {
			markUnknown("BUILD_EXCLUSIVE_CONFIG", "checked against the kernel's .config, which was not given")
		} else if rs, sure, why := checkKernelConfig(cfg, o.KernelConfig); !sure {
			markUnknown("BUILD_EXCLUSIVE_CONFIG", why)
		} else {
			reasons = append(reasons, rs...)
		}
	}
	for _, n := range []string{"MAKE", "PRE_BUILD", "POST_BUILD", "CLEAN"} {
		for k, v := range c.Vars {
			if (k == n || strings.HasPrefix(k, n+"[")) && strings.Contains(v, "uname -r") {
				warnings = append(warnings, fmt.Sprintf("%s runs uname -r, which in a chroot is the build host's kernel, not %s", k, kernelver))
			}
		}
	}
	sort.Strings(warnings)
	if len(reasons) > 0 {
		p.Excluded = true
		p.Reason = strings.Join(reasons, "; ")
	}
	p.Warnings = warnings
	if len(problems) > 0 {
		return p, &ConfError{Name: c.Name, Problems: problems}
	}
	return p, nil
}

func (o PlanOptions) withDefaults(kernelver string) PlanOptions {
	if o.DKMSTree == "" {
		o.DKMSTree = "/var/lib/dkms"
	}
	if o.SourceTree == "" {
		o.SourceTree = "/usr/src"
	}
	if o.InstallTree == "" {
		o.InstallTree = "/lib/modules"
	}
	if o.KernelSourceDir == "" {
		o.KernelSourceDir = o.InstallTree + "/" + kernelver + "/build"
	}
	if o.Distro == "" {
		o.Distro = "debian"
	}
	return o
}

// evaluation is the result of reading the files as dkms does.
type evaluation struct {
	first    []*interp         // each file sourced in its subshell
	final    *interp           // dkms's shell after re-reading the values
	arrays   map[string]bool   // variables some file assigned as arrays
	why      map[string]string // why a variable is unknown
	warnings []string
	fatal    string // why dkms reads nothing from the dkms.conf itself
}

// evaluate sources the file and the overrides like dkms's read_conf: each
// in a subshell of dkms's shell (safe_source), which then re-reads the
// printed values.
func (c *Conf) evaluate(kernelver, arch string, o PlanOptions) (*evaluation, error) {
	provided := map[string]string{
		"kernelver":         kernelver,
		"arch":              arch,
		"dkms_tree":         o.DKMSTree,
		"source_tree":       o.SourceTree,
		"install_tree":      o.InstallTree,
		"kernel_source_dir": o.KernelSourceDir,
		"kernel_config":     o.KernelSourceDir + "/.config",
	}
	if o.Module != "" {
		provided["module"] = o.Module
	}
	if o.ModuleVersion != "" {
		provided["module_version"] = o.ModuleVersion
	}
	// dkms's shell: provided variables, dkms.conf variables unset
	sh := newInterp()
	for k, v := range provided {
		zero := int64(0)
		sh.write(k, &zero, v, true, v, 0, false)
	}
	for _, v := range dkmsConfVariables {
		sh.unsetKnown[v] = true
	}
	ev := &evaluation{final: sh, arrays: map[string]bool{}, why: map[string]string{}}
	config := &kernelConfig{paths: []string{provided["kernel_source_dir"] + "/.config", provided["kernel_config"]},
		boot: "/boot/config-" + kernelver, srcDir: provided["kernel_source_dir"], data: o.KernelConfig}
	for fi, f := range append([]*Conf{c}, o.Overrides...) {
		if f == nil {
			continue
		}
		sub := sh.clone()
		sub.config = config
		sub.runList(f.prog)
		if sub.exhausted {
			return nil, fmt.Errorf("%s: too complex to evaluate", f.Name)
		}
		ev.first = append(ev.first, sub)
		if sub.fatal != "" {
			// safe_source's subshell printed nothing: dkms's variables
			// keep the values they had (unset for the dkms.conf)
			if fi == 0 {
				ev.fatal = sub.fatal
			} else {
				ev.warnings = append(ev.warnings, fmt.Sprintf("%s: %s; the values read before it are kept", f.Name, sub.fatal))
			}
			continue
		}
		for _, n := range dkmsConfVariables {
			if v, ok := sub.vars[n]; ok && v.array {
				ev.arrays[n] = true
			}
		}
		script, unknown := safeSourceScript(sub)
		if sub.maybeFatal != "" {
			// dkms may read nothing from this file: every value may be
			// the one it had before
			for _, n := range dkmsConfVariables {
				unknown[n] = true
				sub.unknownWhy[n] = sub.maybeFatal
			}
		}
		for n := range unknown {
			if w := sub.unknownWhy[n]; w != "" {
				ev.why[n] = f.Name + ": " + w
			} else {
				ev.why[n] = f.Name + ": known only at build time"
			}
		}
		prog, err := parseShell(script, f.Name)
		if err != nil {
			ev.warnings = append(ev.warnings, fmt.Sprintf("%s: dkms's re-reading of the values fails (%v): all values known only at build time", f.Name, err))
			for _, n := range dkmsConfVariables {
				sh.markUnknown(n, "re-reading failed")
				ev.why[n] = f.Name + ": dkms's re-reading of the values fails"
			}
			continue
		}
		sh.runList(prog)
		for n := range unknown {
			sh.markIncomplete(n, ev.why[n])
		}
		for _, n := range sh.notes {
			ev.warnings = append(ev.warnings, fmt.Sprintf("%s: while dkms re-reads the values: %s", f.Name, n.msg))
		}
		sh.notes = nil
	}
	return ev, nil
}

// resolver reads the final values of dkms's variables.
type resolver struct{ in *interp }

func (r *resolver) elem(name string, i int64) string {
	v, ok := r.in.vars[name]
	if !ok {
		return ""
	}
	if e, ok := v.elems[i]; ok && e.known {
		return e.val
	}
	return ""
}

func (r *resolver) scalar(name string) string { return r.elem(name, 0) }

func (r *resolver) count(name string) int {
	if v, ok := r.in.vars[name]; ok {
		return len(v.elems)
	}
	return 0
}

// safeSourceScript writes what dkms's safe_source prints after sourcing a
// file: NAME[i]="value" for each element of each dkms variable, in the
// order of dkms_conf_variables, which dkms then sources again. It also
// returns the variables that cannot be written because they are unknown.
func safeSourceScript(in *interp) (string, map[string]bool) {
	var b strings.Builder
	unknown := map[string]bool{}
	// safe_source's echo splits the values with the file's IFS
	ifs, ifsKnown := " \t\n", true
	if v, ok := in.vars["IFS"]; ok {
		e, has := v.elems[0]
		switch {
		case v.unknown || len(v.elems) > 1 || has && !e.known:
			ifsKnown = false
		case has:
			ifs = e.val
		}
	}
	if strings.ContainsFunc(ifs, func(r rune) bool {
		return r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
	}) {
		ifsKnown = false // the names and indices safe_source expands unquoted split too
	}
	broken := false
	for _, n := range dkmsConfVariables {
		v, ok := in.vars[n]
		if broken {
			unknown[n] = true
			continue
		}
		if !ok {
			if !in.unsetKnown[n] {
				unknown[n] = true
			}
			continue
		}
		if len(v.elems) > 1 && !strings.Contains(ifs, " ") || v.unknown && !strings.Contains(ifs, " ") {
			// without a space in IFS, the list of indices is one word:
			// an arithmetic error stops safe_source's printing here
			broken = true
			unknown[n] = true
			continue
		}
		if v.unknown || !ifsKnown && len(v.elems) > 0 {
			unknown[n] = true
			continue
		}
		for _, k := range v.sortedIndices() {
			e := v.elems[k]
			if !e.known {
				unknown[n] = true
				continue
			}
			fmt.Fprintf(&b, "%s[%d]=\"%s\"\n", n, k, echoSplit(e.val, ifs))
		}
	}
	return b.String(), unknown
}

// echoSplit is what safe_source's echo makes of a value it expands
// unquoted between literal text (NAME[i]=\"$value\"): the value is split
// into fields at the characters of ifs (bash's rules: a run of IFS
// whitespace, with at most one other IFS character, is one delimiter; an
// IFS character that is not whitespace delimits even an empty field), and
// echo joins the fields with one space. (Pathname expansion of the words,
// in dkms's working directory, is assumed to match nothing.)
func echoSplit(v, ifs string) string {
	isWS := func(c byte) bool { return (c == ' ' || c == '\t' || c == '\n') && strings.IndexByte(ifs, c) >= 0 }
	isIFS := func(c byte) bool { return strings.IndexByte(ifs, c) >= 0 }
	var fields []string
	cur := "\x00" // the literal text before the value: a field that exists
	have := true
	for i := 0; i < len(v); {
		c := v[i]
		if !isIFS(c) {
			cur += string(c)
			have = true
			i++
			continue
		}
		nonWS := false
		for i < len(v) && isWS(v[i]) {
			i++
		}
		if i < len(v) && isIFS(v[i]) && !isWS(v[i]) {
			nonWS = true
			i++
			for i < len(v) && isWS(v[i]) {
				i++
			}
		}
		if have || nonWS {
			fields = append(fields, cur)
		}
		cur, have = "", false
	}
	fields = append(fields, cur+"\x00") // with the literal text after it
	s := strings.Join(fields, " ")
	return s[1 : len(s)-1]
}

// overrideDestDir is dkms 3.0's override_dest_module_location.
func overrideDestDir(distro, orig string) string {
	switch {
	case strings.HasPrefix(distro, "fedora"), strings.HasPrefix(distro, "rhel"), strings.HasPrefix(distro, "ovm"):
		return "/extra"
	case strings.HasPrefix(distro, "sles"), strings.HasPrefix(distro, "suse"), strings.HasPrefix(distro, "opensuse"):
		return "/updates"
	case strings.HasPrefix(distro, "debian"), strings.HasPrefix(distro, "ubuntu"), strings.HasPrefix(distro, "arch"):
		return "/updates/dkms"
	}
	return orig
}

// DistroFromOSRelease computes dkms's running_distribution from the
// contents of /etc/os-release: "ubuntu" when ID is ubuntu, else ID_LIKE
// (the whole value: dkms reads ${ID_LIKE[0]} of a scalar) when set, else
// ID.
func DistroFromOSRelease(data []byte) string {
	c, err := Parse(bytes.NewReader(data), "os-release")
	if err != nil {
		return ""
	}
	get := func(n string) string {
		if v, ok := c.in.vars[n]; ok {
			if e, ok := v.elems[0]; ok && e.known {
				return e.val
			}
		}
		return ""
	}
	id := get("ID")
	if id == "ubuntu" {
		return id
	}
	if like := get("ID_LIKE"); like != "" {
		return like
	}
	return id
}

// clangFlags is dkms 3.0.10's check for a kernel built with clang or lld
// (without vmlinux, which Debian's headers do not ship).
func clangFlags(config []byte) string {
	s := string(config)
	var f string
	if strings.Contains(s, "CONFIG_CC_IS_CLANG=y") {
		f += " CC=clang"
	}
	if strings.Contains(s, "CONFIG_LD_IS_LLD=y") {
		f += " LD=ld.lld"
	}
	return f
}
