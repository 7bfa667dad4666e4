package kmod

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// targetKernel is one kernel of the image, with host copies of what the
// checks need.
type targetKernel struct {
	Release string
	// HostDir mirrors the parts of the image this kernel's checks and
	// initramfs work need, at their image paths (lib/modules/KVER/...).
	HostDir string
	// HasHeaders: /lib/modules/KVER/build (or /usr/src/linux-headers-KVER)
	// has a Module.symvers.
	HasHeaders bool
	Symvers    string // host path, "" without headers
	SystemMap  string // host path, "" if the image has none
	Config     string // host path, "" if the image has none
	Initrd     string // image path of its initramfs, "" if none
	// InitrdFile is the initramfs file as the early modules' step left it
	// (nil when it did not touch it), for the manifest.
	InitrdFile *manifest.Initramfs
	// Model is the kernel as the checks see it: its exports, config,
	// in-tree and built-in modules and their aliases.
	Model *kmod.Kernel
}

// detectKernels lists the kernels the image has, newest first: a
// /lib/modules/<release> with a /boot/vmlinuz-<release> or a modules.dep.
func detectKernels(ctx context.Context, t *target) ([]string, error) {
	out, err := t.output(ctx, `cd /lib/modules 2>/dev/null || exit 0
for k in *; do
  [ -d "$k" ] || continue
  if [ -e "/boot/vmlinuz-$k" ] || [ -e "$k/vmlinuz" ] || [ -e "$k/modules.dep" ]; then echo "$k"; fi
done`)
	if err != nil {
		return nil, fmt.Errorf("list the image's kernels: %w", err)
	}
	var ks []string
	for _, l := range strings.Fields(out) {
		if releasePattern.MatchString(l) {
			ks = append(ks, l)
		}
	}
	sort.Slice(ks, func(i, j int) bool { return kmod.CompareReleases(ks[i], ks[j]) > 0 })
	return ks, nil
}

// loadKernel downloads what the checks need for release into hostRoot and
// builds the kernel model. Without the kernel's headers (Module.symvers) or
// a real System.map, vmlinux's exports are unknown: that is an error when
// needExports, else the model has none (VmlinuxKnown false) and the checks
// note what they could not check.
func loadKernel(ctx context.Context, t *target, release, hostRoot string, needExports bool) (*targetKernel, error) {
	k := &targetKernel{Release: release, HostDir: hostRoot}
	moddir := "/lib/modules/" + release
	// One round trip to learn which files exist.
	probe := fmt.Sprintf(`m=%s
for f in "$m/build/Module.symvers" "/usr/src/linux-headers-%s/Module.symvers" "/usr/src/kernels/%s/Module.symvers" \
         "/boot/System.map-%s" "/boot/config-%s" "$m/config" \
         "/boot/initrd.img-%s" "/boot/initramfs-%s.img" "$m/modules.dep" "$m/modules.alias" "$m/modules.builtin"; do
  [ -s "$f" ] && echo "$f"
done; exit 0`, shquote.Quote(moddir), release, release, release, release, release, release)
	out, err := t.output(ctx, probe)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", release, err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			have[l] = true
		}
	}
	// What the checks read, fetched in one round trip below.
	want := map[string]string{}
	fetch := func(remote string) (string, error) {
		host := filepath.Join(hostRoot, filepath.FromSlash(strings.TrimPrefix(remote, "/")))
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			return "", err
		}
		want[remote] = host
		return host, nil
	}
	for _, p := range []string{moddir + "/build/Module.symvers", "/usr/src/linux-headers-" + release + "/Module.symvers", "/usr/src/kernels/" + release + "/Module.symvers"} {
		if have[p] {
			if k.Symvers, err = fetch(p); err != nil {
				return nil, err
			}
			k.HasHeaders = true
			break
		}
	}
	// Module.symvers carries CRCs and namespaces; a System.map is only the
	// fallback (and Debian ships a placeholder one).
	if p := "/boot/System.map-" + release; have[p] && k.Symvers == "" {
		if k.SystemMap, err = fetch(p); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{"/boot/config-" + release, moddir + "/config"} {
		if have[p] {
			if k.Config, err = fetch(p); err != nil {
				return nil, err
			}
			break
		}
	}
	for _, p := range initramfs.Paths(release) {
		if have[p] {
			k.Initrd = p
			break
		}
	}
	opts := []kmod.KernelOption{kmod.WithRelease(release)}
	// depmod's index of the image's tree: its in-tree and built-in
	// modules, and the aliases they claim.
	for _, f := range []struct {
		name string
		opt  func(string) kmod.KernelOption
	}{{"modules.dep", kmod.WithModulesDep}, {"modules.alias", kmod.WithModulesAlias}, {"modules.builtin", kmod.WithModulesBuiltin}} {
		if have[moddir+"/"+f.name] {
			host, err := fetch(moddir + "/" + f.name)
			if err != nil {
				return nil, err
			}
			opts = append(opts, f.opt(host))
		}
	}
	if err := t.downloadFiles(ctx, want); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", release, err)
	}
	if k.Config != "" {
		opts = append(opts, kmod.WithConfig(k.Config))
	}
	if k.Symvers != "" {
		opts = append(opts, kmod.WithSymvers(k.Symvers))
	}
	if k.SystemMap != "" {
		opts = append(opts, kmod.WithSystemMap(k.SystemMap))
	}
	if k.Symvers == "" && k.SystemMap == "" && needExports {
		return nil, fmt.Errorf("kernel %s: the image has neither its headers (Module.symvers) nor /boot/System.map-%s, so modules cannot be checked against it (install_dependencies installs the headers)", release, release)
	}
	if k.Model, err = kmod.LoadKernel(opts...); err != nil {
		if k.Symvers == "" && k.SystemMap != "" && !needExports {
			// Debian's placeholder System.map (the option given last):
			// no exports at all.
			k.SystemMap = ""
			k.Model, err = kmod.LoadKernel(opts[:len(opts)-1]...)
		}
	}
	if err != nil {
		if k.Symvers == "" {
			return nil, fmt.Errorf("kernel %s: %w (without the kernel's headers there is no Module.symvers to check modules against; install_dependencies installs them)", release, err)
		}
		return nil, fmt.Errorf("kernel %s: %w", release, err)
	}
	return k, nil
}

// has tells whether the kernel ships module name (in-tree or built in).
func (k *targetKernel) has(name string) bool {
	name = strings.ReplaceAll(name, "-", "_")
	return k.Model.InTree[name] != "" || k.Model.Builtin[name]
}
