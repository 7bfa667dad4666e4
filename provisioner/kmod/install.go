package kmod

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/dkms"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/loadconf"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// signAndCheck signs every module file on the build host, verifies the
// signature, and checks it against its kernel, the allowlist and the
// kernel's own modules. All problems are collected and reported together.
func (r *run) signAndCheck() error {
	var problems []string
	byKernel := map[*targetKernel][]*kmod.Module{}
	for _, m := range r.modules {
		// Modules from bundles and the cache are signed already (the
		// cache: by signing_cert; a bundle: by signing_cert or one of
		// trusted_certs); the others are signed here.
		certs, against := []*x509.Certificate{r.cert}, "signing_cert"
		if m.Presigned {
			certs, against = r.trusted, "signing_cert or trusted_certs"
		} else {
			res, err := r.signer.SignFileResult(m.Host)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: sign %s: %v", m.where(), filepath.Base(m.Host), err))
				continue
			}
			if res.Replaced > 0 {
				r.ui.Message(fmt.Sprintf("kmod: %s: replaced %d existing signature(s) (by %s)", m.where(), res.Replaced, res.PreviousSigner))
			}
		}
		vr, err := kmod.VerifyFile(m.Host, certs)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: signature does not verify against %s: %v", m.where(), against, err))
			continue
		}
		m.Verify = vr
		parsed, err := kmod.ParseFile(m.Host)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", m.where(), err))
			continue
		}
		if parsed.Signature == nil {
			problems = append(problems, fmt.Sprintf("%s: no signature after signing", m.where()))
		}
		m.Parsed = parsed
		data, err := os.ReadFile(m.Host)
		if err != nil {
			return err
		}
		m.SHA256 = sha256Hex(data)
		if r.allow != nil && !r.allow[m.SHA256] {
			problems = append(problems, fmt.Sprintf("%s: sha256 %s is not in the allowlist (allowed_sha256/allowed_sha256_file)", m.where(), m.SHA256))
		}
		problems = append(problems, r.conflicts(m)...)
		byKernel[m.Kernel] = append(byKernel[m.Kernel], parsed)
	}
	for _, k := range r.kernels {
		mods := byKernel[k]
		if len(mods) == 0 {
			continue
		}
		rep := kmod.Check(k.Model, mods)
		for _, p := range rep.Problems {
			reason := p.Reason
			if p.Symbol != "" {
				reason = "symbol " + p.Symbol + ": " + reason
			}
			problems = append(problems, fmt.Sprintf("module %s, kernel %s: %s", p.Module, k.Release, reason))
		}
	}
	problems = append(problems, r.profileProblems()...)
	problems = append(problems, r.duplicateProblems()...)
	// The load configuration is rendered now, so that a managed module that
	// is also blacklisted or disabled fails before anything is installed.
	if _, err := loadconf.Render(r.loadOptions()); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d problem(s) before install, nothing installed:\n  %s", len(problems), strings.Join(dedupe(problems), "\n  "))
	}
	r.ui.Say(fmt.Sprintf("kmod: %d module file(s) signed by %q and checked against %s", len(r.modules), r.cert.Subject.CommonName, r.kernelList()))
	return nil
}

func dedupe(ps []string) []string {
	seen := map[string]bool{}
	var res []string
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			res = append(res, p)
		}
	}
	return res
}

// conflicts reports a module that shadows an in-tree module of the same
// name or claims the device aliases of one, unless replace_in_tree.
func (r *run) conflicts(m *module) []string {
	var res []string
	for _, p := range kmod.InTreeConflicts(m.Kernel.Model, []*kmod.Module{m.Parsed}) {
		msg := m.where() + ": " + p.Reason
		switch {
		case r.cfg.ReplaceInTree:
			r.ui.Message("kmod: " + msg + " (replace_in_tree)")
		case p.Kind == kmod.KindShadow:
			res = append(res, msg+"; set replace_in_tree = true if that is intended")
		default:
			res = append(res, msg+"; set replace_in_tree = true (and blacklist "+p.InTree+" to make this one win)")
		}
	}
	return res
}

