package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/dkms"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
)

// benchProvisioner: a real `packer build` (bin/packer, the plugin from make
// plugin in a private PACKER_PLUGIN_PATH) of the kmod-image builder on the
// DKMS cloud image fixture (cloudimg-dkms/debian12-dkms.raw: Debian 12 with
// dkms, gcc and the kernel's headers; boot check off, raw output) whose only
// provisioner is `kmod`, building two modules from DKMS sources for every
// kernel of the image (the fixture has one): the example's kmodtest-marker
// with early = true (so the initramfs inject path runs) and kmodtest-base,
// a DKMS source generated here from testdata/modules/kmodtest_base.c; both
// signed with a throwaway RSA-2048 key made by openssl req -x509. It reads
// the provisioner's "kmod: done in" line: the total, each phase, and the
// overhead (total minus the build phase, which is dkms add + build + the
// download of the results), per kernel; the goal is an overhead of at most
// 4 s per kernel for the two modules. Median of runs each. It also prints
// the provisioner's "kmod: install:" line (the install phase's steps) and
// "kmod: remote:" line (the communicator round trips and their time), so a
// miss says where the time went.
//
// The anchor is what a user without the plugin would run for the same two
// modules: dkms add, dkms build and dkms install (which runs depmod) of both,
// chrooted in a throwaway overlay of the rootfs-dkms fixture (the tree the
// cloud image was made from) in a private mount namespace, with dkms
// configured to sign with the same key (mok_signing_key/mok_certificate in
// framework.conf.d; dkms then signs each module with sign-file after
// building it). Putting the sources and the key in place is off the clock.
// Once, the first anchor run also times what that user needs for the early
// module: adding it to /etc/initramfs-tools/modules and update-initramfs -u.
func benchProvisioner(packer, plugin, fixtures string, runs int) {
	if os.Geteuid() != 0 {
		report("provisioner", "skipped", "needs root (loop devices, chroot)")
		return
	}
	raw := filepath.Join(fixtures, "cloudimg-dkms/debian12-dkms.raw")
	rootfs := filepath.Join(fixtures, "rootfs-dkms")
	marker, err := filepath.Abs("example/modules/kmodtest-marker")
	must(err)
	baseC, err := filepath.Abs("testdata/modules/kmodtest_base.c")
	must(err)
	for _, f := range []string{packer, plugin, raw, rootfs, filepath.Join(marker, "dkms.conf"), baseC} {
		if _, err := os.Stat(f); err != nil {
			report("provisioner", "skipped", fmt.Sprintf("%v (make packer plugin fixtures; run from the checkout)", err))
			return
		}
	}
	kver, err := rootfsKVER(rootfs)
	must(err)

	work, err := os.MkdirTemp("", "kmodctl-bench-provisioner-")
	must(err)
	keep := false
	defer func() {
		if keep {
			fmt.Fprintf(os.Stderr, "bench: provisioner: left %s for inspection\n", work)
			return
		}
		os.RemoveAll(work)
	}()

	env := append(os.Environ(),
		"CHECKPOINT_DISABLE=1", "PACKER_NO_COLOR=1",
		"PACKER_PLUGIN_PATH="+filepath.Join(work, "plugins"),
		"PACKER_CONFIG_DIR="+filepath.Join(work, "config"))
	install := exec.Command(packer, "plugins", "install", "--path", plugin, "github.com/kmodctl/kmod")
	install.Env = env
	if out, err := install.CombinedOutput(); err != nil {
		must(fmt.Errorf("packer plugins install --path %s: %v\n%s", plugin, err, out))
	}

	// The second DKMS source: kmodtest_base.c with its own dkms.conf and
	// Kbuild.
	base := filepath.Join(work, "src", "kmodtest-base")
	must(os.MkdirAll(base, 0o755))
	must(os.WriteFile(filepath.Join(base, "kmodtest_base.c"), mustRead(baseC), 0o644))
	must(os.WriteFile(filepath.Join(base, "Kbuild"), []byte("obj-m := kmodtest_base.o\n"), 0o644))
	must(os.WriteFile(filepath.Join(base, "dkms.conf"), []byte(`PACKAGE_NAME="kmodtest-base"
PACKAGE_VERSION="1.0.0"
BUILT_MODULE_NAME[0]="kmodtest_base"
DEST_MODULE_LOCATION[0]="/updates/dkms"
AUTOINSTALL="yes"
`), 0o644))
	var nvs []string // NAME/VERSION of each source, in module block order
	for _, src := range []string{marker, base} {
		c, err := dkms.ParseFile(filepath.Join(src, "dkms.conf"))
		must(err)
		nvs = append(nvs, c.PackageName+"/"+c.PackageVersion)
	}

	key, cert := filepath.Join(work, "signing-key.pem"), filepath.Join(work, "signing-cert.pem")
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
		"-subj", "/CN=kmodctl bench throwaway key", "-keyout", key, "-out", cert).CombinedOutput(); err != nil {
		must(fmt.Errorf("openssl req: %v\n%s", err, out))
	}

	st := warmFile(raw)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	interrupted := func() bool {
		select {
		case <-sigs:
			return true
		default:
			return false
		}
	}

	var ours []provRun
	var anchors []dkmsAnchor
	var early time.Duration
	for i := 0; i < runs; i++ {
		run("sync")
		r, out, err := provisionerBuild(packer, env, work, raw, marker, base, key, cert, "", i)
		if err != nil || interrupted() {
			keep = true
			tail := out
			if len(tail) > 4000 {
				tail = tail[len(tail)-4000:]
			}
			must(fmt.Errorf("packer build: %v (interrupted: %v)\n%s", err, err == nil, tail))
		}
		ours = append(ours, r)
		run("sync")
		a, err := dkmsAnchorRun(work, rootfs, kver, marker, base, key, cert, nvs, i == 0, sigs)
		if err != nil {
			keep = true
			must(fmt.Errorf("anchor: %v", err))
		}
		anchors = append(anchors, a)
		if i == 0 {
			early = a.initramfs
		}
		if interrupted() {
			keep = true
			must(fmt.Errorf("interrupted"))
		}
		var ph []string
		for _, p := range r.order {
			ph = append(ph, fmt.Sprintf("%s=%.2fs", p, r.phases[p].Seconds()))
		}
		var st []string
		for _, p := range r.stepOrd {
			st = append(st, fmt.Sprintf("%s=%.2fs", p, r.steps[p].Seconds()))
		}
		fmt.Printf("  provisioner run %d: install steps %s; remote: %s\n", i+1, strings.Join(st, " "), r.remote)
		fmt.Printf("  provisioner run %d: packer build %.2fs, kmod %.2fs (%s); anchor %.2fs (add %.2fs, build %.2fs, install %.2fs)",
			i+1, r.wall.Seconds(), r.total.Seconds(), strings.Join(ph, " "), a.total().Seconds(),
			a.add.Seconds(), a.build.Seconds(), a.install.Seconds())
		if a.initramfs > 0 {
			fmt.Printf(", update-initramfs %.2fs", a.initramfs.Seconds())
		}
		fmt.Println()
	}

	// The warm case: the same build with the DKMS build cache in a local
	// docker-registry, filled by one build first, then hit.
	reg, err := registrytest.New(filepath.Join(work, "registry"), registrytest.Options{})
	if reg != nil {
		defer reg.Stop()
	}
	must(err)
	cacheBlock := fmt.Sprintf("    cache {\n      repository = %q\n      plain_http = true\n    }\n", reg.Ref("bench/cache"))
	if _, out, err := provisionerBuild(packer, env, work, raw, marker, base, key, cert, cacheBlock, runs); err != nil || !strings.Contains(out, "cache: stored") {
		keep = true
		must(fmt.Errorf("cache fill build: %v\n%s", err, lastN(out, 4000)))
	}
	var warm []provRun
	for i := 0; i < runs; i++ {
		run("sync")
		r, out, err := provisionerBuild(packer, env, work, raw, marker, base, key, cert, cacheBlock, runs+1+i)
		if err != nil || strings.Count(out, "cache hit for") != 2*r.kernels || interrupted() {
			keep = true
			must(fmt.Errorf("warm build (want 2 cache hits per kernel): %v\n%s", err, lastN(out, 4000)))
		}
		warm = append(warm, r)
		fmt.Printf("  provisioner warm run %d: packer build %.2fs, kmod %.2fs, build phase %.2fs\n", i+1, r.wall.Seconds(), r.total.Seconds(), r.phases["build"].Seconds())
	}

	nk := ours[0].kernels
	pr := func(f func(provRun) time.Duration) time.Duration {
		var ds []time.Duration
		for _, r := range ours {
			ds = append(ds, f(r))
		}
		return median(ds)
	}
	prw := func(f func(provRun) time.Duration) time.Duration {
		var ds []time.Duration
		for _, r := range warm {
			ds = append(ds, f(r))
		}
		return median(ds)
	}
	an := func(f func(dkmsAnchor) time.Duration) time.Duration {
		var ds []time.Duration
		for _, a := range anchors {
			ds = append(ds, f(a))
		}
		return median(ds)
	}
	wall := pr(func(r provRun) time.Duration { return r.wall })
	total := pr(func(r provRun) time.Duration { return r.total })
	build := pr(func(r provRun) time.Duration { return r.phases["build"] })
	overhead := pr(func(r provRun) time.Duration { return r.total - r.phases["build"] })
	provision := pr(func(r provRun) time.Duration { return r.builder["provision"] })
	anchor := an(dkmsAnchor.total)
	aBuild := an(func(a dkmsAnchor) time.Duration { return a.add + a.build })
	aInstall := an(func(a dkmsAnchor) time.Duration { return a.install })
	perK := func(d time.Duration) time.Duration { return d / time.Duration(nk) }

	fmt.Printf("\n")
	report("provisioner: packer build, 2 DKMS modules -> raw", secs(wall),
		fmt.Sprintf("median of %d; %s, %.0f GiB raw, %d kernel(s); boot check off; builder provision phase %.2f s",
			runs, filepath.Base(raw), float64(st.Size())/(1<<30), nk, provision.Seconds()))
	report("provisioner: kmod total (\"kmod: done in\")", secs(total),
		fmt.Sprintf("per kernel %.2f s; modules kmodtest-marker (early, injected) + kmodtest-base", perK(total).Seconds()))
	labels := map[string]string{
		"detect":       "signing key, kernels, architecture, package manager",
		"dependencies": "dkms signing off for the build (none to install here)",
		"kernel_data":  "each kernel's config, Module.symvers, modules.builtin and the like, downloaded",
		"build":        "upload of the sources, dkms add + build per kernel, download of the .ko files",
		"publish":      "bundles pushed to the registry (publish block)",
		"sign_check":   "signing on the build host, vermagic/symbol/CRC/signature checks",
		"install":      "one upload of the modules, one command for the dkms installs, checksums, depmod -a, load configuration",
		"initramfs":    "the early module injected into each kernel's initramfs",
		"finish":       "manifest, dkms signing configuration restored",
	}
	for _, p := range ours[0].order {
		report("provisioner phase "+p, secs(pr(func(r provRun) time.Duration { return r.phases[p] })), labels[p])
	}
	for _, p := range ours[0].stepOrd {
		report("provisioner install step "+p, secs(pr(func(r provRun) time.Duration { return r.steps[p] })), stepLabels[p])
	}
	report("provisioner overhead per kernel (total - build)", secs(perK(overhead)),
		fmt.Sprintf("goal <= 4 s per kernel for 2 modules: %s", passMiss(perK(overhead) <= 4*time.Second)))
	report("provisioner anchor: dkms add+build+install by hand", secs(anchor),
		fmt.Sprintf("median of %d; in a chroot of an overlay of rootfs-dkms, dkms signing with the same key; add+build %.2f s, install (depmod included) %.2f s",
			runs, aBuild.Seconds(), aInstall.Seconds()))
	report("provisioner anchor + update-initramfs -u (early)", secs(anchor+early),
		fmt.Sprintf("once: update-initramfs -u took %.2f s (the plugin injects instead)", early.Seconds()))
	wTotal := prw(func(r provRun) time.Duration { return r.total })
	wBuild := prw(func(r provRun) time.Duration { return r.phases["build"] })
	report("provisioner warm (cache hit): kmod total", secs(wTotal), fmt.Sprintf("median of %d; build phase %.2f s (build inputs read, cache lookup and pull; dkms add moves to install)", runs, wBuild.Seconds()))
	speedup := build.Seconds() / wBuild.Seconds()
	report("provisioner build phase cold / warm", fmt.Sprintf("%.1fx", speedup), "goal >= 10x: "+passMiss(speedup >= 10))
	limit := total - build + 2*time.Second*time.Duration(nk)
	report("provisioner warm total vs cold total - cold build + 2 s/kernel", fmt.Sprintf("%.2f s", wTotal.Seconds()),
		fmt.Sprintf("limit %.2f s: %s", limit.Seconds(), passMiss(wTotal <= limit)))
	report("provisioner kmod total / anchor", fmt.Sprintf("%.2fx", total.Seconds()/anchor.Seconds()),
		fmt.Sprintf("build phase / anchor add+build: %.2fx; overhead / anchor install: %.2fx; total / anchor with update-initramfs: %.2fx",
			build.Seconds()/aBuild.Seconds(), overhead.Seconds()/aInstall.Seconds(), total.Seconds()/(anchor+early).Seconds()))
}

