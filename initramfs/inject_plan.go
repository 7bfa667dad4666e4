package initramfs

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/depmod"
)

// imageModules indexes the module files of the image's tree by name.
func (j *injection) imageModules() map[string]string {
	out := map[string]string{}
	root, _ := j.vt.lookup(j.moddir, true)
	var walk func(n *vnode, rel string)
	walk = func(n *vnode, rel string) {
		for name, k := range n.kids {
			r := name
			if rel != "" {
				r = rel + "/" + name
			}
			if k.isDir() {
				if rel == "" && (name == "build" || name == "source") {
					continue
				}
				walk(k, r)
				continue
			}
			if k.isRegular() && isModuleName(name) {
				mn := kmod.ModuleNameFromPath(r)
				if old, ok := out[mn]; !ok || betterModulePath(r, old) {
					out[mn] = r
				}
			}
		}
	}
	if root != nil {
		walk(root, "")
	}
	return out
}

func (j *injection) planModules() error {
	var tree *moduleTree
	if j.cfg.modulesDir != "" {
		var err error
		if tree, err = indexModuleTree(j.cfg.modulesDir); err != nil {
			return err
		}
	}
	inImage := j.imageModules()
	mods, err := resolveClosure(closureRequest{
		kver:           j.kver,
		modules:        j.cfg.modules,
		imageHas:       func(n string) bool { _, ok := inImage[n]; return ok },
		tree:           tree,
		ignoreVermagic: j.cfg.ignoreVermagic,
	})
	if err != nil {
		return err
	}
	// mtimes: the newest input decides for generated files and folders.
	mtimes := map[string]uint32{}
	for _, m := range mods {
		st, err := os.Stat(m.Source)
		if err != nil {
			return err
		}
		t := uint32(st.ModTime().Unix())
		mtimes[m.Source] = t
		if t > j.mtime {
			j.mtime = t
		}
	}
	for _, m := range mods {
		rel := m.Rel
		if !m.Dependency {
			// Another file of the same module in updates/ would be a
			// duplicate depmod resolves by readdir order.
			if old, ok := inImage[m.Name]; ok && moduleRank(old) == 0 && old != rel {
				if j.cfg.mode == Append {
					return fmt.Errorf("the image already has module %s at %s/%s; appending cannot remove it: use rewrite mode", m.Name, j.moddir, old)
				}
				if err := j.remove(j.moddir + "/" + old); err != nil {
					return err
				}
			}
		}
		p, err := j.addFile(j.moddir+"/"+rel, m.Data, 0o644, mtimes[m.Source])
		if err != nil {
			return err
		}
		f := InjectedFile{Name: m.Name, Path: p, Source: m.Source, Size: int64(len(m.Data)), NeededBy: m.NeededBy}
		if m.Dependency {
			j.res.Dependencies = append(j.res.Dependencies, f)
		} else {
			j.res.Modules = append(j.res.Modules, f)
		}
	}
	if err := j.planFirmware(mods); err != nil {
		return err
	}
	for _, f := range j.cfg.files {
		p, err := j.addFile(f.path, f.data, uint32(f.perm.Perm()), j.mtime)
		if err != nil {
			return err
		}
		j.res.Files = append(j.res.Files, InjectedFile{Name: path.Base(p), Path: p, Size: int64(len(f.data))})
	}
	return nil
}

// remove drops a path from the model (Rewrite only).
func (j *injection) remove(p string) error {
	n, err := j.vt.lookup(p, false)
	if err != nil || n == nil {
		return err
	}
	j.vt.unlink(n)
	j.res.Overridden = append(j.res.Overridden, p)
	return nil
}

func (j *injection) firmwareDir() string {
	if j.cfg.firmwareDir != "" {
		return j.cfg.firmwareDir
	}
	if j.cfg.modulesDir != "" {
		// ROOT/lib/modules/KVER -> ROOT/lib/firmware
		return filepath.Join(filepath.Dir(filepath.Dir(filepath.Clean(j.cfg.modulesDir))), "firmware")
	}
	return ""
}

var firmwareExts = []string{"", ".zst", ".xz"}

