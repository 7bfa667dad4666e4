package firstboot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/internal/jsonstrict"
	"github.com/kmodctl/packer-plugin-kmod/kmod/depmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/loadconf"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// Where the pull keeps its settings and state.
const (
	// PullConfigPath holds the pull settings the provisioner writes
	// (PullConfig).
	PullConfigPath = "/etc/kmodctl/pull.json"
	// PulledPath is the pull's state: a manifest (version 1) of the
	// kernels whose modules were pulled, beside the report. The image's
	// manifest stays as built.
	PulledPath = "/var/lib/kmodctl/pulled.json"
	// PulledDir is where a pulled kernel's modules go, under
	// /lib/modules/KVER.
	PulledDir = "updates/kmodctl"
	// PulledModprobePath holds the pulled bundles' modprobe settings.
	PulledModprobePath = "/etc/modprobe.d/kmodctl-pulled.conf"
	// KernelHookPath is the kernel postinst hook that pulls a new
	// kernel's modules when it is installed.
	KernelHookPath = "/etc/kernel/postinst.d/kmodctl"
	// PulledDracutConf lists the pulled early modules for dracut.
	PulledDracutConf = "/etc/dracut.conf.d/kmodctl-pulled.conf"
	// initramfsToolsModules gets a marked block listing the pulled early
	// modules for initramfs-tools.
	initramfsToolsModules = "/etc/initramfs-tools/modules"
	pulledBegin           = "# BEGIN kmodctl pulled"
	pulledEnd             = "# END kmodctl pulled"
)

// PullConfig is PullConfigPath's content: where a kernel's bundle is and
// how to reach it. Credentials are never in it: AuthFile names a file on
// the instance (written by cloud-init user data, say).
type PullConfig struct {
	// Bundle is the bundle reference: registry/repo[:tag|@digest] (or
	// oci:DIR[:TAG]); the kernel is selected by its exact release.
	Bundle string `json:"bundle"`
	// AuthFile is a Docker-style auth file on the instance (optional;
	// without it the pull is anonymous).
	AuthFile string `json:"registry_auth_file,omitempty"`
	// CAFile is a PEM CA file in the image for the registry's TLS.
	CAFile string `json:"ca_file,omitempty"`
	// PlainHTTP allows plain HTTP to the registry.
	PlainHTTP bool `json:"plain_http,omitempty"`
	// OnFailure is what a failed pull (registry unreachable, no bundle for
	// the kernel, a module that does not verify) does to the status.
	OnFailure Policy `json:"on_failure"`
}

// ParsePullConfig decodes PullConfigPath strictly.
func ParsePullConfig(data []byte) (*PullConfig, error) {
	var c PullConfig
	if err := decodeSettings(data, &c); err != nil {
		return nil, err
	}
	return &c, c.Validate()
}

// decodeSettings decodes a settings file of the agent strictly: at most
// 64 KiB, no duplicate or unknown keys, nothing after the document.
func decodeSettings(data []byte, v any) error {
	if len(data) > 64<<10 {
		return fmt.Errorf("%d bytes, the limit is 65536", len(data))
	}
	if err := jsonstrict.CheckKeys(data, 4, nil); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the document")
	}
	return nil
}

// Validate checks the settings.
func (c *PullConfig) Validate() error {
	if c.Bundle == "" {
		return errors.New("bundle: no bundle reference")
	}
	if _, err := bundle.ParseLocation(c.Bundle, c.PlainHTTP); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	for n, p := range map[string]string{"registry_auth_file": c.AuthFile, "ca_file": c.CAFile} {
		if p != "" && (!path.IsAbs(p) || path.Clean(p) != p) {
			return fmt.Errorf("%s %q: want an absolute, clean path", n, p)
		}
	}
	if c.OnFailure == "" {
		c.OnFailure = PolicyWarn
	}
	if c.OnFailure != PolicyWarn && c.OnFailure != PolicyFail {
		return fmt.Errorf("on_failure %q: want warn or fail", c.OnFailure)
	}
	return nil
}

// Marshal encodes c (what the provisioner writes).
func (c *PullConfig) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return jsonstrict.Encode(c)
}

