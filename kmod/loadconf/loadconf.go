// Package loadconf renders the module-loading configuration of an image:
// /etc/modules-load.d, /etc/modprobe.d, /etc/udev/rules.d, /etc/sysctl.d
// and /etc/audit/rules.d files, from explicit settings and from named
// profiles for clouds and workloads. It is pure: Render only builds file
// contents, the same for the same Options, and writes nothing.
package loadconf

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

// Paths of the files Render writes.
const (
	// ModulesLoadPath lists the modules systemd-modules-load loads at
	// boot. It is one file so the declared order holds: systemd reads the
	// folder's files in name order and each file's lines in order.
	ModulesLoadPath = "/etc/modules-load.d/kmodctl.conf"
	// DisablePath holds the DisableModules settings.
	DisablePath = "/etc/modprobe.d/kmodctl-disable.conf"
	// AuditPath holds the audit rules of Options.Audit.
	AuditPath = "/etc/audit/rules.d/kmodctl-modules.rules"
	// AuditKey is the key (-k) of every audit rule Render writes.
	AuditKey = "kmodctl-modules"
)

// Options says what to render.
type Options struct {
	// Load lists modules for ModulesLoadPath, in order, after those of
	// the profiles. Duplicates are dropped.
	Load []string
	// Modprobe: one /etc/modprobe.d/<Name>.conf each.
	Modprobe []ModprobeConf
	// Profiles names profiles to apply, in order: aws, azure, gcp,
	// alibaba, generic, kubernetes (see Profiles).
	Profiles []string
	// UdevRules: one /etc/udev/rules.d/<Name>.rules each.
	UdevRules []UdevRule
	// DisableModules are modules that must never load (CIS benchmark
	// style): each gets "install X /bin/false" and "blacklist X" in
	// DisablePath.
	DisableModules []string
	// Audit writes AuditPath: audit rules recording module loading and
	// unloading. It needs Arch.
	Audit bool
	// Arch is the target's GOARCH (amd64, arm64, 386, arm, ppc64le,
	// riscv64, s390x), for the arch= fields of the audit rules.
	Arch string
	// ThirdPartyNIC tells the alibaba profile that a third-party NIC
	// driver is installed: ena is then blacklisted. It is an error
	// without the alibaba profile.
	ThirdPartyNIC bool
	// Header is a comment line put at the top of every file, e.g.
	// "# managed by packer-plugin-kmod"; "# " is prepended when it does
	// not start with '#'.
	Header string
}

// ModprobeConf is one modprobe.d file. Map entries are written sorted by
// key, so the output does not depend on map order.
type ModprobeConf struct {
	// Name is the file name without ".conf".
	Name string
	// Options maps a module to its parameters: "param=value ...".
	Options map[string]string
	// Blacklist lists modules whose aliases must not load them.
	Blacklist []string
	// Softdeps maps a module to its soft dependencies:
	// "pre: a b post: c".
	Softdeps map[string]string
	// Installs maps a module to the command modprobe runs instead of
	// loading it.
	Installs map[string]string
	// Aliases maps an alias (wildcards allowed) to a module.
	Aliases map[string]string
}

// UdevRule is one rules file.
type UdevRule struct {
	// Name is the file name without ".rules", with the two-digit
	// priority udev orders files by: "60-foo".
	Name string
	// Rules has one rule per element; none may contain a newline.
	Rules []string
}

// File is one rendered file.
type File struct {
	// Path is absolute within the image.
	Path    string
	Content []byte
	Mode    fs.FileMode
}

// line is one modprobe.d line.
type line struct {
	kind   string // alias, options, blacklist, softdep, install
	module string
	// arg: the alias wildcard, the options, the softdep or the command.
	arg string
	// why is written as a comment before the line.
	why string
	// origin names the setting for errors.
	origin string
}

func (l line) String() string {
	switch l.kind {
	case "blacklist":
		return "blacklist " + l.module
	case "alias":
		return "alias " + l.arg + " " + l.module
	}
	return l.kind + " " + l.module + " " + l.arg
}

type conf struct {
	path     string
	origin   string
	preamble []string
	lines    []line
}

type loadEntry struct {
	name, why string
	origins   []string
}

