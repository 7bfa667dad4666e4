//go:generate packer-sdc mapstructure-to-hcl2 -type Config,ModuleConfig,UdevRuleConfig,FirstbootConfig,RegistryConfig,PublishConfig,CacheConfig,CatalogConfig

package kmod

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/hashicorp/packer-plugin-sdk/common"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/hashicorp/packer-plugin-sdk/template/config"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/kmod/loadconf"
)

// Config is the kmod provisioner's configuration.
type Config struct {
	common.PackerConfig `mapstructure:",squash"`

	// The modules to build, sign, check and install, in load order. Each
	// `module` block has exactly one of `source`, `package`, `prebuilt` and
	// `bundle`.
	Modules []ModuleConfig `mapstructure:"module" required:"true"`
	// The kernels to build for: `["installed"]` (default) means every
	// kernel of the image (a `/lib/modules/<release>` with a
	// `/boot/vmlinuz-<release>` or a `modules.dep`); otherwise a list of
	// kernel releases, each of which must be installed in the image.
	Kernels []string `mapstructure:"kernels"`
	// Install what building needs with the image's package manager (apt,
	// dnf or zypper, detected; package lists are refreshed first): dkms, a
	// compiler, make and the exact headers of every target kernel.
	InstallDependencies bool `mapstructure:"install_dependencies"`
	// Remove, at the end, the packages `install_dependencies` added.
	RemoveBuildDependencies bool `mapstructure:"remove_build_dependencies"`

	// The X.509 certificate (PEM or DER file) whose key signs the modules;
	// it must be one the target kernel trusts (built in, or enrolled as a
	// MOK: see `mok_enroll`).
	SigningCert string `mapstructure:"signing_cert" required:"true"`
	// The private key file (PEM, PKCS#1/PKCS#8/EC). It is read on the
	// build host only: modules are downloaded, signed here and uploaded
	// back, and the key is never written into the image. One of
	// `signing_key` and `signing_key_pem` is required.
	SigningKey string `mapstructure:"signing_key"`
	// The private key itself, in PEM (typically from an environment
	// variable: `signing_key_pem = env("KMOD_SIGNING_KEY")`).
	SigningKeyPEM string `mapstructure:"signing_key_pem"`
	// The signature digest: `sha256` (default), `sha384` or `sha512`.
	SigningHash string `mapstructure:"signing_hash"`
	// Write the signing certificate (DER) into the image at
	// `/var/lib/kmodctl/mok/kmodctl.der` so it can be enrolled as a Machine
	// Owner Key with `mokutil --import` on first boot or by the image
	// pipeline.
	MOKEnroll bool `mapstructure:"mok_enroll"`

	// More certificates (PEM or DER files) module signatures may verify
	// against, besides `signing_cert`: the keys that signed the bundles of
	// `module { bundle = ... }` blocks. A bundle's own certificates are
	// never trusted for being in the bundle. Each must be one the target
	// kernel trusts.
	TrustedCerts []string `mapstructure:"trusted_certs"`
	// How to reach the registry of `module { bundle = ... }` sources
	// (credentials default to the Docker config and its credential
	// helpers).
	Registry RegistryConfig `mapstructure:"registry"`
	// Push the installed modules as OCI bundles (one per image kernel, and
	// an index) once the image is complete; see the documentation. A push
	// failure fails the build.
	Publish PublishConfig `mapstructure:"publish"`
	// Record the build (the image manifest, who and when) in a
	// kmod-catalog once the provisioner is done; see the documentation.
	Catalog CatalogConfig `mapstructure:"catalog"`
	// Take the allowlist from the catalog's approvals for the image's
	// kernels (with `allowed_sha256` and `allowed_sha256_file`, if set):
	// any module whose digest no approval names fails the build. Needs the
	// `catalog` block.
	AllowedFromCatalog bool `mapstructure:"allowed_from_catalog"`
	// A content-addressed build cache in a registry: a module built by DKMS
	// for a kernel is pushed under a key of all its build inputs, and a
	// later build with the same key takes it instead of building.
	Cache CacheConfig `mapstructure:"cache"`

	// Allowed sha256 digests of the final (signed) module files; when set
	// (here or in `allowed_sha256_file`), any other module fails the build.
	AllowedSHA256 []string `mapstructure:"allowed_sha256"`
	// A file of allowed sha256 digests, one per line (`sha256sum` output
	// works: the first field of each line is used; `#` starts a comment).
	AllowedSHA256File string `mapstructure:"allowed_sha256_file"`
	// Allow a module to shadow an in-tree module of the same name, or to
	// claim the device aliases of one. Without it such conflicts fail the
	// build, naming the in-tree module and which one would win.
	ReplaceInTree bool `mapstructure:"replace_in_tree"`

	// Presets, combinable: `aws`, `azure`, `gcp`, `alibaba`, `generic` and
	// `kubernetes`. Each adds modules to load and modprobe settings (and for
	// kubernetes the sysctl settings kubelet needs); see the documentation
	// for what each one does and why.
	Profiles []string `mapstructure:"profiles"`
	// Module parameters, as `module = "param=value ..."`, written to
	// `/etc/modprobe.d/kmodctl.conf`.
	Options map[string]string `mapstructure:"options"`
	// Modules to blacklist (not loaded by alias; still loadable by name).
	Blacklist []string `mapstructure:"blacklist"`
	// Soft dependencies, as `module = "pre: a b post: c"`.
	Softdeps map[string]string `mapstructure:"softdeps"`
	// Install commands, as `module = "command"` (modprobe.d `install`).
	Install map[string]string `mapstructure:"install"`
	// udev rules for device-triggered loading, one `udev_rule` block each.
	UdevRules []UdevRuleConfig `mapstructure:"udev_rule"`
	// Modules that must never load (CIS hardening): `install X /bin/false`
	// and `blacklist X` in `/etc/modprobe.d/kmodctl-disable.conf`.
	DisableModules []string `mapstructure:"disable_modules"`
	// Write auditd rules recording module loads and unloads
	// (init_module, finit_module, delete_module; insmod, rmmod, modprobe).
	Audit bool `mapstructure:"audit"`

	// How modules marked `early` reach the initramfs of each kernel:
	// `inject` (default) adds them, with their dependencies, to the image's
	// existing initramfs without its distro tools and has them loaded
	// there; `regenerate` runs the image's update-initramfs or dracut;
	// `none` leaves the initramfs alone. In every mode the early-load
	// configuration is persisted (`/etc/initramfs-tools/modules` or
	// `/etc/dracut.conf.d/kmodctl.conf`) so later regenerations keep them.
	Initramfs string `mapstructure:"initramfs"`
	// A path on the build host that receives a copy of the manifest
	// (`/usr/lib/kmodctl/manifest.json` in the image).
	ManifestOutput string `mapstructure:"manifest_output"`
	// The first-boot hook, installed unless `hook = "none"`: the agent
	// (`/usr/libexec/kmodctl/kmodctl`) and its units. On every boot it
	// checks each managed module of the running kernel against the
	// manifest (sha256, then signature) and blocks the drifted ones; once
	// per instance it loads them in manifest order and writes
	// `/var/lib/kmodctl/report.json`. On request it pulls the signed
	// modules of a kernel the image does not cover (`on_uncovered =
	// "pull"`), sets kernel.modules_disabled=1 (`lockdown`) and posts each
	// boot's attestation to a kmod-catalog (`report_url`). See
	// `docs/guides/firstboot.mdx`.
	Firstboot FirstbootConfig `mapstructure:"firstboot"`

	ctx interpolate.Context
}