// install puts the signed files in place and runs depmod for each kernel.
// The remote work is batched: one upload of every file, one command for
// every dkms install, one checksum pass, one command for every depmod.
func (r *run) install(ctx context.Context) error {
	t0 := time.Now()
	for _, nv := range r.toAdd {
		if err := r.driver.Add(ctx, nv.Name, nv.Version); err != nil {
			return fmt.Errorf("module %s %s: dkms add: %w", nv.Name, nv.Version, err)
		}
	}
	if len(r.toAdd) > 0 {
		r.step("dkms_add", t0)
	}
	// dkms-built files go into dkms's tree, then `dkms install` so dkms's
	// bookkeeping (status, autoinstall, removal) knows them; the installed
	// copy must be exactly our signed file. The others go straight to
	// their place.
	t0 = time.Now()
	var files []upload
	for _, m := range r.modules {
		dst := m.Dest
		if m.DKMS != nil {
			dst = m.Built
		}
		files = append(files, upload{Path: dst, Host: m.Host, Mode: 0o644})
	}
	if err := r.t.writeFiles(ctx, files); err != nil {
		return fmt.Errorf("modules: %w", err)
	}
	r.step("upload", t0)
	t0 = time.Now()
	var reqs []dkms.InstallRequest
	done := map[string]bool{}
	for _, m := range r.modules {
		if m.DKMS == nil {
			continue
		}
		key := m.DKMS.Name + "/" + m.DKMS.Version + "/" + m.Kernel.Release
		if done[key] {
			continue
		}
		done[key] = true
		reqs = append(reqs, dkms.InstallRequest{Name: m.DKMS.Name, Version: m.DKMS.Version, Kernel: m.Kernel.Release, Arch: r.arch})
	}
	// One depmod per kernel below instead of one per dkms install.
	if err := r.driver.InstallAll(ctx, reqs); err != nil {
		return err
	}
	if len(reqs) > 0 {
		r.step("dkms_install", t0)
	}
	// The installed files must be byte for byte the signed ones: one
	// sha256sum of them all.
	t0 = time.Now()
	var dests []string
	for _, m := range r.modules {
		dests = append(dests, m.Dest)
	}
	var out strings.Builder
	if _, err := r.t.Run(ctx, "sha256sum -- "+shquote.Join(dests...)+" 2>/dev/null", &out, nil); err != nil {
		return fmt.Errorf("sha256sum of the installed modules: %w", err)
	}
	sums := map[string]string{}
	for _, l := range strings.Split(out.String(), "\n") {
		if sum, file, ok := strings.Cut(l, "  "); ok {
			sums[file] = sum
		}
	}
	for _, m := range r.modules {
		got, ok := sums[m.Dest]
		if !ok {
			return fmt.Errorf("%s: %s not installed (sha256sum cannot read it)", m.where(), m.Dest)
		}
		if got != m.SHA256 {
			return fmt.Errorf("%s: %s differs from the signed file after install (sha256 %s, want %s)", m.where(), m.Dest, got, m.SHA256)
		}
	}
	r.step("verify", t0)
	t0 = time.Now()
	// One command for every kernel's depmod; the failing one prints its
	// kernel.
	var depmod []string
	for _, k := range r.kernels {
		q := shquote.Quote(k.Release)
		depmod = append(depmod, fmt.Sprintf("depmod -a %s || { printf '%%s\\n' %s; exit 1; }", q, q))
	}
	var outb, errb strings.Builder
	st, err := r.t.Run(ctx, strings.Join(depmod, "\n"), &outb, &errb)
	if err != nil {
		return fmt.Errorf("depmod: %w", err)
	}
	if st != 0 {
		return fmt.Errorf("kernel %s: depmod: exit status %d: %s", strings.TrimSpace(outb.String()), st, strings.TrimSpace(errb.String()))
	}
	r.step("depmod", t0)
	r.ui.Say(fmt.Sprintf("kmod: installed %d module file(s); depmod done for %s", len(r.modules), r.kernelList()))
	return nil
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

// loadOrder lists the managed modules to load at boot, in declared order.
func (r *run) loadOrder() []string {
	var names []string
	seen := map[string]bool{}
	for _, m := range r.modules {
		if m.Load && !seen[m.Name] {
			seen[m.Name] = true
			names = append(names, m.Name)
		}
	}
	return names
}

func (r *run) earlyNames() []string {
	var names []string
	seen := map[string]bool{}
	for _, m := range r.modules {
		if m.Early && !seen[m.Name] {
			seen[m.Name] = true
			names = append(names, m.Name)
		}
	}
	return names
}

// writeLoadConfig writes modules-load.d, modprobe.d, udev, audit and sysctl
// files, and persists the early-load list for later initramfs generations.
func (r *run) writeLoadConfig(ctx context.Context) error {
	files, err := loadconf.Render(r.loadOptions())
	if err != nil {
		return err
	}
	var ups []upload
	for _, f := range files {
		ups = append(ups, upload{Path: f.Path, Data: f.Content, Mode: f.Mode})
	}
	early := r.earlyNames()
	if len(early) > 0 {
		// Which initramfs tool the image has, in one round trip.
		const p = loadconf.InitramfsToolsModulesPath
		probe := []string{"/usr/sbin/update-initramfs", "/etc/initramfs-tools", "/usr/bin/dracut", "/usr/sbin/dracut", p}
		out, err := r.t.output(ctx, "for p in "+shquote.Join(probe...)+"; do if [ -e \"$p\" ]; then echo \"$p\"; fi; done")
		if err != nil {
			return fmt.Errorf("the image's initramfs tool: %w", err)
		}
		have := map[string]bool{}
		for _, l := range strings.Split(out, "\n") {
			have[l] = true
		}
		switch {
		case have[probe[0]] || have[probe[1]]:
			// A marked block in /etc/initramfs-tools/modules, the rest kept.
			var old []byte
			if have[p] {
				if old, err = r.t.readFile(p); err != nil {
					return err
				}
			}
			ups = append(ups, upload{Path: p, Data: loadconf.EarlyInitramfsTools(old, early), Mode: 0o644})
		case have[probe[2]] || have[probe[3]]:
			ups = append(ups, upload{Path: loadconf.DracutConfPath, Data: loadconf.EarlyDracut(early), Mode: 0o644})
		default:
			r.ui.Error("kmod: warning: neither initramfs-tools nor dracut in the image; the early-load list is not persisted for later initramfs generations")
		}
	}
	if err := r.t.writeFiles(ctx, ups); err != nil {
		return err
	}
	for _, f := range files {
		r.ui.Message("kmod: wrote " + f.Path)
	}
	return nil
}

// initramfs adds the early modules to each kernel's initramfs.
func (r *run) initramfs(ctx context.Context) error {
	if len(r.earlyNames()) == 0 || r.cfg.Initramfs == initramfsNone {
		return nil
	}
	for _, k := range r.kernels {
		var early []*module
		for _, m := range r.modules {
			if m.Kernel == k && m.Early {
				early = append(early, m)
			}
		}
		if len(early) == 0 {
			continue
		}
		if r.cfg.Initramfs == initramfsRegenerate {
			if err := r.regenerate(ctx, k); err != nil {
				return err
			}
			continue
		}
		if err := r.inject(ctx, k, early); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) regenerate(ctx context.Context, k *targetKernel) error {
	dracut := !r.t.exists(ctx, "/usr/sbin/update-initramfs")
	img := k.Initrd
	if img == "" { // the file each tool writes for a kernel without one
		img = initramfs.Paths(k.Release)[0]
		if dracut {
			img = initramfs.Paths(k.Release)[1]
		}
	}
	cmd := "update-initramfs -u -k " + shquote.Quote(k.Release)
	if dracut {
		cmd = "dracut -f --kver " + shquote.Quote(k.Release) + " " + shquote.Quote(img)
	}
	r.ui.Say("kmod: " + cmd)
	if err := r.t.runUI(ctx, cmd); err != nil {
		return fmt.Errorf("kernel %s: initramfs = \"regenerate\": %w", k.Release, err)
	}
	// Record what the distro tool really put in (it may strip, compress or
	// skip a module): the digest the first-boot hook will compare.
	host := filepath.Join(k.HostDir, "initramfs.regenerated")
	if err := r.t.download(img, host); err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	defer os.Remove(host)
	im, err := initramfs.Open(host)
	if err != nil {
		return fmt.Errorf("kernel %s: read back %s: %w", k.Release, img, err)
	}
	defer im.Close()
	if k.InitrdFile, err = manifest.InitramfsFromFile(host, img); err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	var early []*module
	var refs []manifest.Module
	for _, m := range r.modules {
		if m.Kernel == k && m.Early {
			early = append(early, m)
			refs = append(refs, manifest.Module{Name: m.Name, Path: m.Dest})
		}
	}
	copies, err := firstboot.InitramfsCopies(ctx, im, k.Release, refs)
	if err != nil {
		return fmt.Errorf("kernel %s: read back %s: %w", k.Release, img, err)
	}
	for i, m := range early {
		switch cp := copies[i]; {
		case cp == nil:
			return fmt.Errorf("%s: %s put no copy of it into %s (early = true needs it there)", m.where(), cmd, img)
		case cp.SHA256 == "":
			return fmt.Errorf("%s: %s in %s is not a regular file", m.where(), cp.Path, img)
		default:
			m.Initrd = cp.SHA256
			if cp.SHA256 != m.SHA256 {
				r.ui.Message(fmt.Sprintf("kmod: %s: the initramfs copy %s differs from the installed file (sha256 %s); recorded as it is", m.where(), cp.Path, cp.SHA256))
			}
		}
	}
	r.ui.Message(fmt.Sprintf("kmod: %s: %d early module(s) read back", img, len(early)))
	return nil
}

// inject downloads the kernel's initramfs and the dependencies of the early
// modules, injects them on the build host with the initramfs library, and
// uploads the result atomically.
func (r *run) inject(ctx context.Context, k *targetKernel, early []*module) error {
	if k.Initrd == "" {
		return fmt.Errorf("kernel %s: early modules (%s) but the image has no initramfs for it (/boot/initrd.img-%s or /boot/initramfs-%s.img)", k.Release, early[0].Name, k.Release, k.Release)
	}
	moddir := imageModuleDir(k)
	mirror := filepath.Join(k.HostDir, "mirror", "lib", "modules", k.Release)
	if err := os.MkdirAll(mirror, 0o755); err != nil {
		return err
	}
	depHost := filepath.Join(k.HostDir, "modules.dep.after")
	if err := r.t.download(moddir+"/modules.dep", depHost); err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	var rels, paths []string
	for _, m := range early {
		rel := strings.TrimPrefix(m.Dest, moddir+"/")
		rels = append(rels, rel)
		paths = append(paths, m.Host)
		// The early module itself, at its place in the mirrored tree.
		dst := filepath.Join(mirror, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		data, err := os.ReadFile(m.Host)
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			return err
		}
	}
	deps, err := kmod.DepClosure(depHost, rels)
	if err != nil {
		return err
	}
	for _, d := range deps {
		host := filepath.Join(mirror, filepath.FromSlash(d))
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			return err
		}
		if err := r.t.download(path.Join(moddir, d), host); err != nil {
			return fmt.Errorf("kernel %s: dependency %s: %w", k.Release, d, err)
		}
	}
	img := filepath.Join(k.HostDir, "initrd.img")
	if err := r.t.download(k.Initrd, img); err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	modeOut, _ := r.t.output(context.Background(), "stat -c %a "+shquote.Quote(k.Initrd))
	mode := os.FileMode(0o644)
	if v, err := strconv.ParseUint(strings.TrimSpace(modeOut), 8, 32); err == nil {
		mode = os.FileMode(v)
	}
	res, err := initramfs.Inject(img,
		initramfs.WithModules(paths...),
		initramfs.WithModulesDir(mirror),
		initramfs.WithLoad(true),
		initramfs.WithKernelRelease(k.Release),
		initramfs.WithInjectWarnings(func(w string) { r.ui.Message("kmod: initramfs: " + w) }),
	)
	if err != nil {
		return fmt.Errorf("kernel %s: inject into %s: %w", k.Release, k.Initrd, err)
	}
	if err := r.t.writeFiles(ctx, []upload{{Path: k.Initrd, Host: img, Mode: mode}}); err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	if k.InitrdFile, err = manifest.InitramfsFromFile(img, k.Initrd); err != nil {
		return fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	byName := map[string]int64{}
	for _, f := range res.Modules {
		byName[f.Name] = f.Size
	}
	for _, m := range early {
		if _, ok := byName[m.Name]; !ok {
			return fmt.Errorf("%s: not in the injected initramfs", m.where())
		}
		m.Initrd = m.SHA256
	}
	r.ui.Say(fmt.Sprintf("kmod: %s: injected %d module(s) and %d dependencies (%s, %s mode), loaded by %s",
		k.Initrd, len(res.Modules), len(res.Dependencies), res.Flavor, res.Mode, res.LoadConfig))
	return nil
}

// profileProblems reports modules the profiles load that a kernel does not
// have (systemd-modules-load would fail on them at every boot).
func (r *run) profileProblems() []string {
	managed := map[string]bool{}
	for _, m := range r.modules {
		managed[m.Name] = true
	}
	var res []string
	for _, p := range loadconf.Profiles() {
		used := false
		for _, name := range r.cfg.Profiles {
			used = used || name == p.Name
		}
		if !used {
			continue
		}
		for _, mod := range p.Load {
			for _, k := range r.kernels {
				if !managed[mod] && !k.has(mod) {
					res = append(res, fmt.Sprintf("profile %s: module %s, kernel %s: the kernel has no such module (neither in its tree nor built in)", p.Name, mod, k.Release))
				}
			}
		}
	}
	return res
}

// isNetDriver tells a network driver by what it imports: it registers a
// net_device.
func isNetDriver(m *kmod.Module) bool {
	if m == nil {
		return false
	}
	for _, s := range m.Undefined {
		switch s {
		case "register_netdev", "register_netdevice", "alloc_etherdev_mqs", "alloc_netdev_mqs":
			return true
		}
	}
	return false
}

// loadOptions is the load configuration of this provisioning.
func (r *run) loadOptions() loadconf.Options {
	opts := r.cfg.loadOptions(r.loadOrder(), r.goarch)
	// The load configuration the bundles carry, for what the template
	// does not configure itself.
	if mc := r.bundleModprobe(); mc != nil {
		opts.Modprobe = append(opts.Modprobe, *mc)
	}
	for _, m := range r.modules {
		if isNetDriver(m.Parsed) {
			for _, p := range r.cfg.Profiles {
				// Alibaba: a third-party NIC driver replaces ena.
				opts.ThirdPartyNIC = opts.ThirdPartyNIC || p == "alibaba"
			}
		}
	}
	return opts
}

// duplicateProblems reports two files of one module for one kernel (two
// blocks building the same module): depmod would pick one by search order.
func (r *run) duplicateProblems() []string {
	seen := map[string]*module{}
	var res []string
	for _, m := range r.modules {
		key := m.Kernel.Release + "/" + m.Name
		if prev, ok := seen[key]; ok {
			res = append(res, fmt.Sprintf("%s: given twice (module blocks %d and %d)", m.where(), prev.Block, m.Block))
			continue
		}
		seen[key] = m
	}
	return res
}
