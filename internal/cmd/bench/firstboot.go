package main

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/bootcheck"
	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemu"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// The first-boot bench's image: the provisioner's kind of output, 24
// managed modules of which one is early, in the fixture cloud image's ~30
// MB zstd initramfs.
const (
	fbModules   = 24
	fbEarly     = "kmodtest_base"
	fbRuns      = 9
	fbFullWalk  = "/usr/lib/kmodctl/manifest-full-walk.json"
	fbBlameUnit = "kmodctl-bench-blame.service"
	fbBlameBin  = "/usr/local/bin/kmodctl-bench-blame"
	fbAgent     = "provisioner/kmod/agents/kmodctl-linux-amd64"
)

// benchFirstboot: `kmodctl firstboot verify --root` on the provisioner's
// kind of output (a copy of the DKMS fixture cloud image given the
// provisioner's first-boot install through the same library calls: signed
// modules, depmod, the early module injected, the manifest, the hook),
// with the manifest's initramfs record (the file's digest: no walk) and
// without it (the full walk every manifest before the record got), against
// sha256sum of the same files (the floor); then a QEMU boot of the image
// for systemd-analyze blame's figure of kmodctl-verify.service.
func benchFirstboot(kmodctl, fixtures string) {
	// The agent the provisioner installs (static, stripped): make plugin
	// builds it.
	if _, err := os.Stat(fbAgent); err != nil {
		must(fmt.Errorf("the first-boot agent: %w (make plugin builds it)", err))
	}
	agent, err := filepath.Abs(fbAgent)
	must(err)
	work, err := os.MkdirTemp("", "kmodctl-bench-firstboot-")
	must(err)
	defer os.RemoveAll(work)
	fail := func(err error) {
		if err != nil {
			os.RemoveAll(work)
			must(err)
		}
	}
	raw := filepath.Join(work, "fb.raw")
	fail(sparseCopy(filepath.Join(fixtures, "cloudimg-dkms/debian12-dkms.raw"), raw))
	img, err := firstbootMeasure(kmodctl, agent, fixtures, raw, work)
	fail(err)
	// Two boots of the image: as built, and with the manifest of an older
	// build (no record: the walk), each under QEMU (TCG here: emulation
	// makes every figure many times the native one).
	blames := map[bool]time.Duration{}
	for _, digest := range []bool{true, false} {
		what := "with the initramfs record"
		if !digest {
			what = "full walk (no record)"
		}
		blame, line, err := firstbootBoot(img, raw, work, digest)
		if err != nil {
			report("firstboot QEMU boot, "+what, "failed", err.Error())
			continue
		}
		blames[digest] = blame
		report("firstboot QEMU boot: blame kmodctl-verify.service, "+what, secs(blame), line)
	}
	if blames[true] > 0 && blames[false] > 0 {
		report("firstboot QEMU boot: blame full walk / record", fmt.Sprintf("%.1fx", blames[false].Seconds()/blames[true].Seconds()), "same image, same run")
	}
}

// fbImage is what the boot needs from the mounted image.
type fbImage struct {
	vmlinuz, initrd, rootArg string
}