// ModuleConfig is one `module` block.
type ModuleConfig struct {
	// A local directory or tar archive holding a DKMS source tree
	// (dkms.conf at its top). It is uploaded to `/usr/src/<name>-<version>`
	// and built with the image's dkms for every target kernel.
	Source string `mapstructure:"source"`
	// A distro package shipping a DKMS source (`*-dkms`), installed with
	// the image's package manager; its modules are rebuilt for every target
	// kernel.
	Package string `mapstructure:"package"`
	// Ready-made `.ko` files (optionally compressed) for the target
	// kernel(s); they are signed and checked like built ones.
	Prebuilt []string `mapstructure:"prebuilt"`
	// An OCI bundle (`registry/repo[:tag|@digest]`, or `oci:DIR[:TAG]`):
	// for each image kernel, the bundle for that kernel and the image's
	// architecture is pulled and every module verified against
	// `signing_cert` and `trusted_certs` (they are not re-signed), then
	// checked and installed like the other sources. No DKMS, compiler or
	// headers are needed in the image. A kernel the bundle lacks fails the
	// build.
	Bundle string `mapstructure:"bundle"`
	// Load the module(s) from the initramfs, before the root filesystem is
	// mounted (storage and network drivers the boot needs).
	Early bool `mapstructure:"early"`
	// List the module(s) in `/etc/modules-load.d/kmodctl.conf` so
	// systemd-modules-load loads them at boot. Defaults to true (for a
	// bundle: to what the bundle says for each module).
	Load *bool `mapstructure:"load"`

	loadSet bool
}

