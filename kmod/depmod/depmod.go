package depmod

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/kmod/internal/modfile"
)

// Generate computes what kmod 30's `depmod -b BASEDIR KVER` writes,
// byte for byte, without writing anything. root is BASEDIR: the modules
// are read from lib/modules/KVER in it or, when that is missing (a merged
// /usr whose lib symbolic link the fs.FS does not follow), from
// usr/lib/modules/KVER. The files come in the order kmod writes them:
//
//	modules.dep, modules.dep.bin, modules.alias, modules.alias.bin,
//	modules.softdep, modules.symbols, modules.symbols.bin,
//	modules.builtin.bin, modules.builtin.alias.bin, modules.devname
//
// kmod 30 writes no modules.weakdep (kmod ≥ 33) and no text
// modules.builtin (an input, like modules.order and
// modules.builtin.modinfo). The builtin indexes are empty files when their
// input is missing; modules.devname is empty when no module names a device.
//
// Inputs, as kmod 30 reads them: every file ending in .ko, .ko.gz, .ko.xz
// or .ko.zst below the module folder, except below folders (or files)
// named build, source or excluded by configuration, with symbolic links
// followed; modules.order, modules.builtin, modules.builtin.modinfo; the
// depmod.d configuration (see WithConfig). When two files give the
// same module name, the search order decides (by default "updates" first,
// then the rest, "built-in"); at equal rank the listing order of folders
// decides (kmod keeps the first file found, except that of two files below
// the same search path the later one wins). kmod lists folders in readdir
// order, this function in fs.ReadDir's order: sorted for most fs.FS, kmod's
// order for Dir and Write.
//
// Where kmod only warns, Generate fails: a module file that is not a
// readable kernel module (the error names it), a dependency cycle, more
// than 65534 modules. Warnings go to the WithWarnings callback.
func Generate(root fs.FS, kver string, opts ...Option) (*Output, error) {
	d, err := generate(root, kver, opts)
	if err != nil {
		return nil, err
	}
	return d.out, nil
}

func generate(root fs.FS, kver string, opts []Option) (*generation, error) {
	o := &options{}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	if o.warn == nil {
		o.warn = func(string) {}
	}
	if h, ok := root.(hostFS); ok {
		o.displayRoot = h.display
	}
	if kver == "" || kver == "." || kver == ".." || strings.ContainsAny(kver, "/\x00") {
		return nil, fmt.Errorf("depmod: bad kernel release %q", kver)
	}
	d := &generation{root: root, opts: o}
	if err := d.run(kver); err != nil {
		return nil, err
	}
	return d, nil
}

// Dir is the host folder basedir as an fs.FS for Generate that
// reads it the way Write does: folders in readdir order (kmod's order,
// which decides between two files of one module name at equal rank),
// modules with pread, and messages naming paths below basedir.
func Dir(basedir string) (fs.FS, error) {
	abs, err := filepath.Abs(basedir)
	if err != nil {
		return nil, err
	}
	// kmod's messages name paths below the base folder as given.
	display := basedir
	if !filepath.IsAbs(display) {
		if wd, err := os.Getwd(); err == nil {
			display = wd + "/" + basedir
		}
	}
	return hostFS{dir: abs, display: strings.TrimSuffix(display, "/")}, nil
}

// Write runs Generate on the folder basedir (see Dir) and
// replaces the files in basedir/lib/modules/KVER (or usr/lib/modules/KVER,
// see Generate) atomically: each is written to a temporary file,
// fsynced, and renamed over the old one (mode 0644 for a new file, the old
// file's mode and owner otherwise); the folder is fsynced once at the end.
// It returns the files written.
func Write(basedir, kver string, opts ...Option) (*Output, error) {
	root, err := Dir(basedir)
	if err != nil {
		return nil, err
	}
	d, err := generate(root, kver, opts)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root.(hostFS).dir, filepath.FromSlash(d.moddir))
	errs := make([]error, len(d.out.Files))
	var wg sync.WaitGroup
	for i, f := range d.out.Files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = atomicfile.WriteFile(filepath.Join(dir, f.Name), f.Data, 0o644, atomicfile.NoDirSync())
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return nil, err
	}
	return d.out, nil
}

// File is one output file of depmod.
type File struct {
	Name string
	Data []byte
}

// Output is the set of files depmod writes, in kmod's order.
type Output struct {
	Files []File
}

// File returns the content of the named file (nil when there is none).
func (o *Output) File(name string) []byte {
	for _, f := range o.Files {
		if f.Name == name {
			return f.Data
		}
	}
	return nil
}

