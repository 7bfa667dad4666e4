package firstboot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sync/errgroup"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// Options configure Verify, Run and Lockdown. The zero value checks the
// running system with the default policies.
type Options struct {
	// Root prefixes every path the agent reads or writes (default "/").
	Root string
	// Kernel is the running kernel's release (default: uname -r).
	Kernel string
	// Manifest is the manifest's path in the image (default
	// manifest.Path).
	Manifest string
	// OnDrift is the status a drifted module, or a missing or malformed
	// manifest, gives (default PolicyFail); OnUncovered that of a kernel
	// the manifest does not list (default PolicyWarn).
	OnDrift     Policy
	OnUncovered Policy
	// Lockdown makes Run set kernel.modules_disabled=1 once the managed
	// modules are loaded.
	Lockdown bool
	// Modprobe loads a module by name with its dependencies and options
	// (default: the image's `modprobe NAME`; with a Root other than "/"
	// there is no default and Run fails to load).
	Modprobe func(ctx context.Context, name string) error
	// Now is the clock of the reports (default time.Now).
	Now func() time.Time
}

// ErrOptions is wrapped by the error of an invalid Options.
var ErrOptions = errors.New("invalid options")

// ParsePolicy parses "warn" or "fail".
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(strings.ToLower(strings.TrimSpace(s))); p {
	case PolicyWarn, PolicyFail:
		return p, nil
	}
	return "", fmt.Errorf("%w: policy %q (want warn or fail)", ErrOptions, s)
}

// normalize fills the defaults.
func (o Options) normalize() (Options, error) {
	if o.Root == "" {
		o.Root = "/"
	}
	if !filepath.IsAbs(o.Root) {
		abs, err := filepath.Abs(o.Root)
		if err != nil {
			return o, fmt.Errorf("%w: root %q: %v", ErrOptions, o.Root, err)
		}
		o.Root = abs
	}
	o.Root = filepath.Clean(o.Root)
	if o.Manifest == "" {
		o.Manifest = manifest.Path
	}
	if !path.IsAbs(o.Manifest) {
		return o, fmt.Errorf("%w: manifest path %q is not absolute", ErrOptions, o.Manifest)
	}
	var err error
	if o.OnDrift == "" {
		o.OnDrift = PolicyFail
	} else if o.OnDrift, err = ParsePolicy(string(o.OnDrift)); err != nil {
		return o, err
	}
	if o.OnUncovered == "" {
		o.OnUncovered = PolicyWarn
	} else if o.OnUncovered, err = ParsePolicy(string(o.OnUncovered)); err != nil {
		return o, err
	}
	if o.Kernel == "" {
		if o.Kernel, err = KernelRelease(); err != nil {
			return o, fmt.Errorf("%w: kernel release: %v", ErrOptions, err)
		}
	}
	if strings.ContainsAny(o.Kernel, "/\x00") || o.Kernel == "." || o.Kernel == ".." {
		return o, fmt.Errorf("%w: kernel release %q", ErrOptions, o.Kernel)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Modprobe == nil {
		if o.Root == "/" {
			o.Modprobe = ExecModprobe
		} else {
			root := o.Root
			o.Modprobe = func(context.Context, string) error {
				return fmt.Errorf("no modprobe for root %s: the agent loads modules only into the running system (root /)", root)
			}
		}
	}
	return o, nil
}

// KernelRelease is the running kernel's release (uname -r).
func KernelRelease() (string, error) {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "", err
	}
	b := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b), nil
}

// ExecModprobe runs the system's `modprobe NAME` (/usr/sbin, /sbin, then
// PATH); its output is in the error when it fails.
func ExecModprobe(ctx context.Context, name string) error {
	prog := ""
	for _, p := range []string{"/usr/sbin/modprobe", "/sbin/modprobe", "/usr/bin/modprobe", "/bin/modprobe"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			prog = p
			break
		}
	}
	if prog == "" {
		p, err := exec.LookPath("modprobe")
		if err != nil {
			return fmt.Errorf("modprobe not found: %w", err)
		}
		prog = p
	}
	out, err := exec.CommandContext(ctx, prog, "--", name).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 1000 {
			msg = msg[:1000] + "..."
		}
		if msg != "" {
			return fmt.Errorf("modprobe %s: %w: %s", name, err, msg)
		}
		return fmt.Errorf("modprobe %s: %w", name, err)
	}
	return nil
}

