package dkms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// Runner runs a /bin/sh command line on the target (a chroot, or a Packer
// communicator) and reports its exit status. err is for failures to run
// the command at all, not for a non-zero exit status.
type Runner interface {
	Run(ctx context.Context, command string, stdout, stderr io.Writer) (exitStatus int, err error)
}

// Driver drives the real dkms on the target.
type Driver struct {
	R   Runner
	Log func(string) // progress and dkms's output, line by line; may be nil
}

// BuildResult is what a dkms build yielded for one kernel.
type BuildResult struct {
	Kernel   string
	Arch     string // the architecture directory dkms used
	Excluded bool   // BUILD_EXCLUSIVE_* excludes this kernel: nothing was built
	Reason   string
	Modules  []BuiltModule
	// Plan is the evaluation of the module's dkms.conf for this kernel
	// (nil when it could not be read or parsed).
	Plan *Plan
}

// BuiltModule is a module in dkms's tree after dkms build.
type BuiltModule struct {
	Name    string // DEST_MODULE_NAME: the file name without .ko[.xz|.gz|.zst]
	Path    string // absolute path on the target: DKMS_TREE/NAME/VERSION/KVER/ARCH/module/Name.ko[.xz|.gz|.zst]
	DestDir string // where dkms install would put it under /lib/modules/KVER (from the plan; empty when unknown)
}

// NameVersion is a dkms module name and version (dkms -m NAME -v VERSION).
type NameVersion struct{ Name, Version string }

const maxOutput = 8 << 20 // command output kept in memory

// limitedBuffer keeps the first maxOutput bytes written to it; it is safe
// for the concurrent writes of a command's stdout and stderr.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	log func(string)
	ln  []byte // partial line for log
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := maxOutput - b.buf.Len(); room > 0 {
		if len(p) > room {
			b.buf.Write(p[:room])
		} else {
			b.buf.Write(p)
		}
	}
	if b.log != nil {
		b.ln = append(b.ln, p...)
		for {
			i := bytes.IndexByte(b.ln, '\n')
			if i < 0 {
				break
			}
			b.log(string(bytes.TrimRight(b.ln[:i], "\r")))
			b.ln = b.ln[i+1:]
		}
		if len(b.ln) > 64<<10 {
			b.log(string(b.ln))
			b.ln = nil
		}
	}
	return len(p), nil
}

func (b *limitedBuffer) flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.log != nil && len(b.ln) > 0 {
		b.log(string(b.ln))
		b.ln = nil
	}
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (d *Driver) logf(format string, args ...any) {
	if d.Log != nil {
		d.Log(fmt.Sprintf(format, args...))
	}
}

// run runs a command, returning its stdout and stderr.
func (d *Driver) run(ctx context.Context, cmd string) (stdout, stderr string, status int, err error) {
	return runOn(ctx, d.R, cmd, nil)
}

func runOn(ctx context.Context, r Runner, cmd string, log func(string)) (stdout, stderr string, status int, err error) {
	var o, e limitedBuffer
	if log != nil {
		o.log, e.log = log, log
	}
	status, err = r.Run(ctx, cmd, &o, &e)
	o.flush()
	e.flush()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return o.String(), e.String(), status, err
}

// output runs a command that must succeed and returns its stdout.
func (d *Driver) output(ctx context.Context, what, cmd string) (string, error) {
	out, errOut, st, err := d.run(ctx, cmd)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if st != 0 {
		return "", fmt.Errorf("%s: exit status %d: %s", what, st, lastLines(strings.TrimSpace(errOut+"\n"+out), 10))
	}
	return out, nil
}