func sparseCopy(src, dst string) error {
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = diskimage.SparseCopy(context.Background(), f, src, nil)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// mountImage mounts raw's root filesystem (and its boot partition) on dir;
// release unmounts and detaches, on every path.
func mountImage(raw, dir string) (release func() error, err error) {
	tbl, err := diskimage.ReadTableFile(raw)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(raw)
	if err != nil {
		return nil, err
	}
	probes := diskimage.ProbeAll(f, tbl)
	f.Close()
	rootPart, _, err := diskimage.ChooseRoot(tbl, diskimage.RootOptions{Probes: probes})
	if err != nil {
		return nil, err
	}
	tr := &diskimage.Tracker{}
	release = func() error { _, err := tr.Release(); return err }
	mount := func(p diskimage.Partition, at string) error {
		l, err := tr.AttachPartition(context.Background(), raw, p, false)
		if err != nil {
			return err
		}
		return tr.Mount(context.Background(), l.Device, at, probes[p.Number].Type)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := mount(rootPart, dir); err != nil {
		return nil, errors.Join(err, release())
	}
	for _, p := range tbl.Partitions {
		if p.Number != rootPart.Number && probes[p.Number].Label == "boot" {
			if err := mount(p, filepath.Join(dir, "boot")); err != nil {
				return nil, errors.Join(err, release())
			}
		}
	}
	return release, nil
}

// firstbootMeasure mounts the image, installs the managed modules and the
// hook, measures verify, and copies out what the boot needs; the image is
// unmounted on every path.
func firstbootMeasure(kmodctl, agent, fixtures, raw, work string) (img fbImage, err error) {
	root := filepath.Join(work, "mnt")
	release, err := mountImage(raw, root)
	if err != nil {
		return img, err
	}
	defer func() { err = errors.Join(err, release()) }()
	kernels, err := bootcheck.FindKernels(root)
	if err != nil || len(kernels) == 0 {
		return img, fmt.Errorf("kernels of %s: %v %v", raw, kernels, err)
	}
	k := kernels[0]
	files, err := firstbootInstall(kmodctl, agent, fixtures, root, k.Release, work)
	if err != nil {
		return img, err
	}
	if err := firstbootTime(agent, root, k.Release, files); err != nil {
		return img, err
	}
	img.rootArg, err = bootcheck.RootArg(root, "")
	if err != nil {
		return img, err
	}
	img.vmlinuz, img.initrd = filepath.Join(work, "vmlinuz"), filepath.Join(work, "initrd.img")
	for _, c := range [][2]string{{k.Vmlinuz, img.vmlinuz}, {k.Initrd, img.initrd}} {
		b, err := os.ReadFile(c[0])
		if err != nil {
			return img, err
		}
		if err := os.WriteFile(c[1], b, 0o644); err != nil {
			return img, err
		}
	}
	return img, nil
}

// firstbootInstall does to the mounted image what the provisioner does for
// prebuilt modules, with the same library calls: the modules signed into
// lib/modules/KVER/updates/kmodctl, depmod, the early one injected into the
// initramfs (append, loaded there), the manifest with its initramfs record,
// the hook's units and the agent. It also writes the manifest without the
// record at fbFullWalk (removed before the boot) and the blame probe. It
// returns the host paths verify hashes: the modules and the initramfs.
func firstbootInstall(kmodctl, agent, fixtures, root, kver, work string) ([]string, error) {
	key, cert := filepath.Join(work, "key.pem"), filepath.Join(work, "cert.pem")
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
		"-subj", "/CN=kmodctl bench/", "-keyout", key, "-out", cert).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("openssl: %v: %s", err, out)
	}
	kb, err := os.ReadFile(key)
	if err != nil {
		return nil, err
	}
	signer, err := modsig.ParsePrivateKey(kb)
	if err != nil {
		return nil, err
	}
	cb, err := os.ReadFile(cert)
	if err != nil {
		return nil, err
	}
	certs, err := modsig.ParseCertificates(cb)
	if err != nil {
		return nil, err
	}
	// The early module is a test module built for the fixture kernel;
	// the others a spread of media and sound drivers, hardware QEMU does
	// not have (nothing loads them on the boot).
	moddir := filepath.Join(root, "lib/modules", kver)
	var pool []string
	for _, d := range []string{"kernel/drivers/media", "kernel/sound"} {
		pool = append(pool, modulesUnder(filepath.Join(moddir, d))...)
	}
	sort.Strings(pool)
	srcs := []string{filepath.Join(fixtures, "testmods", fbEarly+".ko")}
	for i := 0; len(srcs) < fbModules && i < len(pool); i += max(1, len(pool)/(fbModules-1)) {
		srcs = append(srcs, pool[i])
	}
	dest := "/lib/modules/" + kver + "/updates/kmodctl"
	if err := os.MkdirAll(filepath.Join(root, dest), 0o755); err != nil {
		return nil, err
	}
	var hosts, images []string
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		content, _, err := modsig.Split(b)
		if content == nil {
			return nil, fmt.Errorf("%s: %v", src, err)
		}
		sig, err := modsig.Sign(content, signer, certs[0], crypto.SHA256)
		if err != nil {
			return nil, err
		}
		image := dest + "/" + filepath.Base(src)
		host := filepath.Join(root, image)
		if err := os.WriteFile(host, append(slices.Clip(content), sig...), 0o644); err != nil {
			return nil, err
		}
		hosts, images = append(hosts, host), append(images, image)
	}
	if out, err := exec.Command(kmodctl, "depmod", "-b", root, kver).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("depmod: %v: %s", err, out)
	}
	initrd := filepath.Join(root, "boot/initrd.img-"+kver)
	if _, err := initramfs.Inject(initrd, initramfs.WithModules(hosts[0]), initramfs.WithModulesDir(moddir),
		initramfs.WithLoad(true), initramfs.WithKernelRelease(kver)); err != nil {
		return nil, err
	}
	m := &manifest.Manifest{Generator: "kmodctl bench", Certificates: []manifest.Certificate{manifest.NewCertificate(certs[0])}}
	mk := manifest.Kernel{Release: kver}
	for i, host := range hosts {
		e, err := manifest.ModuleFromFile(host, images[i], certs)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			e.Early, e.InitramfsSHA256 = true, e.SHA256
		}
		mk.Modules = append(mk.Modules, e)
	}
	// What the provisioner records once the initramfs is final.
	if mk.Initramfs, err = manifest.InitramfsFromFile(initrd, "/boot/initrd.img-"+kver); err != nil {
		return nil, err
	}
	full := mk
	full.Initramfs = nil
	for _, w := range []struct {
		path string
		k    manifest.Kernel
	}{{manifest.Path, mk}, {fbFullWalk, full}} {
		m.Kernels = []manifest.Kernel{w.k}
		data, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		if err := writeImageFile(root, w.path, data, 0o644); err != nil {
			return nil, err
		}
	}
	// The hook as the provisioner installs it (defaults), and the agent.
	hookFiles, links, err := firstboot.RenderHook(firstboot.HookSettings{})
	if err != nil {
		return nil, err
	}
	agentBin, err := os.ReadFile(agent)
	if err != nil {
		return nil, err
	}
	hookFiles = append(hookFiles,
		firstboot.File{Path: firstboot.DefaultAgentPath, Content: agentBin, Mode: 0o755},
		firstboot.File{Path: "/etc/systemd/system/" + fbBlameUnit, Content: []byte(fbBlameUnitText), Mode: 0o644},
		firstboot.File{Path: fbBlameBin, Content: []byte(fbBlameScript), Mode: 0o755})
	links = append(links, firstboot.Link{Path: "/etc/systemd/system/multi-user.target.wants/" + fbBlameUnit, Target: "/etc/systemd/system/" + fbBlameUnit})
	for _, f := range hookFiles {
		if err := writeImageFile(root, f.Path, f.Content, f.Mode); err != nil {
			return nil, err
		}
	}
	for _, l := range links {
		p := filepath.Join(root, l.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		os.Remove(p)
		if err := os.Symlink(l.Target, p); err != nil {
			return nil, err
		}
	}
	return append(hosts, initrd), nil
}

