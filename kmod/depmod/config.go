package depmod

import (
	"bytes"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strings"
)

// This file reads depmod.d configuration the way kmod 30's depmod does
// (tools/depmod.c cfg_load) and decides which of two modules of the same
// name depmod keeps.

// defaultDepmodConfigDirs is kmod 30's search list (SYSCONFDIR=/etc), here
// resolved inside the image root. kmod ≥ 31 also reads /usr/lib/depmod.d.
var defaultConfigDirs = []string{"/etc/depmod.d", "/run/depmod.d", "/usr/local/lib/depmod.d", "/lib/depmod.d"}

type searchType uint8

const (
	searchPath searchType = iota
	searchBuiltin
	searchExternal
)

type cfgSearch struct {
	typ  searchType
	path string
}

// config is the parsed configuration. The lists are in kmod's order:
// kmod prepends every entry, so they run from the last configured one to
// the first.
type config struct {
	kver      string
	overrides []string // subdir + "/" + module name, no extension
	searches  []cfgSearch
	externals []string
	excludes  []string
}

// loadDepmodConfig reads the configuration files found at paths (folders
// or files) in fsys: the files of all folders sorted by file name, a name
// seen in an earlier path hiding later ones. Without any search line the
// search list is "updates" (then "built-in" is implicit and lowest).
func loadConfig(fsys fs.FS, paths []string, kver string, warn func(string)) (*config, error) {
	cfg := &config{kver: kver}
	type cfgFile struct{ name, path string }
	var files []cfgFile
	insert := func(name, p string) {
		i, found := slices.BinarySearchFunc(files, name, func(f cfgFile, n string) int { return strings.Compare(f.name, n) })
		if found {
			return
		}
		files = slices.Insert(files, i, cfgFile{name, p})
	}
	for _, cp := range paths {
		p := fsPath(cp)
		st, err := fs.Stat(fsys, p)
		if err != nil {
			if q, ok := usrMergedPath(fsys, p); ok {
				p = q
				st, err = fs.Stat(fsys, p)
			}
			if err != nil {
				continue
			}
		}
		if !st.IsDir() {
			insert(path.Base(p), p)
			continue
		}
		ents, err := fs.ReadDir(fsys, p)
		if err != nil {
			warn(fmt.Sprintf("files list %s: %v", cp, err))
			continue
		}
		for _, e := range ents {
			name := e.Name()
			if name[0] == '.' || len(name) < 6 || !strings.HasSuffix(name, ".conf") {
				continue
			}
			full := path.Join(p, name)
			if isDirEntryDir(fsys, full, e) {
				warn(fmt.Sprintf("Directories inside directories are not supported: %s/%s", cp, name))
				continue
			}
			insert(name, full)
		}
	}
	for _, f := range files {
		data, err := fs.ReadFile(fsys, f.path)
		if err != nil {
			warn(fmt.Sprintf("file parse %s: %v", f.path, err))
			continue
		}
		cfg.parse("/"+f.path, data, warn)
	}
	slices.Reverse(cfg.overrides)
	slices.Reverse(cfg.searches)
	slices.Reverse(cfg.externals)
	slices.Reverse(cfg.excludes)
	if len(cfg.searches) == 0 {
		cfg.searches = []cfgSearch{{typ: searchPath, path: "updates"}}
	}
	return cfg, nil
}

// isDirEntryDir reports whether e (at full) is a folder, following a
// symbolic link as kmod's fstatat does.
func isDirEntryDir(fsys fs.FS, full string, e fs.DirEntry) bool {
	if e.Type()&fs.ModeSymlink == 0 {
		return e.IsDir()
	}
	st, err := fs.Stat(fsys, full)
	return err == nil && st.IsDir()
}

// parse reads one configuration file in the entries' file order.
func (cfg *config) parse(name string, data []byte, warn func(string)) {
	linenum := 0
	for len(data) > 0 {
		var line []byte
		line, data, linenum = readWrappedLine(data, linenum)
		if i := bytes.IndexByte(line, 0); i >= 0 {
			line = line[:i] // a C string
		}
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		fields := strings.FieldsFunc(string(line), func(r rune) bool { return r == ' ' || r == '\t' })
		if len(fields) == 0 {
			continue
		}
		cmd, args := fields[0], fields[1:]
		switch cmd {
		case "search":
			for _, a := range args {
				s := cfgSearch{typ: searchPath, path: a}
				switch a {
				case "built-in":
					s = cfgSearch{typ: searchBuiltin}
				case "external":
					s = cfgSearch{typ: searchExternal}
				}
				cfg.searches = append(cfg.searches, s)
			}
		case "override":
			if len(args) < 3 {
				warn(fmt.Sprintf("%s:%d: ignoring bad line starting with '%s'", name, linenum, cmd))
				continue
			}
			if cfg.kernelMatches(args[1]) {
				cfg.overrides = append(cfg.overrides, args[2]+"/"+args[0])
			}
		case "external":
			if len(args) < 2 {
				warn(fmt.Sprintf("%s:%d: ignoring bad line starting with '%s'", name, linenum, cmd))
				continue
			}
			if cfg.kernelMatches(args[0]) {
				cfg.externals = append(cfg.externals, args[1])
			}
		case "exclude":
			cfg.excludes = append(cfg.excludes, args...)
		case "include", "make_map_files":
			// Not implemented by kmod either.
		default:
			warn(fmt.Sprintf("%s:%d: ignoring bad line starting with '%s'", name, linenum, cmd))
		}
	}
}