// combined runs a command with stderr into stdout (one buffer, as a
// terminal would show it), logging each line.
func (d *Driver) combined(ctx context.Context, cmd string) (string, int, error) {
	var b limitedBuffer
	b.log = d.Log
	st, err := d.R.Run(ctx, cmd, &b, &b)
	b.flush()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return b.String(), st, err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- dkms configuration ----

const (
	frameworkConf    = "/etc/dkms/framework.conf"
	frameworkConfDir = "/etc/dkms/framework.conf.d"
	noSignConfName   = "zz-packer-plugin-kmod-nosign.conf"
	// a path that is never a file: dkms then does not sign
	noSignFile = "/nonexistent/packer-plugin-kmod/signing-disabled"
)

// noSignConf disables signing in every dkms version:
//   - dkms 3.0.4 to 3.3: prepare_signing returns ("Binary ... not found,
//     modules won't be signed") when sign_file is not an executable file,
//     before it would generate mok.key and mok.pub; sign_file is read from
//     framework.conf and framework.conf.d/*.conf (read_framework_conf).
//   - dkms >= 3.4 also has try_sign_modules; "false" disables signing.
//   - dkms 2.x signs only with a sign_tool set in framework.conf.
const noSignConf = `# Written by packer-plugin-kmod while it builds kernel modules, removed
# afterwards: dkms builds without signing and does not generate
# /var/lib/dkms/mok.key and mok.pub in the image.
sign_file="` + noSignFile + `"
try_sign_modules="false"
sign_tool=""
`

// dkmsTrees are dkms's tree locations on the target.
type dkmsTrees struct {
	dkmsTree, sourceTree, installTree string
}

// trees reads dkms_tree, source_tree and install_tree from the framework
// configuration (without running it), falling back to dkms's defaults.
func (d *Driver) trees(ctx context.Context) dkmsTrees {
	out, _, st, err := d.run(ctx, "cat "+frameworkConf+" "+frameworkConfDir+"/*.conf 2>/dev/null; true")
	if err != nil || st != 0 {
		return treesFromFramework("", d.logf)
	}
	return treesFromFramework(out, d.logf)
}

// treesFromFramework reads the trees from the framework configuration's
// text (framework.conf and framework.conf.d/*.conf concatenated).
func treesFromFramework(text string, logf func(string, ...any)) dkmsTrees {
	t := dkmsTrees{"/var/lib/dkms", "/usr/src", "/lib/modules"}
	if strings.TrimSpace(text) == "" {
		return t
	}
	// the files are sourced one after the other: their concatenation
	// assigns the same values
	c, err := Parse(strings.NewReader(text+"\n"), "framework.conf")
	if err != nil {
		logf("dkms: cannot read the framework configuration (%v): using dkms's default trees", err)
		return t
	}
	for name, dst := range map[string]*string{"dkms_tree": &t.dkmsTree, "source_tree": &t.sourceTree, "install_tree": &t.installTree} {
		if v, ok := c.in.vars[name]; ok {
			if e, ok := v.elems[0]; ok && e.known && strings.HasPrefix(e.val, "/") && !v.unknown {
				*dst = path.Clean(e.val)
			} else {
				logf("dkms: %s in the framework configuration is known only when dkms runs: using %s", name, *dst)
			}
		}
	}
	return t
}

// dkmsVersion returns dkms's version ("3.0.10"), or "" when dkms is not
// installed or does not say.
func (d *Driver) dkmsVersion(ctx context.Context) string {
	out, _, st, err := d.run(ctx, "dkms --version 2>/dev/null")
	if err != nil || st != 0 {
		return ""
	}
	m := regexp.MustCompile(`(\d+)\.(\d+)(\.(\d+))?`).FindString(out)
	return m
}

// versionLess compares dotted numeric versions.
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// DisableSigning makes dkms build without signing and without generating
// /var/lib/dkms/mok.key and mok.pub in the image. It returns a function
// that puts the image's dkms configuration back exactly (same files, same
// bytes).
//
// How (dkms 3.0.10, Debian 12, /usr/sbin/dkms): do_build calls
// prepare_signing before anything is built. prepare_signing reads sign_file,
// mok_signing_key and mok_certificate from /etc/dkms/framework.conf and
// /etc/dkms/framework.conf.d/*.conf (read_framework_conf, in that order, so
// a later file wins); when sign_file is empty it uses the kernel's
// /usr/lib/linux-kbuild-X.Y/scripts/sign-file. If sign_file is not an
// executable file it prints "Binary ... not found, modules won't be signed"
// and returns: no signing, and the key generation, which comes after (an
// openssl req writing mok.key and mok.pub when either is missing), never
// runs. dkms 3.0.10 does not look at CONFIG_MODULE_SIG (it signs with sha512
// when the kernel config has no CONFIG_MODULE_SIG_HASH), so the kernel
// config cannot be relied on. DisableSigning therefore writes
// framework.conf.d/zz-packer-plugin-kmod-nosign.conf (sorted last) setting
// sign_file to a path that does not exist, plus try_sign_modules="false"
// for dkms >= 3.4 and sign_tool="" for dkms 2.x. dkms older than 3.0.4
// reads only framework.conf: for those the same lines are appended to
// framework.conf and restore writes its original bytes back.
//
// Call it after installing dkms and before installing *-dkms packages:
// their postinst builds modules right away.
func (d *Driver) DisableSigning(ctx context.Context) (restore func(context.Context) error, err error) {
	ver := d.dkmsVersion(ctx)
	if ver != "" && versionLess(ver, "3.0.4") {
		return d.disableSigningLegacy(ctx, ver)
	}
	file := frameworkConfDir + "/" + noSignConfName
	// What exists now: the directories, and a file of ours left behind?
	out, err := d.output(ctx, "dkms signing: inspect "+frameworkConfDir,
		"for d in /etc/dkms "+frameworkConfDir+"; do if [ -d \"$d\" ]; then echo \"dir $d\"; fi; done; "+
			"if [ -e "+file+" ]; then echo file; fi")
	if err != nil {
		return nil, err
	}
	var created []string
	for _, dir := range []string{"/etc/dkms", frameworkConfDir} {
		if !strings.Contains(out, "dir "+dir+"\n") {
			created = append(created, dir)
		}
	}
	var old []byte
	oldMode := ""
	hadFile := strings.Contains(out, "file\n")
	if hadFile {
		o, err := d.output(ctx, "dkms signing: read "+file, "cat "+file)
		if err != nil {
			return nil, err
		}
		old = []byte(o)
		m, err := d.output(ctx, "dkms signing: mode of "+file, "stat -c %a "+file)
		if err != nil {
			return nil, err
		}
		oldMode = strings.TrimSpace(m)
		if string(old) == noSignConf {
			// left behind by a run that could not restore: not the image's
			d.logf("dkms: %s is left over from an earlier run: it goes on restore", file)
			hadFile = false
		}
	}
	if _, err := d.output(ctx, "dkms signing: write "+file,
		"umask 022 && mkdir -p "+frameworkConfDir+" && printf '%s' "+shquote.Quote(noSignConf)+" > "+file+".tmp && mv -f "+file+".tmp "+file); err != nil {
		return nil, err
	}
	d.logf("dkms: signing disabled for the build (%s, dkms %s)", file, orUnknown(ver))
	restore = func(ctx context.Context) error {
		var cmd string
		if hadFile {
			cmd = "printf '%s' " + shquote.Quote(string(old)) + " > " + file + " && chmod " + oldMode + " " + file
		} else {
			cmd = "rm -f " + file
			// remove the directories we created, unless something else
			// (a package installed meanwhile) owns or fills them
			for i := len(created) - 1; i >= 0; i-- {
				dq := shquote.Quote(created[i])
				cmd += "; if [ -d " + dq + " ] && [ -z \"$(ls -A " + dq + ")\" ]; then o=no; " +
					"if command -v dpkg-query >/dev/null 2>&1 && dpkg-query -S " + dq + " >/dev/null 2>&1; then o=yes; fi; " +
					"if command -v rpm >/dev/null 2>&1 && rpm -qf " + dq + " >/dev/null 2>&1; then o=yes; fi; " +
					"if [ $o = no ]; then rmdir " + dq + "; fi; fi"
			}
		}
		if _, err := d.output(ctx, "dkms signing: restore the dkms configuration", cmd); err != nil {
			return err
		}
		d.logf("dkms: signing configuration restored")
		return nil
	}
	return restore, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "not installed yet"
	}
	return s
}