// checker holds one check of the managed modules.
type checker struct {
	o     Options
	res   *VerifyResult
	kern  *manifest.Kernel
	certs map[string]*x509.Certificate
	// modIndex maps a module name (underscores) to its index in
	// res.Modules.
	modIndex map[string]int
}

// check reads the identity and the manifest and checks every managed
// module of the running kernel; it writes the blocked file. The returned
// result always describes what was found.
func check(ctx context.Context, o Options) *checker {
	id := ReadIdentity(o.Root)
	c := &checker{o: o, res: &VerifyResult{
		InstanceID:       id.InstanceID,
		InstanceIDSource: id.Source,
		BootID:           id.BootID,
		Kernel:           o.Kernel,
		Modules:          []ModuleReport{},
		GeneratedAt:      o.Now().UTC(),
		Manifest:         o.Manifest,
		OnDrift:          o.OnDrift,
		OnUncovered:      o.OnUncovered,
		Drifted:          []string{},
		Blocked:          []string{},
		BlockedFile:      BlockedPath,
		Errors:           []string{},
		Warnings:         slices.Clone(id.Problems),
	}}
	if c.res.Warnings == nil {
		c.res.Warnings = []string{}
	}
	m, err := c.readManifest()
	if err != nil {
		c.res.ManifestError = err.Error()
		c.writeBlocked()
		return c
	}
	k, ok := m.Kernel(o.Kernel)
	if !ok {
		// A kernel the image does not cover may have been pulled
		// (PulledPath): its modules are checked like the image's,
		// against the image manifest's certificates.
		st, err := readPulled(o.Root)
		if err != nil {
			c.res.Errors = append(c.res.Errors, fmt.Sprintf("%s: %v", PulledPath, err))
		} else if st != nil {
			if k, ok = st.Kernel(o.Kernel); ok {
				c.res.Pulled = true
				for _, b := range st.Bundles {
					if b.Release == o.Kernel {
						c.res.PulledFrom = b.Reference
					}
				}
			}
		}
	}
	if !ok {
		c.writeBlocked()
		return c
	}
	c.res.Covered = true
	c.kern = k
	c.certs = map[string]*x509.Certificate{}
	for _, ce := range m.Certificates {
		// Unmarshal checked that SHA256 is that of DER; a DER that does
		// not parse fails the modules that name it.
		if cert, err := x509.ParseCertificate(ce.DER); err == nil {
			c.certs[ce.SHA256] = cert
		}
	}
	c.modIndex = map[string]int{}
	for _, mod := range k.Modules {
		c.modIndex[modName(mod.Name)] = len(c.res.Modules)
		c.res.Modules = append(c.res.Modules, ModuleReport{
			Name:           mod.Name,
			Path:           mod.Path,
			ExpectedSHA256: mod.SHA256,
			Srcversion:     mod.Srcversion,
			Early:          mod.Early,
			Load:           mod.Load,
			Params:         map[string]string{},
			Errors:         []string{},
		})
	}
	// The initramfs file is hashed while the modules are checked.
	initrd := c.startInitramfs()
	deps, depErr := c.readModulesDep()
	c.checkModules(ctx, deps, depErr)
	c.checkInitramfs(ctx, initrd)
	for i := range c.res.Modules {
		r := &c.res.Modules[i]
		r.Verified = len(r.Errors) == 0
		if r.Verified {
			c.res.Verified++
		} else {
			c.res.Drifted = append(c.res.Drifted, r.Name)
		}
	}
	c.res.Total = len(c.res.Modules)
	c.writeBlocked()
	return c
}

// readManifest reads and decodes the manifest.
func (c *checker) readManifest() (*manifest.Manifest, error) {
	p, err := securejoin.SecureJoin(c.o.Root, c.o.Manifest)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", c.o.Manifest, err)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: missing: no manifest in the image", c.o.Manifest)
		}
		return nil, fmt.Errorf("%s: %v", c.o.Manifest, unwrapPathError(err))
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", c.o.Manifest)
	}
	data, err := io.ReadAll(io.LimitReader(f, manifest.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", c.o.Manifest, unwrapPathError(err))
	}
	m, err := manifest.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", c.o.Manifest, err)
	}
	return m, nil
}

// modName is the kernel's form of a module name (/sys/module, modules.dep).
func modName(n string) string { return strings.ReplaceAll(n, "-", "_") }

func (r *ModuleReport) errorf(format string, args ...any) {
	r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
}

