//go:generate packer-sdc mapstructure-to-hcl2 -type Config,BootCheckConfig
// struct-markdown runs from scripts/generate.sh (make generate), not go generate.

package image

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/common"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// Config is the kmod-image builder's configuration.
type Config struct {
	common.PackerConfig `mapstructure:",squash"`

	// A disk image to customize: raw, qcow2, vmdk, vhd or vhdx. It is
	// converted (or, when raw, sparse-copied) to a raw working copy; the file
	// itself is never modified. Exactly one of `source_image` and
	// `source_rootfs` is required.
	SourceImage string `mapstructure:"source_image"`
	// The format of `source_image` (`raw`, `qcow2`, `vmdk`, `vpc`, `vhdx`).
	// Detected by `qemu-img info` when empty.
	SourceFormat string `mapstructure:"source_format"`
	// The expected checksum of `source_image`, as `sha256:<hex>` or a bare
	// sha256 hex string. The build stops before anything is attached when it
	// differs.
	SourceChecksum string `mapstructure:"source_checksum"`
	// A root filesystem to build a new disk from: a directory or a tar
	// archive (optionally compressed). The disk gets a GPT with a BIOS boot
	// partition and one root partition holding the whole tree; `/etc/fstab`
	// gets a `/` entry by UUID when it has none. The source is never
	// modified.
	SourceRootfs string `mapstructure:"source_rootfs"`
	// The size of the disk made from `source_rootfs`, such as `4G` or
	// `2048M` (suffixes K, M, G, T: powers of 1024). Defaults to `4G`.
	DiskSize string `mapstructure:"disk_size"`
	// The root filesystem of a disk made from `source_rootfs`: `ext4`
	// (default) or `xfs`.
	Filesystem string `mapstructure:"filesystem"`
	// The number of the root partition (1-based, as in `/dev/sda2`). By
	// default the root is chosen automatically: the single partition with
	// the architecture's GPT root type, else the single filesystem labelled
	// `root` or `cloudimg-rootfs`, else the single filesystem holding
	// `/etc/os-release`.
	RootPartition int `mapstructure:"root_partition"`
	// Mount points from the image's `/etc/fstab` (for example `/boot/efi`)
	// that must be mounted. A filesystem the build host's kernel cannot
	// mount (such as vfat on a kernel without it) is otherwise skipped with
	// a warning; listed here, it fails the build.
	RequiredMounts []string `mapstructure:"required_mounts"`
	// The directory the image's root is mounted on. Defaults to a new
	// directory under `/var/tmp/packer-kmod-image/`. It must not exist or be
	// empty; it is removed after the build only if the builder created it.
	MountPath string `mapstructure:"mount_path"`
	// Mounts made inside the root before provisioning, as
	// `[fstype, source, path]` triples, in order. Defaults to
	// `["proc","proc","/proc"]`, `["sysfs","sysfs","/sys"]`,
	// `["bind","/dev","/dev"]`, `["devpts","devpts","/dev/pts"]` and
	// `["tmpfs","tmpfs","/run"]`. Use `bind` as the type for a bind mount.
	ChrootMounts [][]string `mapstructure:"chroot_mounts"`
	// Host commands run after the root partition's loop device is attached
	// and before anything is mounted. `{{.Device}}` is the root partition's
	// loop device, `{{.MountPath}}` the mount path, `{{.Image}}` the raw
	// working copy.
	PreMountCommands []string `mapstructure:"pre_mount_commands"`
	// Host commands run after the image's filesystems are mounted and before
	// the chroot mounts; same variables as `pre_mount_commands`.
	PostMountCommands []string `mapstructure:"post_mount_commands"`
	// A template wrapping every command run in the chroot and every pre- and
	// post-mount command, with the command as `{{.Command}}`. Defaults to
	// `{{.Command}}`. Use it to add `sudo` or an environment.
	CommandWrapper string `mapstructure:"command_wrapper"`
	// What to do with the image's `/etc/resolv.conf` while provisioning:
	// `copy` (default) puts the build host's resolv.conf in place and
	// restores the original exactly afterwards (a file, a symlink or a
	// dangling symlink); `keep` leaves the image's own.
	ResolvConf string `mapstructure:"resolv_conf"`
	// Let package installs start services in the chroot. By default a
	// `/usr/sbin/policy-rc.d` that exits 101 is in place while provisioning
	// (and the image's own one, if any, is restored afterwards).
	StartServices bool `mapstructure:"start_services"`
	// The directory the outputs are written to. Defaults to
	// `output-<build name>`. It must not exist, or be empty, unless Packer
	// runs with `-force`.
	OutputDir string `mapstructure:"output_directory"`
	// The base name of the output files; each format adds its extension.
	// Defaults to the build name.
	OutputName string `mapstructure:"output_name"`
	// The formats written: any of `raw`, `qcow2`, `vmdk` (streamOptimized,
	// what AWS VM import takes) and `vhd` (fixed size, 1 MiB aligned, what
	// Azure takes). Defaults to `["qcow2"]`.
	OutputFormats []string `mapstructure:"output_formats"`
	// Compress qcow2 output (smaller, slower to write).
	QcowCompress bool `mapstructure:"qcow2_compress"`
	// The boot check: boot the result in QEMU before writing the outputs.
	BootCheck BootCheckConfig `mapstructure:"boot_check"`

	ctx interpolate.Context
}

