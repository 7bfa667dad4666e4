package initramfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/depmod"
)

// InjectMode is how Inject changes an image.
type InjectMode string

const (
	// Append adds one compressed archive at the end of the image and
	// leaves every existing byte as it was. The kernel unpacks archives in
	// order and later entries replace earlier ones, so the result boots as
	// if the image had been rebuilt. Distribution listers (lsinitramfs,
	// lsinitrd, lsinitcpio) stop before the appended archive and do not
	// show its files; kmodctl's own listing does.
	Append InjectMode = "append"
	// Rewrite keeps the leading uncompressed archives (early microcode)
	// byte for byte and merges everything else, with the additions, into
	// one archive in the compression of the image's main archive. The
	// output is deterministic: records keep their order and metadata,
	// new ones follow in a fixed order with mtimes taken from the inputs.
	Rewrite InjectMode = "rewrite"
)

// InjectOption configures Inject.
type InjectOption func(*injectConfig)

type injectConfig struct {
	modules        []string
	modulesDir     string
	firmwareDir    string
	mode           InjectMode
	load           bool
	backup         string
	kver           string
	ignoreVermagic bool
	warn           func(string)
	limits         *Limits
	best           bool
	files          []extraFile
	// noUnlink writes regular files over existing ones without the
	// symlink first (tests show what the trap does).
	noUnlink bool
	// dracutCmdline uses etc/cmdline.d even with systemd (tests).
	dracutCmdline bool
}

type extraFile struct {
	path string
	data []byte
	perm fs.FileMode
}

// WithModules adds module files (.ko, .ko.xz, .ko.zst, .ko.gz) to inject;
// they go to lib/modules/KVER/updates/ under their file names.
func WithModules(paths ...string) InjectOption {
	return func(c *injectConfig) { c.modules = append(c.modules, paths...) }
}

// WithModulesDir names the target's module tree (e.g. a rootfs's
// /lib/modules/KVER): dependencies (depends=, recursively) the image lacks
// are copied from it, keeping their paths below the tree. It also gives the
// default firmware folder, lib/firmware next to its lib/modules.
func WithModulesDir(dir string) InjectOption {
	return func(c *injectConfig) { c.modulesDir = dir }
}

// WithFirmwareDir names the folder firmware= files are copied from (the
// target's /lib/firmware).
func WithFirmwareDir(dir string) InjectOption {
	return func(c *injectConfig) { c.firmwareDir = dir }
}

// WithMode chooses Append (the default) or Rewrite.
func WithMode(m InjectMode) InjectOption { return func(c *injectConfig) { c.mode = m } }

// WithLoad makes the image's early userspace load the injected modules the
// way its flavor does (see loadconf.go); an unknown flavor is an error.
func WithLoad(load bool) InjectOption { return func(c *injectConfig) { c.load = load } }

// WithBackup keeps the old image at path (a hard link to the old file when
// possible, else a copy); "" uses IMAGE.bak.
func WithBackup(path string) InjectOption {
	return func(c *injectConfig) {
		c.backup = path
		if path == "" {
			c.backup = "\x00default"
		}
	}
}

// WithKernelRelease names the image's kernel instead of detecting it from
// its lib/modules folders (needed when it holds several).
func WithKernelRelease(kver string) InjectOption { return func(c *injectConfig) { c.kver = kver } }

// WithoutVermagicCheck injects modules whose vermagic names another kernel
// release (with modversions CRCs, the kernel itself ignores the release).
func WithoutVermagicCheck() InjectOption { return func(c *injectConfig) { c.ignoreVermagic = true } }

// WithInjectWarnings receives warnings (missing firmware, ...) as they
// happen; they are in InjectResult.Warnings too.
func WithInjectWarnings(f func(string)) InjectOption { return func(c *injectConfig) { c.warn = f } }

// WithFile adds (or replaces) a regular file at path in the image with
// permissions perm, owned by root, like the modules: an existing regular
// file keeps its mode and owner, and other hard links of it keep their
// content.
func WithFile(path string, data []byte, perm fs.FileMode) InjectOption {
	return func(c *injectConfig) { c.files = append(c.files, extraFile{path, data, perm}) }
}