type renderer struct {
	errs  []error
	loads []*loadEntry
	// loadIdx maps a normalized name to its entry.
	loadIdx map[string]*loadEntry
	confs   []*conf
	// owners maps every output path to the setting that writes it.
	owners map[string]string
}

func (r *renderer) errf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf(format, args...))
}

// claim records that origin writes path, reporting a second writer.
func (r *renderer) claim(path, origin string) bool {
	if prev, ok := r.owners[path]; ok {
		r.errf("%s: file %s is also written by %s", origin, path, prev)
		return false
	}
	r.owners[path] = origin
	return true
}

func (r *renderer) load(name, why, origin string) {
	n := normName(name)
	if e, ok := r.loadIdx[n]; ok {
		e.origins = append(e.origins, origin)
		return
	}
	e := &loadEntry{name: name, why: why, origins: []string{origin}}
	r.loadIdx[n] = e
	r.loads = append(r.loads, e)
}

// Render builds the files o describes, sorted by path. Profiles come
// first, in the given order, then the explicit settings. It fails, with
// every problem found and naming the field and value, on an unknown
// profile, an invalid module or file name, a value that cannot stand on
// one line, two files of the same name, or conflicting settings: a module
// both loaded and blacklisted or disabled, a module parameter given two
// values, two different softdeps or install commands for a module.
func Render(o Options) ([]File, error) {
	r := &renderer{loadIdx: map[string]*loadEntry{}, owners: map[string]string{}}
	header, err := checkHeader(o.Header)
	if err != nil {
		r.errf("Header: %v", err)
	}

	var profiles []*profileDef
	seen := map[string]bool{}
	for i, name := range o.Profiles {
		p, err := findProfile(name)
		if err != nil {
			r.errf("Profiles[%d]: %v", i, err)
			continue
		}
		if seen[name] {
			r.errf("Profiles[%d]: profile %q is given twice", i, name)
			continue
		}
		seen[name] = true
		profiles = append(profiles, p)
	}
	if o.ThirdPartyNIC && !seen["alibaba"] {
		r.errf("ThirdPartyNIC: it only applies to the alibaba profile, which Profiles does not name")
	}

	var sysctls []File
	for _, p := range profiles {
		origin := fmt.Sprintf("profile %q", p.name)
		c := &conf{path: "/etc/modprobe.d/" + p.confName() + ".conf", origin: origin}
		var sysctl []string
		for _, s := range p.settings {
			if s.thirdPartyNIC && !o.ThirdPartyNIC {
				continue
			}
			o := origin
			if s.thirdPartyNIC {
				o += " (ThirdPartyNIC)"
			}
			switch s.kind {
			case setLoad:
				r.load(s.key, p.name+": "+s.why, o)
			case setOptions:
				c.lines = append(c.lines, line{kind: "options", module: s.key, arg: s.value, why: s.why, origin: o})
			case setBlacklist:
				c.lines = append(c.lines, line{kind: "blacklist", module: s.key, why: s.why, origin: o})
			case setSysctl:
				sysctl = append(sysctl, "# "+s.why, s.key+" = "+s.value)
			}
		}
		if len(c.lines) > 0 && r.claim(c.path, origin) {
			r.confs = append(r.confs, c)
		}
		if len(sysctl) > 0 && r.claim(p.sysctlPath(), origin) {
			sysctls = append(sysctls, textFile(p.sysctlPath(), header, sysctl, 0o644))
		}
	}

	for i, name := range o.Load {
		if err := checkModuleName(name); err != nil {
			r.errf("Load[%d]: %v", i, err)
			continue
		}
		r.load(name, "", fmt.Sprintf("Load[%d]", i))
	}

	for i, mc := range o.Modprobe {
		if c := r.modprobeConf(i, mc); c != nil {
			r.confs = append(r.confs, c)
		}
	}

	if len(o.DisableModules) > 0 {
		c := &conf{path: DisablePath, origin: "DisableModules", preamble: []string{
			"# Modules that must not be loaded: 'install' makes modprobe run /bin/false",
			"# instead (so loading fails), 'blacklist' stops loading by alias.",
		}}
		done := map[string]bool{}
		for i, name := range o.DisableModules {
			origin := fmt.Sprintf("DisableModules[%d]", i)
			if err := checkModuleName(name); err != nil {
				r.errf("%s: %v", origin, err)
				continue
			}
			if done[normName(name)] {
				continue
			}
			done[normName(name)] = true
			c.lines = append(c.lines,
				line{kind: "install", module: name, arg: "/bin/false", origin: origin},
				line{kind: "blacklist", module: name, origin: origin})
		}
		if len(c.lines) > 0 && r.claim(c.path, "DisableModules") {
			r.confs = append(r.confs, c)
		}
	}

	r.conflicts()

	var files []File
	if len(r.loads) > 0 {
		var lines []string
		for _, e := range r.loads {
			if e.why != "" {
				lines = append(lines, "# "+e.why)
			}
			lines = append(lines, e.name)
		}
		r.claim(ModulesLoadPath, "Load")
		files = append(files, textFile(ModulesLoadPath, header, lines, 0o644))
	}
	for _, c := range r.confs {
		lines := append([]string(nil), c.preamble...)
		for _, l := range c.lines {
			if l.why != "" {
				lines = append(lines, "# "+l.why)
			}
			lines = append(lines, l.String())
		}
		files = append(files, textFile(c.path, header, lines, 0o644))
	}
	files = append(files, sysctls...)

	for i, u := range o.UdevRules {
		origin := fmt.Sprintf("UdevRules[%d] %q", i, u.Name)
		if !udevNameRE.MatchString(u.Name) || len(u.Name) > 100 {
			r.errf("UdevRules[%d]: invalid name %q (two-digit priority, '-', then letters, digits, '.', '_' or '-', e.g. \"60-foo\")", i, u.Name)
			continue
		}
		if len(u.Rules) == 0 {
			r.errf("%s: no rules", origin)
			continue
		}
		ok := true
		for j, rule := range u.Rules {
			if err := checkUdevRule(rule); err != nil {
				r.errf("%s: Rules[%d]: %v", origin, j, err)
				ok = false
			}
		}
		path := "/etc/udev/rules.d/" + u.Name + ".rules"
		if ok && r.claim(path, origin) {
			files = append(files, textFile(path, header, u.Rules, 0o644))
		}
	}

	if o.Audit {
		lines, err := auditRules(o.Arch)
		if err != nil {
			r.errf("Arch: %v", err)
		} else {
			files = append(files, textFile(AuditPath, header, lines, 0o640))
		}
	} else if o.Arch != "" {
		if _, ok := auditArches[o.Arch]; !ok {
			r.errf("Arch: %v", unknownArch(o.Arch))
		}
	}

	if len(r.errs) > 0 {
		return nil, fmt.Errorf("loadconf: %w", errors.Join(r.errs...))
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// modprobeConf validates one ModprobeConf and turns it into lines.
func (r *renderer) modprobeConf(i int, mc ModprobeConf) *conf {
	if !confNameRE.MatchString(mc.Name) || len(mc.Name) > 100 {
		r.errf("Modprobe[%d]: invalid name %q (letters, digits, '.', '_' and '-', not starting with '.', '_' or '-')", i, mc.Name)
		return nil
	}
	origin := fmt.Sprintf("Modprobe[%d] %q", i, mc.Name)
	c := &conf{path: "/etc/modprobe.d/" + mc.Name + ".conf", origin: origin}
	nerr := len(r.errs)
	for _, alias := range sortedKeys(mc.Aliases) {
		mod := mc.Aliases[alias]
		if err := checkAlias(alias); err != nil {
			r.errf("%s: Aliases: %v", origin, err)
			continue
		}
		if err := checkModuleName(mod); err != nil {
			r.errf("%s: Aliases[%q]: %v", origin, alias, err)
			continue
		}
		c.lines = append(c.lines, line{kind: "alias", module: mod, arg: alias, origin: origin})
	}
	for _, mod := range sortedKeys(mc.Options) {
		if err := checkModuleName(mod); err != nil {
			r.errf("%s: Options: %v", origin, err)
			continue
		}
		if _, err := parseOptions(mc.Options[mod]); err != nil {
			r.errf("%s: Options[%q]: %v", origin, mod, err)
			continue
		}
		c.lines = append(c.lines, line{kind: "options", module: mod, arg: mc.Options[mod], origin: origin})
	}
	listed := map[string]bool{}
	for j, mod := range mc.Blacklist {
		if err := checkModuleName(mod); err != nil {
			r.errf("%s: Blacklist[%d]: %v", origin, j, err)
			continue
		}
		if listed[normName(mod)] {
			continue
		}
		listed[normName(mod)] = true
		c.lines = append(c.lines, line{kind: "blacklist", module: mod, origin: origin})
	}
	for _, mod := range sortedKeys(mc.Softdeps) {
		if err := checkModuleName(mod); err != nil {
			r.errf("%s: Softdeps: %v", origin, err)
			continue
		}
		dep, err := parseSoftdep(mc.Softdeps[mod])
		if err != nil {
			r.errf("%s: Softdeps[%q]: %v", origin, mod, err)
			continue
		}
		c.lines = append(c.lines, line{kind: "softdep", module: mod, arg: dep, origin: origin})
	}
	for _, mod := range sortedKeys(mc.Installs) {
		if err := checkModuleName(mod); err != nil {
			r.errf("%s: Installs: %v", origin, err)
			continue
		}
		if err := checkText("install command", mc.Installs[mod]); err != nil {
			r.errf("%s: Installs[%q]: %v", origin, mod, err)
			continue
		}
		c.lines = append(c.lines, line{kind: "install", module: mod, arg: strings.TrimSpace(mc.Installs[mod]), origin: origin})
	}
	if len(r.errs) > nerr {
		return nil
	}
	if len(c.lines) == 0 {
		r.errf("%s: no settings", origin)
		return nil
	}
	if !r.claim(c.path, origin) {
		return nil
	}
	return c
}

// conflicts reports settings that contradict each other.
func (r *renderer) conflicts() {
	type val struct{ value, origin string }
	blocked := map[string][]block{}
	params := map[string]map[string]val{}
	softdeps := map[string]val{}
	installs := map[string]val{}
	for _, c := range r.confs {
		for _, l := range c.lines {
			n := normName(l.module)
			switch l.kind {
			case "blacklist":
				blocked[n] = append(blocked[n], block{"blacklisted by " + l.origin, l.origin})
			case "install":
				if isDisableCommand(l.arg) {
					blocked[n] = append(blocked[n], block{fmt.Sprintf("disabled (install %s) by %s", l.arg, l.origin), l.origin})
				}
				if prev, ok := installs[n]; ok && prev.value != l.arg {
					r.errf("module %q: install command %q of %s conflicts with %q of %s", l.module, l.arg, l.origin, prev.value, prev.origin)
				} else if !ok {
					installs[n] = val{l.arg, l.origin}
				}
			case "softdep":
				if prev, ok := softdeps[n]; ok && prev.value != l.arg {
					r.errf("module %q: softdep %q of %s conflicts with %q of %s", l.module, l.arg, l.origin, prev.value, prev.origin)
				} else if !ok {
					softdeps[n] = val{l.arg, l.origin}
				}
			case "options":
				ps, _ := parseOptions(l.arg)
				if params[n] == nil {
					params[n] = map[string]val{}
				}
				for _, p := range ps {
					pn := normName(p.name)
					if prev, ok := params[n][pn]; ok && prev.value != p.value {
						r.errf("module %q: parameter %s=%s of %s conflicts with %s=%s of %s", l.module, p.name, p.value, l.origin, p.name, prev.value, prev.origin)
					} else if !ok {
						params[n][pn] = val{p.value, l.origin}
					}
				}
			}
		}
	}
	for _, e := range r.loads {
		if b := blocked[normName(e.name)]; len(b) > 0 {
			r.errf("module %q is loaded by %s but %s", e.name, strings.Join(e.origins, " and "), strings.Join(firstPerOrigin(b), " and "))
		}
	}
}

// block is a reason a module cannot load.
type block struct{ what, origin string }

// firstPerOrigin keeps the first reason of each origin (DisableModules
// both disables and blacklists) and returns the reasons.
func firstPerOrigin(bs []block) []string {
	var out []string
	seen := map[string]bool{}
	for _, b := range bs {
		if !seen[b.origin] {
			seen[b.origin] = true
			out = append(out, b.what)
		}
	}
	return out
}

// textFile joins lines into a file with the header first.
func textFile(path, header string, lines []string, mode fs.FileMode) File {
	var b strings.Builder
	if header != "" {
		b.WriteString(header)
		b.WriteByte('\n')
	}
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return File{Path: path, Content: []byte(b.String()), Mode: mode}
}
