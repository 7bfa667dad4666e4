package kmod

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
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
	// InTree maps in-tree module names to their path relative to
	// /lib/modules/KVER (not under updates/ or extra/).
	InTree map[string]string
	// Aliases maps an alias pattern to the in-tree modules that claim it.
	Aliases map[string][]string
	// Builtin holds the modules built into the kernel (modules.builtin).
	Builtin map[string]bool
	Model   *kmod.Kernel
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
	k := &targetKernel{Release: release, HostDir: hostRoot, InTree: map[string]string{}, Aliases: map[string][]string{}}
	moddir := "/lib/modules/" + release
	// One round trip to learn which files exist.
	probe := fmt.Sprintf(`m=%s
for f in "$m/build/Module.symvers" "/usr/src/linux-headers-%s/Module.symvers" "/usr/src/kernels/%s/Module.symvers" \
         "/boot/System.map-%s" "/boot/config-%s" "$m/config" \
         "/boot/initrd.img-%s" "/boot/initramfs-%s.img" "$m/modules.dep" "$m/modules.alias" "$m/modules.builtin"; do
  [ -s "$f" ] && echo "$f"
done; exit 0`, shQuote(moddir), release, release, release, release, release, release)
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
	fetch := func(remote string) (string, error) {
		host := filepath.Join(hostRoot, filepath.FromSlash(strings.TrimPrefix(remote, "/")))
		if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
			return "", err
		}
		if err := t.download(remote, host); err != nil {
			return "", fmt.Errorf("kernel %s: %w", release, err)
		}
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
	if have[moddir+"/modules.dep"] {
		host, err := fetch(moddir + "/modules.dep")
		if err != nil {
			return nil, err
		}
		if err := k.readModulesDep(host); err != nil {
			return nil, err
		}
	}
	if have[moddir+"/modules.alias"] {
		host, err := fetch(moddir + "/modules.alias")
		if err != nil {
			return nil, err
		}
		if err := k.readModulesAlias(host); err != nil {
			return nil, err
		}
	}
	if have[moddir+"/modules.builtin"] {
		host, err := fetch(moddir + "/modules.builtin")
		if err != nil {
			return nil, err
		}
		data, err := os.ReadFile(host)
		if err != nil {
			return nil, err
		}
		k.Builtin = map[string]bool{}
		for _, l := range strings.Fields(string(data)) {
			k.Builtin[kmod.ModuleNameFromPath(l)] = true
		}
	}
	var opts []kmod.KernelOption
	opts = append(opts, kmod.WithRelease(release))
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

// readModulesDep fills InTree from modules.dep ("path: deps").
func (k *targetKernel) readModulesDep(host string) error {
	data, err := os.ReadFile(host)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		p, _, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		if strings.HasPrefix(p, "updates/") || strings.HasPrefix(p, "extra/") || strings.HasPrefix(p, "weak-updates/") {
			continue
		}
		k.InTree[kmod.ModuleNameFromPath(p)] = p
	}
	return sc.Err()
}

// readModulesAlias fills Aliases from modules.alias ("alias PATTERN NAME"),
// in-tree modules only.
func (k *targetKernel) readModulesAlias(host string) error {
	data, err := os.ReadFile(host)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" {
			continue
		}
		if _, ok := k.InTree[f[2]]; ok {
			k.Aliases[f[1]] = append(k.Aliases[f[1]], f[2])
		}
	}
	return nil
}

// depClosure returns the modules.dep dependencies (paths relative to the
// module folder) of the modules at rels, read from a host copy of the
// image's (regenerated) modules.dep.
func depClosure(modulesDep string, rels []string) ([]string, error) {
	data, err := os.ReadFile(modulesDep)
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		p, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[p] = strings.Fields(rest)
	}
	seen := map[string]bool{}
	var order []string
	var visit func(string)
	visit = func(p string) {
		for _, d := range deps[p] {
			if !seen[d] {
				seen[d] = true
				order = append(order, d)
				visit(d)
			}
		}
	}
	for _, r := range rels {
		seen[r] = true
	}
	for _, r := range rels {
		visit(r)
	}
	return order, nil
}

// kernelSupportsKey tells whether the kernel can verify module signatures
// made with key algorithm algo ("rsa", "ecdsa") and digest hash ("sha256",
// ...), from its config. Module signatures are checked when a module loads,
// possibly from the initramfs before any crypto module could be loaded: the
// verifier and the digest must be built in.
func kernelSupportsKey(k *targetKernel, algo string, hash ...string) (bool, string) {
	need := map[string]string{}
	if algo == "ecdsa" {
		need["CONFIG_CRYPTO_ECDSA"] = "ECDSA module signatures"
	}
	for _, h := range hash {
		switch h {
		case "sha384", "sha512":
			need["CONFIG_CRYPTO_SHA512"] = h + " module signatures"
		}
	}
	if len(need) == 0 {
		return true, ""
	}
	if k.Config == "" {
		return false, fmt.Sprintf("kernel %s: no config in the image to tell whether it can verify %s; use an RSA key with sha256", k.Release, joinValues(need))
	}
	data, err := os.ReadFile(k.Config)
	if err != nil {
		return false, err.Error()
	}
	cfg := "\n" + string(data)
	for opt, what := range need {
		if strings.Contains(cfg, "\n"+opt+"=y") {
			continue
		}
		v := "not set"
		if strings.Contains(cfg, "\n"+opt+"=m") {
			v = "=m, a module, which cannot verify the modules that load before it"
		}
		fix := "sign with an RSA key"
		if opt == "CONFIG_CRYPTO_SHA512" {
			fix = "use signing_hash = \"sha256\""
		}
		return false, fmt.Sprintf("kernel %s cannot verify %s (%s %s); %s", k.Release, what, opt, v, fix)
	}
	return true, ""
}

func joinValues(m map[string]string) string {
	var vs []string
	for _, v := range m {
		vs = append(vs, v)
	}
	sort.Strings(vs)
	return strings.Join(vs, " and ")
}

// inTreePathFor gives the image path of an in-tree module file.
func (k *targetKernel) inTreePathFor(rel string) string {
	return path.Join("/lib/modules", k.Release, rel)
}

// has tells whether the kernel ships module name (in-tree or built in).
func (k *targetKernel) has(name string) bool {
	name = strings.ReplaceAll(name, "-", "_")
	return k.InTree[name] != "" || k.Builtin[name]
}