// checkModules checks the kernel's modules concurrently, on as many
// goroutines as there are CPUs: each writes only its module's report and
// reads the checker, which nothing changes meanwhile.
func (c *checker) checkModules(ctx context.Context, deps map[string]string, depErr error) {
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := range c.kern.Modules {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				c.res.Modules[i].errorf("not checked: %v", err)
				return nil
			}
			c.checkModule(&c.kern.Modules[i], &c.res.Modules[i], deps, depErr)
			return nil
		})
	}
	_ = g.Wait() // the goroutines return no error
}

// checkModule checks one module's file, signature, modules.dep entry and,
// when it is loaded already, its srcversion.
func (c *checker) checkModule(mod *manifest.Module, r *ModuleReport, deps map[string]string, depErr error) {
	data, err := c.readModuleFile(mod.Path)
	switch {
	case err != nil:
		r.errorf("file %s: %v", mod.Path, err)
	default:
		sum := sha256.Sum256(data)
		r.ActualSHA256 = hex.EncodeToString(sum[:])
		if r.ActualSHA256 != mod.SHA256 {
			r.errorf("drift: %s has sha256 %s, the manifest says %s", mod.Path, r.ActualSHA256, mod.SHA256)
			break
		}
		c.checkSignature(mod, r, data)
	}
	switch {
	case depErr != nil:
		r.errorf("%v", depErr)
	default:
		file, ok := deps[modName(mod.Name)]
		if ok && file == mod.Path {
			break // the same path resolves to the same file
		}
		got, gerr := securejoin.SecureJoin(c.o.Root, file)
		want, err := securejoin.SecureJoin(c.o.Root, mod.Path)
		switch {
		case !ok:
			r.errorf("modules.dep does not list %s: modprobe would not find it", mod.Name)
		case gerr != nil:
			r.errorf("modules.dep resolves %s to %s: %v", mod.Name, file, gerr)
		case err != nil || got != want:
			r.errorf("modules.dep resolves %s to another file (%s), not the verified %s", mod.Name, c.imagePath(got), mod.Path)
		}
	}
	sys := hostPath(c.o.Root, "/sys/module/"+modName(mod.Name))
	if st, err := os.Stat(sys); err == nil && st.IsDir() {
		r.AlreadyLoaded, r.Loaded = true, true
		sv, err := readSmall(filepath.Join(sys, "srcversion"))
		r.LoadedSrcversion = sv
		switch {
		case mod.Srcversion == "":
			// Nothing to compare: the module has no srcversion (no
			// MODULE_VERSION); the initramfs check covers early modules.
		case err != nil:
			r.errorf("loaded before verification, and /sys/module/%s/srcversion is unreadable (%v): built in or not the managed module", modName(mod.Name), unwrapPathError(err))
		case sv != mod.Srcversion:
			r.errorf("drift: the loaded %s has srcversion %s, the manifest says %s", mod.Name, sv, mod.Srcversion)
		}
	}
}

// checkSignature verifies the module's signature against the certificate
// the manifest records for it.
func (c *checker) checkSignature(mod *manifest.Module, r *ModuleReport, data []byte) {
	if mod.CertSHA256 == "" {
		r.errorf("the manifest records no certificate for %s: its signature cannot be verified", mod.Name)
		return
	}
	cert := c.certs[mod.CertSHA256]
	if cert == nil {
		r.errorf("certificate %s of the manifest does not parse", mod.CertSHA256)
		return
	}
	res, err := kmod.VerifyBytes(data, []*x509.Certificate{cert})
	if res != nil {
		r.Signer = res.Signer
	}
	if err != nil {
		r.errorf("signature: %v (against the manifest's certificate %s, %s)", err, mod.CertSHA256[:16], cert.Subject)
		return
	}
	r.SignatureOK = true
}

// readModuleFile reads a module file of the image, bounded.
func (c *checker) readModuleFile(p string) ([]byte, error) {
	host, err := securejoin.SecureJoin(c.o.Root, p)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(host)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("missing")
	}
	if err != nil {
		return nil, unwrapPathError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, unwrapPathError(err)
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if st.Size() > kmod.MaxModuleSize {
		return nil, fmt.Errorf("%d bytes, larger than a module can be", st.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, kmod.MaxModuleSize+1))
	if err != nil {
		return nil, unwrapPathError(err)
	}
	if len(data) > kmod.MaxModuleSize {
		return nil, errors.New("larger than a module can be")
	}
	return data, nil
}