// WithBestCompression makes Rewrite compress harder: zstd's strongest
// level of github.com/klauspost/compress (about zstd -11) and gzip -9. By
// default Rewrite uses its default zstd level (about zstd -3) and gzip -6:
// on Debian's initramfs-tools image (zstd -9) the default output is about
// 16% larger and about 8 times faster to write than with this option, which
// comes within 3%.
func WithBestCompression() InjectOption { return func(c *injectConfig) { c.best = true } }

// WithInjectLimits bounds the decompression of the image (DefaultLimits).
func WithInjectLimits(l Limits) InjectOption { return func(c *injectConfig) { c.limits = &l } }

// InjectedFile is a file Inject added to the image.
type InjectedFile struct {
	// Name is the module name (modules) or the firmware name.
	Name string `json:"name"`
	// Path is the file's path in the image (after the image's symlinks,
	// e.g. usr/lib/modules/... in a merged-/usr image).
	Path string `json:"path"`
	// Source is the host file it was read from.
	Source string `json:"source"`
	Size   int64  `json:"size"`
	// NeededBy names the module that required it (dependencies, firmware).
	NeededBy string `json:"needed_by,omitempty"`
}

// InjectResult describes what Inject did.
type InjectResult struct {
	Image         string     `json:"image"`
	Mode          InjectMode `json:"mode"`
	Flavor        Flavor     `json:"flavor"`
	KernelRelease string     `json:"kernel_release"`
	// Compression is that of the appended archive (Append) or of the
	// merged one (Rewrite).
	Compression  string         `json:"compression"`
	Modules      []InjectedFile `json:"modules"`
	Dependencies []InjectedFile `json:"dependencies"`
	Firmware     []InjectedFile `json:"firmware"`
	// Files are those given with WithFile.
	Files []InjectedFile `json:"files,omitempty"`
	// MissingFirmware lists firmware= names found neither in the image
	// nor in the firmware folder.
	MissingFirmware []string `json:"missing_firmware"`
	// Depmod lists the depmod files written (those whose content changed).
	Depmod []string `json:"depmod"`
	// LoadConfig is the file written for WithLoad, "" without it.
	LoadConfig string `json:"load_config,omitempty"`
	// Overridden lists paths that existed in the image and were replaced;
	// HardLinksBroken those among them that shared an inode with other
	// names (which keep the old content).
	Overridden      []string `json:"overridden"`
	HardLinksBroken []string `json:"hard_links_broken"`
	// KeptSegments is the number of leading archives Rewrite kept byte for
	// byte (early microcode).
	KeptSegments int      `json:"kept_segments"`
	SizeBefore   int64    `json:"size_before"`
	SizeAfter    int64    `json:"size_after"`
	Backup       string   `json:"backup,omitempty"`
	Warnings     []string `json:"warnings"`
}

// newArchive is the archive index of Inject's own records in the model.
const newArchive = 1 << 30

// Inject adds kernel modules, their dependencies and firmware to the
// initramfs image at imagePath, regenerates its depmod files for its kernel
// and, with WithLoad, has them loaded at early boot. The image is replaced
// atomically, mode and owner kept; on any error it is left untouched.
func Inject(imagePath string, opts ...InjectOption) (*InjectResult, error) {
	c := injectConfig{mode: Append}
	for _, o := range opts {
		o(&c)
	}
	if c.mode != Append && c.mode != Rewrite {
		return nil, fmt.Errorf("inject: unknown mode %q (append or rewrite)", c.mode)
	}
	if len(c.modules) == 0 && len(c.files) == 0 {
		return nil, errors.New("inject: no modules given")
	}
	if c.backup == "\x00default" {
		c.backup = imagePath + ".bak"
	}
	j := &injection{cfg: c, res: &InjectResult{Image: imagePath, Mode: c.mode}}
	if err := j.run(imagePath); err != nil {
		return nil, err
	}
	return j.res, nil
}

type injection struct {
	cfg    injectConfig
	res    *InjectResult
	im     *Image
	vt     *vtree
	kver   string
	moddir string // resolved lib/modules/KVER in the image
	// kernels are the releases the image has modules for.
	kernels []string
	mtime   uint32
	ino     uint32
	recs    []plannedRecord
	// firstMerged is the first archive Rewrite merges; early holds the
	// image's bytes before it.
	firstMerged int
	early       []byte
	// raw holds the bytes of the uncompressed segments.
	raw map[int][]byte
}