// RegistryConfig says how to reach a registry. Without credentials they
// come from the Docker config ($DOCKER_CONFIG/config.json,
// ~/.docker/config.json) and its credential helpers. Credentials are never
// logged.
type RegistryConfig struct {
	// The registry user (with `password`).
	Username string `mapstructure:"username"`
	// The password (with `username`); kept out of Packer's output.
	Password string `mapstructure:"password"`
	// A registry token, sent as a bearer token (instead of a username and
	// password); kept out of Packer's output.
	Token string `mapstructure:"token"`
	// PEM CA certificates the registry's TLS certificate may chain to,
	// besides the system's.
	CAFile string `mapstructure:"ca_file"`
	// Allow plain HTTP (never used otherwise, not even for localhost).
	PlainHTTP bool `mapstructure:"plain_http"`
}

// PublishConfig is the `publish` block.
type PublishConfig struct {
	// Where to push: `registry/repo` (or `oci:DIR` for an image layout).
	Repository string `mapstructure:"repository" required:"true"`
	// The index's tag (default `latest`). Each kernel's manifest is also
	// tagged with its kernel release (see the bundle format).
	Tag string `mapstructure:"tag"`
	// Keep the kernels of the index already at `tag` that this build does
	// not replace (same release and arch), so one tag grows as builds
	// cover new kernels: the tag instances pull from
	// (`firstboot { on_uncovered = "pull" }`).
	Merge          bool `mapstructure:"merge"`
	RegistryConfig `mapstructure:",squash"`
}

// CacheConfig is the `cache` block.
type CacheConfig struct {
	// Where the cache entries live: `registry/repo` (or `oci:DIR`), tagged
	// `cache-<key>`.
	Repository     string `mapstructure:"repository" required:"true"`
	RegistryConfig `mapstructure:",squash"`
}

// UdevRuleConfig is one `udev_rule` block: a rules file in
// /etc/udev/rules.d.
type UdevRuleConfig struct {
	// The file name, without directory or `.rules`, such as `90-mynic`.
	Name string `mapstructure:"name" required:"true"`
	// The rules, one per element.
	Rules []string `mapstructure:"rules" required:"true"`
}

