package initramfs

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// addedModule is a module file Inject writes into the image.
type addedModule struct {
	// Name is the module name, '-' turned into '_'.
	Name string
	// Source is the host file it was read from.
	Source string
	// Rel is its path under lib/modules/KVER in the image.
	Rel string
	// Data is the file's bytes, as read (compressed modules stay so).
	Data   []byte
	Module *kmod.Module
	// Dependency: pulled in by depends= from the target's module tree.
	Dependency bool
	// NeededBy names the module whose depends= pulled it in.
	NeededBy string
}

// moduleTree indexes a /lib/modules/KVER folder of the target by module
// name, the way depmod's default configuration chooses between duplicates:
// updates/ first, then the rest (lexical order breaks remaining ties).
type moduleTree struct {
	dir    string
	byName map[string]string // module name -> path relative to dir (slash-separated)
}

func isModuleName(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

func normalizeName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleRank orders candidate paths of one module name: updates/ first.
func moduleRank(rel string) int {
	if rel == "updates" || strings.HasPrefix(rel, "updates/") {
		return 0
	}
	return 1
}

// betterModulePath reports whether rel should win over old for one name.
func betterModulePath(rel, old string) bool {
	if a, b := moduleRank(rel), moduleRank(old); a != b {
		return a < b
	}
	return rel < old
}

func indexModuleTree(dir string) (*moduleTree, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("modules dir: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("modules dir %s: not a directory", dir)
	}
	t := &moduleTree{dir: dir, byName: map[string]string{}}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "build" || rel == "source" {
				return filepath.SkipDir
			}
			return nil
		}
		if !isModuleName(d.Name()) || !d.Type().IsRegular() {
			return nil
		}
		name := kmod.ModuleNameFromPath(rel)
		if old, ok := t.byName[name]; !ok || betterModulePath(rel, old) {
			t.byName[name] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules dir: %w", err)
	}
	return t, nil
}

// vermagicRelease is the kernel release word of a module's vermagic.
func vermagicRelease(m *kmod.Module) string {
	f := strings.Fields(m.Vermagic())
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// readModule reads and parses one module file for injection.
func readModule(p string) (*kmod.Module, []byte, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, nil, fmt.Errorf("module %s: %w", p, err)
	}
	m, err := kmod.Parse(data, kmod.InfoOnly())
	if err != nil {
		return nil, nil, fmt.Errorf("module %s: %w", p, err)
	}
	m.Path = p
	return m, data, nil
}

func checkRelease(m *kmod.Module, p, kver string, ignore bool) error {
	if ignore {
		return nil
	}
	rel := vermagicRelease(m)
	if rel == "" {
		return fmt.Errorf("module %s (%s) has no vermagic: it was not built for a kernel (give the release explicitly to force)", m.Name(), p)
	}
	if rel != kver {
		return fmt.Errorf("module %s (%s) was built for kernel %s, but the image is for %s", m.Name(), p, rel, kver)
	}
	return nil
}

// closureRequest describes what resolveClosure works on.
type closureRequest struct {
	kver    string
	modules []string // host paths of the modules asked for
	// imageHas reports whether the image's own tree provides a module.
	imageHas func(name string) bool
	tree     *moduleTree // nil: no target tree
	// ignoreVermagic skips the release check (explicit kernel release).
	ignoreVermagic bool
}

// resolveClosure reads the requested modules and the transitive closure of
// their depends= fields: every dependency neither requested nor in the
// image comes from the target's module tree, keeping its path there.
func resolveClosure(req closureRequest) ([]*addedModule, error) {
	var out []*addedModule
	byName := map[string]*addedModule{}
	for _, p := range req.modules {
		m, data, err := readModule(p)
		if err != nil {
			return nil, err
		}
		name := normalizeName(m.Name())
		if old, dup := byName[name]; dup {
			return nil, fmt.Errorf("module %s given twice: %s and %s", name, old.Source, p)
		}
		if err := checkRelease(m, p, req.kver, req.ignoreVermagic); err != nil {
			return nil, err
		}
		a := &addedModule{Name: name, Source: p, Rel: "updates/" + filepath.Base(p), Data: data, Module: m}
		byName[name] = a
		out = append(out, a)
	}
	for i := 0; i < len(out); i++ {
		a := out[i]
		for _, d := range a.Module.Depends() {
			d = normalizeName(d)
			if _, ok := byName[d]; ok {
				continue
			}
			if req.imageHas != nil && req.imageHas(d) {
				continue
			}
			if req.tree == nil {
				return nil, fmt.Errorf("module %s depends on %s, which the image lacks: give the target's module tree (--modules-dir) or the module itself", a.Name, d)
			}
			rel, ok := req.tree.byName[d]
			if !ok {
				return nil, fmt.Errorf("module %s depends on %s, which neither the image nor %s has", a.Name, d, req.tree.dir)
			}
			p := filepath.Join(req.tree.dir, filepath.FromSlash(rel))
			m, data, err := readModule(p)
			if err != nil {
				return nil, err
			}
			if err := checkRelease(m, p, req.kver, req.ignoreVermagic); err != nil {
				return nil, fmt.Errorf("dependency of %s: %w", a.Name, err)
			}
			dep := &addedModule{Name: d, Source: p, Rel: path.Clean(rel), Data: data, Module: m, Dependency: true, NeededBy: a.Name}
			byName[d] = dep
			out = append(out, dep)
		}
	}
	// Requested modules first in the order given, then dependencies by name.
	deps := out[len(req.modules):]
	sort.Slice(deps, func(i, j int) bool { return deps[i].Name < deps[j].Name })
	return out, nil
}