type plannedRecord struct {
	rec  cpio.Record
	body []byte
}

func (j *injection) warnf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	j.res.Warnings = append(j.res.Warnings, msg)
	if j.cfg.warn != nil {
		j.cfg.warn(msg)
	}
}

func (j *injection) run(imagePath string) error {
	st, err := os.Stat(imagePath)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", imagePath)
	}
	j.res.SizeBefore = st.Size()
	t0 := time.Now()
	var openOpts []Option
	if j.cfg.limits != nil {
		openOpts = append(openOpts, WithLimits(*j.cfg.limits))
	}
	// Open decodes every segment to index it and keeps no data; the first
	// unit is decoded again for the model meanwhile, on another core.
	var spec *speculation
	{
		limit := DefaultLimits.MaxTotal
		if j.cfg.limits != nil && j.cfg.limits.MaxTotal > 0 {
			limit = j.cfg.limits.MaxTotal
		}
		spec = speculate(imagePath, min(limit, 64*st.Size()+1<<20))
		// The model's bodies may be slices of its buffer: freed last.
		defer spec.release()
	}
	im, err := Open(imagePath, openOpts...)
	if err != nil {
		return err
	}
	defer im.Close()
	j.im = im
	phase("open", &t0)
	j.res.Flavor = im.Flavor()
	if j.cfg.load && j.res.Flavor != InitramfsTools && j.res.Flavor != Dracut && j.res.Flavor != Mkinitcpio {
		return fmt.Errorf("%s: --load: the image's flavor is %s; kmodctl knows how initramfs-tools (conf/modules), dracut (modules-load.d or rd.driver.pre) and mkinitcpio (MODULES in /config) load modules at boot, not this one: inject without --load and load the modules another way", imagePath, j.res.Flavor)
	}
	j.firstMerged = j.mergeStart()
	if err := j.chooseKernel(); err != nil {
		return err
	}
	// Keep what the model needs from the mapping (the uncompressed
	// archives, the bytes Rewrite keeps) and let the mapping go before the
	// decompressed segments fill memory.
	j.early = append([]byte(nil), im.Bytes()[:im.Segments[j.firstMerged].Offset]...)
	j.raw = map[int][]byte{}
	for i, seg := range im.Segments {
		if seg.Compression == compress.None {
			j.raw[i] = append([]byte(nil), im.Bytes()[seg.Offset:seg.Offset+seg.Length]...)
		}
	}
	im.Close()
	err = j.buildTree(spec, imagePath)
	if err != nil {
		return err
	}
	phase("tree", &t0)
	if err := j.findModuleDir(); err != nil {
		return err
	}
	// The garbage of reading goes before the next allocations.
	runtime.GC()
	if err := j.planModules(); err != nil {
		return err
	}
	phase("modules", &t0)
	if err := j.planDepmod(); err != nil {
		return err
	}
	phase("depmod", &t0)
	// depmod's garbage, before the compressor's allocations.
	runtime.GC()
	if j.cfg.load {
		if err := j.planLoad(); err != nil {
			return err
		}
	}
	write := j.rewriteImage
	if j.cfg.mode == Append {
		seg, err := j.appendArchive()
		if err != nil {
			return err
		}
		write = func(w *os.File) error { return j.appendImage(w, imagePath, seg) }
	}
	size, err := writeImage(imagePath, j.cfg.backup, write)
	if err != nil {
		return err
	}
	phase("write", &t0)
	j.res.Backup = j.cfg.backup
	j.res.SizeAfter = size
	return nil
}

// mergeStart is the index of the first archive Rewrite merges: the leading
// uncompressed archives before a compressed one are early ones (microcode,
// mkinitcpio's early cpio) and stay; in an all-uncompressed image only
// leading archives holding nothing but kernel/ (early microcode) stay.
func (j *injection) mergeStart() int {
	segs := j.im.Segments
	for i, s := range segs {
		if s.Compression != compress.None {
			return i
		}
	}
	early := map[int]bool{}
	for i := range segs {
		early[i] = true
	}
	for _, e := range j.im.Entries {
		p := cleanPath(e.Name)
		if p != "kernel" && !strings.HasPrefix(p, "kernel/") && p != "early_cpio" && p != "." {
			early[e.Segment] = false
		}
	}
	for i := range segs {
		if !early[i] || i == len(segs)-1 {
			return i
		}
	}
	return len(segs) - 1
}