// disableSigningLegacy appends the settings to framework.conf (dkms < 3.0.4
// reads no framework.conf.d).
func (d *Driver) disableSigningLegacy(ctx context.Context, ver string) (func(context.Context) error, error) {
	out, err := d.output(ctx, "dkms signing: inspect "+frameworkConf, "if [ -f "+frameworkConf+" ]; then echo yes; cat "+frameworkConf+"; else echo no; fi")
	if err != nil {
		return nil, err
	}
	had := strings.HasPrefix(out, "yes\n")
	var old string
	if had {
		old = strings.TrimPrefix(out, "yes\n")
	}
	if _, err := d.output(ctx, "dkms signing: append to "+frameworkConf,
		"umask 022 && mkdir -p /etc/dkms && printf '\\n%s' "+shquote.Quote(noSignConf)+" >> "+frameworkConf); err != nil {
		return nil, err
	}
	d.logf("dkms: signing disabled for the build (%s, dkms %s)", frameworkConf, ver)
	return func(ctx context.Context) error {
		cmd := "rm -f " + frameworkConf
		if had {
			cmd = "printf '%s' " + shquote.Quote(old) + " > " + frameworkConf
		}
		_, err := d.output(ctx, "dkms signing: restore "+frameworkConf, cmd)
		return err
	}, nil
}