// stepLabels explain the provisioner's "kmod: install:" steps.
var stepLabels = map[string]string{
	"dkms_add":     "dkms add of modules taken from the cache",
	"upload":       "the signed modules, one tar stream",
	"dkms_install": "dkms install --force --no-depmod of every module, one command",
	"verify":       "sha256sum of the installed files against the signed ones, one command",
	"depmod":       "depmod -a of every kernel, one command",
	"load_config":  "modules-load.d and the early-load list, one probe and one upload",
}

type provRun struct {
	wall    time.Duration // packer build
	total   time.Duration // "kmod: done in"
	kernels int
	phases  map[string]time.Duration
	order   []string
	builder map[string]time.Duration // the builder's "kmod-image timings:"
	steps   map[string]time.Duration // "kmod: install:"
	stepOrd []string
	remote  string // "kmod: remote:"
}

var (
	kmodDoneLine    = regexp.MustCompile(`kmod: done in (\S+) \(([^)]*)\)`)
	kmodKernelsLine = regexp.MustCompile(`kmod: kernels (.+) \([^)]*\)`)
	kmodInjectLine  = regexp.MustCompile(`kmod: \S+: injected (\d+) module\(s\)`)
	kmodInstallLine = regexp.MustCompile(`kmod: install: (.+)`)
	kmodRemoteLine  = regexp.MustCompile(`kmod: remote: (.+)`)
)