// FirstbootConfig holds the first-boot hook's settings: the agent
// (`/usr/libexec/kmodctl/kmodctl`) verifies the managed modules against the
// manifest on every boot and loads and reports them once per instance.
type FirstbootConfig struct {
	// `systemd` (default): kmodctl-verify.service on every boot and
	// kmodctl-firstboot.service once per instance; `cloud-init`: the
	// first-boot part runs from cloud-init's per-instance scripts instead;
	// `none`: no hook and no agent in the image.
	Hook string `mapstructure:"hook"`
	// `once` (default): the first-boot part runs once per instance;
	// `every-boot`: on every boot too (periodic verification).
	Mode string `mapstructure:"mode"`
	// `warn` or `fail` when a module's content differs from the manifest.
	OnDrift string `mapstructure:"on_drift"`
	// `warn` or `fail` when the running kernel is not in the manifest;
	// `pull`: pull the signed modules of such a kernel from `bundle`
	// (kmodctl-pull.service once the network is online, and a kernel
	// postinst hook when a kernel is installed), then `on_uncovered_failure`
	// applies when that fails.
	OnUncovered string `mapstructure:"on_uncovered"`
	// With `on_uncovered = "pull"`: the bundle reference
	// (`registry/repo[:tag|@digest]`), typically what `publish` pushes.
	// Kernels are selected by their exact release.
	Bundle string `mapstructure:"bundle"`
	// With `pull`: a Docker-style auth file on the instance (written there
	// by cloud-init user data, for example); the build bakes no
	// credentials in. Without it the instance pulls anonymously.
	RegistryAuthFile string `mapstructure:"registry_auth_file"`
	// With `pull`: a PEM CA file on the build host for the registry's TLS,
	// copied into the image (/etc/kmodctl/registry-ca.pem).
	CAFile string `mapstructure:"ca_file"`
	// With `pull`: allow plain HTTP to the registry.
	PlainHTTP bool `mapstructure:"plain_http"`
	// With `pull`: `warn` (default) or `fail` when the pull fails (the
	// registry unreachable, no bundle for the kernel, a module that does
	// not verify: it is never installed).
	OnUncoveredFailure string `mapstructure:"on_uncovered_failure"`
	// Set kernel.modules_disabled=1 once the managed modules are loaded.
	Lockdown bool `mapstructure:"lockdown"`
	// systemd's ConditionVirtualization= for the units (default `vm`).
	ConditionVirtualization string `mapstructure:"condition_virtualization"`
	// Post every boot's attestation to the kmod-catalog at this URL
	// (`https://host:port`) once the network is online
	// (kmodctl-report.service; retried with backoff, never holding the
	// boot back).
	ReportURL string `mapstructure:"report_url"`
	// The instance's catalog token (role `instance`), as a path on the
	// instance: written there by cloud-init user data, say. Required with
	// `report_url`; the build never bakes a token in.
	ReportTokenFile string `mapstructure:"report_token_file"`
	// PEM CA certificates for the catalog's TLS (a file on the build host,
	// copied into the image).
	ReportCAFile string `mapstructure:"report_ca_file"`
}

// CatalogConfig is the `catalog` block: where the build is recorded.
type CatalogConfig struct {
	// The catalog's URL, `https://host:port`.
	URL string `mapstructure:"url" required:"true"`
	// A builder token (or, with `allowed_from_catalog`, any token that
	// reads approvals); kept out of Packer's output. One of `token` and
	// `token_file` is required.
	Token string `mapstructure:"token"`
	// A file holding the token.
	TokenFile string `mapstructure:"token_file"`
	// PEM CA certificates the catalog's TLS certificate may chain to,
	// besides the system's.
	CAFile string `mapstructure:"ca_file"`
	// What a catalog that cannot be reached or refuses the record does:
	// `fail` (default) fails the build, `warn` says so and goes on.
	OnError string `mapstructure:"on_error"`
	// The image's name in the catalog (default: the Packer build name).
	ImageName string `mapstructure:"image_name"`
	// The image's id, when the template knows it.
	ImageID string `mapstructure:"image_id"`
}