// readModulesDep maps the names of the managed modules to the image path
// modules.dep gives their file (modprobe takes the first line of a name).
// Only those are kept: the caller resolves them under Root, which costs
// a few system calls per path component, too many to spend on each of the
// thousands of modules of a kernel on every boot.
func (c *checker) readModulesDep() (map[string]string, error) {
	dir := "/lib/modules/" + c.o.Kernel
	p, err := securejoin.SecureJoin(c.o.Root, dir+"/modules.dep")
	if err != nil {
		return nil, fmt.Errorf("%s/modules.dep: %v", dir, err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("%s/modules.dep: %v: modprobe cannot find the modules", dir, unwrapPathError(err))
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(f, 256<<20))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			continue
		}
		file := string(line[:i])
		name := kmod.ModuleNameFromPath(file)
		if _, managed := c.modIndex[name]; !managed {
			continue
		}
		if _, dup := out[name]; dup {
			continue // modprobe takes the first
		}
		if !path.IsAbs(file) {
			file = dir + "/" + file
		}
		out[name] = path.Clean(file)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s/modules.dep: %v", dir, err)
	}
	return out, nil
}

// imagePath turns a host path under Root back into the image's.
func (c *checker) imagePath(host string) string {
	if c.o.Root == "/" {
		return host
	}
	rel, err := filepath.Rel(c.o.Root, host)
	if err != nil || strings.HasPrefix(rel, "..") {
		return host
	}
	return "/" + filepath.ToSlash(rel)
}

// writeBlocked writes BlockedPath for the drifted modules, or removes it
// when there are none.
func (c *checker) writeBlocked() {
	var names []string
	for i := range c.res.Modules {
		if !c.res.Modules[i].Verified {
			names = append(names, c.res.Modules[i].Name)
		}
	}
	p := hostPath(c.o.Root, BlockedPath)
	if len(names) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.res.Errors = append(c.res.Errors, fmt.Sprintf("remove %s: %v", BlockedPath, unwrapPathError(err)))
		}
		return
	}
	var b strings.Builder
	b.WriteString("# Written by kmodctl firstboot at boot: these managed modules differ from\n")
	b.WriteString("# " + c.o.Manifest + " (see " + VerifyPath + "); they are not loaded on this boot.\n")
	for _, n := range names {
		fmt.Fprintf(&b, "blacklist %s\ninstall %s /bin/false\n", n, n)
	}
	err := os.MkdirAll(filepath.Dir(p), 0o755)
	if err == nil {
		err = atomicfile.WriteFile(p, []byte(b.String()), 0o644)
	}
	if err != nil {
		c.res.Errors = append(c.res.Errors, fmt.Sprintf("block the drifted modules in %s: %v", BlockedPath, err))
		return
	}
	for i := range c.res.Modules {
		if !c.res.Modules[i].Verified {
			c.res.Modules[i].Blocked = true
		}
	}
	c.res.Blocked = names
}

// status computes the result's status under the policies; extra is the
// worst status of what the caller did (loading, lockdown).
func (c *checker) status(extra Status) Status {
	s := StatusOK.worse(extra)
	v := c.res
	if len(v.Errors) > 0 {
		s = StatusFail
	}
	switch {
	case v.ManifestError != "":
		s = s.worse(statusOf(v.OnDrift))
	case !v.Covered:
		s = s.worse(statusOf(v.OnUncovered))
	case len(v.Drifted) > 0:
		s = s.worse(statusOf(v.OnDrift))
	}
	return s
}

// Verify checks the managed modules of the running kernel, blocks the
// drifted ones for this boot (BlockedPath) and returns what it found. It
// loads nothing. The error is for invalid Options only (the result is
// then nil); every other problem is in the result, whose Status says what
// it amounts to under the policies.
func Verify(ctx context.Context, o Options) (*VerifyResult, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	c := check(ctx, o)
	c.res.Status = c.status(StatusOK)
	c.res.SummaryLine = c.res.Summary()
	return c.res, nil
}