// provisionerBuild runs one build into a fresh output folder under work and
// returns the provisioner's timings. The folder is removed after a success.
// cacheBlock, when not empty, is the provisioner's cache block.
func provisionerBuild(packer string, env []string, work, source, marker, base, key, cert, cacheBlock string, i int) (provRun, string, error) {
	dir := filepath.Join(work, fmt.Sprintf("run%d", i))
	must(os.MkdirAll(dir, 0o755))
	tpl := filepath.Join(dir, "bench.pkr.hcl")
	must(os.WriteFile(tpl, []byte(fmt.Sprintf(`
source "kmod-image" "bench" {
  source_image     = %q
  output_directory = %q
  mount_path       = %q
  output_formats   = ["raw"]
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.bench"]
  provisioner "kmod" {
    signing_cert = %q
    signing_key  = %q
    module {
      source = %q
      early  = true
    }
    module {
      source = %q
    }
%s  }
}
`, source, filepath.Join(dir, "out"), filepath.Join(dir, "mnt"), cert, key, marker, base, cacheBlock)), 0o644))
	cmd := exec.Command(packer, "build", tpl)
	cmd.Dir = dir
	cmd.Env = env
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	text := buf.String()
	if err != nil {
		return provRun{}, text, err
	}
	r := provRun{wall: wall, phases: map[string]time.Duration{}, builder: map[string]time.Duration{}}
	m := kmodDoneLine.FindStringSubmatch(text)
	if m == nil {
		return provRun{}, text, fmt.Errorf("no 'kmod: done in' line in the output")
	}
	if r.total, err = time.ParseDuration(m[1]); err != nil {
		return provRun{}, text, fmt.Errorf("kmod: done in %q: %v", m[1], err)
	}
	for _, f := range strings.Fields(m[2]) {
		p := timingPart.FindStringSubmatch(f)
		if p == nil {
			return provRun{}, text, fmt.Errorf("cannot read %q in the kmod timings", f)
		}
		v, err := strconv.ParseFloat(p[2], 64)
		must(err)
		r.phases[p[1]] = time.Duration(v * float64(time.Second))
		r.order = append(r.order, p[1])
	}
	if _, ok := r.phases["build"]; !ok {
		return provRun{}, text, fmt.Errorf("no build phase in %q", m[0])
	}
	r.steps = map[string]time.Duration{}
	if m := kmodInstallLine.FindStringSubmatch(text); m != nil {
		for _, f := range strings.Fields(m[1]) {
			if p := timingPart.FindStringSubmatch(f); p != nil {
				v, _ := strconv.ParseFloat(p[2], 64)
				r.steps[p[1]] = time.Duration(v * float64(time.Second))
				r.stepOrd = append(r.stepOrd, p[1])
			}
		}
	}
	if m := kmodRemoteLine.FindStringSubmatch(text); m != nil {
		r.remote = strings.TrimSpace(m[1])
	}
	k := kmodKernelsLine.FindStringSubmatch(text)
	if k == nil {
		return provRun{}, text, fmt.Errorf("no 'kmod: kernels' line in the output")
	}
	r.kernels = len(strings.Split(k[1], ", "))
	// The early module must have gone through the inject path, once per
	// kernel.
	injected := 0
	for _, m := range kmodInjectLine.FindAllStringSubmatch(text, -1) {
		n, _ := strconv.Atoi(m[1])
		injected += n
	}
	if injected != r.kernels {
		return provRun{}, text, fmt.Errorf("%d early module(s) injected, want 1 per kernel (%d)", injected, r.kernels)
	}
	if t := timingsLine.FindAllStringSubmatch(text, -1); t != nil {
		for _, f := range strings.Fields(t[len(t)-1][1]) {
			if p := timingPart.FindStringSubmatch(f); p != nil {
				v, _ := strconv.ParseFloat(p[2], 64)
				r.builder[p[1]] = time.Duration(v * float64(time.Second))
			}
		}
	}
	if _, ok := r.builder["boot_check"]; ok {
		return provRun{}, text, fmt.Errorf("the boot check ran though it is disabled")
	}
	must(os.RemoveAll(dir))
	return r, text, nil
}

