// Package kmod is the `kmod` Packer provisioner: it rebuilds out-of-tree
// kernel modules with the image's DKMS for every kernel of the image, signs
// them on the build host (the private key never enters the image), checks
// them against each kernel, installs them with their load configuration and
// initramfs entries, and records everything in a manifest. The work is done
// by the dkms, kmod, kmod/loadconf, kmod/manifest and initramfs packages;
// this package only moves bytes through the Packer communicator.
package kmod

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2/hcldec"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/dkms"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/internal/linewriter"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// Provisioner is the kmod provisioner.
type Provisioner struct {
	config Config
}

var _ packersdk.Provisioner = (*Provisioner)(nil)

func (p *Provisioner) ConfigSpec() hcldec.ObjectSpec { return p.config.FlatMapstructure().HCL2Spec() }

// Prepare decodes and checks the configuration. A plugin built without the
// first-boot agents (a plain go build) fails here, before the build starts,
// unless the hook is off: the hook would otherwise fail at the very end.
func (p *Provisioner) Prepare(raws ...interface{}) error {
	if err := p.config.Prepare(raws...); err != nil {
		return err
	}
	if p.config.Firstboot.Hook != hookNone && len(agentArches()) == 0 {
		return errors.New(noAgentMessage("any"))
	}
	return nil
}

// noAgentMessage is the error for a plugin without the agent for arch.
func noAgentMessage(arch string) string {
	return fmt.Sprintf("firstboot: this build of the plugin carries no first-boot agent for %s images (build the plugin with `make plugin`), or set firstboot { hook = \"none\" }", arch)
}

// Provision runs one provisioning. Every failure names the module, the
// kernel and the reason.
func (p *Provisioner) Provision(ctx context.Context, ui packersdk.Ui, comm packersdk.Communicator, _ map[string]interface{}) error {
	work, err := os.MkdirTemp("", "packer-kmod-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	r := &run{cfg: &p.config, t: &target{comm: comm, ui: ui}, ui: ui, work: work, start: time.Now()}
	err = r.provision(ctx)
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		if cerr := r.cleanups[i](); cerr != nil {
			ui.Error(fmt.Sprintf("kmod: cleanup: %v", cerr))
			if err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		return fmt.Errorf("kmod: %w", err)
	}
	ui.Say(fmt.Sprintf("kmod: done in %v (%s)", time.Since(r.start).Round(10*time.Millisecond), r.timings()))
	// Where the install phase and the image round trips went: what to
	// look at when provisioning is slower than expected.
	if len(r.steps) > 0 {
		ui.Message("kmod: install: " + phaseList(r.steps))
	}
	ui.Message("kmod: remote: " + r.t.summary())
	return nil
}

// run is one provisioning's state.
type run struct {
	cfg      *Config
	t        *target
	ui       packersdk.Ui
	work     string
	start    time.Time
	cleanups []func() error
	phases   []phase
	// steps: the parts of the install phase, for the "kmod: install" line.
	steps []phase

	signer *kmod.Signer
	cert   *x509.Certificate
	// trusted: signing_cert and trusted_certs, what module signatures
	// (ours and bundles') must verify against.
	trusted  []*x509.Certificate
	keyAlgo  string
	kernels  []*targetKernel
	arch     string // dkms arch (uname -m form)
	goarch   string
	pm       dkms.PackageManager
	driver   *dkms.Driver
	modules  []*module // every (kernel, module) to install, in load order
	allow    map[string]bool
	addedPkg []string
	cache    *cache
	// toAdd: modules taken from the cache for every kernel, added to dkms
	// at install.
	toAdd []dkms.NameVersion
	// bundleLoad: the load configurations of the bundles modules came
	// from.
	bundleLoad []bundle.Load
	manifest   *manifest.Manifest
}

type phase struct {
	name string
	d    time.Duration
}

func (r *run) timed(name string, start time.Time) {
	r.phases = append(r.phases, phase{name, time.Since(start)})
}

func (r *run) step(name string, start time.Time) {
	r.steps = append(r.steps, phase{name, time.Since(start)})
}

func (r *run) timings() string { return phaseList(r.phases) }

func phaseList(ps []phase) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s=%.2fs", p.name, p.d.Seconds()))
	}
	return strings.Join(parts, " ")
}