// ---- add and build ----

// Add registers /usr/src/NAME-VERSION with dkms (dkms add -m NAME -v
// VERSION). A module already added is fine.
func (d *Driver) Add(ctx context.Context, name, version string) error {
	t := d.trees(ctx)
	src := path.Join(t.dkmsTree, name, version, "source")
	out, _, _, err := d.run(ctx, "if [ -e "+shquote.Quote(src)+" ] || [ -L "+shquote.Quote(src)+" ]; then echo added; fi")
	if err != nil {
		return fmt.Errorf("dkms add %s/%s: %w", name, version, err)
	}
	if strings.TrimSpace(out) == "added" {
		d.logf("dkms: %s/%s is already added", name, version)
		return nil
	}
	cmd := "dkms add -m " + shquote.Quote(name) + " -v " + shquote.Quote(version)
	d.logf("dkms: %s", cmd)
	text, st, err := d.combined(ctx, cmd)
	if err != nil {
		return fmt.Errorf("dkms add %s/%s: %w", name, version, err)
	}
	if st == 0 || st == 3 && strings.Contains(text, "already contains") {
		return nil
	}
	return fmt.Errorf("dkms add %s/%s failed (exit status %d): %s", name, version, st, strings.TrimSpace(lastLines(text, 15)))
}

// kernelHeadersHint tells how to get headers on the common distributions.
func kernelHeadersHint(kernel string) string {
	return fmt.Sprintf("install the kernel's headers (Debian/Ubuntu: linux-headers-%s; Fedora/RHEL: kernel-devel-%s; SUSE: kernel-default-devel)", kernel, kernel)
}