// Run checks the managed modules like Verify, loads those verified that
// are to be loaded (early or load in the manifest) and are not loaded yet,
// in manifest order with Options.Modprobe, confirms each in /sys/module,
// records every managed module's taint and parameters, and applies the
// lockdown when Options.Lockdown asks for it. The error is for invalid
// Options only.
func Run(ctx context.Context, o Options) (*Report, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	c := check(ctx, o)
	r := &Report{VerifyResult: *c.res, LoadFailed: []string{}}
	extra := StatusOK
	if c.kern != nil {
		for i := range r.Modules {
			m := &r.Modules[i]
			if !m.Early && !m.Load {
				if m.Loaded {
					c.readSys(m)
				}
				continue
			}
			r.ToLoad++
			if !m.Verified {
				if m.Loaded {
					c.readSys(m)
				}
				continue
			}
			if !m.AlreadyLoaded {
				if err := ctx.Err(); err != nil {
					m.errorf("not loaded: %v", err)
				} else if err := o.Modprobe(ctx, m.Name); err != nil {
					m.errorf("load: %v", err)
				}
				sys := hostPath(o.Root, "/sys/module/"+modName(m.Name))
				if st, err := os.Stat(sys); err == nil && st.IsDir() {
					m.Loaded = true
				} else if len(m.Errors) == 0 {
					m.errorf("modprobe %s succeeded but /sys/module/%s does not exist", m.Name, modName(m.Name))
				}
			}
			if m.Loaded {
				c.readSys(m)
			}
			if m.Loaded && len(m.Errors) == 0 {
				r.Loaded++
			} else {
				r.LoadFailed = append(r.LoadFailed, m.Name)
				extra = StatusFail
			}
		}
	}
	if o.Lockdown {
		r.Lockdown = applyLockdown(o.Root)
		if !r.Lockdown.Applied {
			extra = StatusFail
		}
	}
	c.res = &r.VerifyResult
	r.Status = c.status(extra)
	r.SummaryLine = r.Summary()
	return r, nil
}

// readSys records a loaded module's taint and parameters.
func (c *checker) readSys(m *ModuleReport) {
	sys := hostPath(c.o.Root, "/sys/module/"+modName(m.Name))
	if t, err := readSmall(filepath.Join(sys, "taint")); err == nil {
		m.Taint = t
	}
	entries, err := os.ReadDir(filepath.Join(sys, "parameters"))
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() || len(m.Params) >= 256 {
			continue
		}
		// Write-only parameters do not read back; they are left out.
		if v, err := readSmall(filepath.Join(sys, "parameters", e.Name())); err == nil {
			m.Params[e.Name()] = v
		}
	}
}

// readSmall reads a sysfs attribute (at most 4 KiB), trimmed.
func readSmall(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// applyLockdown sets kernel.modules_disabled=1 under root and reads it
// back.
func applyLockdown(root string) *LockdownResult {
	l := &LockdownResult{Requested: true}
	p := hostPath(root, ModulesDisabledPath)
	if v, err := readSmall(p); err == nil && v == "1" {
		l.AlreadySet, l.Applied = true, true
		return l
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString("1\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		l.Error = fmt.Sprintf("write %s: %v", ModulesDisabledPath, unwrapPathError(err))
		return l
	}
	v, err := readSmall(p)
	switch {
	case err != nil:
		l.Error = fmt.Sprintf("read back %s: %v", ModulesDisabledPath, unwrapPathError(err))
	case v != "1":
		l.Error = fmt.Sprintf("%s reads %q after writing 1", ModulesDisabledPath, v)
	default:
		l.Applied = true
	}
	return l
}

// Lockdown sets kernel.modules_disabled=1, for the boots after the first
// (Run applies it on the first): it names the managed modules (early or
// load) of the running kernel that are not loaded, then locks anyway. The
// error is for invalid Options only.
func Lockdown(ctx context.Context, o Options) (*LockdownResult, error) {
	o, err := o.normalize()
	if err != nil {
		return nil, err
	}
	id := ReadIdentity(o.Root)
	c := &checker{o: o, res: &VerifyResult{}}
	var missing []string
	if m, err := c.readManifest(); err == nil {
		if k, ok := m.Kernel(o.Kernel); ok {
			for _, mod := range k.Modules {
				if !mod.Early && !mod.Load {
					continue
				}
				if st, err := os.Stat(hostPath(o.Root, "/sys/module/"+modName(mod.Name))); err != nil || !st.IsDir() {
					missing = append(missing, mod.Name)
				}
			}
		}
	}
	l := applyLockdown(o.Root)
	l.Missing = missing
	l.InstanceID, l.BootID, l.Kernel, l.GeneratedAt = id.InstanceID, id.BootID, o.Kernel, o.Now().UTC()
	l.Status = StatusOK
	if !l.Applied {
		l.Status = StatusFail
	}
	l.SummaryLine = l.Summary()
	return l, nil
}