func writeImageFile(root, p string, data []byte, mode os.FileMode) error {
	h := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(h, data, mode); err != nil {
		return err
	}
	return os.Chmod(h, mode)
}

// fbVerify runs verify on the mounted image with manifest mpath, checks
// that every module passed and that the early one's initramfs copy was
// walked or not as expected, and returns the wall and CPU time.
func fbVerify(kmodctl, root, kver, out, mpath string, walked bool) (wall, cpu time.Duration, err error) {
	cmd := exec.Command(kmodctl, "firstboot", "verify", "--root", root, "--kernel", kver, "--manifest", mpath, "--report", out)
	start := time.Now()
	b, err := cmd.CombinedOutput()
	wall = time.Since(start)
	if err != nil {
		return wall, 0, fmt.Errorf("verify: %v: %s", err, b)
	}
	cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	data, err := os.ReadFile(out)
	if err != nil {
		return wall, cpu, err
	}
	var v firstboot.VerifyResult
	if err := json.Unmarshal(data, &v); err != nil {
		return wall, cpu, err
	}
	if v.Verified != fbModules || v.Total != fbModules {
		return wall, cpu, fmt.Errorf("verify: %s", v.SummaryLine)
	}
	for _, m := range v.Modules {
		if c := m.Initramfs; c != nil && (!c.OK || c.Walked != walked) {
			return wall, cpu, fmt.Errorf("verify with %s: initramfs check %+v, want walked=%v", mpath, *c, walked)
		}
	}
	return wall, cpu, nil
}