// dkmsAnchor is one anchor run: the dkms commands' wall times, and
// update-initramfs -u when it was measured.
type dkmsAnchor struct {
	add, build, install, initramfs time.Duration
}

func (a dkmsAnchor) total() time.Duration { return a.add + a.build + a.install }

// dkmsAnchorScript mounts the overlay, /proc, /sys and /dev, then runs and
// times, chrooted: dkms add, dkms build, dkms install of every NAME/VERSION
// argument, and when $early names a module, adds it to
// /etc/initramfs-tools/modules and runs update-initramfs -u. It prints the
// four durations in nanoseconds; the commands' output goes to $t/log.
const dkmsAnchorScript = `set -eu
t=$1 lower=$2 kver=$3 early=$4; shift 4
m=$t/merged
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$t/upper,workdir=$t/work" "$m"
mount -t proc proc "$m/proc"
mount --bind /sys "$m/sys"
mount --bind /dev "$m/dev"
c() {
	chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@" >>"$t/log" 2>&1 ||
		{ echo "$* failed:" >&2; tail -n 40 "$t/log" >&2; exit 1; }
}
now() { date +%s%N; }
s=$(now)
for nv; do c dkms add -m "${nv%%/*}" -v "${nv#*/}"; done
a=$(now)
for nv; do c dkms build -m "${nv%%/*}" -v "${nv#*/}" -k "$kver"; done
b=$(now)
for nv; do c dkms install -m "${nv%%/*}" -v "${nv#*/}" -k "$kver"; done
i=$(now)
u=0
if [ -n "$early" ]; then
	printf '%s\n' "$early" >>"$m/etc/initramfs-tools/modules"
	c update-initramfs -u -k "$kver"
	u=$(($(now) - i))
fi
echo "$((a - s)) $((b - a)) $((i - b)) $u"
`