// readWrappedLine is kmod's freadline_wrapped: a line ends at a newline
// or the end of the data, and a backslash before a newline joins the next
// line. A backslash before anything else is dropped.
func readWrappedLine(data []byte, linenum int) (line, rest []byte, n int) {
	var buf []byte
	i := 0
	for i < len(data) {
		c := data[i]
		i++
		switch c {
		case '\n':
			return buf, data[i:], linenum + 1
		case '\\':
			if i < len(data) && data[i] == '\n' {
				i++
				linenum++
				continue
			}
			if i < len(data) {
				c = data[i]
				i++
			} else {
				c = 0xff // kmod stores EOF as a char
			}
		}
		buf = append(buf, c)
	}
	return buf, nil, linenum + 1
}

// kernelMatches is cfg_kernel_matches: "*" or an extended regular
// expression found anywhere in the kernel release.
func (cfg *config) kernelMatches(pattern string) bool {
	if pattern == "*" {
		return true
	}
	re, err := regexp.CompilePOSIX(pattern)
	if err != nil {
		return false
	}
	return re.MatchString(cfg.kver)
}

// excluded is should_exclude_dir: names depmod skips at every level of the
// tree, files included.
func (cfg *config) excluded(name string) bool {
	if name == "." || name == ".." || name == "build" || name == "source" {
		return true
	}
	return slices.Contains(cfg.excludes, name)
}

// startsWithDir is depmod_is_path_starts_with: path[:n] lies below prefix.
func startsWithDir(p string, n int, prefix string) bool {
	return n > len(prefix) && p[len(prefix)] == '/' && p[:len(prefix)] == prefix
}

// keepOld is depmod_module_is_higher_priority: whether the module already
// found (oldPath) wins over newPath of the same module name. Both are
// absolute paths in the image; nameLen is the module name's length. Paths
// are compared up to the end of the module name in the file name.
func (cfg *config) keepOld(dirname, oldPath, newPath string, nameLen int) bool {
	newLen := strings.LastIndexByte(newPath, '/') + 1 + nameLen
	oldLen := strings.LastIndexByte(oldPath, '/') + 1 + nameLen
	relNew, relNewLen := "", 0
	relOld, relOldLen := "", 0
	if strings.HasPrefix(newPath, dirname) && newLen > len(dirname) {
		relNew, relNewLen = newPath[len(dirname)+1:], newLen-(len(dirname)+1)
	}
	if strings.HasPrefix(oldPath, dirname) && oldLen > len(dirname) {
		relOld, relOldLen = oldPath[len(dirname)+1:], oldLen-(len(dirname)+1)
	}
	for _, ov := range cfg.overrides {
		if relNewLen == len(ov) && relNew[:relNewLen] == ov {
			return false
		}
		if relOldLen == len(ov) && relOld[:relOldLen] == ov {
			return true
		}
	}
	bprio, oldprio, newprio := -1, -1, -1
	i := 0
	for _, se := range cfg.searches {
		switch {
		case se.typ == searchBuiltin:
			bprio = i
		case se.typ == searchExternal:
			for _, ext := range cfg.externals {
				if startsWithDir(newPath, newLen, ext) {
					newprio = i
				}
				if startsWithDir(oldPath, oldLen, ext) {
					oldprio = i
				}
				i++
			}
		case relNewLen > len(se.path) && relNew[len(se.path)] == '/' && relNew[:len(se.path)] == se.path:
			newprio = i
		case relOldLen > len(se.path) && relOld[len(se.path)] == '/' && relOld[:len(se.path)] == se.path:
			// kmod tests the old path only when the new one did not match.
			oldprio = i
		}
		i++
	}
	if newprio < 0 {
		newprio = bprio
	}
	if oldprio < 0 {
		oldprio = bprio
	}
	return newprio <= oldprio
}

// fsPath turns a path of the image ("/etc/depmod.d") into an fs.FS name.
func fsPath(p string) string {
	p = path.Clean("/" + p)
	if p == "/" {
		return "."
	}
	return p[1:]
}

// usrMergedPath maps lib/... to usr/lib/... when lib is not a folder of
// fsys (as in a merged-/usr image whose /lib symbolic link the fs.FS does
// not follow).
func usrMergedPath(fsys fs.FS, p string) (string, bool) {
	if !strings.HasPrefix(p, "lib/") {
		return "", false
	}
	if st, err := fs.Stat(fsys, "lib"); err == nil && st.IsDir() {
		return "", false
	}
	return "usr/" + p, true
}