// Option changes what Generate and Write read or report. An option with a
// bad argument makes Generate and Write fail before they read anything.
type Option func(*options) error

type options struct {
	configSet   bool
	configFS    fs.FS // nil: the root
	configPaths []string
	warn        func(string)
	symvers     []byte
	exts        []string
	// displayRoot prefixes the image paths in messages (Write: basedir).
	displayRoot string
}

// WithConfig reads the depmod.d configuration from these paths
// inside the root (folders of *.conf files, or single files), like
// `depmod -C` but resolved in the image. Without this option the paths
// are kmod 30's: /etc/depmod.d, /run/depmod.d, /usr/local/lib/depmod.d and
// /lib/depmod.d, inside the root (lib/ falls back to usr/lib/ when the
// fs.FS holds no lib folder). This differs from the host's depmod, which
// reads the host's own /etc/depmod.d even with -b unless given -C.
// WithoutConfig reads none. Supported: search (with
// built-in and external), override (the kernel pattern a POSIX extended
// regular expression, or *), external, exclude; include and
// make_map_files are ignored, as kmod 30 ignores them. An external folder
// is read inside the root too, and its modules are listed in modules.dep
// by their absolute path in the image; kmod with -b reads the external
// folder on the host.
func WithConfig(paths ...string) Option {
	return func(o *options) error {
		if err := checkConfigPaths("WithConfig", paths); err != nil {
			return err
		}
		o.configSet, o.configFS, o.configPaths = true, nil, slices.Clone(paths)
		return nil
	}
}

// WithConfigFS reads the depmod.d configuration from paths in fsys
// instead of the root: `depmod -C` with host paths is
// WithConfigFS(os.DirFS("/"), paths...).
func WithConfigFS(fsys fs.FS, paths ...string) Option {
	return func(o *options) error {
		if fsys == nil {
			return errors.New("depmod: WithConfigFS: nil fs.FS")
		}
		if err := checkConfigPaths("WithConfigFS", paths); err != nil {
			return err
		}
		o.configSet, o.configFS, o.configPaths = true, fsys, slices.Clone(paths)
		return nil
	}
}

// WithoutConfig reads no depmod.d configuration at all: the default
// search order ("updates", then the rest) and no overrides, externals or
// exclusions.
func WithoutConfig() Option {
	return func(o *options) error {
		o.configSet, o.configFS, o.configPaths = true, nil, nil
		return nil
	}
}

func checkConfigPaths(opt string, paths []string) error {
	if len(paths) == 0 {
		return fmt.Errorf("depmod: %s: no path given (WithoutConfig reads no configuration)", opt)
	}
	for _, p := range paths {
		if p == "" || strings.ContainsRune(p, 0) {
			return fmt.Errorf("depmod: %s: bad path %q", opt, p)
		}
	}
	return nil
}

// WithWarnings receives the warnings depmod prints, without its
// "depmod: WARNING: " prefix: missing inputs ("could not open
// modules.order at …"), bad configuration and modules.builtin lines,
// unmatched brackets in aliases, devnames without a device number, and,
// with WithSymvers, "PATH needs unknown symbol SYM" and "PATH
// disagrees about version of symbol SYM" (like depmod -e -E). Paths are
// the module's path in the image (with Write: below basedir, as kmod
// prints them). Without this option the warnings are dropped.
func WithWarnings(f func(msg string)) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("depmod: WithWarnings: nil function")
		}
		o.warn = f
		return nil
	}
}

// WithSymvers gives the kernel's Module.symvers (the vmlinux rows
// count), like `depmod -E FILE -e`: dependencies on symbols neither
// vmlinux nor a module exports, and CRCs that disagree with the
// exporter's, are reported to the WithWarnings callback. The output
// files do not change.
func WithSymvers(moduleSymvers []byte) Option {
	return func(o *options) error {
		o.symvers = moduleSymvers
		return nil
	}
}

// WithExtensions sets the file name endings taken as modules. The
// default, ".ko", ".ko.gz", ".ko.xz", ".ko.zst", is kmod built with every
// decompressor; Debian's kmod 30 lacks zlib and ignores .ko.gz files:
// WithExtensions(".ko", ".ko.xz", ".ko.zst") reproduces it.
func WithExtensions(exts ...string) Option {
	return func(o *options) error {
		if len(exts) == 0 {
			return errors.New("depmod: WithExtensions: no file name ending given")
		}
		for _, e := range exts {
			if len(e) < 2 || e[0] != '.' || strings.ContainsAny(e, "/\x00") {
				return fmt.Errorf("depmod: WithExtensions: %q is not a file name ending like .ko or .ko.xz", e)
			}
		}
		o.exts = slices.Clone(exts)
		return nil
	}
}