// fbStats are the sorted figures of repeated runs.
type fbStats struct{ wall, cpu []time.Duration }

func (s *fbStats) add(wall, cpu time.Duration) {
	s.wall, s.cpu = append(s.wall, wall), append(s.cpu, cpu)
	slices.Sort(s.wall)
	slices.Sort(s.cpu)
}

func (s *fbStats) best() time.Duration   { return s.wall[0] }
func (s *fbStats) median() time.Duration { return s.wall[len(s.wall)/2] }
func (s *fbStats) note() string {
	return fmt.Sprintf("median %s of %d; CPU (user+sys) best %s, median %s", secs(s.median()), len(s.wall), secs(s.cpu[0]), secs(s.cpu[len(s.cpu)/2]))
}

// firstbootTime measures verify with and without the initramfs record,
// alternating (fbRuns each), and the floors. The report goes to tmpfs, as
// on a boot (/run).
func firstbootTime(agent, root, kver string, files []string) error {
	shm, err := os.MkdirTemp("/dev/shm", "kmodctl-bench-firstboot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(shm)
	out := filepath.Join(shm, "verify.json")
	var fast, full fbStats
	for i := 0; i < fbRuns; i++ {
		w, c, err := fbVerify(agent, root, kver, out, manifest.Path, false)
		if err != nil {
			return err
		}
		fast.add(w, c)
		if w, c, err = fbVerify(agent, root, kver, out, fbFullWalk, true); err != nil {
			return err
		}
		full.add(w, c)
	}
	if err := os.Remove(filepath.Join(root, fbFullWalk)); err != nil {
		return err
	}
	floor := best(fbRuns, func() time.Duration {
		return run("sha256sum", files...)
	})
	// sha256sum of coreutils does not use the CPU's SHA instructions;
	// Go's crypto/sha256 does: the same files hashed in this process, one
	// after the other, is the floor of any verifier using them.
	goFloor := best(fbRuns, func() time.Duration {
		start := time.Now()
		for _, f := range files {
			fh, err := os.Open(f)
			must(err)
			h := sha256.New()
			_, err = io.Copy(h, fh)
			fh.Close()
			must(err)
		}
		return time.Since(start)
	})
	start := best(fbRuns, func() time.Duration { return run(agent, "--version") })
	var size int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			size += st.Size()
		}
	}
	st, err := os.Stat(files[len(files)-1])
	if err != nil {
		return err
	}
	name := fmt.Sprintf("firstboot verify (%d modules, 1 early, %.1f MB zstd initramfs)", fbModules, float64(st.Size())/1e6)
	report(name+": full walk", secs(full.best()), full.note()+"; as before the record: a manifest without it, or a changed initramfs")
	report(name+": record matches", secs(fast.best()), fast.note())
	report(fmt.Sprintf("firstboot verify floor: sha256sum of the same %d files (%.1f MB)", len(files), float64(size)/1e6), secs(floor), "best")
	report("firstboot verify floor: Go crypto/sha256 of the same files, one core", secs(goFloor), fmt.Sprintf("best; agent --version alone (process start) %s", secs(start)))
	report("firstboot verify: full walk / record matches", fmt.Sprintf("%.1fx", full.best().Seconds()/fast.best().Seconds()), "best vs best")
	report("firstboot verify: record matches / sha256sum", fmt.Sprintf("%.2fx", fast.best().Seconds()/floor.Seconds()), fmt.Sprintf("/ Go floor + process start: %.2fx", fast.best().Seconds()/(goFloor+start).Seconds()))
	report("firstboot verify (record matches): goal <= 0.100 s", secs(fast.median()), passMiss(fast.median() <= 100*time.Millisecond)+" (median wall; machine shared: see CPU)")
	return nil
}