// buildTree runs every record of the image through the model. Each
// compressed segment is decompressed once into memory; the model's bodies
// are slices of it (uncompressed segments: of the image's mapping).
func (j *injection) buildTree(spec *speculation, imagePath string) error {
	vt := newVtree()
	im := j.im
	var file *os.File
	defer func() {
		if file != nil {
			file.Close()
		}
	}()
	next := 0 // first entry of the segment
	for i, seg := range im.Segments {
		// Bodies: slices of the decompressed stream (compressed segments)
		// or of the segment's bytes (uncompressed ones).
		data := j.raw[i]
		start := seg.Offset
		if seg.Compression != compress.None {
			start = 0
			if i == 0 {
				data = spec.result(seg)
			}
			if data == nil {
				// The image's mapping is gone: decode from the file.
				if file == nil {
					var err error
					if file, err = os.Open(imagePath); err != nil {
						return err
					}
				}
				r, err := compress.NewReader(bufio.NewReaderSize(io.NewSectionReader(file, seg.Offset, seg.Length), 1<<20), seg.Compression)
				if err != nil {
					return im.segErr(i, "", err)
				}
				data, err = readStream(r, make([]byte, seg.Size), nil)
				r.Close()
				if err != nil {
					return im.segErr(i, "", err)
				}
			}
			if int64(len(data)) != seg.Size {
				return im.segErr(i, "", fmt.Errorf("decompressed %d bytes, indexed %d", len(data), seg.Size))
			}
		}
		get := func(off, n int64) []byte {
			off -= start
			return data[off : off+n : off+n]
		}
		vt.archive = i
		// Records follow each other; a gap holds trailers (which end the
		// hard link groups) and padding.
		end := start + int64(len(data))
		expect := start
		for ; next < len(im.Entries) && im.Entries[next].Segment == i; next++ {
			e := &im.Entries[next]
			body := e.Offset + cpio.HeaderSize + int64(len(e.Name)) + 1
			body += (4 - body&3) & 3
			bodyEnd := body + int64(e.FileSize)
			if e.Offset < expect || bodyEnd > end {
				return im.segErr(i, e.Name, fmt.Errorf("record at %d outside the segment", e.Offset))
			}
			if e.Offset != expect {
				if err := vt.gap(get(expect, e.Offset-expect)); err != nil {
					return im.segErr(i, e.Name, err)
				}
			}
			rec := e.Record
			if err := vt.apply(&rec, get(body, int64(e.FileSize))); err != nil {
				return im.segErr(i, e.Name, err)
			}
			expect = min(bodyEnd+(4-bodyEnd&3)&3, end)
		}
		if expect < end {
			if err := vt.gap(get(expect, end-expect)); err != nil {
				return im.segErr(i, "", err)
			}
		}
	}
	j.vt = vt
	j.ino = vt.maxIno + 1
	return nil
}

func (j *injection) chooseKernel() error {
	kernels := j.im.Kernels()
	kver := j.cfg.kver
	switch {
	case kver != "":
	case len(kernels) == 1:
		kver = kernels[0]
	case len(kernels) == 0:
		return fmt.Errorf("%s: the image has no lib/modules/<release> folder: name its kernel release explicitly", j.im.Name)
	default:
		return fmt.Errorf("%s: the image has modules for several kernels (%s): name the release explicitly", j.im.Name, strings.Join(kernels, ", "))
	}
	if strings.ContainsAny(kver, "/\x00") || kver == "." || kver == ".." {
		return fmt.Errorf("invalid kernel release %q", kver)
	}
	j.kver = kver
	j.kernels = kernels
	j.res.KernelRelease = kver
	return nil
}

// findModuleDir resolves lib/modules/KVER in the model.
func (j *injection) findModuleDir() error {
	kver := j.kver
	n, err := j.vt.lookup("lib/modules/"+kver, true)
	if err != nil {
		return err
	}
	if n == nil {
		n, err = j.vt.lookup("usr/lib/modules/"+kver, true)
		if err != nil {
			return err
		}
	}
	if n == nil || !n.isDir() {
		return fmt.Errorf("%s: the image has no modules for kernel %s (it has: %s)", j.im.Name, kver, strings.Join(j.kernels, ", "))
	}
	j.moddir = n.path()
	return nil
}

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