var defaultExtensions = []string{".ko", ".ko.gz", ".ko.xz", ".ko.zst"}

// generation is one depmod computation.
type generation struct {
	root fs.FS
	opts *options
	cfg  *config
	// moddir is the module folder in root; dirname is its image path.
	moddir, dirname string
	mods            []*depmodMod
	out             *Output
}

// depmodMod is a module of the tree.
type depmodMod struct {
	fsPath  string // in root
	path    string // image path ("/lib/modules/…/x.ko")
	relpath string // below dirname, "" when outside it
	modname string
	uncrel  string // relpath cut after the module name + ".ko"
	hash    uint32
	sortIdx int
	idx     int
	facts   *depmodFacts
	// Dependency graph.
	deps       []int32 // modules this one needs (indexes), unique
	users      int
	depSortIdx int
}

func (d *generation) warnf(format string, args ...any) { d.opts.warn(fmt.Sprintf(format, args...)) }

// display is an image path as messages show it.
func (d *generation) display(p string) string { return d.opts.displayRoot + p }

func (d *generation) run(kver string) error {
	d.moddir = path.Join("lib/modules", kver)
	if st, err := fs.Stat(d.root, d.moddir); err != nil || !st.IsDir() {
		alt := path.Join("usr/lib/modules", kver)
		if st2, err2 := fs.Stat(d.root, alt); err2 == nil && st2.IsDir() {
			d.moddir = alt
		} else if err != nil {
			return fmt.Errorf("depmod: module folder: %w", err)
		} else {
			return fmt.Errorf("depmod: module folder %s is not a folder", d.moddir)
		}
	}
	d.dirname = "/" + d.moddir

	cfgFS, cfgPaths := d.root, defaultConfigDirs
	if d.opts.configSet {
		cfgPaths = d.opts.configPaths
		if d.opts.configFS != nil {
			cfgFS = d.opts.configFS
		}
	}
	var err error
	if d.cfg, err = loadConfig(cfgFS, cfgPaths, kver, d.opts.warn); err != nil {
		return err
	}
	if d.opts.exts == nil {
		d.opts.exts = defaultExtensions
	}

	found := map[string]*depmodMod{}
	d.search(d.moddir, found, 0)
	for _, ext := range d.cfg.externals {
		p := fsPath(ext)
		if st, err := fs.Stat(d.root, p); err != nil || !st.IsDir() {
			continue // kmod ignores a missing external folder
		}
		d.search(p, found, 0)
	}
	if len(found) >= 65535 {
		return fmt.Errorf("depmod: %d modules, kmod handles at most 65534", len(found))
	}
	// The module array: hash-table order (bucket, then name), then
	// modules.order first, the others keeping their place (a stable sort).
	d.mods = make([]*depmodMod, 0, len(found))
	for _, m := range found {
		m.hash = superFastHash(m.modname) & 511
		m.sortIdx = 1
		d.mods = append(d.mods, m)
	}
	slices.SortFunc(d.mods, func(a, b *depmodMod) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return strings.Compare(a.modname, b.modname)
	})
	d.applyOrder()
	for i, m := range d.mods {
		m.idx = i
	}

	if err := d.scan(); err != nil {
		return err
	}
	syms := d.loadSymbols()
	d.loadDependencies(syms)
	if err := d.sortDependencies(); err != nil {
		return err
	}
	d.output(syms)
	return nil
}

// maxSearchDepth bounds the folder levels below a search root: symbolic
// links may make the tree endless (kmod then recurses until it runs out of
// file descriptors).
const maxSearchDepth = 64