// The probe of the boot: systemd-analyze blame needs the boot finished, so
// the probe is a simple service (it does not hold the boot back) that waits
// for it, prints the verify unit's line on the console and powers off.
const fbBlameUnitText = `[Unit]
Description=kmodctl bench: print kmodctl-verify.service's boot time
[Service]
Type=simple
ExecStart=` + fbBlameBin + `
[Install]
WantedBy=multi-user.target
`

const fbBlameScript = `#!/bin/sh
i=0
until out=$(systemd-analyze blame 2>/dev/null); do
  i=$((i+1)); [ $i -gt 900 ] && break; sleep 1
done
v=$(printf '%s\n' "$out" | grep ' kmodctl-verify.service$' | sed 's/^ *//; s/ kmodctl-verify.service$//')
echo "KMODBLAME verify=[$v] state=$(systemctl is-active kmodctl-verify.service)" > /dev/console
systemctl poweroff
`

var blameLine = regexp.MustCompile(`KMODBLAME verify=\[([^\]]*)\] state=(\S+)`)

// parseBlame reads systemd's time span ("1min 2.345s", "345ms", "12us").
func parseBlame(s string) (time.Duration, error) {
	s = strings.ReplaceAll(strings.ReplaceAll(s, "min", "m"), " ", "")
	return time.ParseDuration(s)
}

// firstbootBoot boots an overlay of the image (with the manifest's record,
// or with the manifest rewritten without it) and returns the blame figure
// of kmodctl-verify.service and the verify summary line.
func firstbootBoot(img fbImage, raw, work string, digest bool) (time.Duration, string, error) {
	base := raw
	if !digest {
		// The same image, its manifest without the record.
		base = filepath.Join(work, "full.raw")
		if err := sparseCopy(raw, base); err != nil {
			return 0, "", err
		}
		defer os.Remove(base)
		if err := stripRecord(base, filepath.Join(work, "mnt")); err != nil {
			return 0, "", err
		}
	}
	overlay := filepath.Join(work, "overlay.qcow2")
	os.Remove(overlay)
	if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, overlay).CombinedOutput(); err != nil {
		return 0, "", fmt.Errorf("qemu-img: %v: %s", err, b)
	}
	defer os.Remove(overlay)
	ctx := context.Background()
	unlock, err := qemu.Acquire(ctx)
	if err != nil {
		return 0, "", err
	}
	defer unlock()
	res, err := qemu.Boot(ctx, qemu.Config{
		Kernel: img.vmlinuz, Initrd: img.initrd,
		Append:  "root=" + img.rootArg + " ro console=ttyS0 panic=-1",
		Disks:   []qemu.Disk{{Path: overlay, Format: "qcow2"}},
		Markers: append([]qemu.Marker{qemu.SuccessOn("KMODBLAME verify="), qemu.FailureOn("emergency mode")}, qemu.KernelFailures...),
		Timeout: 10 * time.Minute,
	})
	if err != nil || res.Outcome != qemu.Success {
		return 0, "", fmt.Errorf("boot: %v %v\n%s", res, err, res.Tail(30))
	}
	m := blameLine.FindStringSubmatch(res.Line)
	if m == nil || m[2] != "active" {
		return 0, "", fmt.Errorf("probe line %q", res.Line)
	}
	d, err := parseBlame(m[1])
	if err != nil {
		return 0, "", fmt.Errorf("blame %q: %v", m[1], err)
	}
	summary := ""
	for _, l := range strings.Split(res.Console, "\n") {
		if i := strings.Index(l, "kmodctl verify: "); i >= 0 {
			summary = strings.TrimSpace(l[i:])
		}
	}
	return d, fmt.Sprintf("%s; boot %s under %s", summary, res.Elapsed.Round(time.Second), res.Accel), nil
}

// stripRecord rewrites the manifest of the image raw without its kernels'
// initramfs records (what a manifest of an older build looks like).
func stripRecord(raw, mnt string) (err error) {
	release, err := mountImage(raw, mnt)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, release()) }()
	p := filepath.Join(mnt, manifest.Path)
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	m, err := manifest.Unmarshal(data)
	if err != nil {
		return err
	}
	for i := range m.Kernels {
		m.Kernels[i].Initramfs = nil
	}
	if data, err = m.Marshal(); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}