// Build builds a module that was added for one kernel (dkms build -m NAME
// -v VERSION -k KERNEL [-a ARCH] --force) and checks that every module
// its dkms.conf plans is in dkms's tree (DKMS_TREE/NAME/VERSION/KERNEL/
// ARCH/module/, the dkms 3.0 layout). An empty arch is what dkms uses by
// default (uname -m on the target). A kernel that BUILD_EXCLUSIVE_*
// excludes yields a BuildResult with Excluded set, not an error. Errors
// name the module and kernel and, for failed builds, quote make.log (error
// lines first).
func (d *Driver) Build(ctx context.Context, name, version, kernel, arch string) (*BuildResult, error) {
	what := fmt.Sprintf("dkms build of %s/%s for kernel %s", name, version, kernel)
	if kernel == "" {
		return nil, fmt.Errorf("%s: no kernel given (dkms would build for the running kernel, which is the build host's in a chroot)", what)
	}
	t := d.trees(ctx)
	kdir := path.Join(t.installTree, kernel, "build")
	out, _, _, err := d.run(ctx, "if [ -e "+shquote.Quote(kdir+"/include")+" ]; then echo headers; fi; uname -m")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if !strings.HasPrefix(out, "headers\n") {
		return nil, fmt.Errorf("%s: no kernel headers for %s: %s/include does not exist (%s)", what, kernel, kdir, kernelHeadersHint(kernel))
	}
	planArch := arch
	if planArch == "" {
		planArch = strings.TrimSpace(strings.TrimPrefix(out, "headers\n"))
	}
	res := &BuildResult{Kernel: kernel, Arch: planArch}
	res.Plan = d.plan(ctx, t, name, version, kernel, planArch)

	cmd := "dkms build -m " + shquote.Quote(name) + " -v " + shquote.Quote(version) + " -k " + shquote.Quote(kernel)
	if arch != "" {
		cmd += " -a " + shquote.Quote(arch)
	}
	cmd += " --force"
	d.logf("dkms: %s", cmd)
	text, st, err := d.combined(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	excludedMsg := strings.Contains(text, "BUILD_EXCLUSIVE directive which does not match")
	if st == 77 || excludedMsg && st != 0 {
		res.Excluded = true
		res.Reason = "dkms: BUILD_EXCLUSIVE_* does not match this kernel/arch/config"
		if res.Plan != nil && res.Plan.Excluded {
			res.Reason = res.Plan.Reason
		}
		d.logf("dkms: %s/%s is not built for %s: %s", name, version, kernel, res.Reason)
		return res, nil
	}
	if st != 0 {
		return nil, d.buildError(ctx, t, what, name, version, kernel, planArch, st, text)
	}
	mods, dir, err := d.builtModules(ctx, t, name, version, kernel, planArch)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("%s: dkms exited 0 but built no module (nothing in %s): %s", what, dir, strings.TrimSpace(lastLines(text, 10)))
	}
	res.Arch = path.Base(path.Dir(dir))
	if res.Plan != nil {
		complete := true
		for _, u := range res.Plan.Unknown {
			switch u {
			case "BUILT_MODULE_NAME", "DEST_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_LOCATION", "PACKAGE_NAME":
				complete = false
			}
		}
		var missing []string
		for _, pm := range res.Plan.Modules {
			found := false
			for i := range mods {
				if mods[i].Name == pm.Name {
					mods[i].DestDir = pm.DestDir
					found = true
				}
			}
			if !found {
				missing = append(missing, pm.Name)
			}
		}
		if len(missing) > 0 && complete {
			return nil, fmt.Errorf("%s: dkms exited 0 but %s missing from %s (built: %s)", what, strings.Join(missing, ", "), dir, moduleNames(mods))
		}
		if len(missing) > 0 {
			d.logf("dkms: planned but not built (the plan is incomplete: %s): %s", strings.Join(res.Plan.Unknown, ", "), strings.Join(missing, ", "))
		}
	}
	res.Modules = mods
	d.logf("dkms: built for %s: %s", kernel, moduleNames(mods))
	return res, nil
}

// Install installs a built module into kernel's module tree (dkms install
// -m NAME -v VERSION -k KERNEL[/ARCH] --force), so that dkms's bookkeeping
// (status, autoinstall, removal) knows it. It asks dkms not to run depmod
// (dkms 3.0's --no-depmod; older versions refuse the option and are run
// again without it): the caller runs depmod once per kernel after all
// installs. An empty arch is dkms's default.
func (d *Driver) Install(ctx context.Context, name, version, kernel, arch string) error {
	what := fmt.Sprintf("dkms install of %s/%s for kernel %s", name, version, kernel)
	if kernel == "" {
		return fmt.Errorf("%s: no kernel given (dkms would install for the running kernel, which is the build host's in a chroot)", what)
	}
	cmd := installCommand(name, version, kernel, arch)
	d.logf("dkms: %s", cmd)
	text, st, err := d.combined(ctx, cmd)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st != 0 {
		return fmt.Errorf("%s failed (exit status %d): %s", what, st, strings.TrimSpace(lastLines(text, 15)))
	}
	return nil
}

// InstallRequest is one module for InstallAll.
type InstallRequest struct{ Name, Version, Kernel, Arch string }