// search walks a folder of root like depmod_modules_search_path.
func (d *generation) search(dir string, found map[string]*depmodMod, depth int) {
	if depth > maxSearchDepth {
		d.warnf("%s: more than %d folder levels (a symbolic link loop?), not searched", d.display("/"+dir), maxSearchDepth)
		return
	}
	ents, err := fs.ReadDir(d.root, dir)
	if err != nil {
		d.warnf("could not open directory %s: %v", d.display("/"+dir), err)
		return
	}
	for _, e := range ents {
		name := e.Name()
		if d.cfg.excluded(name) {
			continue
		}
		p := dir + "/" + name
		isDir := false
		switch t := e.Type(); {
		case t.IsRegular():
		case t.IsDir():
			isDir = true
		default:
			st, err := fs.Stat(d.root, p)
			if err != nil {
				d.warnf("fstatat(%s): %v", d.display("/"+p), err)
				continue
			}
			if st.IsDir() {
				isDir = true
			} else if !st.Mode().IsRegular() {
				d.warnf("unsupported file type %s: %o", d.display("/"+p), uint32(st.Mode().Type()))
				continue
			}
		}
		if isDir {
			d.search(p, found, depth+1)
			continue
		}
		if !d.hasModuleExt(name) {
			continue
		}
		modname := moduleNameFromFileName(name)
		imagePath := "/" + p
		if old, ok := found[modname]; ok && d.cfg.keepOld(d.dirname, old.path, imagePath, len(modname)) {
			continue
		}
		m := &depmodMod{fsPath: p, path: imagePath, modname: modname}
		if strings.HasPrefix(imagePath, d.dirname) && len(imagePath) > len(d.dirname) && imagePath[len(d.dirname)] == '/' {
			m.relpath = imagePath[len(d.dirname)+1:]
			n := strings.LastIndexByte(m.relpath, '/') + 1 + len(modname) + len(".ko")
			m.uncrel = m.relpath[:min(n, len(m.relpath))]
		}
		found[modname] = m
	}
}