func (j *injection) planFirmware(mods []*addedModule) error {
	dir := j.firmwareDir()
	done := map[string]bool{}
	for _, m := range mods {
		for _, fw := range m.Module.All("firmware") {
			if done[fw] {
				continue
			}
			done[fw] = true
			clean, err := cleanName(fw)
			if err != nil || clean == "." {
				j.warnf("module %s names firmware %q, which is not a relative path: skipped", m.Name, fw)
				continue
			}
			inImage := false
			for _, ext := range firmwareExts {
				for _, base := range []string{"lib/firmware/", "usr/lib/firmware/"} {
					if n, _ := j.vt.lookup(base+clean+ext, true); n != nil && n.isRegular() {
						inImage = true
					}
				}
			}
			if inImage {
				continue
			}
			found := false
			if dir != "" {
				for _, ext := range firmwareExts {
					src := filepath.Join(dir, filepath.FromSlash(clean+ext))
					data, err := os.ReadFile(src)
					if err != nil {
						continue
					}
					st, err := os.Stat(src)
					if err != nil {
						return err
					}
					p, err := j.addFile("lib/firmware/"+clean+ext, data, 0o644, uint32(st.ModTime().Unix()))
					if err != nil {
						return err
					}
					j.res.Firmware = append(j.res.Firmware, InjectedFile{Name: fw, Path: p, Source: src, Size: int64(len(data)), NeededBy: m.Name})
					found = true
					break
				}
			}
			if !found {
				j.res.MissingFirmware = append(j.res.MissingFirmware, fw)
				where := "no firmware folder given"
				if dir != "" {
					where = "not in " + dir
				}
				j.warnf("firmware %s (needed by %s) is neither in the image nor added: %s", fw, m.Name, where)
			}
		}
	}
	return nil
}

// addFile plans a regular file at p (a path of the image, resolved through
// its symlinks) with its missing parent folders, and applies it to the
// model. An existing regular file is first replaced by a symlink so that
// the kernel unlinks it instead of truncating an inode other names may
// share. It returns the path written.
func (j *injection) addFile(p string, data []byte, perm uint32, mtime uint32) (string, error) {
	clean, err := cleanName(p)
	if err != nil || clean == "." {
		return "", fmt.Errorf("inject: bad path %q", p)
	}
	comps := strings.Split(clean, "/")
	for i := 1; i < len(comps); i++ {
		dir := strings.Join(comps[:i], "/")
		n, err := j.vt.lookup(dir, true)
		if err != nil {
			return "", err
		}
		if n != nil {
			if !n.isDir() {
				return "", fmt.Errorf("inject: cannot add %s: %s is not a folder in the image", clean, dir)
			}
			continue
		}
		rp, err := j.vt.resolve(dir)
		if err != nil || rp == "" {
			return "", fmt.Errorf("inject: cannot resolve %s in the image: %v", dir, err)
		}
		if err := j.plan(cpio.Record{Name: rp, Mode: cpio.TypeDir | 0o755, Nlink: 2, Mtime: j.mtime}, nil); err != nil {
			return "", err
		}
	}
	rp, err := j.vt.resolve(clean)
	if err != nil || rp == "" {
		return "", fmt.Errorf("inject: cannot resolve %s in the image: %v", clean, err)
	}
	rec := cpio.Record{Name: rp, Mode: cpio.TypeReg | perm, Nlink: 1, Mtime: mtime, FileSize: uint32(len(data))}
	if old, _ := j.vt.lookup(rp, false); old != nil {
		switch {
		case old.isDir():
			return "", fmt.Errorf("inject: cannot add %s: the image has a folder there", rp)
		case old.isRegular():
			m := old.meta()
			rec.Mode = m.Mode
			rec.UID, rec.GID = m.UID, m.GID
			if len(old.ino.nodes) > 1 {
				j.res.HardLinksBroken = append(j.res.HardLinksBroken, rp)
			}
			// The type change makes the kernel unlink the old name.
			if j.cfg.noUnlink {
				break
			}
			if err := j.plan(cpio.Record{Name: rp, Mode: cpio.TypeSymlink | 0o777, Nlink: 1, Mtime: mtime}, []byte(replacedTarget)); err != nil {
				return "", err
			}
		}
		j.res.Overridden = append(j.res.Overridden, rp)
	}
	if err := j.plan(rec, data); err != nil {
		return "", err
	}
	return rp, nil
}