// appendCompression is that of the last archive when Inject can write it,
// else zstd when the image already uses it, else gzip.
func (j *injection) appendCompression() compress.Format {
	segs := j.im.Segments
	last := segs[len(segs)-1].Compression
	if writableCompression(last) {
		return last
	}
	for _, s := range segs {
		if s.Compression == compress.Zstd {
			return compress.Zstd
		}
	}
	return compress.Gzip
}

// archive writes the planned records as one cpio archive.
func writeRecords(w io.Writer, recs []plannedRecord) error {
	cw := cpio.NewWriter(w)
	for _, r := range recs {
		rec := r.rec
		if err := cw.WriteHeader(&rec); err != nil {
			return err
		}
		if _, err := cw.Write(r.body); err != nil {
			return err
		}
	}
	if err := cw.WriteTrailer(); err != nil {
		return err
	}
	return cw.PadTo(512)
}

// appendArchive compresses the planned records into the new archive and
// checks that it reads back.
func (j *injection) appendArchive() ([]byte, error) {
	f := j.appendCompression()
	j.res.Compression = Segment{Compression: f}.CompressionName()
	var seg bytes.Buffer
	sw, err := newSegmentWriter(&seg, f, effortDefault)
	if err != nil {
		return nil, err
	}
	if err := writeRecords(sw, j.recs); err != nil {
		return nil, err
	}
	if err := sw.Close(); err != nil {
		return nil, err
	}
	check, err := Read(bytes.NewReader(seg.Bytes()), int64(seg.Len()), WithName("appended archive"))
	if err != nil {
		return nil, fmt.Errorf("inject: the new archive does not read back: %w", err)
	}
	if len(check.Entries) != len(j.recs) {
		return nil, fmt.Errorf("inject: the new archive reads back %d records, want %d", len(check.Entries), len(j.recs))
	}
	return seg.Bytes(), nil
}

// appendImage writes the old image (copied file to file), then seg.
func (j *injection) appendImage(w *os.File, imagePath string, seg []byte) error {
	src, err := os.Open(imagePath)
	if err != nil {
		return err
	}
	defer src.Close()
	n, err := io.Copy(w, src)
	if err != nil {
		return err
	}
	if n != j.res.SizeBefore {
		return fmt.Errorf("%s changed while inject ran (%d bytes, was %d)", imagePath, n, j.res.SizeBefore)
	}
	// Compressed units follow each other directly: NUL padding after a
	// gzip member or zstd frame is "trailing garbage" to gzip -d and zstd
	// -d, which the distributions' listers run. An uncompressed archive
	// must start 4-byte aligned; the kernel's lz4 reader needs 4 zero
	// bytes after a unit that is not the last.
	pad := 0
	if compress.Detect(seg) == compress.None && kernelMagic(seg) == compress.None {
		pad = int((4 - n&3) & 3)
	}
	if j.im.Segments[len(j.im.Segments)-1].Compression == compress.LZ4 {
		pad += 4
	}
	if _, err := w.Write(make([]byte, pad)); err != nil {
		return err
	}
	_, err = w.Write(seg)
	return err
}