func (d *generation) hasModuleExt(name string) bool {
	for _, ext := range d.opts.exts {
		if len(name) > len(ext) && strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// moduleNameFromFileName is kmod's modname_normalize of a file name: up to
// the first '.', '-' as '_'.
func moduleNameFromFileName(name string) string {
	if i := strings.IndexByte(name, '.'); i >= 0 {
		name = name[:i]
	}
	if len(name) > 4095 {
		name = name[:4095]
	}
	if strings.IndexByte(name, '-') < 0 {
		return name
	}
	return strings.ReplaceAll(name, "-", "_")
}

// fgetsChunks calls f with what successive fgets(buf, size) calls return,
// each cut at its first NUL as the C string it is.
func fgetsChunks(data []byte, size int, f func(line []byte)) {
	for len(data) > 0 {
		n := min(len(data), size-1)
		if i := slices.Index(data[:n], '\n'); i >= 0 {
			n = i + 1
		}
		line := data[:n]
		if i := slices.Index(line, 0); i >= 0 {
			line = line[:i]
		}
		f(line)
		data = data[n:]
	}
}

const pathMax = 4096

// applyOrder is depmod_modules_sort: the modules listed in modules.order
// come first, in its order (a later duplicate line wins); a line without
// its newline stops the sort altogether.
func (d *generation) applyOrder() {
	data, err := fs.ReadFile(d.root, d.moddir+"/modules.order")
	if err != nil {
		d.warnf("could not open modules.order at %s: %v", d.display(d.dirname), unwrapPathError(err))
		return
	}
	idx, corrupt := 0, false
	fgetsChunks(data, pathMax, func(line []byte) {
		idx++
		if corrupt || len(line) == 0 {
			return
		}
		if line[len(line)-1] != '\n' {
			d.warnf("%s/modules.order:%d corrupted line misses '\\n'", d.display(d.dirname), idx)
			corrupt = true
		}
	})
	if corrupt {
		return
	}
	total := idx + 1
	byUncrel := make(map[string]*depmodMod, len(d.mods))
	for _, m := range d.mods {
		if m.relpath != "" {
			byUncrel[m.uncrel] = m
		}
	}
	idx = 0
	fgetsChunks(data, pathMax, func(line []byte) {
		idx++
		if len(line) == 0 {
			return
		}
		if m, ok := byUncrel[string(line[:len(line)-1])]; ok {
			m.sortIdx = idx - total
		}
	})
	slices.SortStableFunc(d.mods, func(a, b *depmodMod) int { return cmp.Compare(a.sortIdx, b.sortIdx) })
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// scan reads every module, on GOMAXPROCS goroutines.
func (d *generation) scan() error {
	n := len(d.mods)
	errs := make([]error, n)
	var next atomic.Int64
	var failed atomic.Bool
	host, isHost := d.root.(hostFS)
	work := func() {
		w := &scanner{wantCRC: d.opts.symvers != nil}
		for !failed.Load() {
			i := int(next.Add(1) - 1)
			if i >= n {
				return
			}
			m := d.mods[i]
			var err error
			if isHost {
				m.facts, err = w.scanFile(filepath.Join(host.dir, filepath.FromSlash(m.fsPath)))
			} else {
				m.facts, err = d.scanFS(w, m.fsPath)
			}
			if err != nil {
				errs[i] = fmt.Errorf("depmod: %s: %w", d.display(m.path), err)
				failed.Store(true)
			}
		}
	}
	workers := min(runtime.GOMAXPROCS(0), max(n, 1))
	var wg sync.WaitGroup
	for range workers - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// scanFS reads a module through the fs.FS: piecewise when its files can
// read at offsets, else whole.
func (d *generation) scanFS(w *scanner, name string) (*depmodFacts, error) {
	f, err := d.root.Open(name)
	if err != nil {
		return nil, unwrapPathError(err)
	}
	defer f.Close()
	if ra, ok := f.(io.ReaderAt); ok {
		st, err := f.Stat()
		if err != nil {
			return nil, unwrapPathError(err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("not a regular file (%v)", st.Mode().Type())
		}
		return w.scanReaderAt(ra, st.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, modfile.MaxSize+1))
	if err != nil {
		return nil, unwrapPathError(err)
	}
	return w.scanBytes(data)
}

// depmodSymbol is an entry of depmod's symbol table; owner is a module
// index or -1 (vmlinux, from Module.symvers).
type depmodSymbol struct {
	name  string
	owner int32
	crc   uint64
}

type symbolTable struct {
	list  []depmodSymbol
	index map[string]int32
}

func (t *symbolTable) add(name string, owner int32, crc uint64) {
	if i, ok := t.index[name]; ok {
		// A later exporter replaces the earlier one (hash_add).
		t.list[i].owner, t.list[i].crc = owner, crc
		return
	}
	t.index[name] = int32(len(t.list))
	t.list = append(t.list, depmodSymbol{name: name, owner: owner, crc: crc})
}

func (t *symbolTable) find(name string) *depmodSymbol {
	name = strings.TrimPrefix(name, ".") // PPC64: .foo is foo
	if i, ok := t.index[name]; ok {
		return &t.list[i]
	}
	return nil
}

// loadSymbols fills the symbol table: Module.symvers's vmlinux rows (with
// WithSymvers) and kmod's fake symbols, then each module's exports
// in module order.
func (d *generation) loadSymbols() *symbolTable {
	n := 0
	for _, m := range d.mods {
		n += len(m.facts.exports)
	}
	t := &symbolTable{list: make([]depmodSymbol, 0, n), index: make(map[string]int32, n)}
	if d.opts.symvers != nil {
		d.loadSymvers(t)
	}
	for i, m := range d.mods {
		for j, s := range m.facts.exports {
			var crc uint64
			if j < len(m.facts.exportCRCs) {
				crc = m.facts.exportCRCs[j]
			}
			t.add(s, int32(i), crc)
		}
	}
	return t
}

// loadSymvers is depmod_load_symvers: "0xCRC SYMBOL vmlinux …" rows.
func (d *generation) loadSymvers(t *symbolTable) {
	fgetsChunks(d.opts.symvers, 10240, func(line []byte) {
		f := strings.FieldsFunc(string(line), func(r rune) bool { return r == ' ' || r == '\t' })
		if len(f) < 3 || f[2] != "vmlinux" {
			return
		}
		crc, ok := parseCULong(f[0], 16)
		if !ok {
			d.warnf("Module.symvers: invalid symbol version %s", f[0])
			return
		}
		t.add(f[1], -1, crc)
	})
	t.add("__this_module", -1, 0)
	t.add("_GLOBAL_OFFSET_TABLE_", -1, 0)
	if t.find("TOC.") == nil {
		t.add("TOC.", -1, 0)
	}
}

// parseCULong is strtoull(s, &end, base) with *end required to be the end:
// optional white space and sign, and for base 16 an optional 0x.
func parseCULong(s string, base uint64) (uint64, bool) {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg, s = s[0] == '-', s[1:]
	}
	if base == 16 && len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && hexDigit(s[2]) >= 0 {
		s = s[2:]
	}
	if s == "" {
		return 0, false
	}
	var v uint64
	overflow := false
	for i := 0; i < len(s); i++ {
		var dg int
		if base == 16 {
			dg = hexDigit(s[i])
		} else if s[i] >= '0' && s[i] <= '9' {
			dg = int(s[i] - '0')
		} else {
			dg = -1
		}
		if dg < 0 {
			return 0, false
		}
		if v > (^uint64(0)-uint64(dg))/base {
			overflow = true
		}
		v = v*base + uint64(dg)
	}
	if overflow {
		v = ^uint64(0)
	} else if neg {
		v = -v
	}
	return v, true
}

func hexDigit(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// loadDependencies turns each module's needed symbols into dependencies on
// their exporters (depmod_load_dependencies).
func (d *generation) loadDependencies(t *symbolTable) {
	check := d.opts.symvers != nil
	stamp := make([]int32, len(d.mods))
	for i, m := range d.mods {
		for j, s := range m.facts.deps {
			sym := t.find(s.name)
			if sym == nil {
				if check && !s.weak {
					d.warnf("%s needs unknown symbol %s", d.display(m.path), s.name)
				}
				continue
			}
			if check && sym.crc != m.facts.depCRCs[j] && !s.weak {
				d.warnf("%s disagrees about version of symbol %s", d.display(m.path), s.name)
			}
			if sym.owner < 0 || stamp[sym.owner] == int32(i)+1 {
				continue
			}
			stamp[sym.owner] = int32(i) + 1
			m.deps = append(m.deps, sym.owner)
			d.mods[sym.owner].users++
		}
	}
}

// sortDependencies is depmod_calculate_dependencies: a topological order
// (Kahn's algorithm with a LIFO stack of modules nobody uses, seeded in
// module order) that lists users before the modules they need.
func (d *generation) sortDependencies() error {
	n := len(d.mods)
	users := make([]int, n)
	roots := make([]int32, 0, n)
	for i, m := range d.mods {
		users[i] = m.users
		if users[i] == 0 {
			roots = append(roots, int32(i))
		}
	}
	sorted := 0
	for len(roots) > 0 {
		src := d.mods[roots[len(roots)-1]]
		roots = roots[:len(roots)-1]
		src.depSortIdx = sorted
		sorted++
		for _, dst := range src.deps {
			users[dst]--
			if users[dst] == 0 {
				roots = append(roots, dst)
			}
		}
	}
	if sorted < n {
		return d.cycleError(users)
	}
	return nil
}

// cycleError names the modules Kahn's algorithm could not order and one
// cycle among them.
func (d *generation) cycleError(users []int) error {
	var left []string
	inLeft := make([]bool, len(d.mods))
	for i, u := range users {
		if u > 0 {
			left = append(left, d.mods[i].modname)
			inLeft[i] = true
		}
	}
	// Walk dependencies inside the remaining set until a module repeats.
	var cycle []string
	for start := range d.mods {
		if !inLeft[start] {
			continue
		}
		pos := map[int32]int{}
		var trail []int32
		cur := int32(start)
		for {
			if p, seen := pos[cur]; seen {
				for _, j := range trail[p:] {
					cycle = append(cycle, d.mods[j].modname)
				}
				cycle = append(cycle, d.mods[cur].modname)
				break
			}
			pos[cur] = len(trail)
			trail = append(trail, cur)
			next := int32(-1)
			for _, dep := range d.mods[cur].deps {
				if inLeft[dep] {
					next = dep
					break
				}
			}
			if next < 0 {
				break
			}
			cur = next
		}
		if cycle != nil {
			break
		}
	}
	slices.Sort(left)
	return fmt.Errorf("depmod: dependency cycle: %s (%d modules cannot be ordered: %s)",
		strings.Join(cycle, " -> "), len(left), strings.Join(left, " "))
}

// hostFS is a host folder as an fs.FS for Write: folders are listed in
// readdir order (not sorted), as kmod lists them, and modules are read by
// path with pread.
type hostFS struct{ dir, display string }

func (h hostFS) join(name, op string) (string, error) {
	if !fs.ValidPath(name) {
		return "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return filepath.Join(h.dir, filepath.FromSlash(name)), nil
}

func (h hostFS) Open(name string) (fs.File, error) {
	p, err := h.join(name, "open")
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

func (h hostFS) Stat(name string) (fs.FileInfo, error) {
	p, err := h.join(name, "stat")
	if err != nil {
		return nil, err
	}
	return os.Stat(p)
}

func (h hostFS) ReadFile(name string) ([]byte, error) {
	p, err := h.join(name, "read")
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// ReadDir lists a folder in the order the kernel returns its entries.
func (h hostFS) ReadDir(name string) ([]fs.DirEntry, error) {
	p, err := h.join(name, "readdir")
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}