// PullOptions configure Pull.
type PullOptions struct {
	Options
	// Config is the pull settings' path in the image (default
	// PullConfigPath).
	Config string
	// Arch is the image's architecture, GOARCH name (default: the agent's
	// own, which is built for the image).
	Arch string
	// Load loads the pulled modules now (the running kernel's; the
	// kernel hook does not: that kernel is not running).
	Load bool
	// Depmod regenerates the kernel's module indexes (default: the
	// image's depmod, with -b ROOT when Root is not "/").
	Depmod func(ctx context.Context, root, kernel string) error
	// BundleOptions are added to the bundle options (tests).
	BundleOptions []bundle.Option
}

// Pull outcomes.
const (
	PullCovered = "covered" // the image's manifest covers the kernel
	PullAlready = "already" // pulled before, files as recorded
	PullPulled  = "pulled"
	PullFailed  = "failed"
)

// PullResult is what Pull did; its JSON goes into the report (Pulled).
type PullResult struct {
	Kernel  string `json:"kernel"`
	Arch    string `json:"arch"`
	Outcome string `json:"outcome"`
	// Reference and Digest name the kernel's bundle manifest pulled.
	Reference string `json:"reference,omitempty"`
	Digest    string `json:"digest,omitempty"`
	// Modules are the pulled modules, in the bundle's order.
	Modules []PulledModule `json:"modules"`
	// Initramfs is the initramfs the early modules were put in ("" when
	// none).
	Initramfs string `json:"initramfs,omitempty"`
	// Refused names the module that failed verification, when one did:
	// nothing was installed.
	Refused string `json:"refused,omitempty"`
	Error   string `json:"error,omitempty"`
	// Warnings are what went wrong but did not stop the pull.
	Warnings    []string `json:"warnings"`
	OnFailure   Policy   `json:"on_failure"`
	Status      Status   `json:"status"`
	SummaryLine string   `json:"summary"`
}

// PulledModule is one module Pull installed.
type PulledModule struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Early  bool   `json:"early"`
	Load   bool   `json:"load"`
	Loaded bool   `json:"loaded"`
	Error  string `json:"error,omitempty"`
}

// Summary is the pull's console line.
func (p *PullResult) Summary() string {
	var b strings.Builder
	b.WriteString("kmodctl pull: ")
	switch p.Outcome {
	case PullCovered:
		fmt.Fprintf(&b, "kernel %s is covered by the image; nothing to pull", p.Kernel)
	case PullAlready:
		fmt.Fprintf(&b, "kernel %s: %d modules pulled before (%s), as recorded", p.Kernel, len(p.Modules), p.Reference)
	case PullPulled:
		loaded := 0
		for _, m := range p.Modules {
			if m.Loaded {
				loaded++
			}
		}
		fmt.Fprintf(&b, "kernel %s: %d modules pulled from %s, verified and installed", p.Kernel, len(p.Modules), p.Reference)
		if loaded > 0 {
			fmt.Fprintf(&b, ", %d loaded", loaded)
		}
	default:
		fmt.Fprintf(&b, "kernel %s: %s", p.Kernel, p.Error)
	}
	if p.Status == StatusFail {
		b.WriteString(" [fail]")
	}
	return b.String()
}