const (
	initramfsInject     = "inject"
	initramfsRegenerate = "regenerate"
	initramfsNone       = "none"
	kernelsInstalled    = "installed"
)

var releasePattern = regexp.MustCompile(`^[A-Za-z0-9._+~-]+$`)

// Prepare decodes and validates.
func (c *Config) Prepare(raws ...interface{}) error {
	err := config.Decode(c, &config.DecodeOpts{
		PluginType:         "kmod",
		Interpolate:        true,
		InterpolateContext: &c.ctx,
	}, raws...)
	if err != nil {
		return err
	}
	var errs *packersdk.MultiError
	add := func(format string, a ...interface{}) {
		errs = packersdk.MultiErrorAppend(errs, fmt.Errorf(format, a...))
	}
	if len(c.Modules) == 0 {
		add("at least one module block is required")
	}
	for i := range c.Modules {
		m := &c.Modules[i]
		n := 0
		if m.Source != "" {
			n++
			if _, err := os.Stat(m.Source); err != nil {
				add("module[%d].source: %v", i, err)
			}
		}
		if m.Package != "" {
			n++
			if strings.ContainsAny(m.Package, " \t'\";|&$`\\") {
				add("module[%d].package: %q is not a package name", i, m.Package)
			}
		}
		if len(m.Prebuilt) > 0 {
			n++
			for _, p := range m.Prebuilt {
				if _, err := os.Stat(p); err != nil {
					add("module[%d].prebuilt: %v", i, err)
				}
			}
		}
		if m.Bundle != "" {
			n++
			if _, err := bundle.ParseLocation(m.Bundle, c.Registry.PlainHTTP); err != nil {
				add("module[%d].bundle: %v", i, err)
			}
		}
		if n != 1 {
			add("module[%d]: exactly one of source, package, prebuilt and bundle is required (got %d)", i, n)
		}
		m.loadSet = m.Load != nil
		if m.Load == nil {
			t := true
			m.Load = &t
		}
	}
	if len(c.Kernels) == 0 {
		c.Kernels = []string{kernelsInstalled}
	}
	for _, k := range c.Kernels {
		if k != kernelsInstalled && !releasePattern.MatchString(k) {
			add("kernels: %q is not a kernel release", k)
		}
	}
	if len(c.Kernels) > 1 {
		for _, k := range c.Kernels {
			if k == kernelsInstalled {
				add("kernels: %q cannot be combined with explicit releases", kernelsInstalled)
			}
		}
	}
	if c.RemoveBuildDependencies && !c.InstallDependencies {
		add("remove_build_dependencies needs install_dependencies")
	}
	if c.SigningCert == "" {
		add("signing_cert is required")
	} else if _, err := os.Stat(c.SigningCert); err != nil {
		add("signing_cert: %v", err)
	}
	switch {
	case c.SigningKey == "" && c.SigningKeyPEM == "":
		add("one of signing_key and signing_key_pem is required")
	case c.SigningKey != "" && c.SigningKeyPEM != "":
		add("signing_key and signing_key_pem are mutually exclusive")
	case c.SigningKey != "":
		if _, err := os.Stat(c.SigningKey); err != nil {
			add("signing_key: %v", err)
		}
	}
	switch c.SigningHash {
	case "":
		c.SigningHash = "sha256"
	case "sha256", "sha384", "sha512":
	default:
		add("signing_hash: %q is not sha256, sha384 or sha512", c.SigningHash)
	}
	for _, s := range c.AllowedSHA256 {
		if !isSHA256(s) {
			add("allowed_sha256: %q is not a sha256 (64 hex digits)", s)
		}
	}
	if c.AllowedSHA256File != "" {
		if _, err := readAllowlist(c.AllowedSHA256File); err != nil {
			add("allowed_sha256_file: %v", err)
		}
	}
	for _, p := range c.TrustedCerts {
		if _, err := readCertFile(p); err != nil {
			add("trusted_certs: %v", err)
		}
	}
	c.Registry.validate("registry", add)
	if c.Publish.Repository != "" || c.Publish.Tag != "" || c.Publish.RegistryConfig != (RegistryConfig{}) {
		c.Publish.validate("publish", add)
		if c.Publish.Tag == "" {
			c.Publish.Tag = bundle.DefaultTag
		}
		loc, err := bundle.ParseLocation(c.Publish.Repository, c.Publish.PlainHTTP)
		switch {
		case c.Publish.Repository == "":
			add("publish.repository is required")
		case err != nil:
			add("publish.repository: %v", err)
		case loc.Digest != "" || !loc.IsLayout() && strings.Contains(strings.TrimPrefix(c.Publish.Repository, loc.Repo.RegistryStr()), ":"):
			add("publish.repository: %q: give the repository without a tag or digest (tag = \"...\" sets the tag)", c.Publish.Repository)
		}
		if !bundle.ValidTag(c.Publish.Tag) {
			add("publish.tag: %q is not a valid tag", c.Publish.Tag)
		}
	}
	if c.Cache.Repository != "" || c.Cache.RegistryConfig != (RegistryConfig{}) {
		c.Cache.validate("cache", add)
		loc, err := bundle.ParseLocation(c.Cache.Repository, c.Cache.PlainHTTP)
		switch {
		case c.Cache.Repository == "":
			add("cache.repository is required")
		case err != nil:
			add("cache.repository: %v", err)
		case loc.Digest != "" || !loc.IsLayout() && strings.Contains(strings.TrimPrefix(c.Cache.Repository, loc.Repo.RegistryStr()), ":"):
			add("cache.repository: %q: give the repository without a tag or digest", c.Cache.Repository)
		}
	}
	c.Catalog.validate(c.AllowedFromCatalog, add)
	if c.Firstboot.Hook != hookNone {
		c.Firstboot.validateReport(add)
	}
	// Credentials never reach Packer's output or log.
	for _, secret := range []string{c.Catalog.Token, c.SigningKeyPEM, c.Registry.Password, c.Registry.Token, c.Publish.Password, c.Publish.Token, c.Cache.Password, c.Cache.Token} {
		if secret != "" {
			packersdk.LogSecretFilter.Set(secret)
		}
	}
	switch c.Initramfs {
	case "":
		c.Initramfs = initramfsInject
	case initramfsInject, initramfsRegenerate, initramfsNone:
	default:
		add("initramfs: %q is not inject, regenerate or none", c.Initramfs)
	}
	if c.ManifestOutput != "" {
		if st, err := os.Stat(filepath.Dir(c.ManifestOutput)); err != nil || !st.IsDir() {
			add("manifest_output: folder %s does not exist", filepath.Dir(c.ManifestOutput))
		}
	}
	if c.Firstboot.Hook != hookNone {
		c.Firstboot.validatePull(add)
		if _, _, err := firstboot.RenderHook(c.Firstboot.hookSettings(false)); err != nil {
			add("firstboot: %v", err)
		}
	}
	// The load configuration is validated by rendering it once (the
	// image's architecture is only known at build time; audit rules need
	// one).
	if _, err := loadconf.Render(c.loadOptions(nil, "amd64")); err != nil {
		add("%v", err)
	}
	if errs != nil && len(errs.Errors) > 0 {
		return errs
	}
	return nil
}