// InstallAll is Install for each request, in order, in one command on the
// target: each command is a process start there plus, through Packer, a
// communicator round trip. It stops at the first failure, which names its
// module and kernel (the command exits 100 + its index).
func (d *Driver) InstallAll(ctx context.Context, reqs []InstallRequest) error {
	for len(reqs) > 0 {
		n := min(len(reqs), 100) // exit statuses 100..199
		var script strings.Builder
		for i, q := range reqs[:n] {
			if q.Kernel == "" {
				return fmt.Errorf("dkms install of %s/%s: no kernel given (dkms would install for the running kernel, which is the build host's in a chroot)", q.Name, q.Version)
			}
			cmd := installCommand(q.Name, q.Version, q.Kernel, q.Arch)
			d.logf("dkms: %s", cmd)
			fmt.Fprintf(&script, "{ %s; } || exit %d\n", cmd, 100+i)
		}
		text, st, err := d.combined(ctx, script.String())
		if err != nil {
			return fmt.Errorf("dkms install of %s: %w", installNames(reqs[:n]), err)
		}
		if st != 0 {
			if st >= 100 && st < 100+n {
				q := reqs[st-100]
				return fmt.Errorf("dkms install of %s/%s for kernel %s failed: %s", q.Name, q.Version, q.Kernel, strings.TrimSpace(lastLines(text, 15)))
			}
			return fmt.Errorf("dkms install of %s failed (exit status %d): %s", installNames(reqs[:n]), st, strings.TrimSpace(lastLines(text, 15)))
		}
		reqs = reqs[n:]
	}
	return nil
}

func installNames(reqs []InstallRequest) string {
	var s []string
	for _, q := range reqs {
		s = append(s, q.Name+"/"+q.Version+" ("+q.Kernel+")")
	}
	return strings.Join(s, ", ")
}

// installCommand is the /bin/sh command line Install runs.
func installCommand(name, version, kernel, arch string) string {
	k := kernel
	if arch != "" {
		k += "/" + arch
	}
	args := " -m " + shquote.Quote(name) + " -v " + shquote.Quote(version) + " -k " + shquote.Quote(k)
	return "dkms install --force --no-depmod" + args + " 2>&1 || dkms install --force" + args
}

func moduleNames(mods []BuiltModule) string {
	var n []string
	for _, m := range mods {
		n = append(n, path.Base(m.Path))
	}
	if len(n) == 0 {
		return "nothing"
	}
	return strings.Join(n, ", ")
}

var moduleSuffixes = []string{".ko", ".ko.xz", ".ko.gz", ".ko.zst"}

// builtModules lists dkms's module directory for a kernel: ARCH/module, or
// the only */module when dkms chose another arch name.
func (d *Driver) builtModules(ctx context.Context, t dkmsTrees, name, version, kernel, arch string) ([]BuiltModule, string, error) {
	base := path.Join(t.dkmsTree, name, version, kernel)
	dir := path.Join(base, arch, "module")
	out, err := d.output(ctx, "list "+dir,
		"d="+shquote.Quote(dir)+"; if [ ! -d \"$d\" ]; then for x in "+shquote.Quote(base)+"/*/module; do if [ -d \"$x\" ]; then d=$x; fi; done; fi; "+
			"echo \"$d\"; if [ -d \"$d\" ]; then ls -1A \"$d\"; fi")
	if err != nil {
		return nil, dir, err
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	dir = lines[0]
	var mods []BuiltModule
	for _, f := range lines[1:] {
		for _, suf := range moduleSuffixes {
			if strings.HasSuffix(f, suf) {
				mods = append(mods, BuiltModule{Name: strings.TrimSuffix(f, suf), Path: path.Join(dir, f)})
				break
			}
		}
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].Name < mods[j].Name })
	return mods, dir, nil
}