// Pull takes the signed modules of a kernel the image's manifest does not
// cover from the bundle PullConfig names: the bundle for the kernel and
// the image's architecture, every module verified against the image
// manifest's certificates (the trust anchor is the image, never the
// registry) and the sha256s of the bundle. Then it installs them under
// /lib/modules/KVER/updates/kmodctl (all at once), runs depmod, puts the
// early ones into the kernel's initramfs when it has one, writes the
// bundle's modprobe settings, records everything in PulledPath, and with
// Load loads them in the bundle's order. A module that fails verification
// is never installed. The error is for invalid options only; every other
// failure is in the result, whose Status follows PullConfig.OnFailure.
func Pull(ctx context.Context, o PullOptions) (*PullResult, error) {
	base, err := o.Options.normalize()
	if err != nil {
		return nil, err
	}
	o.Options = base
	if o.Config == "" {
		o.Config = PullConfigPath
	}
	if o.Arch == "" {
		o.Arch = runtime.GOARCH
	}
	if o.Depmod == nil {
		o.Depmod = execDepmod
	}
	p := &PullResult{Kernel: o.Kernel, Arch: o.Arch, Modules: []PulledModule{}, Warnings: []string{}, OnFailure: PolicyWarn}
	fail := func(format string, args ...any) (*PullResult, error) {
		p.Outcome, p.Error = PullFailed, fmt.Sprintf(format, args...)
		p.Status = statusOf(p.OnFailure)
		p.SummaryLine = p.Summary()
		return p, nil
	}
	cfg, err := o.readPullConfig()
	if err != nil {
		return fail("%s: %v", o.Config, err)
	}
	p.OnFailure = cfg.OnFailure
	c := &checker{o: o.Options, res: &VerifyResult{}}
	m, err := c.readManifest()
	if err != nil {
		return fail("%v", err)
	}
	if _, ok := m.Kernel(o.Kernel); ok {
		p.Outcome, p.Status = PullCovered, StatusOK
		p.SummaryLine = p.Summary()
		return p, nil
	}
	state, err := readPulled(o.Root)
	if err != nil {
		p.Warnings = append(p.Warnings, fmt.Sprintf("%s: %v: starting anew", PulledPath, err))
		state = nil
	}
	if state != nil {
		if k, ok := state.Kernel(o.Kernel); ok && pulledIntact(o.Root, k) {
			p.Outcome, p.Status = PullAlready, StatusOK
			for _, b := range state.Bundles {
				if b.Release == o.Kernel {
					p.Reference, p.Digest = b.Reference, b.Digest
				}
			}
			for _, mod := range k.Modules {
				p.Modules = append(p.Modules, PulledModule{Name: mod.Name, Path: mod.Path, SHA256: mod.SHA256, Early: mod.Early, Load: mod.Load})
			}
			if o.Load {
				loadPulled(ctx, o, p)
			}
			p.SummaryLine = p.Summary()
			return p, nil
		}
	}

	// The trust anchor: the image manifest's certificates.
	var trusted []*x509.Certificate
	for _, ce := range m.Certificates {
		if cert, err := x509.ParseCertificate(ce.DER); err == nil {
			trusted = append(trusted, cert)
		}
	}
	if len(trusted) == 0 {
		return fail("the image manifest has no certificate to verify modules against")
	}
	loc, err := bundle.ParseLocation(cfg.Bundle, cfg.PlainHTTP)
	if err != nil {
		return fail("bundle %s: %v", cfg.Bundle, err)
	}
	opts := []bundle.Option{bundle.WithTrustedCerts(trusted...), bundle.WithUserAgent("kmodctl-firstboot")}
	if cfg.PlainHTTP {
		opts = append(opts, bundle.WithPlainHTTP())
	}
	if cfg.CAFile != "" {
		ca, err := inRoot(o.Root, cfg.CAFile)
		if err != nil {
			return fail("ca_file %s: %v", cfg.CAFile, err)
		}
		opts = append(opts, bundle.WithCAFile(ca))
	}
	if cfg.AuthFile != "" {
		af, err := inRoot(o.Root, cfg.AuthFile)
		if err == nil {
			_, err = os.Stat(af)
		}
		if err == nil {
			opts = append(opts, bundle.WithAuthFile(af))
		} else {
			p.Warnings = append(p.Warnings, fmt.Sprintf("registry_auth_file %s: %v: pulling anonymously", cfg.AuthFile, unwrapPathError(err)))
			opts = append(opts, bundle.WithKeychain(anonymous{}))
		}
	} else {
		opts = append(opts, bundle.WithKeychain(anonymous{}))
	}
	f, err := bundle.Fetch(ctx, loc, o.Kernel, o.Arch, append(opts, o.BundleOptions...)...)
	if err != nil {
		var se *bundle.SignatureError
		if errors.As(err, &se) {
			p.Refused = se.Module
		}
		return fail("%v", err)
	}
	p.Reference, p.Digest = f.Reference, f.Digest.String()

	// Install: the module files at once, then depmod.
	moddir := "/lib/modules/" + o.Kernel
	dir, err := inRoot(o.Root, path.Join(moddir, PulledDir))
	if err == nil {
		err = os.MkdirAll(filepath.Dir(dir), 0o755)
	}
	if err != nil {
		return fail("install: %v", err)
	}
	if err := f.WriteModules(dir, 0o644); err != nil {
		return fail("install: %v", err)
	}
	if err := o.Depmod(ctx, o.Root, o.Kernel); err != nil {
		return fail("depmod %s: %v", o.Kernel, err)
	}
	k := manifest.Kernel{Release: o.Kernel}
	for _, bm := range f.Config.Modules {
		entry := manifest.Module{Name: bm.Name, Version: bm.Version, Path: path.Join(moddir, PulledDir, bm.File), SHA256: bm.SHA256,
			Srcversion: bm.Srcversion, Vermagic: bm.Vermagic, Signer: bm.Signer, SigKey: bm.SigKey, CertSHA256: bm.CertSHA256,
			Early: bm.Early, Load: bm.Load, Source: bm.Source}
		k.Modules = append(k.Modules, entry)
		p.Modules = append(p.Modules, PulledModule{Name: entry.Name, Path: entry.Path, SHA256: entry.SHA256, Early: entry.Early, Load: entry.Load})
	}
	// The early modules: listed for the initramfs tool, so a later
	// regeneration keeps them, then put into the kernel's initramfs (the
	// kernel hook runs after the tool generated it: run-parts sorts
	// dracut and initramfs-tools before kmodctl).
	if err := persistPulledEarly(o.Root, state, m, k); err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	if err := o.injectEarly(ctx, &k, p); err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	if err := writePulledModprobe(o.Root, f.Config.Load); err != nil {
		p.Warnings = append(p.Warnings, err.Error())
	}
	if err := recordPulled(o.Root, state, m, k, manifest.Bundle{Release: o.Kernel, Arch: o.Arch, Reference: f.Reference, Digest: f.Digest.String()}); err != nil {
		return fail("record %s: %v", PulledPath, err)
	}
	p.Outcome, p.Status = PullPulled, StatusOK
	if o.Load {
		loadPulled(ctx, o, p)
	}
	p.SummaryLine = p.Summary()
	return p, nil
}

