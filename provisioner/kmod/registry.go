package kmod

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/dkms"
	"github.com/kmodctl/packer-plugin-kmod/kmod/loadconf"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// The provisioner's use of the bundle package: modules taken from bundles,
// the DKMS build cache, and publishing the installed modules.

// obtainBundle takes the modules of module block i from a bundle: for
// each image kernel, the bundle of that kernel and the image's
// architecture, verified against signing_cert and trusted_certs.
func (r *run) obtainBundle(ctx context.Context, i int, mc ModuleConfig) error {
	loc, err := bundle.ParseLocation(mc.Bundle, r.cfg.Registry.PlainHTTP)
	if err != nil {
		return fmt.Errorf("module[%d].bundle: %w", i, err)
	}
	opts := append(r.cfg.Registry.options(), bundle.WithTrustedCerts(r.trusted...))
	for _, k := range r.kernels {
		f, err := bundle.Fetch(ctx, loc, k.Release, r.goarch, opts...)
		if err != nil {
			return fmt.Errorf("module[%d].bundle %s, kernel %s: %w", i, mc.Bundle, k.Release, err)
		}
		r.ui.Say(fmt.Sprintf("kmod: bundle %s: %d module(s) for kernel %s verified", f.Reference, len(f.Config.Modules), k.Release))
		for _, bm := range f.Config.Modules {
			data, _ := f.File(bm.File)
			host := filepath.Join(r.work, "modules", k.Release, fmt.Sprintf("bundle-%d", i), bm.File)
			if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(host, data, 0o644); err != nil {
				return err
			}
			load := bm.Load
			if mc.loadSet {
				load = *mc.Load
			}
			r.modules = append(r.modules, &module{
				Block: i, Kernel: k, Name: bm.Name, Host: host,
				Dest:  path.Join(imageModuleDir(k), "updates/kmodctl", bm.File),
				Early: mc.Early || bm.Early, Load: load, Source: bm.Source, Presigned: true,
			})
		}
		r.bundleLoad = append(r.bundleLoad, f.Config.Load)
	}
	return nil
}

// cache is the DKMS build cache of a run.
type cache struct {
	loc  bundle.Location
	opts []bundle.Option
	// pending: what missed, to push once the checks pass.
	pending []cacheEntry
}

type cacheEntry struct {
	key    string
	nv     dkms.NameVersion
	kernel *targetKernel
}

func (r *run) setupCache() error {
	c := r.cfg.Cache
	if c.Repository == "" {
		return nil
	}
	loc, err := bundle.ParseLocation(c.Repository, c.PlainHTTP)
	if err != nil {
		return fmt.Errorf("cache.repository: %w", err)
	}
	r.cache = &cache{loc: loc, opts: c.options()}
	return nil
}

// cacheKey reads the build inputs of module nv (from src) for kernel k
// and computes its cache key; "" and the reason when an input cannot be
// determined.
func (r *run) cacheKey(ctx context.Context, k *targetKernel, nv dkms.NameVersion, src manifest.Source) (string, *dkms.BuildInputs, string) {
	bi, err := r.driver.BuildInputs(ctx, nv.Name, nv.Version, k.Release, r.arch)
	if err != nil {
		return "", nil, err.Error()
	}
	sum := sha256.Sum256(r.cert.Raw)
	in := dkms.CacheKeyInputs{
		DKMSConf: []byte(bi.Conf), DKMSConfig: []byte(bi.Config), DKMSSHA256: bi.DKMSSHA256,
		Kernel: k.Release, Arch: r.arch, SymversSHA256: bi.SymversSHA256, ConfigSHA256: bi.ConfigSHA256,
		Compiler: bi.Compiler, Linker: bi.Linker,
		SigningCertSHA256: hex.EncodeToString(sum[:]), SigningHash: r.cfg.SigningHash,
	}
	switch src.Kind {
	case manifest.SourceBuilt:
		in.Source = "source " + src.Digest
	case manifest.SourcePackage:
		if src.Version != "" {
			in.Source = "package " + src.Name + "=" + src.Version
		}
	}
	key, err := in.Key()
	if err != nil {
		return "", nil, err.Error()
	}
	return key, bi, ""
}

// cacheTag is the tag of a cache entry.
func cacheTag(key string) string { return "cache-" + key }