// BootCheckConfig configures the boot check: the finished image is booted in
// QEMU through a throwaway overlay (it is never written) and a probe reports
// the loaded modules on the console.
type BootCheckConfig struct {
	// Run the boot check. Defaults to true when `qemu-system-x86_64` is
	// installed; set it to true to make a missing QEMU an error.
	Enabled *bool `mapstructure:"enabled"`
	// `direct` boots the image's newest kernel and initrd with QEMU's
	// `-kernel`/`-initrd` and the image's root device; the probe runs through
	// systemd's `systemd.run=`. `firmware` boots the disk through its
	// bootloader; the probe is a unit written into a throwaway copy. `auto`
	// (default) is `firmware` when the image has a bootloader, else `direct`.
	Mode string `mapstructure:"mode"`
	// How long to wait for the probe, such as `5m`. Defaults to `5m`.
	Timeout time.Duration `mapstructure:"timeout"`
	// Guest memory, as QEMU's `-m`. Defaults to `1024M`.
	Memory string `mapstructure:"memory"`
	// `kvm`, `tcg` or `auto` (default): KVM only when it really boots a
	// kernel (nested KVM often does not), else TCG.
	Accelerator string `mapstructure:"accelerator"`
	// The kernel release to boot in `direct` mode. Defaults to the newest
	// one in the image.
	Kernel string `mapstructure:"kernel"`
	// Extra kernel command-line arguments (direct mode).
	KernelArgs string `mapstructure:"kernel_args"`
	// Modules that must be in `/proc/modules` when the probe runs; the build
	// fails naming each one that is not.
	ExpectModules []string `mapstructure:"expect_modules"`
}

// Defaults applied by Prepare.
const (
	defaultDiskSize     = "4G"
	defaultBootTimeout  = 5 * time.Minute
	defaultBootMemory   = "1024M"
	defaultMountParent  = "/var/tmp/packer-kmod-image"
	defaultCmdWrapper   = "{{.Command}}"
	qemuSystemBinary    = "qemu-system-x86_64"
	resolvConfCopy      = "copy"
	resolvConfKeep      = "keep"
	bootModeAuto        = "auto"
	bootModeDirect      = "direct"
	bootModeFirmware    = "firmware"
	accelAuto           = "auto"
	artifactStateOutput = "outputs"
)

var defaultChrootMounts = [][]string{
	{"proc", "proc", "/proc"},
	{"sysfs", "sysfs", "/sys"},
	{"bind", "/dev", "/dev"},
	{"devpts", "devpts", "/dev/pts"},
	{"tmpfs", "tmpfs", "/run"},
}