// module is one module file for one kernel.
type module struct {
	Block  int // index of its module block
	Kernel *targetKernel
	Name   string
	Host   string // host path of the file (signed in place)
	Dest   string // path in the image
	Early  bool
	Load   bool
	Source manifest.Source
	DKMS   *dkms.NameVersion // built by dkms (installed with dkms install)
	Built  string            // path of the built file in the dkms tree
	Parsed *kmod.Module
	SHA256 string
	Initrd string // sha256 of the copy in the initramfs
	Verify *kmod.VerifyResult
	// Presigned: from a bundle or the cache, signed already (verified,
	// not signed again).
	Presigned bool
}

func (m *module) where() string {
	return fmt.Sprintf("module %s, kernel %s", m.Name, m.Kernel.Release)
}

func (r *run) provision(ctx context.Context) error {
	t0 := time.Now()
	if err := r.setupSigning(); err != nil {
		return err
	}
	allow, err := r.cfg.allowlist()
	if err != nil {
		return err
	}
	r.allow = allow
	if err := r.setupCache(); err != nil {
		return err
	}
	if err := r.detectTarget(ctx); err != nil {
		return err
	}
	if r.cfg.AllowedFromCatalog {
		if err := r.approvedDigests(ctx); err != nil {
			return err
		}
	}
	r.timed("detect", t0)

	t0 = time.Now()
	if err := r.prepareDKMS(ctx); err != nil {
		return err
	}
	r.timed("dependencies", t0)

	t0 = time.Now()
	for _, k := range r.kernels {
		if err := r.loadKernelData(ctx, k); err != nil {
			return err
		}
	}
	r.timed("kernel_data", t0)

	t0 = time.Now()
	for i := range r.cfg.Modules {
		if err := r.obtain(ctx, i); err != nil {
			return err
		}
	}
	r.timed("build", t0)

	t0 = time.Now()
	if err := r.signAndCheck(); err != nil {
		return err
	}
	r.pushCache(ctx)
	r.timed("sign_check", t0)

	t0 = time.Now()
	if err := r.install(ctx); err != nil {
		return err
	}
	t1 := time.Now()
	if err := r.writeLoadConfig(ctx); err != nil {
		return err
	}
	r.step("load_config", t1)
	r.timed("install", t0)

	t0 = time.Now()
	if err := r.initramfs(ctx); err != nil {
		return err
	}
	r.timed("initramfs", t0)

	t0 = time.Now()
	if err := r.writeManifest(ctx); err != nil {
		return err
	}
	if err := r.installHook(ctx); err != nil {
		return err
	}
	if err := r.finish(ctx); err != nil {
		return err
	}
	r.timed("finish", t0)

	// Last: the image is complete; a failure here fails the build.
	if r.cfg.Publish.Repository != "" {
		t0 = time.Now()
		if err := r.publish(ctx); err != nil {
			return err
		}
		r.timed("publish", t0)
	}
	if r.cfg.Catalog.URL != "" {
		t0 = time.Now()
		if err := r.recordBuild(ctx); err != nil {
			return err
		}
		r.timed("catalog", t0)
	}
	return nil
}