// dkmsAnchorRun puts the two DKMS sources (symlinks dereferenced, as the
// provisioner uploads them), the key and a framework.conf.d file naming it
// into the upper layer of a fresh overlay of rootfs, then runs
// dkmsAnchorScript in a private mount namespace: the fixture is never
// written and the mounts go away with the namespace.
func dkmsAnchorRun(work, rootfs, kver, marker, base, key, cert string, nvs []string, withInitramfs bool, sigs chan os.Signal) (dkmsAnchor, error) {
	t := filepath.Join(work, "anchor")
	os.RemoveAll(t)
	defer os.RemoveAll(t)
	up := filepath.Join(t, "upper")
	for _, d := range []string{"work", "merged", "upper/root/kmodctl-bench", "upper/etc/dkms/framework.conf.d"} {
		must(os.MkdirAll(filepath.Join(t, d), 0o755))
	}
	for i, src := range []string{marker, base} {
		dst := filepath.Join(up, "usr/src", strings.Replace(nvs[i], "/", "-", 1))
		must(os.MkdirAll(dst, 0o755))
		if out, err := exec.Command("cp", "-rL", "--no-preserve=ownership", src+"/.", dst).CombinedOutput(); err != nil {
			return dkmsAnchor{}, fmt.Errorf("cp %s: %v: %s", src, err, out)
		}
	}
	must(os.WriteFile(filepath.Join(up, "root/kmodctl-bench/key.pem"), mustRead(key), 0o600))
	must(os.WriteFile(filepath.Join(up, "root/kmodctl-bench/cert.pem"), mustRead(cert), 0o644))
	must(os.WriteFile(filepath.Join(up, "etc/dkms/framework.conf.d/kmodctl-bench.conf"),
		[]byte("mok_signing_key=\"/root/kmodctl-bench/key.pem\"\nmok_certificate=\"/root/kmodctl-bench/cert.pem\"\n"), 0o644))
	early := ""
	if withInitramfs {
		early = "kmodtest_marker"
	}
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private",
		"sh", "-c", dkmsAnchorScript, "sh", t, rootfs, kver, early}, nvs...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return dkmsAnchor{}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case s := <-sigs:
		_ = cmd.Process.Kill()
		<-done
		return dkmsAnchor{}, fmt.Errorf("%v", s)
	}
	if err != nil {
		return dkmsAnchor{}, fmt.Errorf("%v\n%s", err, stderr.String())
	}
	f := strings.Fields(stdout.String())
	if len(f) != 4 {
		return dkmsAnchor{}, fmt.Errorf("timings %q", stdout.String())
	}
	var ns [4]time.Duration
	for i, s := range f {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return dkmsAnchor{}, fmt.Errorf("timings %q: %v", stdout.String(), err)
		}
		ns[i] = time.Duration(v)
	}
	return dkmsAnchor{add: ns[0], build: ns[1], install: ns[2], initramfs: ns[3]}, nil
}

// lastN is the end of s, at most n bytes.
func lastN(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