// pulls says whether the hook pulls the modules of uncovered kernels.
func (f *FirstbootConfig) pulls() bool { return f.OnUncovered == "pull" }

// hookSettings are the first-boot hook's settings.
func (f *FirstbootConfig) hookSettings(netDriver bool) firstboot.HookSettings {
	s := firstboot.HookSettings{Hook: f.Hook, Mode: f.Mode, OnDrift: f.OnDrift, OnUncovered: f.OnUncovered,
		Lockdown: f.Lockdown, ConditionVirtualization: f.ConditionVirtualization, NetworkDriver: netDriver,
		Report: f.ReportURL != ""}
	if f.pulls() {
		// After a failed pull the kernel is uncovered: on_uncovered_failure.
		s.Pull, s.OnUncovered = true, f.OnUncoveredFailure
	}
	return s
}

// pullConfig is what the image's pull settings file holds.
func (f *FirstbootConfig) pullConfig() *firstboot.PullConfig {
	c := &firstboot.PullConfig{Bundle: f.Bundle, AuthFile: f.RegistryAuthFile, PlainHTTP: f.PlainHTTP, OnFailure: firstboot.Policy(f.OnUncoveredFailure)}
	if f.CAFile != "" {
		c.CAFile = pullCAPath
	}
	return c
}