// readCertFile reads the certificates of a PEM or DER file.
func readCertFile(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := modsig.ParseCertificates(data)
	if err == nil && len(certs) == 0 {
		err = errors.New("no certificate in it")
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

// setupSigning reads the key and certificates on the build host.
func (r *run) setupSigning() error {
	certs, err := readCertFile(r.cfg.SigningCert)
	if err != nil {
		return fmt.Errorf("signing_cert: %w", err)
	}
	r.cert = certs[0]
	r.trusted = []*x509.Certificate{r.cert}
	for _, p := range r.cfg.TrustedCerts {
		cs, err := readCertFile(p)
		if err != nil {
			return fmt.Errorf("trusted_certs: %w", err)
		}
		r.trusted = append(r.trusted, cs...)
	}
	keyData := []byte(r.cfg.SigningKeyPEM)
	what := "signing_key_pem"
	if r.cfg.SigningKey != "" {
		what = "signing_key " + r.cfg.SigningKey
		if keyData, err = os.ReadFile(r.cfg.SigningKey); err != nil {
			return fmt.Errorf("signing_key: %w", err)
		}
	}
	key, err := modsig.ParsePrivateKey(keyData)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch r.cert.PublicKeyAlgorithm {
	case x509.ECDSA:
		r.keyAlgo = "ecdsa"
	default:
		r.keyAlgo = "rsa"
	}
	hash := map[string]crypto.Hash{"sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}[r.cfg.SigningHash]
	s, err := kmod.NewSigner(key, r.cert, kmod.WithHash(hash), kmod.WithIfSigned(kmod.Replace))
	if err != nil {
		return fmt.Errorf("%s and signing_cert %s: %w", what, r.cfg.SigningCert, err)
	}
	r.signer = s
	return nil
}

// detectTarget finds the kernels and the architecture of the image.
func (r *run) detectTarget(ctx context.Context) error {
	all, err := detectKernels(ctx, r.t)
	if err != nil {
		return err
	}
	var rels []string
	if len(r.cfg.Kernels) == 1 && r.cfg.Kernels[0] == kernelsInstalled {
		rels = all
		if len(rels) == 0 {
			return errors.New("the image has no kernel (no /lib/modules/<release> with /boot/vmlinuz-<release> or modules.dep)")
		}
	} else {
		have := map[string]bool{}
		for _, k := range all {
			have[k] = true
		}
		for _, k := range r.cfg.Kernels {
			if !have[k] {
				return fmt.Errorf("kernels: %s is not installed in the image (it has: %s)", k, strings.Join(all, ", "))
			}
		}
		rels = r.cfg.Kernels
	}
	for _, rel := range rels {
		dir := filepath.Join(r.work, "kernels", rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		r.kernels = append(r.kernels, &targetKernel{Release: rel, HostDir: dir})
	}
	out, err := r.t.output(ctx, "dpkg --print-architecture 2>/dev/null || rpm --eval '%{_arch}' 2>/dev/null || uname -m")
	if err != nil {
		return fmt.Errorf("the image's architecture: %w", err)
	}
	r.goarch, r.arch = archNames(strings.TrimSpace(out))
	r.ui.Say(fmt.Sprintf("kmod: kernels %s (%s)", strings.Join(rels, ", "), r.arch))
	return nil
}

// archNames maps a distro architecture to GOARCH and dkms's uname -m form.
func archNames(a string) (goarch, machine string) {
	switch a {
	case "amd64", "x86_64":
		return "amd64", "x86_64"
	case "arm64", "aarch64":
		return "arm64", "aarch64"
	case "armhf", "armv7l", "arm":
		return "arm", "armv7l"
	case "s390x":
		return "s390x", "s390x"
	case "ppc64el", "ppc64le":
		return "ppc64le", "ppc64le"
	case "riscv64":
		return "riscv64", "riscv64"
	}
	return a, a
}

// onlyBundles: every module block is a bundle.
func (r *run) onlyBundles() bool {
	for _, m := range r.cfg.Modules {
		if m.Bundle == "" {
			return false
		}
	}
	return true
}

func (r *run) needsDKMS() bool {
	for _, m := range r.cfg.Modules {
		if m.Source != "" || m.Package != "" {
			return true
		}
	}
	return false
}

func (r *run) hasPackageModules() bool {
	for _, m := range r.cfg.Modules {
		if m.Package != "" {
			return true
		}
	}
	return false
}

func (r *run) needsPackages() bool {
	if r.cfg.InstallDependencies {
		return true
	}
	for _, m := range r.cfg.Modules {
		if m.Package != "" {
			return true
		}
	}
	return false
}

// prepareDKMS installs the build dependencies and turns off DKMS's own
// signing (so the modules carry exactly one signature: ours, and DKMS
// generates no key inside the image).
func (r *run) prepareDKMS(ctx context.Context) error {
	if r.needsPackages() {
		pm, err := dkms.DetectPackageManager(ctx, r.t)
		if err != nil {
			return err
		}
		r.pm = pm
	}
	r.driver = &dkms.Driver{R: r.t, Log: r.ui.Message}
	hadMOK := r.t.exists(ctx, "/var/lib/dkms/mok.key")
	r.cleanups = append(r.cleanups, func() error {
		if !hadMOK && r.t.exists(context.Background(), "/var/lib/dkms/mok.key") {
			return errors.New("dkms generated /var/lib/dkms/mok.key inside the image despite signing being disabled; remove it and report this")
		}
		return nil
	})
	if r.needsDKMS() || r.cfg.InstallDependencies {
		// Before any package install: a -dkms package's postinst builds.
		restore, err := r.driver.DisableSigning(ctx)
		if err != nil {
			return fmt.Errorf("disable dkms signing: %w", err)
		}
		r.cleanups = append(r.cleanups, func() error { return restore(context.Background()) })
	}
	if r.cfg.InstallDependencies {
		var rels []string
		for _, k := range r.kernels {
			rels = append(rels, k.Release)
		}
		pkgs := dkms.BuildDependencies(r.pm, rels)
		r.ui.Say(fmt.Sprintf("kmod: installing build dependencies (%s): %s", r.pm, strings.Join(pkgs, " ")))
		added, err := dkms.InstallPackages(ctx, r.t, r.pm, pkgs, linewriter.New(r.ui.Message))
		if err != nil {
			return fmt.Errorf("install_dependencies: %w", err)
		}
		r.addedPkg = added
	}
	if r.needsDKMS() {
		if _, err := r.t.output(ctx, "command -v dkms"); err != nil {
			return errors.New("the image has no dkms (set install_dependencies = true, or install dkms first)")
		}
	}
	return nil
}

func (r *run) loadKernelData(ctx context.Context, k *targetKernel) error {
	// Modules from bundles only: the image needs no headers; without
	// them, vmlinux's exports are not known here (the bundle's build
	// checked the symbols and CRCs, and the kernel checks CRCs at load).
	full, err := loadKernel(ctx, r.t, k.Release, k.HostDir, !r.onlyBundles())
	if err != nil {
		return err
	}
	*k = *full
	if !k.Model.VmlinuxKnown {
		r.ui.Message(fmt.Sprintf("kmod: kernel %s: no Module.symvers in the image: symbols and CRCs against vmlinux are not checked here (the bundles' builds checked them; the kernel checks CRCs when it loads a module)", k.Release))
	}
	if err := k.Model.CanVerify(r.keyAlgo, r.cfg.SigningHash); err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	return nil
}

// finish writes the MOK certificate and removes the build dependencies.
func (r *run) finish(ctx context.Context) error {
	if r.cfg.MOKEnroll {
		if err := r.t.writeFile(ctx, mokPath, r.cert.Raw, 0o644); err != nil {
			return fmt.Errorf("mok_enroll: %w", err)
		}
		r.ui.Say(fmt.Sprintf("kmod: certificate for MOK enrollment written to %s (enroll with: mokutil --import %s)", mokPath, mokPath))
	}
	if r.cfg.RemoveBuildDependencies && len(r.addedPkg) > 0 {
		remove := r.addedPkg
		if r.hasPackageModules() {
			// Removing dkms would remove the *-dkms packages, whose
			// removal scripts uninstall the modules just installed.
			remove = nil
			for _, p := range r.addedPkg {
				if p != "dkms" {
					remove = append(remove, p)
				}
			}
			r.ui.Message("kmod: keeping dkms: the *-dkms packages installed here depend on it")
		}
		r.ui.Say("kmod: removing build dependencies: " + strings.Join(remove, " "))
		if err := dkms.RemovePackages(ctx, r.t, r.pm, remove, linewriter.New(r.ui.Message)); err != nil {
			return fmt.Errorf("remove_build_dependencies: %w", err)
		}
	}
	return nil
}

const mokPath = "/var/lib/kmodctl/mok/kmodctl.der"

// writeManifest records every installed module, per kernel, in load order.
func (r *run) writeManifest(ctx context.Context) error {
	m := &manifest.Manifest{Version: manifest.Version, Generator: "packer-plugin-kmod", Certificates: []manifest.Certificate{manifest.NewCertificate(r.cert)}}
	listed := map[string]bool{m.Certificates[0].SHA256: true}
	for _, k := range r.kernels {
		mk := manifest.Kernel{Release: k.Release, Initramfs: k.InitrdFile}
		for _, mod := range r.modules {
			if mod.Kernel != k {
				continue
			}
			entry, err := manifest.ModuleFromFile(mod.Host, mod.Dest, r.trusted)
			if err != nil {
				return fmt.Errorf("manifest: %s: %w", mod.where(), err)
			}
			// A bundle's module signed by one of trusted_certs: that
			// certificate verifies it on the instance too.
			if mod.Verify != nil && mod.Verify.Certificate != nil {
				c := manifest.NewCertificate(mod.Verify.Certificate)
				if !listed[c.SHA256] {
					listed[c.SHA256] = true
					m.Certificates = append(m.Certificates, c)
				}
			}
			entry.Early, entry.Load, entry.Source, entry.InitramfsSHA256 = mod.Early, mod.Load, mod.Source, mod.Initrd
			mk.Modules = append(mk.Modules, entry)
		}
		m.Kernels = append(m.Kernels, mk)
	}
	r.manifest = m
	if err := r.saveManifest(ctx); err != nil {
		return err
	}
	r.ui.Say(fmt.Sprintf("kmod: manifest %s: %d module files for %d kernels", manifest.Path, len(r.modules), len(r.kernels)))
	return nil
}

// saveManifest writes r.manifest into the image and to manifest_output.
func (r *run) saveManifest(ctx context.Context) error {
	data, err := r.manifest.Marshal()
	if err != nil {
		return err
	}
	if err := r.t.writeFiles(ctx, []upload{{Path: manifest.Path, Data: data, Mode: 0o644}}); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if r.cfg.ManifestOutput != "" {
		if err := atomicfile.WriteFile(r.cfg.ManifestOutput, data, 0o644); err != nil {
			return fmt.Errorf("manifest_output: %w", err)
		}
	}
	return nil
}

// imageModuleDir is /lib/modules/<release>.
func imageModuleDir(k *targetKernel) string { return path.Join("/lib/modules", k.Release) }

// installHook puts the first-boot agent for the image's architecture and
// the hook's units (or cloud-init script) in the image.
func (r *run) installHook(ctx context.Context) error {
	fb := r.cfg.Firstboot
	if fb.Hook == hookNone {
		return nil
	}
	agent, ok := agentBinary(r.goarch)
	if !ok {
		return errors.New(noAgentMessage(r.goarch))
	}
	net := false
	for _, m := range r.modules {
		net = net || isNetDriver(m.Parsed)
	}
	files, links, err := firstboot.RenderHook(fb.hookSettings(net))
	if err != nil {
		return fmt.Errorf("firstboot: %w", err)
	}
	if fb.pulls() {
		pc := fb.pullConfig()
		if fb.CAFile != "" {
			ca, err := os.ReadFile(fb.CAFile)
			if err != nil {
				return fmt.Errorf("firstboot.ca_file: %w", err)
			}
			files = append(files, firstboot.File{Path: pullCAPath, Content: ca, Mode: 0o644})
		}
		data, err := pc.Marshal()
		if err != nil {
			return fmt.Errorf("firstboot: %w", err)
		}
		files = append(files, firstboot.File{Path: firstboot.PullConfigPath, Content: data, Mode: 0o644})
	}
	if fb.ReportURL != "" {
		if fb.ReportCAFile != "" {
			ca, err := os.ReadFile(fb.ReportCAFile)
			if err != nil {
				return fmt.Errorf("firstboot.report_ca_file: %w", err)
			}
			files = append(files, firstboot.File{Path: reportCAPath, Content: ca, Mode: 0o644})
		}
		data, err := json.MarshalIndent(fb.reportConfig(), "", "  ")
		if err != nil {
			return fmt.Errorf("firstboot: %w", err)
		}
		files = append(files, firstboot.File{Path: firstboot.ReportConfigPath, Content: append(data, '\n'), Mode: 0o644})
	}
	// The agent and the files in one upload, the links in one command.
	ups := []upload{{Path: firstboot.DefaultAgentPath, Data: agent, Mode: 0o755}}
	for _, f := range files {
		ups = append(ups, upload{Path: f.Path, Data: f.Content, Mode: f.Mode})
	}
	if err := r.t.writeFiles(ctx, ups); err != nil {
		return fmt.Errorf("firstboot: %w", err)
	}
	var cmds []string
	for _, l := range links {
		cmds = append(cmds, fmt.Sprintf("mkdir -p %s && ln -sfn %s %s || { printf '%%s\\n' %s; exit 1; }",
			shquote.Quote(path.Dir(l.Path)), shquote.Quote(l.Target), shquote.Quote(l.Path), shquote.Quote(l.Path)))
	}
	if len(cmds) > 0 {
		var out, errb strings.Builder
		st, err := r.t.Run(ctx, strings.Join(cmds, "\n"), &out, &errb)
		if err == nil && st != 0 {
			err = fmt.Errorf("exit status %d: %s", st, strings.TrimSpace(errb.String()))
		}
		if err != nil {
			what := strings.TrimSpace(out.String())
			if what == "" {
				what = "the hook's units"
			}
			return fmt.Errorf("firstboot: enable %s: %w", what, err)
		}
	}
	r.ui.Say(fmt.Sprintf("kmod: first-boot hook installed (%s, agent %s, %d files)", hookName(fb.Hook), firstboot.DefaultAgentPath, len(files)))
	return nil
}

const hookNone = "none"

func hookName(h string) string {
	if h == "" {
		return firstboot.HookSystemd
	}
	return h
}