// replacedTarget is the target of the symlink Inject writes over a regular
// file before replacing it: the kernel unlinks the file for the symlink, then
// the symlink for the new file, so no other name of the old inode changes.
const replacedTarget = "kmodctl-replaced"

// plan applies a new record to the model and keeps it for the output.
func (j *injection) plan(rec cpio.Record, body []byte) error {
	rec.Ino = j.ino
	j.ino++
	rec.FileSize = uint32(len(body))
	if int64(len(body)) != int64(rec.FileSize) {
		return fmt.Errorf("inject: %s: file too large for cpio", rec.Name)
	}
	j.vt.archive = newArchive
	if err := j.vt.apply(&rec, body); err != nil {
		return err
	}
	j.recs = append(j.recs, plannedRecord{rec: rec, body: body})
	return nil
}

// planDepmod regenerates the depmod files over the model of the result and
// plans those that changed.
func (j *injection) planDepmod() error {
	// depmod.Generate reads lib/modules/KVER (through the lib symlink of a
	// merged /usr, which the tree's fs.FS follows).
	out, err := depmod.Generate(treeFS{j.vt}, j.kver, depmod.WithWarnings(func(msg string) {
		j.warnf("depmod: %s", msg)
	}))
	if err != nil {
		return fmt.Errorf("depmod in the image: %w", err)
	}
	for _, f := range out.Files {
		p := j.moddir + "/" + f.Name
		if old, ok := j.vt.readFile(p); ok && bytes.Equal(old, f.Data) {
			continue
		}
		rp, err := j.addFile(p, f.Data, 0o644, j.mtime)
		if err != nil {
			return err
		}
		j.res.Depmod = append(j.res.Depmod, rp)
	}
	return nil
}

// loadNames are the modules asked for, which modprobe loads with their
// dependencies.
func (j *injection) loadNames() []string {
	var names []string
	for _, m := range j.res.Modules {
		names = append(names, m.Name)
	}
	return names
}

func (j *injection) hasFile(paths ...string) bool {
	for _, p := range paths {
		if n, _ := j.vt.lookup(p, true); n != nil && !n.isDir() {
			return true
		}
	}
	return false
}

func (j *injection) planLoad() error {
	names := j.loadNames()
	var p string
	var data []byte
	switch j.res.Flavor {
	case InitramfsTools:
		p = initramfsToolsModulesFile
		old, _ := j.vt.readFile(p)
		data = mergeModuleLines(old, names)
	case Dracut:
		if !j.cfg.dracutCmdline && j.hasFile("usr/lib/systemd/systemd-modules-load", "lib/systemd/systemd-modules-load") {
			p = dracutModulesLoadFile
			old, _ := j.vt.readFile(p)
			data = mergeModuleLines(old, names)
		} else {
			p = dracutCmdlineFile
			old, _ := j.vt.readFile(p)
			data = dracutCmdline(mergeDriverPre(old, names))
		}
	case Mkinitcpio:
		p = mkinitcpioConfigFile
		old, ok := j.vt.readFile(p)
		if !ok {
			return fmt.Errorf("%s: mkinitcpio image without a readable /config", j.im.Name)
		}
		var err error
		if data, err = mergeMkinitcpioConfig(old, names); err != nil {
			return err
		}
	}
	if old, ok := j.vt.readFile(p); ok && bytes.Equal(old, data) {
		j.res.LoadConfig = p
		return nil
	}
	rp, err := j.addFile(p, data, 0o644, j.mtime)
	if err != nil {
		return err
	}
	j.res.LoadConfig = rp
	return nil
}

// mergeDriverPre returns the rd.driver.pre names of an existing cmdline.d
// file followed by the new names.
func mergeDriverPre(old []byte, names []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, w := range strings.Fields(string(old)) {
		if v, ok := strings.CutPrefix(w, "rd.driver.pre="); ok {
			for _, n := range strings.Split(v, ",") {
				if n != "" && !seen[normalizeName(n)] {
					seen[normalizeName(n)] = true
					out = append(out, n)
				}
			}
		}
	}
	for _, n := range names {
		if !seen[normalizeName(n)] {
			seen[normalizeName(n)] = true
			out = append(out, n)
		}
	}
	return out
}