// pullCAPath is where the registry's CA goes in the image.
const pullCAPath = "/etc/kmodctl/registry-ca.pem"

// validatePull checks the pull settings.
func (f *FirstbootConfig) validatePull(add func(string, ...interface{})) {
	pullOnly := map[string]bool{"bundle": f.Bundle != "", "registry_auth_file": f.RegistryAuthFile != "", "ca_file": f.CAFile != "",
		"plain_http": f.PlainHTTP, "on_uncovered_failure": f.OnUncoveredFailure != ""}
	if !f.pulls() {
		for _, n := range []string{"bundle", "registry_auth_file", "ca_file", "plain_http", "on_uncovered_failure"} {
			if pullOnly[n] {
				add("firstboot.%s needs on_uncovered = \"pull\"", n)
			}
		}
		return
	}
	switch f.OnUncoveredFailure {
	case "":
		f.OnUncoveredFailure = "warn"
	case "warn", "fail":
	default:
		add("firstboot.on_uncovered_failure %q: want warn or fail", f.OnUncoveredFailure)
		return
	}
	if f.Bundle == "" {
		add("firstboot: on_uncovered = \"pull\" needs bundle (the registry reference of the published bundles)")
	}
	if f.CAFile != "" {
		if _, err := os.Stat(f.CAFile); err != nil {
			add("firstboot.ca_file: %v", err)
		}
	}
	if err := f.pullConfig().Validate(); err != nil && f.Bundle != "" {
		add("firstboot: %v", err)
	}
}

// loadOptions is the loadconf input for the given managed modules (in load
// order) on an image of architecture arch.
func (c *Config) loadOptions(load []string, arch string) loadconf.Options {
	o := loadconf.Options{
		Load:           load,
		Profiles:       c.Profiles,
		DisableModules: c.DisableModules,
		Audit:          c.Audit,
		Arch:           arch,
		Header:         "# Written by packer-plugin-kmod (provisioner \"kmod\"); changes are lost on rebuild.",
	}
	mc := loadconf.ModprobeConf{Name: "kmodctl", Options: c.Options, Blacklist: c.Blacklist, Softdeps: c.Softdeps, Installs: c.Install}
	if len(mc.Options)+len(mc.Blacklist)+len(mc.Softdeps)+len(mc.Installs) > 0 {
		o.Modprobe = append(o.Modprobe, mc)
	}
	for _, r := range c.UdevRules {
		o.UdevRules = append(o.UdevRules, loadconf.UdevRule{Name: r.Name, Rules: r.Rules})
	}
	return o
}

// validate checks a registry block's settings.
func (r *RegistryConfig) validate(block string, add func(string, ...interface{})) {
	switch {
	case r.Token != "" && (r.Username != "" || r.Password != ""):
		add("%s: token and username/password are mutually exclusive", block)
	case r.Username != "" && r.Password == "":
		add("%s: username needs password", block)
	case r.Password != "" && r.Username == "":
		add("%s: password needs username", block)
	}
	if r.CAFile != "" {
		if _, err := os.Stat(r.CAFile); err != nil {
			add("%s.ca_file: %v", block, err)
		}
	}
}