// fromCache takes the modules of nv for kernel k from the cache entry
// key. It returns false (build it) on a miss, and on any failure with a
// warning: the cache never fails a build.
func (r *run) fromCache(ctx context.Context, i int, mc ModuleConfig, nv dkms.NameVersion, src manifest.Source, k *targetKernel, key string, bi *dkms.BuildInputs) bool {
	loc := r.cache.loc.WithTag(cacheTag(key))
	f, err := bundle.Fetch(ctx, loc, k.Release, r.goarch, append(r.cache.opts, bundle.WithTrustedCerts(r.cert), bundle.WithRetries(1))...)
	if err != nil {
		var nk *bundle.NoKernelError
		if errors.As(err, &nk) || isNotFound(err) {
			r.ui.Say(fmt.Sprintf("kmod: cache miss for %s/%s, kernel %s (key %s)", nv.Name, nv.Version, k.Release, key))
		} else {
			r.ui.Error(fmt.Sprintf("kmod: warning: cache lookup for %s/%s, kernel %s failed, building instead: %v", nv.Name, nv.Version, k.Release, err))
		}
		return false
	}
	// Where dkms would have left and installed the files.
	plan, built := bi.Plan, bi.BuiltDir
	if plan == nil || len(plan.Unknown) > 0 {
		r.ui.Message(fmt.Sprintf("kmod: cache hit for %s/%s, kernel %s, but dkms.conf's module locations are known only at build time: building", nv.Name, nv.Version, k.Release))
		return false
	}
	var mods []*module
	for _, bm := range f.Config.Modules {
		var pm *dkms.PlannedModule
		for j := range plan.Modules {
			if moduleFileName(bm.File) == plan.Modules[j].Name {
				pm = &plan.Modules[j]
			}
		}
		if pm == nil {
			r.ui.Message(fmt.Sprintf("kmod: cache entry %s holds %s, which dkms.conf does not plan for kernel %s: building", key, bm.File, k.Release))
			return false
		}
		data, _ := f.File(bm.File)
		host := filepath.Join(r.work, "modules", k.Release, nv.Name, bm.File)
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			return false
		}
		if err := os.WriteFile(host, data, 0o644); err != nil {
			return false
		}
		nvCopy := nv
		mods = append(mods, &module{
			Block: i, Kernel: k, Name: bm.Name, Host: host,
			Dest:  path.Join(imageModuleDir(k), pm.DestDir, bm.File),
			Early: mc.Early, Load: *mc.Load, Source: src, DKMS: &nvCopy, Built: path.Join(built, bm.File), Presigned: true,
		})
	}
	r.modules = append(r.modules, mods...)
	r.ui.Say(fmt.Sprintf("kmod: cache hit for %s/%s, kernel %s (key %s): %d module(s), no dkms build", nv.Name, nv.Version, k.Release, key, len(mods)))
	return true
}

// moduleFileName is a module file's name without .ko and compression.
func moduleFileName(file string) string {
	for _, suf := range []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"} {
		if strings.HasSuffix(file, suf) {
			return strings.TrimSuffix(file, suf)
		}
	}
	return file
}

// pushCache pushes what missed, now signed and checked. A failure is a
// warning: the build goes on.
func (r *run) pushCache(ctx context.Context) {
	if r.cache == nil {
		return
	}
	for _, e := range r.cache.pending {
		var inputs []bundle.ModuleInput
		for _, m := range r.modules {
			if m.Kernel == e.kernel && m.DKMS != nil && *m.DKMS == e.nv {
				data, err := os.ReadFile(m.Host)
				if err != nil {
					r.ui.Error(fmt.Sprintf("kmod: warning: cache: %v", err))
					continue
				}
				inputs = append(inputs, bundle.ModuleInput{File: path.Base(m.Built), Data: data, Early: m.Early, Load: m.Load, Source: m.Source})
			}
		}
		if len(inputs) == 0 {
			continue
		}
		b, err := bundle.New(e.kernel.Release, r.goarch, inputs, r.trusted, bundle.WithName(e.nv.Name), bundle.WithVersion(e.nv.Version))
		if err == nil {
			_, err = bundle.PushOne(ctx, r.cache.loc.WithTag(cacheTag(e.key)), b, r.cache.opts...)
		}
		if err != nil {
			r.ui.Error(fmt.Sprintf("kmod: warning: cache: could not store %s/%s for kernel %s (key %s): %v", e.nv.Name, e.nv.Version, e.kernel.Release, e.key, err))
			continue
		}
		r.ui.Say(fmt.Sprintf("kmod: cache: stored %s/%s for kernel %s (key %s)", e.nv.Name, e.nv.Version, e.kernel.Release, e.key))
	}
}

