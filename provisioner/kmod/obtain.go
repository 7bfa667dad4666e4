package kmod

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/dkms"
	"github.com/kmodctl/packer-plugin-kmod/internal/linewriter"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// obtain produces the module files of module block i for every kernel:
// built by dkms in the image and downloaded, or the prebuilt files.
func (r *run) obtain(ctx context.Context, i int) error {
	mc := r.cfg.Modules[i]
	switch {
	case mc.Source != "":
		return r.obtainSource(ctx, i, mc)
	case mc.Package != "":
		return r.obtainPackage(ctx, i, mc)
	case mc.Bundle != "":
		return r.obtainBundle(ctx, i, mc)
	default:
		return r.obtainPrebuilt(i, mc)
	}
}

func (r *run) obtainSource(ctx context.Context, i int, mc ModuleConfig) error {
	dir, err := r.sourceTree(mc.Source)
	if err != nil {
		return fmt.Errorf("module[%d].source %s: %w", i, mc.Source, err)
	}
	conf, err := dkms.ParseFile(filepath.Join(dir, "dkms.conf"))
	if err != nil {
		return fmt.Errorf("module[%d].source %s: %w", i, mc.Source, err)
	}
	if conf.PackageName == "" || conf.PackageVersion == "" {
		return fmt.Errorf("module[%d].source %s: dkms.conf sets no PACKAGE_NAME/PACKAGE_VERSION", i, mc.Source)
	}
	digest, err := treeDigest(dir)
	if err != nil {
		return err
	}
	nv := dkms.NameVersion{Name: conf.PackageName, Version: conf.PackageVersion}
	dst := "/usr/src/" + nv.Name + "-" + nv.Version
	r.ui.Say(fmt.Sprintf("kmod: uploading %s to %s", mc.Source, dst))
	if _, err := r.t.output(ctx, "rm -rf "+shquote.Quote(dst)+" && mkdir -p "+shquote.Quote(dst)); err != nil {
		return fmt.Errorf("module %s: %w", nv.Name, err)
	}
	if err := r.t.comm.UploadDir(dst, dir+"/", nil); err != nil {
		return fmt.Errorf("module %s: upload source: %w", nv.Name, err)
	}
	src := manifest.Source{Kind: "source", Name: nv.Name, Version: nv.Version, Digest: "sha256:" + digest}
	return r.buildAll(ctx, i, mc, nv, src)
}

func (r *run) obtainPackage(ctx context.Context, i int, mc ModuleConfig) error {
	r.ui.Say(fmt.Sprintf("kmod: installing %s (%s)", mc.Package, r.pm))
	if _, err := dkms.InstallPackages(ctx, r.t, r.pm, []string{mc.Package}, linewriter.New(r.ui.Message)); err != nil {
		return fmt.Errorf("module[%d].package %s: %w", i, mc.Package, err)
	}
	nvs, err := r.driver.PackageModules(ctx, mc.Package)
	if err != nil {
		return fmt.Errorf("module[%d].package %s: %w", i, mc.Package, err)
	}
	if len(nvs) == 0 {
		return fmt.Errorf("module[%d].package %s ships no DKMS source (no /usr/src/*/dkms.conf)", i, mc.Package)
	}
	ver, _ := r.t.output(ctx, "dpkg-query -W -f='${Version}' "+shquote.Quote(mc.Package)+" 2>/dev/null || rpm -q --qf '%{VERSION}-%{RELEASE}' "+shquote.Quote(mc.Package))
	for _, nv := range nvs {
		src := manifest.Source{Kind: "package", Name: mc.Package, Version: strings.TrimSpace(ver)}
		if err := r.buildAll(ctx, i, mc, nv, src); err != nil {
			return err
		}
	}
	return nil
}

