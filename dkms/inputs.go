package dkms

import (
	"context"
	"fmt"
	"path"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// BuildInputs is what a module's DKMS build for one kernel depends on,
// read from the target in one round trip (see Driver.BuildInputs), and
// the plan of that build.
type BuildInputs struct {
	// Conf is the module's dkms.conf (SOURCE_TREE/NAME-VERSION).
	Conf string
	// Config is the dkms configuration that applies: framework.conf,
	// framework.conf.d/*.conf and the module's /etc/dkms overrides, in the
	// order dkms reads them, each after a line "== PATH".
	Config string
	// DKMSSHA256 is the SHA-256 of the dkms program itself.
	DKMSSHA256 string
	// SymversSHA256 and ConfigSHA256 are the SHA-256 of the kernel build
	// tree's Module.symvers and .config ("" when missing).
	SymversSHA256, ConfigSHA256 string
	// Compiler and Linker are the first lines of `--version` of the
	// compiler the kernel was built with (CONFIG_CC_VERSION_TEXT's first
	// word, else gcc) and of ld ("" when missing).
	Compiler, Linker string
	// Plan is dkms.conf evaluated for the kernel (nil when it cannot be
	// parsed); BuiltDir is where dkms build leaves the module files.
	Plan     *Plan
	BuiltDir string
}

// section and file markers of the BuildInputs script's output.
const (
	inputsMark = "@@kmodctl-inputs@@"
	fileMark   = "@@kmodctl-file@@"
)

// BuildInputs reads a module's build inputs for kernel and arch from the
// target in one command: what a build cache keys on (see CacheKeyInputs)
// and what a restored build needs (the plan's module locations, the
// build directory). The module's source must be in SOURCE_TREE (dkms add
// need not have run).
func (d *Driver) BuildInputs(ctx context.Context, name, version, kernel, arch string) (*BuildInputs, error) {
	var overrides []string
	for _, f := range []string{name + ".conf", name + "-" + version + ".conf", name + "-" + version + "-" + kernel + ".conf", name + "-" + version + "-" + kernel + "-" + arch + ".conf"} {
		overrides = append(overrides, shquote.Quote("/etc/dkms/"+f))
	}
	kb := path.Join("/lib/modules", kernel, "build")
	script := `m=` + inputsMark + `
sec() { echo; echo "$m$1"; }
sec framework; cat ` + frameworkConf + ` ` + frameworkConfDir + `/*.conf 2>/dev/null
sec config; for f in ` + frameworkConf + ` ` + frameworkConfDir + `/*.conf ` + strings.Join(overrides, " ") + `; do if [ -f "$f" ]; then echo "== $f"; cat "$f"; fi; done
sec overrides; for f in ` + strings.Join(overrides, " ") + `; do if [ -f "$f" ]; then echo; echo "` + fileMark + `$f"; cat "$f"; fi; done
sec conf; cat ` + shquote.Quote(path.Join("/usr/src", name+"-"+version, "dkms.conf")) + ` 2>/dev/null
sec sums
s() { if [ -f "$1" ]; then sha256sum < "$1" | cut -d' ' -f1; else echo; fi; }
d=$(command -v dkms); if [ -n "$d" ]; then s "$d"; else echo; fi
s ` + shquote.Quote(kb+"/Module.symvers") + `
s ` + shquote.Quote(kb+"/.config") + `
cc=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\([^ ]*\).*/\1/p' ` + shquote.Quote(kb+"/.config") + ` 2>/dev/null)
command -v "$cc" >/dev/null 2>&1 || cc=gcc
echo "$("$cc" --version 2>/dev/null | head -n 1)"
echo "$(ld --version 2>/dev/null | head -n 1)"
sec osrelease; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
sec kconfig; cat ` + shquote.Quote(kb+"/.config") + ` 2>/dev/null
sec end
true`
	out, err := d.output(ctx, "read the build inputs of "+name+"/"+version+" for "+kernel, script)
	if err != nil {
		return nil, err
	}
	secs := map[string]string{}
	parts := strings.Split(out, "\n"+inputsMark)
	for _, p := range parts[1:] {
		head, body, _ := strings.Cut(p, "\n")
		secs[head] = strings.TrimSuffix(body, "\n")
	}
	if _, ok := secs["end"]; !ok {
		return nil, fmt.Errorf("read the build inputs of %s/%s for %s: incomplete output", name, version, kernel)
	}
	in := &BuildInputs{Config: secs["config"]}
	sums := strings.Split(secs["sums"], "\n")
	for len(sums) < 5 {
		sums = append(sums, "")
	}
	in.DKMSSHA256, in.SymversSHA256, in.ConfigSHA256 = strings.TrimSpace(sums[0]), strings.TrimSpace(sums[1]), strings.TrimSpace(sums[2])
	in.Compiler, in.Linker = strings.TrimSpace(sums[3]), strings.TrimSpace(sums[4])

	t := treesFromFramework(secs["framework"], d.logf)
	in.BuiltDir = path.Join(t.dkmsTree, name, version, kernel, arch, "module")
	confPath := path.Join(t.sourceTree, name+"-"+version, "dkms.conf")
	in.Conf = secs["conf"]
	if t.sourceTree != "/usr/src" {
		// The script read the default source tree; read the real one.
		if in.Conf, err = d.output(ctx, "read "+confPath, "cat "+shquote.Quote(confPath)); err != nil {
			return nil, err
		}
	}
	if strings.TrimSpace(in.Conf) == "" {
		return nil, fmt.Errorf("%s: missing or empty", confPath)
	}
	c, err := Parse(strings.NewReader(in.Conf), confPath)
	if err != nil {
		d.logf("dkms: %v", err)
		return in, nil
	}
	o := PlanOptions{DKMSTree: t.dkmsTree, SourceTree: t.sourceTree, InstallTree: t.installTree, Module: name, ModuleVersion: version,
		Distro: DistroFromOSRelease([]byte(secs["osrelease"]))}
	if kc := secs["kconfig"]; kc != "" {
		o.KernelConfig = []byte(kc)
	}
	for _, f := range strings.Split(secs["overrides"], "\n"+fileMark)[1:] {
		p, text, _ := strings.Cut(f, "\n")
		oc, err := Parse(strings.NewReader(text), p)
		if err != nil {
			d.logf("dkms: %v", err)
			continue
		}
		o.Overrides = append(o.Overrides, oc)
	}
	if in.Plan, err = c.PlanWith(kernel, arch, o); err != nil {
		d.logf("dkms: %v", err)
	}
	return in, nil
}
