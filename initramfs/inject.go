package initramfs

import (
	"errors"
	"fmt"
	"io/fs"
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

// InjectOption configures Inject; an invalid one makes Inject fail before
// it reads the image.
type InjectOption func(*injectOptions) error

type injectOptions struct {
	modules     []string
	modulesDir  string
	firmwareDir string
	mode        InjectMode
	load        bool
	// backup is the path the old image is kept at ("" none);
	// defaultBackup asks for IMAGE.bak.
	backup         string
	defaultBackup  bool
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
	return func(c *injectOptions) error {
		for _, p := range paths {
			if p == "" {
				return errors.New("empty module path")
			}
		}
		c.modules = append(c.modules, paths...)
		return nil
	}
}

// WithModulesDir names the target's module tree (e.g. a rootfs's
// /lib/modules/KVER): dependencies (depends=, recursively) the image lacks
// are copied from it, keeping their paths below the tree. It also gives the
// default firmware folder, lib/firmware next to its lib/modules.
func WithModulesDir(dir string) InjectOption {
	return func(c *injectOptions) error {
		if dir == "" {
			return errors.New("empty modules folder")
		}
		c.modulesDir = dir
		return nil
	}
}

// WithFirmwareDir names the folder firmware= files are copied from (the
// target's /lib/firmware).
func WithFirmwareDir(dir string) InjectOption {
	return func(c *injectOptions) error {
		if dir == "" {
			return errors.New("empty firmware folder")
		}
		c.firmwareDir = dir
		return nil
	}
}

// WithMode chooses Append (the default) or Rewrite.
func WithMode(m InjectMode) InjectOption {
	return func(c *injectOptions) error {
		if m != Append && m != Rewrite {
			return fmt.Errorf("unknown mode %q (append or rewrite)", m)
		}
		c.mode = m
		return nil
	}
}

// WithLoad makes the image's early userspace load the injected modules the
// way its flavor does (see loadconf.go); an unknown flavor is an error.
func WithLoad(load bool) InjectOption {
	return func(c *injectOptions) error {
		c.load = load
		return nil
	}
}

// WithBackup keeps the old image as IMAGE.bak (a hard link to the old file
// when possible, else a copy). Without it or WithBackupFile no backup is
// kept.
func WithBackup() InjectOption {
	return func(c *injectOptions) error {
		c.backup, c.defaultBackup = "", true
		return nil
	}
}

// WithBackupFile keeps the old image at path, like WithBackup.
func WithBackupFile(path string) InjectOption {
	return func(c *injectOptions) error {
		if path == "" {
			return errors.New("empty backup path")
		}
		c.backup, c.defaultBackup = path, false
		return nil
	}
}

// WithKernelRelease names the image's kernel instead of detecting it from
// its lib/modules folders (needed when it holds several).
func WithKernelRelease(kver string) InjectOption {
	return func(c *injectOptions) error {
		if err := checkKernelRelease(kver); err != nil {
			return err
		}
		c.kver = kver
		return nil
	}
}

// WithoutVermagicCheck injects modules whose vermagic names another kernel
// release (with modversions CRCs, the kernel itself ignores the release).
func WithoutVermagicCheck() InjectOption {
	return func(c *injectOptions) error {
		c.ignoreVermagic = true
		return nil
	}
}

// WithInjectWarnings receives warnings (missing firmware, ...) as they
// happen; they are in InjectResult.Warnings too.
func WithInjectWarnings(f func(string)) InjectOption {
	return func(c *injectOptions) error {
		c.warn = f
		return nil
	}
}

// WithFile adds (or replaces) a regular file at path in the image with
// permissions perm, owned by root, like the modules: an existing regular
// file keeps its mode and owner, and other hard links of it keep their
// content.
func WithFile(path string, data []byte, perm fs.FileMode) InjectOption {
	return func(c *injectOptions) error {
		if clean, err := cleanName(path); err != nil || clean == "." {
			return fmt.Errorf("bad path %q for a file in the image", path)
		}
		c.files = append(c.files, extraFile{path, data, perm})
		return nil
	}
}

// WithBestCompression makes Rewrite compress harder: zstd's strongest
// level of github.com/klauspost/compress (about zstd -11) and gzip -9. By
// default Rewrite uses its default zstd level (about zstd -3) and gzip -6:
// on Debian's initramfs-tools image (zstd -9) the default output is about
// 16% larger and about 8 times faster to write than with this option, which
// comes within 3%.
func WithBestCompression() InjectOption {
	return func(c *injectOptions) error {
		c.best = true
		return nil
	}
}

// WithInjectLimits bounds the decompression of the image (DefaultLimits),
// as WithLimits does for Open.
func WithInjectLimits(l Limits) InjectOption {
	return func(c *injectOptions) error {
		if err := l.check(); err != nil {
			return err
		}
		c.limits = &l
		return nil
	}
}

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

// Inject adds kernel modules, their dependencies and firmware to the
// initramfs image at imagePath, regenerates its depmod files for its kernel
// and, with WithLoad, has them loaded at early boot. The image is replaced
// atomically, mode and owner kept; on any error it is left untouched.
func Inject(imagePath string, opts ...InjectOption) (*InjectResult, error) {
	c := injectOptions{mode: Append}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return nil, fmt.Errorf("inject: %w", err)
		}
	}
	if len(c.modules) == 0 && len(c.files) == 0 {
		return nil, errors.New("inject: no modules given")
	}
	if c.defaultBackup {
		c.backup = imagePath + ".bak"
	}
	j := &injection{cfg: c, res: &InjectResult{Image: imagePath, Mode: c.mode}}
	if err := j.run(imagePath); err != nil {
		return nil, err
	}
	return j.res, nil
}