// plan reads the module's dkms.conf (and dkms's overrides) from the target
// and evaluates it for the kernel; nil when that is not possible.
func (d *Driver) plan(ctx context.Context, t dkmsTrees, name, version, kernel, arch string) *Plan {
	confPath := path.Join(t.dkmsTree, name, version, "source", "dkms.conf")
	text, err := d.output(ctx, "read "+confPath, "cat "+shquote.Quote(confPath))
	if err != nil {
		d.logf("dkms: cannot read %s (%v): relying on dkms alone", confPath, err)
		return nil
	}
	c, err := Parse(strings.NewReader(text), confPath)
	if err != nil {
		d.logf("dkms: %v: relying on dkms alone", err)
		return nil
	}
	o := PlanOptions{DKMSTree: t.dkmsTree, SourceTree: t.sourceTree, InstallTree: t.installTree, Module: name, ModuleVersion: version}
	// Regular expressions only glibc can answer are matched by the
	// target's bash, the pattern and the subject passed as arguments.
	o.MatchERE = func(pattern, subject string) (bool, error) {
		_, errOut, st, err := d.run(ctx, "bash -c '[[ $2 =~ $1 ]]' kmodctl-ere "+shquote.Join(pattern, subject))
		if err != nil {
			return false, fmt.Errorf("bash [[ =~ ]] on the target: %w", err)
		}
		switch st {
		case 0:
			return true, nil
		case 1:
			return false, nil
		case 2:
			return false, &EREError{Pattern: pattern, Msg: "bash's [[ =~ ]] on the target returns status 2"}
		}
		return false, fmt.Errorf("bash [[ =~ ]] on the target: exit status %d: %s", st, lastLines(strings.TrimSpace(errOut), 3))
	}
	if osr, _, st, err := d.run(ctx, "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release"); err == nil && st == 0 {
		o.Distro = DistroFromOSRelease([]byte(osr))
	}
	if cfg, _, st, err := d.run(ctx, "cat "+shquote.Quote(path.Join(t.installTree, kernel, "build", ".config"))); err == nil && st == 0 {
		o.KernelConfig = []byte(cfg)
	}
	for _, f := range []string{name + ".conf", name + "-" + version + ".conf", name + "-" + version + "-" + kernel + ".conf", name + "-" + version + "-" + kernel + "-" + arch + ".conf"} {
		p := "/etc/dkms/" + f
		if s, _, st, err := d.run(ctx, "if [ -e "+shquote.Quote(p)+" ]; then cat "+shquote.Quote(p)+"; else exit 3; fi"); err == nil && st == 0 {
			oc, err := Parse(strings.NewReader(s), p)
			if err != nil {
				d.logf("dkms: %v", err)
				continue
			}
			o.Overrides = append(o.Overrides, oc)
		}
	}
	p, err := c.PlanWith(kernel, arch, o)
	if err != nil {
		d.logf("dkms: %v", err)
	}
	if p != nil {
		for _, w := range p.Warnings {
			d.logf("dkms: %s: %s", confPath, w)
		}
		if len(p.Unknown) > 0 {
			d.logf("dkms: %s: known only when dkms runs: %s", confPath, strings.Join(p.Unknown, ", "))
		}
	}
	return p
}

// buildError describes a failed dkms build, quoting make.log.
func (d *Driver) buildError(ctx context.Context, t dkmsTrees, what, name, version, kernel, arch string, status int, dkmsOut string) error {
	var msg strings.Builder
	fmt.Fprintf(&msg, "%s (%s) failed (dkms exit status %d)", what, arch, status)
	var dkmsErr []string
	lines := strings.Split(dkmsOut, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "Error!") {
			dkmsErr = append(dkmsErr, strings.TrimSpace(strings.TrimPrefix(l, "Error!")))
			if i+1 < len(lines) && strings.TrimSpace(lines[i+1]) != "" && !strings.HasPrefix(lines[i+1], "Error!") {
				dkmsErr = append(dkmsErr, strings.TrimSpace(lines[i+1]))
			}
		}
	}
	if len(dkmsErr) == 0 {
		dkmsErr = append(dkmsErr, strings.TrimSpace(lastLines(dkmsOut, 8)))
	}
	fmt.Fprintf(&msg, ": %s", strings.Join(dkmsErr, " "))
	if strings.Contains(dkmsOut, "kernel headers for kernel") {
		fmt.Fprintf(&msg, " (%s)", kernelHeadersHint(kernel))
	}
	for _, log := range []string{path.Join(t.dkmsTree, name, version, "build", "make.log"), path.Join(t.dkmsTree, name, version, kernel, arch, "log", "make.log")} {
		text, _, st, err := d.run(ctx, "cat "+shquote.Quote(log))
		if err != nil || st != 0 || strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&msg, "\n%s:\n%s", log, makeLogExcerpt(text, 40))
		break
	}
	return errors.New(msg.String())
}

var makeErrorRe = regexp.MustCompile(`(?i)(\berror\b|\*\*\*|undefined!|No such file or directory|not found|fatal:|ERROR:)`)