// options turns a registry block into bundle options.
func (r *RegistryConfig) options() []bundle.Option {
	var o []bundle.Option
	switch {
	case r.Token != "":
		o = append(o, bundle.WithToken(r.Token))
	case r.Username != "":
		o = append(o, bundle.WithBasicAuth(r.Username, r.Password))
	}
	if r.CAFile != "" {
		o = append(o, bundle.WithCAFile(r.CAFile))
	}
	if r.PlainHTTP {
		o = append(o, bundle.WithPlainHTTP())
	}
	return append(o, bundle.WithUserAgent("packer-plugin-kmod"))
}

func isSHA256(s string) bool {
	s = strings.ToLower(strings.TrimSpace(s))
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// allowlist returns the allowed digests (nil: no allowlist).
func (c *Config) allowlist() (map[string]bool, error) {
	if len(c.AllowedSHA256) == 0 && c.AllowedSHA256File == "" {
		return nil, nil
	}
	res := map[string]bool{}
	for _, s := range c.AllowedSHA256 {
		res[strings.ToLower(strings.TrimSpace(s))] = true
	}
	if c.AllowedSHA256File != "" {
		l, err := readAllowlist(c.AllowedSHA256File)
		if err != nil {
			return nil, err
		}
		for _, s := range l {
			res[s] = true
		}
	}
	return res, nil
}

func readAllowlist(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var res []string
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)[0]
		if !isSHA256(f) {
			return nil, fmt.Errorf("%s line %d: %q is not a sha256", path, i+1, f)
		}
		res = append(res, strings.ToLower(f))
	}
	sort.Strings(res)
	return res, nil
}

func sha256Hex(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// validate checks the catalog block.
func (c *CatalogConfig) validate(allowed bool, add func(string, ...interface{})) {
	if *c == (CatalogConfig{}) {
		if allowed {
			add("allowed_from_catalog needs the catalog block")
		}
		return
	}
	if !strings.HasPrefix(c.URL, "https://") {
		add("catalog.url %q: want https://host[:port]", c.URL)
	}
	switch {
	case c.Token != "" && c.TokenFile != "":
		add("catalog: token and token_file are mutually exclusive")
	case c.Token == "" && c.TokenFile == "":
		add("catalog: token or token_file is required")
	case c.TokenFile != "":
		if _, err := os.Stat(c.TokenFile); err != nil {
			add("catalog.token_file: %v", err)
		}
	}
	if c.CAFile != "" {
		if _, err := os.Stat(c.CAFile); err != nil {
			add("catalog.ca_file: %v", err)
		}
	}
	switch c.OnError {
	case "":
		c.OnError = "fail"
	case "fail", "warn":
	default:
		add("catalog.on_error %q: want fail or warn", c.OnError)
	}
}

// reportCAPath is where the catalog's CA goes in the image.
const reportCAPath = "/etc/kmodctl/catalog-ca.pem"

// reportConfig is what the image's catalog settings file holds.
func (f *FirstbootConfig) reportConfig() *firstboot.ReportConfig {
	c := &firstboot.ReportConfig{URL: f.ReportURL, TokenFile: f.ReportTokenFile}
	if f.ReportCAFile != "" {
		c.CAFile = reportCAPath
	}
	return c
}

// validateReport checks the report settings.
func (f *FirstbootConfig) validateReport(add func(string, ...interface{})) {
	if f.ReportURL == "" {
		for n, set := range map[string]bool{"report_token_file": f.ReportTokenFile != "", "report_ca_file": f.ReportCAFile != ""} {
			if set {
				add("firstboot.%s needs report_url", n)
			}
		}
		return
	}
	if f.ReportCAFile != "" {
		if _, err := os.Stat(f.ReportCAFile); err != nil {
			add("firstboot.report_ca_file: %v", err)
		}
	}
	if err := f.reportConfig().Validate(); err != nil {
		add("firstboot: report: %v", err)
	}
}