// inRoot is image path p under root, its symbolic links resolved inside
// the root (a usr-merged image's /lib may be an absolute link).
func inRoot(root, p string) (string, error) {
	if root == "/" {
		return p, nil
	}
	return securejoin.SecureJoin(root, p)
}

func (o PullOptions) readPullConfig() (*PullConfig, error) {
	p, err := securejoin.SecureJoin(o.Root, o.Config)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, unwrapPathError(err)
	}
	return ParsePullConfig(data)
}

// anonymous is a keychain with no credentials: an instance never takes a
// Docker config it happens to have.
type anonymous struct{}

func (anonymous) Resolve(authn.Resource) (authn.Authenticator, error) { return authn.Anonymous, nil }

// readPulled reads PulledPath (nil, nil when there is none).
func readPulled(root string) (*manifest.Manifest, error) {
	p, err := inRoot(root, PulledPath)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, unwrapPathError(err)
	}
	return manifest.Unmarshal(data)
}

// pulledIntact: every recorded file of k is there with its sha256.
func pulledIntact(root string, k *manifest.Kernel) bool {
	for _, mod := range k.Modules {
		host, err := securejoin.SecureJoin(root, mod.Path)
		if err != nil {
			return false
		}
		data, err := os.ReadFile(host)
		if err != nil {
			return false
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != mod.SHA256 {
			return false
		}
	}
	return len(k.Modules) > 0
}

// recordPulled writes PulledPath: the earlier state with kernel k (and its
// bundle) replaced, and the image manifest's certificates.
func recordPulled(root string, state, image *manifest.Manifest, k manifest.Kernel, b manifest.Bundle) error {
	out := &manifest.Manifest{Version: manifest.Version, Generator: "kmodctl firstboot pull", Certificates: image.Certificates}
	if state != nil {
		for _, sk := range state.Kernels {
			if sk.Release != k.Release {
				out.Kernels = append(out.Kernels, sk)
			}
		}
		for _, sb := range state.Bundles {
			if sb.Release != k.Release {
				out.Bundles = append(out.Bundles, sb)
			}
		}
	}
	out.Kernels = append(out.Kernels, k)
	out.Bundles = append(out.Bundles, b)
	data, err := out.Marshal()
	if err != nil {
		return err
	}
	p, err := inRoot(root, PulledPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, data, 0o644)
}

// injectEarly puts the early modules of k into the kernel's initramfs,
// when it has one, loaded there the way its flavor does, and records the
// copies' sha256 and the resulting file (the verify unit compares them).
func (o PullOptions) injectEarly(ctx context.Context, k *manifest.Kernel, p *PullResult) error {
	var early []string
	var refs []manifest.Module
	var idx []int
	for i, mod := range k.Modules {
		if mod.Early {
			h, err := inRoot(o.Root, mod.Path)
			if err != nil {
				return err
			}
			early = append(early, h)
			refs = append(refs, manifest.Module{Name: mod.Name, Path: mod.Path})
			idx = append(idx, i)
		}
	}
	if len(early) == 0 {
		return nil
	}
	img, host := "", ""
	for _, c := range initramfs.Paths(k.Release) {
		h, err := inRoot(o.Root, c)
		if st, serr := os.Stat(h); err == nil && serr == nil && st.Mode().IsRegular() {
			img, host = c, h
			break
		}
	}
	if img == "" {
		return fmt.Errorf("kernel %s has no initramfs yet: the early modules go in when it is generated (they are listed for its tool)", k.Release)
	}
	moddir, err := inRoot(o.Root, "/lib/modules/"+k.Release)
	if err != nil {
		return err
	}
	if _, err := initramfs.Inject(host, initramfs.WithModules(early...), initramfs.WithModulesDir(moddir),
		initramfs.WithKernelRelease(k.Release), initramfs.WithLoad(true)); err != nil {
		return fmt.Errorf("put the early modules into %s: %v", img, err)
	}
	im, err := initramfs.Open(host)
	if err != nil {
		return fmt.Errorf("read back %s: %v", img, err)
	}
	defer im.Close()
	copies, err := InitramfsCopies(ctx, im, k.Release, refs)
	if err != nil {
		return fmt.Errorf("read back %s: %v", img, err)
	}
	for j, i := range idx {
		if copies[j] != nil {
			k.Modules[i].InitramfsSHA256 = copies[j].SHA256
		}
	}
	// The file as it now is: the verify unit decodes it only when it
	// differs (the kernel's own tools regenerated it, say).
	if k.Initramfs, err = manifest.InitramfsFromFile(host, img); err != nil {
		return fmt.Errorf("read back %s: %v", img, err)
	}
	p.Initramfs = img
	return nil
}

// persistPulledEarly lists the early modules of the pulled kernels (the
// earlier state and k) that the image does not already list, for the
// image's initramfs tool: a marked block in /etc/initramfs-tools/modules,
// or PulledDracutConf. Module names, like the tools' lists: the same
// module of another kernel shares its name.
func persistPulledEarly(root string, state, image *manifest.Manifest, k manifest.Kernel) error {
	listed := map[string]bool{}
	for _, ik := range image.Kernels {
		for _, mod := range ik.Modules {
			listed[mod.Name] = listed[mod.Name] || mod.Early
		}
	}
	kernels := []manifest.Kernel{k}
	if state != nil {
		for _, sk := range state.Kernels {
			if sk.Release != k.Release {
				kernels = append(kernels, sk)
			}
		}
	}
	var names []string
	for _, kk := range kernels {
		for _, mod := range kk.Modules {
			if mod.Early && !listed[mod.Name] {
				listed[mod.Name] = true
				names = append(names, mod.Name)
			}
		}
	}
	sort.Strings(names)
	exists := func(p string) bool {
		h, err := inRoot(root, p)
		if err != nil {
			return false
		}
		_, err = os.Stat(h)
		return err == nil
	}
	switch {
	case exists("/usr/sbin/update-initramfs") || exists("/etc/initramfs-tools"):
		h, err := inRoot(root, initramfsToolsModules)
		if err != nil {
			return err
		}
		old, err := os.ReadFile(h)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %v", initramfsToolsModules, unwrapPathError(err))
		}
		var kept []string
		in := false
		for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
			switch {
			case l == pulledBegin:
				in = true
			case l == pulledEnd:
				in = false
			case !in && (l != "" || len(kept) > 0):
				kept = append(kept, l)
			}
		}
		if len(names) > 0 {
			kept = append(append(append(kept, pulledBegin), names...), pulledEnd)
		}
		content := strings.Join(kept, "\n") + "\n"
		if content == string(old) || (len(kept) == 0 && old == nil) {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
			return err
		}
		return atomicfile.WriteFile(h, []byte(content), 0o644)
	case exists("/usr/bin/dracut") || exists("/usr/sbin/dracut"):
		h, err := inRoot(root, PulledDracutConf)
		if err != nil {
			return err
		}
		if len(names) == 0 {
			if err := os.Remove(h); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
			return err
		}
		return atomicfile.WriteFile(h, []byte("# Written by kmodctl firstboot pull: pulled modules the initramfs must load.\nforce_drivers+=\" "+strings.Join(names, " ")+" \"\n"), 0o644)
	}
	return nil
}