// buildAll runs dkms add/build for every kernel and downloads the results,
// or takes them from the cache.
func (r *run) buildAll(ctx context.Context, i int, mc ModuleConfig, nv dkms.NameVersion, src manifest.Source) error {
	// dkms add before the first build; when every kernel hits the cache,
	// at install (dkms install needs the module added, no build does).
	added := false
	add := func() error {
		if added {
			return nil
		}
		added = true
		if err := r.driver.Add(ctx, nv.Name, nv.Version); err != nil {
			return fmt.Errorf("module %s %s: dkms add: %w", nv.Name, nv.Version, err)
		}
		return nil
	}
	built := 0
	for _, k := range r.kernels {
		if r.cache != nil {
			key, bi, why := r.cacheKey(ctx, k, nv, src)
			switch {
			case key == "":
				r.ui.Message(fmt.Sprintf("kmod: cache: %s/%s for kernel %s is built and not cached: %s", nv.Name, nv.Version, k.Release, why))
			case r.fromCache(ctx, i, mc, nv, src, k, key, bi):
				built++
				continue
			default:
				r.cache.pending = append(r.cache.pending, cacheEntry{key: key, nv: nv, kernel: k})
			}
		}
		if err := add(); err != nil {
			return err
		}
		r.ui.Say(fmt.Sprintf("kmod: dkms build %s/%s for kernel %s", nv.Name, nv.Version, k.Release))
		res, err := r.driver.Build(ctx, nv.Name, nv.Version, k.Release, r.arch)
		if err != nil {
			return fmt.Errorf("module %s %s, kernel %s: %w", nv.Name, nv.Version, k.Release, err)
		}
		if res.Excluded {
			r.ui.Message(fmt.Sprintf("kmod: %s/%s is not for kernel %s: %s", nv.Name, nv.Version, k.Release, res.Reason))
			continue
		}
		for _, bm := range res.Modules {
			host := filepath.Join(r.work, "modules", k.Release, nv.Name, path.Base(bm.Path))
			if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
				return err
			}
			if err := r.t.download(bm.Path, host); err != nil {
				return fmt.Errorf("module %s, kernel %s: %w", bm.Name, k.Release, err)
			}
			nvCopy := nv
			r.modules = append(r.modules, &module{
				Block: i, Kernel: k, Name: bm.Name, Host: host,
				Dest:  path.Join(imageModuleDir(k), bm.DestDir, path.Base(bm.Path)),
				Early: mc.Early, Load: *mc.Load, Source: src, DKMS: &nvCopy, Built: bm.Path,
			})
			built++
		}
	}
	if built == 0 {
		return fmt.Errorf("module %s %s: built for none of the kernels (%s)", nv.Name, nv.Version, r.kernelList())
	}
	if !added {
		r.toAdd = append(r.toAdd, nv)
	}
	return nil
}

func (r *run) obtainPrebuilt(i int, mc ModuleConfig) error {
	for _, f := range mc.Prebuilt {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("module[%d].prebuilt: %w", i, err)
		}
		parsed, err := kmod.Parse(data, kmod.InfoOnly())
		if err != nil {
			return fmt.Errorf("module[%d].prebuilt %s: %w", i, f, err)
		}
		parsed.Path = f
		name := parsed.Name()
		for _, k := range r.kernels {
			host := filepath.Join(r.work, "modules", k.Release, "prebuilt", filepath.Base(f))
			if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(host, data, 0o644); err != nil {
				return err
			}
			r.modules = append(r.modules, &module{
				Block: i, Kernel: k, Name: name, Host: host,
				Dest:  path.Join(imageModuleDir(k), "updates/kmodctl", filepath.Base(f)),
				Early: mc.Early, Load: *mc.Load,
				Source: manifest.Source{Kind: "prebuilt", Name: filepath.Base(f), Digest: "sha256:" + sha256Hex(data)},
			})
		}
	}
	return nil
}

func (r *run) kernelList() string {
	var s []string
	for _, k := range r.kernels {
		s = append(s, k.Release)
	}
	return strings.Join(s, ", ")
}

// sourceTree returns a private host copy of the DKMS source: src copied
// with symlinks dereferenced (a link out of the tree would dangle in the
// image), or src extracted when it is a tar archive; dkms.conf at its top or
// in its single top-level folder.
func (r *run) sourceTree(src string) (string, error) {
	st, err := os.Stat(src)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(r.work, "source-")
	if err != nil {
		return "", err
	}
	var cmd *exec.Cmd
	if st.IsDir() {
		cmd = exec.Command("cp", "-rL", "--no-preserve=ownership", src+"/.", dir)
	} else {
		// GNU tar refuses absolute and .. members by default.
		cmd = exec.Command("tar", "-xf", src, "-C", dir, "--no-same-owner", "--no-same-permissions")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("copy: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if _, err := os.Stat(filepath.Join(dir, "dkms.conf")); err == nil {
		return dir, nil
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) == 1 && ents[0].IsDir() {
		sub := filepath.Join(dir, ents[0].Name())
		if _, err := os.Stat(filepath.Join(sub, "dkms.conf")); err == nil {
			return sub, nil
		}
	}
	return "", fmt.Errorf("no dkms.conf at its top")
}

// treeDigest is a sha256 over the sorted relative paths, modes and
// contents of the regular files and symlinks of dir.
func treeDigest(dir string) (string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	h := sha256.New()
	for _, p := range files {
		rel, _ := filepath.Rel(dir, p)
		st, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", filepath.ToSlash(rel), st.Mode())
		if st.Mode()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			io.WriteString(h, l)
		} else if st.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return "", err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return "", err
			}
		}
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