// isNotFound: a cache entry's tag does not exist (a registry's 404, or an
// image layout without the tag or without index.json yet).
func isNotFound(err error) bool {
	s := err.Error()
	return strings.Contains(s, "MANIFEST_UNKNOWN") || strings.Contains(s, "NAME_UNKNOWN") || strings.Contains(s, "404") ||
		strings.Contains(s, "no such manifest in index.json") || errors.Is(err, os.ErrNotExist)
}

// publish pushes one bundle per image kernel and the index, then records
// them in the image manifest (and manifest_output). A failure fails the
// build, naming the registry and the reason.
func (r *run) publish(ctx context.Context) error {
	p := r.cfg.Publish
	if p.Repository == "" {
		return nil
	}
	base, err := bundle.ParseLocation(p.Repository, p.PlainHTTP)
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	loc := base.WithTag(p.Tag)
	var bundles []*bundle.Bundle
	for _, k := range r.kernels {
		var inputs []bundle.ModuleInput
		for _, m := range r.modules {
			if m.Kernel != k {
				continue
			}
			data, err := os.ReadFile(m.Host)
			if err != nil {
				return fmt.Errorf("publish: %w", err)
			}
			inputs = append(inputs, bundle.ModuleInput{File: path.Base(m.Dest), Data: data, Early: m.Early, Load: m.Load, Source: m.Source})
		}
		if len(inputs) == 0 {
			continue
		}
		b, err := bundle.New(k.Release, r.goarch, inputs, r.trusted, bundle.WithName(r.cfg.PackerBuildName),
			bundle.WithVersion(p.Tag), bundle.WithLoad(r.bundleLoadConfig(k)))
		if err != nil {
			return fmt.Errorf("publish: kernel %s: %w", k.Release, err)
		}
		bundles = append(bundles, b)
	}
	r.ui.Say(fmt.Sprintf("kmod: publishing %d kernel bundle(s) to %s", len(bundles), loc))
	opts := p.options()
	if p.Merge {
		opts = append(opts, bundle.WithMerge())
	}
	res, err := bundle.Push(ctx, loc, bundles, opts...)
	if err != nil {
		return fmt.Errorf("publish to %s: %w", loc, err)
	}
	r.manifest.Bundles = nil
	for _, k := range res.Kernels {
		r.ui.Say(fmt.Sprintf("kmod: published %s/%s: %s", k.Release, k.Arch, k.Reference))
		r.manifest.Bundles = append(r.manifest.Bundles, manifest.Bundle{Release: k.Release, Arch: k.Arch, Reference: k.Reference, Digest: k.Digest.String()})
	}
	r.ui.Say(fmt.Sprintf("kmod: published the index %s (tag %s)", res.Reference, p.Tag))
	return r.saveManifest(ctx)
}

// bundleLoadConfig is the load configuration of kernel k's modules as this
// build writes it (install commands are never carried).
func (r *run) bundleLoadConfig(k *targetKernel) bundle.Load {
	l := bundle.Load{Options: r.cfg.Options, Blacklist: r.cfg.Blacklist, Softdeps: r.cfg.Softdeps}
	seen := map[string]bool{}
	for _, m := range r.modules {
		if m.Kernel == k && m.Load && !seen[m.Name] {
			seen[m.Name] = true
			l.Order = append(l.Order, m.Name)
		}
	}
	return l
}

// bundleModprobe is the modprobe.d configuration the bundles carry, for the
// modules the template's options, blacklist and softdeps do not name (the
// template wins); nil when there is none.
func (r *run) bundleModprobe() *loadconf.ModprobeConf {
	mc := loadconf.ModprobeConf{Name: "kmodctl-bundles", Options: map[string]string{}, Softdeps: map[string]string{}}
	black := map[string]bool{}
	for _, b := range r.cfg.Blacklist {
		black[b] = true
	}
	for _, l := range r.bundleLoad {
		for m, o := range l.Options {
			if _, ok := r.cfg.Options[m]; !ok {
				mc.Options[m] = o
			}
		}
		for m, d := range l.Softdeps {
			if _, ok := r.cfg.Softdeps[m]; !ok {
				mc.Softdeps[m] = d
			}
		}
		for _, b := range l.Blacklist {
			if !black[b] {
				black[b] = true
				mc.Blacklist = append(mc.Blacklist, b)
			}
		}
	}
	if len(mc.Options)+len(mc.Softdeps)+len(mc.Blacklist) == 0 {
		return nil
	}
	return &mc
}