// writePulledModprobe writes the bundle's options, blacklist and soft
// dependencies to PulledModprobePath (removes it when there are none).
func writePulledModprobe(root string, l bundle.Load) error {
	p, err := inRoot(root, PulledModprobePath)
	if err != nil {
		return err
	}
	if len(l.Options)+len(l.Blacklist)+len(l.Softdeps) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	files, err := loadconf.Render(loadconf.Options{
		Header:   "# Written by kmodctl firstboot pull: the settings of the pulled bundles.",
		Modprobe: []loadconf.ModprobeConf{{Name: strings.TrimSuffix(path.Base(PulledModprobePath), ".conf"), Options: l.Options, Blacklist: l.Blacklist, Softdeps: l.Softdeps}},
	})
	if err != nil {
		return fmt.Errorf("the bundle's load configuration: %v", err)
	}
	for _, f := range files {
		if f.Path != PulledModprobePath {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return atomicfile.WriteFile(p, f.Content, f.Mode)
	}
	return nil
}

// loadPulled loads the pulled modules to load (early or load), in order.
func loadPulled(ctx context.Context, o PullOptions, p *PullResult) {
	for i := range p.Modules {
		m := &p.Modules[i]
		if !m.Early && !m.Load {
			continue
		}
		sys := hostPath(o.Root, "/sys/module/"+modName(m.Name))
		if st, err := os.Stat(sys); err == nil && st.IsDir() {
			m.Loaded = true
			continue
		}
		if err := o.Modprobe(ctx, m.Name); err != nil {
			m.Error = err.Error()
			p.Status = p.Status.worse(StatusFail)
			continue
		}
		if st, err := os.Stat(sys); err == nil && st.IsDir() {
			m.Loaded = true
		} else {
			m.Error = fmt.Sprintf("modprobe %s succeeded but /sys/module/%s does not exist", m.Name, modName(m.Name))
			p.Status = p.Status.worse(StatusFail)
		}
	}
}

// execDepmod runs the image's depmod for kernel; under a root other than
// "/" (a tree, in tests) kmod's own depmod library, which reads the tree's
// depmod.d and resolves its links inside it (the host's `depmod -b` would
// follow a usr-merged tree's absolute /lib link out of it).
func execDepmod(ctx context.Context, root, kernel string) error {
	if root != "/" {
		_, err := depmod.Write(root, kernel)
		return err
	}
	args := []string{"-a", kernel}
	prog := "depmod"
	for _, c := range []string{"/usr/sbin/depmod", "/sbin/depmod"} {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			prog = c
			break
		}
	}
	out, err := exec.CommandContext(ctx, prog, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