// rewriteImage writes the kept early archives and the model's merged tree.
func (j *injection) rewriteImage(w *os.File) error {
	segs := j.im.Segments
	main := j.firstMerged
	for i := j.firstMerged; i < len(segs); i++ {
		if segs[i].Size > segs[main].Size {
			main = i
		}
	}
	f := segs[main].Compression
	if !writableCompression(f) {
		f = compress.Zstd
	}
	j.res.Compression = Segment{Compression: f}.CompressionName()
	j.res.KeptSegments = j.firstMerged
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := bw.Write(j.early); err != nil {
		return err
	}
	effort := effortDefault
	if j.cfg.best {
		effort = effortBest
	}
	sw, err := newSegmentWriter(bw, f, effort)
	if err != nil {
		return err
	}
	if err := j.vt.serialize(sw, j.firstMerged); err != nil {
		return err
	}
	if err := sw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// serialize writes the nodes the merged archives (index >= from) and Inject
// touched, in creation order, as one cpio archive: records keep their
// stored header fields; hard link groups keep their inode and carry the
// body on the record that wrote it (else the last one); a group that lost
// names gets its new link count; inode numbers that would join unrelated
// groups are renumbered.
func (t *vtree) serialize(w io.Writer, from int) error {
	cw := cpio.NewWriter(w)
	type group struct {
		nodes   []*vnode
		carrier *vnode
		key     cpio.LinkKey
		nlink   uint32
	}
	nodes := t.nodes()
	var emit []*vnode
	if t.root.archive >= from {
		emit = append(emit, t.root)
	}
	for _, n := range nodes {
		if n.archive >= from {
			emit = append(emit, n)
		}
	}
	groups := map[*vinode]*group{}
	used := map[cpio.LinkKey]*vinode{}
	next := t.maxIno + 1
	for _, n := range emit {
		if n.ino == nil {
			continue
		}
		g, ok := groups[n.ino]
		if !ok {
			g = &group{key: n.rec.Key(), nlink: n.rec.Nlink}
			groups[n.ino] = g
		}
		g.nodes = append(g.nodes, n)
	}
	// Deterministic: groups in the order of their first name.
	var order []*vinode
	for _, n := range emit {
		if n.ino != nil && groups[n.ino].nodes[0] == n {
			order = append(order, n.ino)
		}
	}
	for _, ino := range order {
		g := groups[ino]
		g.carrier = g.nodes[len(g.nodes)-1]
		for _, n := range g.nodes {
			if n == ino.carrier {
				g.carrier = n
			}
		}
		if len(g.nodes) > 1 || g.nlink > 1 {
			if len(g.nodes) != len(ino.nodes) || ino.lost {
				g.nlink = uint32(len(g.nodes))
			}
			if other, ok := used[g.key]; ok && other != ino {
				g.key.Ino = next
				next++
			}
			used[g.key] = ino
		}
	}
	for _, n := range emit {
		rec := n.rec
		if n != t.root {
			rec.Name = keepStoredName(n.rec.Name, n.path())
		}
		var body []byte
		switch {
		case n.isSymlink():
			body = []byte(n.target)
		case n.ino != nil:
			m := n.ino.meta
			rec.Mode, rec.UID, rec.GID, rec.Mtime = m.Mode, m.UID, m.GID, m.Mtime
			g := groups[n.ino]
			if len(g.nodes) > 1 || rec.Nlink > 1 {
				rec.Nlink = g.nlink
				rec.Ino = g.key.Ino
			}
			if n.isRegular() && n == g.carrier {
				body = n.ino.data
			}
		}
		rec.FileSize = uint32(len(body))
		if rec.Format == cpio.CRC {
			rec.Check = 0
			if rec.IsRegular() {
				rec.Check = cpio.Checksum(body)
			}
		}
		if err := cw.WriteHeader(&rec); err != nil {
			return err
		}
		if _, err := cw.Write(body); err != nil {
			return err
		}
	}
	if err := cw.WriteTrailer(); err != nil {
		return err
	}
	return cw.PadTo(512)
}

// keepStoredName keeps a record's stored name ("./x", "/x" or "x") when it
// still denotes the node's path, else names the path.
func keepStoredName(stored, p string) string {
	if c, err := cleanName(stored); err == nil && c == p {
		return stored
	}
	return p
}

var phaseLog = os.Getenv("KMODCTL_INJECT_TRACE") != ""

func phase(name string, start *time.Time) {
	if phaseLog {
		var rss string
		if b, err := os.ReadFile("/proc/self/status"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "VmRSS") || strings.HasPrefix(l, "VmHWM") {
					rss += " " + strings.Join(strings.Fields(l), " ")
				}
			}
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss += fmt.Sprintf(" heap inuse %d MiB idle %d released %d sys %d", ms.HeapInuse>>20, ms.HeapIdle>>20, ms.HeapReleased>>20, ms.Sys>>20)
		fmt.Fprintf(os.Stderr, "inject: %-12s %v%s\n", name, time.Since(*start), rss)
	}
	*start = time.Now()
}