// makeLogExcerpt picks up to max lines of a make.log: first the lines that
// report errors (with the source line gcc prints after each), then the
// log's last lines not shown yet.
func makeLogExcerpt(text string, max int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	shown := map[int]bool{}
	var errs []int
	for i, l := range lines {
		if len(errs) >= max/2 {
			break
		}
		if makeErrorRe.MatchString(l) && !shown[i] {
			errs = append(errs, i)
			shown[i] = true
			// gcc prints the offending source line and a caret after it
			for j := i + 1; j <= i+2 && j < len(lines) && strings.Contains(lines[j], "|") && len(errs) < max/2; j++ {
				errs = append(errs, j)
				shown[j] = true
			}
		}
	}
	var tail []int
	for i := len(lines) - 1; i >= 0 && len(errs)+len(tail) < max; i-- {
		if !shown[i] {
			tail = append(tail, i)
		}
	}
	sort.Ints(tail)
	var b strings.Builder
	if len(errs) > 0 {
		b.WriteString("errors:\n")
		for _, i := range errs {
			b.WriteString("  " + lines[i] + "\n")
		}
		b.WriteString("last lines:\n")
	}
	for _, i := range tail {
		b.WriteString("  " + lines[i] + "\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

// PackageModules returns the dkms modules a distribution package installed:
// the NAME and VERSION of each usr/src/NAME-VERSION/dkms.conf it owns
// (dpkg -L, or rpm -ql).
func (d *Driver) PackageModules(ctx context.Context, pkg string) ([]NameVersion, error) {
	q := shquote.Quote(pkg)
	out, err := d.output(ctx, "list the files of package "+pkg,
		"if command -v dpkg-query >/dev/null 2>&1 && dpkg-query -W "+q+" >/dev/null 2>&1; then dpkg-query -L "+q+"; "+
			"elif command -v rpm >/dev/null 2>&1; then rpm -ql "+q+"; else echo 'package '"+q+"' is not installed' >&2; exit 1; fi")
	if err != nil {
		return nil, err
	}
	var res []NameVersion
	seen := map[NameVersion]bool{}
	for _, f := range strings.Split(out, "\n") {
		f = strings.TrimSpace(f)
		dir, base := path.Split(f)
		if base != "dkms.conf" || path.Dir(path.Clean(dir)) != "/usr/src" {
			continue
		}
		srcDir := path.Base(path.Clean(dir))
		text, err := d.output(ctx, "read "+f, "cat "+shquote.Quote(f))
		if err != nil {
			return nil, err
		}
		nv := NameVersion{}
		if c, err := Parse(strings.NewReader(text), f); err == nil {
			p, _ := c.Plan("", "")
			if p != nil {
				if _, unk := p.UnknownWhy["PACKAGE_NAME"]; !unk {
					nv.Name = p.PackageName
				}
				if _, unk := p.UnknownWhy["PACKAGE_VERSION"]; !unk {
					nv.Version = p.PackageVersion
				}
			}
		} else {
			d.logf("dkms: %v", err)
		}
		// dkms add needs /usr/src/NAME-VERSION: trust the directory
		switch {
		case nv.Name != "" && nv.Version != "" && srcDir == nv.Name+"-"+nv.Version:
		case nv.Name != "" && strings.HasPrefix(srcDir, nv.Name+"-"):
			nv.Version = strings.TrimPrefix(srcDir, nv.Name+"-")
		case nv.Version != "" && strings.HasSuffix(srcDir, "-"+nv.Version):
			nv.Name = strings.TrimSuffix(srcDir, "-"+nv.Version)
		default:
			i := strings.LastIndex(srcDir, "-")
			if i <= 0 {
				return nil, fmt.Errorf("%s: cannot tell the dkms module name and version (PACKAGE_NAME %q, PACKAGE_VERSION %q)", f, nv.Name, nv.Version)
			}
			d.logf("dkms: %s: PACKAGE_NAME/PACKAGE_VERSION (%q, %q) do not match the directory: using %s/%s", f, nv.Name, nv.Version, srcDir[:i], srcDir[i+1:])
			nv.Name, nv.Version = srcDir[:i], srcDir[i+1:]
		}
		if !seen[nv] {
			seen[nv] = true
			res = append(res, nv)
		}
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("package %s installs no dkms module (no /usr/src/*/dkms.conf)", pkg)
	}
	return res, nil
}