var moduleName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Prepare decodes and validates raws into c. Warnings are returned for
// settings that work but are probably not what the user meant.
func (c *Config) Prepare(raws ...interface{}) ([]string, error) {
	err := config.Decode(c, &config.DecodeOpts{
		PluginType:         BuilderID,
		Interpolate:        true,
		InterpolateContext: &c.ctx,
		InterpolateFilter: &interpolate.RenderFilter{
			Exclude: []string{"pre_mount_commands", "post_mount_commands", "command_wrapper"},
		},
	}, raws...)
	if err != nil {
		return nil, err
	}
	var errs *packersdk.MultiError
	var warns []string
	add := func(format string, a ...interface{}) {
		errs = packersdk.MultiErrorAppend(errs, fmt.Errorf(format, a...))
	}

	switch {
	case c.SourceImage == "" && c.SourceRootfs == "":
		add("one of source_image and source_rootfs is required")
	case c.SourceImage != "" && c.SourceRootfs != "":
		add("source_image and source_rootfs are mutually exclusive; set one")
	case c.SourceImage != "":
		if st, err := os.Stat(c.SourceImage); err != nil {
			add("source_image: %v", err)
		} else if st.IsDir() {
			add("source_image: %s is a directory (use source_rootfs for a root filesystem tree)", c.SourceImage)
		}
		if c.DiskSize != "" || c.Filesystem != "" {
			add("disk_size and filesystem apply to source_rootfs only")
		}
		if c.SourceFormat != "" && !validSourceFormat(c.SourceFormat) {
			add("source_format: %q is not one of raw, qcow2, vmdk, vpc, vhdx", c.SourceFormat)
		}
	default:
		if _, err := os.Stat(c.SourceRootfs); err != nil {
			add("source_rootfs: %v", err)
		}
		if c.SourceChecksum != "" {
			add("source_checksum applies to source_image only")
		}
		if c.SourceFormat != "" {
			add("source_format applies to source_image only")
		}
		if c.DiskSize == "" {
			c.DiskSize = defaultDiskSize
		}
		if _, err := parseSize(c.DiskSize); err != nil {
			add("disk_size: %v", err)
		}
		if c.Filesystem == "" {
			c.Filesystem = "ext4"
		}
		if c.Filesystem != "ext4" && c.Filesystem != "xfs" {
			add("filesystem: %q is not ext4 or xfs", c.Filesystem)
		}
	}
	if c.SourceChecksum != "" {
		if _, err := parseChecksum(c.SourceChecksum); err != nil {
			add("source_checksum: %v", err)
		}
	}
	if c.RootPartition < 0 {
		add("root_partition: %d is not a partition number (1 or more)", c.RootPartition)
	}
	for _, m := range c.RequiredMounts {
		if !strings.HasPrefix(m, "/") {
			add("required_mounts: %q is not an absolute mount point", m)
		}
	}
	if c.MountPath != "" {
		if !filepath.IsAbs(c.MountPath) {
			add("mount_path: %q must be absolute", c.MountPath)
		}
	}
	if c.ChrootMounts == nil {
		c.ChrootMounts = defaultChrootMounts
	}
	for i, m := range c.ChrootMounts {
		if len(m) != 3 {
			add("chroot_mounts[%d]: want [fstype, source, path], got %d values", i, len(m))
			continue
		}
		if !strings.HasPrefix(m[2], "/") {
			add("chroot_mounts[%d]: path %q must be absolute (inside the image)", i, m[2])
		}
	}
	if c.CommandWrapper == "" {
		c.CommandWrapper = defaultCmdWrapper
	}
	switch c.ResolvConf {
	case "":
		c.ResolvConf = resolvConfCopy
	case resolvConfCopy, resolvConfKeep:
	default:
		add("resolv_conf: %q is not copy or keep", c.ResolvConf)
	}

	if c.OutputDir == "" {
		c.OutputDir = "output-" + c.PackerBuildName
	}
	if c.OutputName == "" {
		c.OutputName = c.PackerBuildName
		if c.OutputName == "" {
			c.OutputName = "image"
		}
	}
	if strings.ContainsRune(c.OutputName, '/') {
		add("output_name: %q must be a file name, not a path", c.OutputName)
	}
	if len(c.OutputFormats) == 0 {
		c.OutputFormats = []string{"qcow2"}
	}
	seen := map[string]bool{}
	for _, f := range c.OutputFormats {
		if _, ok := diskimage.OutputFormats[f]; !ok {
			add("output_formats: %q is not one of %s", f, strings.Join(sortedKeys(diskimage.OutputFormats), ", "))
		}
		if seen[f] {
			add("output_formats: %q listed twice", f)
		}
		seen[f] = true
	}

	bc := &c.BootCheck
	_, qemuErr := exec.LookPath(qemuSystemBinary)
	if bc.Enabled == nil {
		on := qemuErr == nil
		bc.Enabled = &on
		if !on {
			warns = append(warns, "boot_check: "+qemuSystemBinary+" not found, so the result is not boot-checked (install qemu-system-x86, or set boot_check { enabled = false } to silence this)")
		}
	} else if *bc.Enabled && qemuErr != nil {
		add("boot_check: enabled but %s is not installed (Debian: apt-get install qemu-system-x86)", qemuSystemBinary)
	}
	switch bc.Mode {
	case "":
		bc.Mode = bootModeAuto
	case bootModeAuto, bootModeDirect, bootModeFirmware:
	default:
		add("boot_check.mode: %q is not auto, direct or firmware", bc.Mode)
	}
	if bc.Timeout == 0 {
		bc.Timeout = defaultBootTimeout
	}
	if bc.Timeout < 0 {
		add("boot_check.timeout: %v is negative", bc.Timeout)
	}
	if bc.Memory == "" {
		bc.Memory = defaultBootMemory
	}
	switch bc.Accelerator {
	case "":
		bc.Accelerator = accelAuto
	case accelAuto, "kvm", "tcg":
	default:
		add("boot_check.accelerator: %q is not auto, kvm or tcg", bc.Accelerator)
	}
	for _, m := range bc.ExpectModules {
		if !moduleName.MatchString(m) {
			add("boot_check.expect_modules: %q is not a module name", m)
		}
	}
	if len(bc.ExpectModules) > 0 && !*bc.Enabled {
		add("boot_check.expect_modules needs the boot check enabled")
	}

	if errs != nil && len(errs.Errors) > 0 {
		return warns, errs
	}
	return warns, nil
}

func validSourceFormat(f string) bool {
	switch f {
	case "raw", "qcow2", "vmdk", "vpc", "vhdx":
		return true
	}
	return false
}

// parseChecksum accepts "sha256:<hex>" or a bare 64-digit hex string.
func parseChecksum(s string) (string, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	if algo, hex, ok := strings.Cut(v, ":"); ok {
		if algo != "sha256" {
			return "", fmt.Errorf("%q: only sha256 is supported", algo)
		}
		v = hex
	}
	if len(v) != 64 || strings.Trim(v, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%q is not a sha256 (64 hex digits)", s)
	}
	return v, nil
}

// parseSize reads "4G", "2048M", "1T", "1073741824" (bytes).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 4G or 2048M", s)
	}
	if n > (1<<62)/mult {
		return 0, errors.New("size too large")
	}
	return n * mult, nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
