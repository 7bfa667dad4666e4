package kmod_test

// Instances that boot a kernel the image did not cover pull its signed
// modules: a real kmod-image build, a second Debian kernel (the alternate
// fixture kernel) installed into the image but not covered, its bundle in
// Debian's docker-registry (TLS, htpasswd), full systemd boots of that
// kernel in QEMU whose only network is user networking with restrict=on and
// one guestfwd to the registry, and the kernel hook in a chroot.

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/bootcheck"
	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/packertest"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemu"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// guestRegistry is where a guest reaches the registry: QEMU's guestfwd
// address on the user network.
const guestRegistry = "10.0.2.100:5000"

const pullProbeUnit = `[Unit]
Description=kmodctl pull acceptance probe
After=kmodctl-pull.service kmodctl-firstboot.service systemd-modules-load.service
[Service]
Type=oneshot
ExecStart=/usr/local/bin/kmodctl-pullprobe
[Install]
WantedBy=multi-user.target
`

const pullProbeScript = `#!/bin/sh
r=/var/lib/kmodctl/report.json
o=$(grep -o '"outcome": *"[a-z]*"' $r 2>/dev/null | head -1 | sed 's/.*"\([a-z]*\)"$/\1/')
f=$(grep -o '"refused": *"[a-z_]*"' $r 2>/dev/null | head -1 | sed 's/.*"\([a-z_]*\)"$/\1/')
l=$(grep -o '^kmodtest_[a-z]*' /proc/modules | sort | tr '\n' ,)
v=$(grep -o '"summary": *"[^"]*"' /run/kmodctl/verify.json 2>/dev/null | head -1 | cut -d'"' -f4 | tr ' ' _)
echo "KMODPULL kernel=$(uname -r) pull=$o refused=$f loaded=$l pullunit=$(systemctl is-failed kmodctl-pull.service) firstboot=$(systemctl is-failed kmodctl-firstboot.service) verify=$v end" > /dev/console
`

var pullProbeLine = regexp.MustCompile(`KMODPULL kernel=(\S+) pull=(\S*) refused=(\S*) loaded=(\S*) pullunit=(\S+) firstboot=(\S+) verify=(\S*) end`)

type pullProbe struct{ kernel, pull, refused, loaded, pullUnit, firstboot, verify string }

// altDeb is the alternate fixture kernel's image package.
// altInitrd is the alternate fixture kernel's initramfs-tools initrd
// (fixture rootfs: zstd, MODULES=most, the same base as the images).
func altInitrd(t *testing.T, release string) string {
	t.Helper()
	p := filepath.Join(fixture.Dir(), "alt/rootfs/boot/initrd.img-"+release)
	if _, err := os.Stat(p); err != nil {
		fixture.Missing(t, "the alternate kernel's initrd "+p)
	}
	return p
}

func altDeb(t *testing.T) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(fixture.Dir(), "alt/debs/linux-image-*.deb"))
	if len(m) != 1 {
		fixture.Missing(t, "the alternate kernel's linux-image .deb in "+filepath.Join(fixture.Dir(), "alt/debs"))
	}
	return m[0]
}

// pushAltBundle pushes a bundle of the alternate kernel's kmodtest_base
// (early) and kmodtest_dep, signed with k, to repo:tag.
func pushAltBundle(t *testing.T, reg *registrytest.Registry, repo, release string, k *sigtest.Key) {
	t.Helper()
	s, err := kmod.NewSigner(k.Signer, k.Cert)
	if err != nil {
		t.Fatal(err)
	}
	var in []bundle.ModuleInput
	for _, n := range []string{"kmodtest_base", "kmodtest_dep"} {
		raw := mustRead(t, fixture.Path(t, "alt/testmods/"+n+".ko"))
		signed, _, err := s.SignBytes(raw)
		if err != nil {
			t.Fatal(err)
		}
		in = append(in, bundle.ModuleInput{File: n + ".ko", Data: signed, Load: true, Early: n == "kmodtest_base",
			Source: manifest.Source{Kind: manifest.SourcePrebuilt, Name: n + ".ko"}})
	}
	b, err := bundle.New(release, "amd64", in, []*x509.Certificate{k.Cert})
	if err != nil {
		t.Fatal(err)
	}
	loc, _ := bundle.ParseLocation(reg.Ref(repo), false)
	if _, err := bundle.Push(context.Background(), loc, []*bundle.Bundle{b}, bundle.WithCAFile(reg.CAFile), bundle.WithBasicAuth(reg.Username, reg.Password)); err != nil {
		t.Fatal(err)
	}
}

// chrootRun runs a shell command chrooted in root with /proc, /sys and
// /dev mounted in a private mount namespace (gone with the process). The
// namespace starts as a copy of every host mount: the loop-backed ones of
// other tests are detached in it first, or it would keep their loop
// devices busy after their owners unmount them (as internal/sshtest does).
func chrootRun(t *testing.T, root, command string) string {
	t.Helper()
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-euc", `
m=$1; shift
awk '$1 ~ /^\/dev\/loop/ {print $2}' /proc/self/mounts | sort -r | while read -r p; do
	p=$(printf '%b' "$p")
	case "$p" in "$m"|"$m"/*) ;; *) umount -l "$p" 2>/dev/null || true ;; esac
done
mount -t proc proc "$m/proc"; mount --bind /sys "$m/sys"; mount --rbind /dev "$m/dev"
exec chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -c "$1"`, "sh", root, command)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s: %v\n%s", command, err, out)
	}
	return string(out)
}

// TestAccFirstbootPull: an image covering kernel A with a second kernel B
// installed; B's first boot pulls its modules (verified, loaded, reported)
// and the second boot verifies them without pulling again; a bundle signed
// by another key is refused with nothing installed, the boot goes on and
// the units follow the policy; the kernel postinst hooks of kernel B, run
// as its package runs them in a chroot of the image, pull its modules,
// early one in its initramfs, before any reboot.
//
// Boots and initramfs generations are what this test spends its time on
// (each full systemd boot is about 40 s under TCG, each update-initramfs of
// a MODULES=most tree about 100 CPU-seconds), so it has none that prove the
// same thing twice: kernel B's initrd is the alternate fixture's (made by
// the same initramfs-tools from the same base; INITRD=No keeps the
// package's hook from making it again), an unreachable registry is
// firstboot's TestPullRefused (host side, both policies) while a failed
// pull's boot is the "otherkey" boot here, and the chroot runs the
// postinst hooks with run-parts as the package does, INITRD=No again,
// leaving one update-initramfs: the one that shows a regeneration keeps
// the early module.
func TestAccFirstbootPull(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageDKMSRaw(t)
	kverA := fixture.KVER(t)
	kverB := strings.TrimSpace(string(mustRead(t, fixture.Path(t, "alt/KVER"))))
	debB := altDeb(t)
	reg := registrytest.Start(t, registrytest.Options{TLS: true, Auth: true, IPs: []net.IP{net.IPv4(10, 0, 2, 100)}})
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	other := sigtest.GoKey(t, "rsa:2048")
	pushAltBundle(t, reg, "kmod/fleet:fleet", kverB, key)
	pushAltBundle(t, reg, "kmod/otherkey:fleet", kverB, other)
	_, port, _ := net.SplitHostPort(reg.Host)

	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	os.WriteFile(filepath.Join(dir, "kmodctl-pullprobe.service"), []byte(pullProbeUnit), 0o644)
	os.WriteFile(filepath.Join(dir, "kmodctl-pullprobe"), []byte(pullProbeScript), 0o755)
	auth := `{"auths":{"` + guestRegistry + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(reg.Username+":"+reg.Password)) + `"}}}`
	os.WriteFile(filepath.Join(dir, "registry-auth.json"), []byte(auth), 0o600)
	tpl := passwordVar + `
source "kmod-image" "pull" {
  source_image     = ` + hcl(src) + `
  output_directory = ` + hcl(out) + `
  mount_path       = ` + hcl(filepath.Join(dir, "mnt")) + `
  output_name      = "pull"
  output_formats   = ["raw"]
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.pull"]
  # Kernel B: installed, not covered by the provisioner below.
  provisioner "file" {
    source      = ` + hcl(debB) + `
    destination = "/tmp/kernel-b.deb"
  }
  # The instance's network (DHCP on the user network) and the credentials
  # cloud-init user data would write.
  provisioner "file" {
    source      = ` + hcl(altInitrd(t, kverB)) + `
    destination = "/tmp/initrd-b.img"
  }
  provisioner "file" {
    source      = ` + hcl(filepath.Join(dir, "registry-auth.json")) + `
    destination = "/tmp/registry-auth.json"
  }
  provisioner "shell" {
    inline = [
      "INITRD=No dpkg -i /tmp/kernel-b.deb && rm /tmp/kernel-b.deb",
      "install -m 0644 /tmp/initrd-b.img /boot/initrd.img-` + kverB + `",
      "install -D -m 0600 /tmp/registry-auth.json /etc/kmodctl/registry-auth.json && rm /tmp/registry-auth.json",
      "printf '[Match]\\nName=en* eth*\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/80-dhcp.network",
      "systemctl enable systemd-networkd.service systemd-networkd-wait-online.service",
    ]
  }
  provisioner "kmod" {
    signing_cert = ` + hcl(key.CertPath) + `
    signing_key  = ` + hcl(key.KeyPath) + `
    kernels      = [` + hcl(kverA) + `]
    module {
      prebuilt = [` + hcl(fixture.TestModule(t, "kmodtest_base")) + `, ` + hcl(fixture.TestModule(t, "kmodtest_dep")) + `]
    }
    firstboot {
      on_uncovered         = "pull"
      bundle               = "` + guestRegistry + `/kmod/fleet:fleet"
      registry_auth_file   = "/etc/kmodctl/registry-auth.json"
      ca_file              = ` + hcl(reg.CAFile) + `
      on_uncovered_failure = "fail"
    }
    # Kernel A's bundle joins kernel B's at the fleet tag.
    publish {
      repository = ` + hcl(reg.Ref("kmod/fleet")) + `
      tag        = "fleet"
      merge      = true
` + registryBlock(reg) + `    }
  }
  provisioner "file" {
    source      = ` + hcl(filepath.Join(dir, "kmodctl-pullprobe.service")) + `
    destination = "/etc/systemd/system/kmodctl-pullprobe.service"
  }
  provisioner "file" {
    source      = ` + hcl(filepath.Join(dir, "kmodctl-pullprobe")) + `
    destination = "/usr/local/bin/kmodctl-pullprobe"
  }
  provisioner "shell" {
    inline = ["chmod 0755 /usr/local/bin/kmodctl-pullprobe", "systemctl enable kmodctl-pullprobe.service"]
  }
}
`
	r := e.Start(t, dir, tpl, "-var", "registry_password="+reg.Password)
	output, err := r.Wait(t, 20*time.Minute)
	if err != nil {
		t.Fatalf("packer build: %v\n%s\n--- log tail ---\n%s", err, output, r.LogTail(60))
	}
	fleet, _ := bundle.ParseLocation(reg.Ref("kmod/fleet:fleet"), false)
	entries, err := bundle.List(context.Background(), fleet, bundle.WithCAFile(reg.CAFile), bundle.WithBasicAuth(reg.Username, reg.Password))
	var kernelsAtTag []string
	for _, en := range entries {
		kernelsAtTag = append(kernelsAtTag, en.Release)
	}
	if err != nil || len(entries) != 2 || !slices.Contains(kernelsAtTag, kverA) || !slices.Contains(kernelsAtTag, kverB) {
		t.Fatalf("the fleet tag after a merging publish: %v %v", kernelsAtTag, err)
	}
	raw := filepath.Join(out, "pull.raw")
	root := packertest.MountOutput(t, raw)
	for _, p := range []string{firstboot.PullConfigPath, "/etc/kmodctl/registry-ca.pem", firstboot.KernelHookPath, "/etc/systemd/system/" + firstboot.PullUnit,
		"/etc/systemd/system/multi-user.target.wants/" + firstboot.PullUnit} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("the image lacks %s: %v", p, err)
		}
	}
	m, err := manifest.Unmarshal(mustRead(t, filepath.Join(root, manifest.Path)))
	if err != nil || len(m.Kernels) != 1 || m.Kernels[0].Release != kverA {
		t.Fatalf("manifest: %+v %v", m, err)
	}
	kernels, err := bootcheck.FindKernels(root)
	if err != nil {
		t.Fatal(err)
	}
	var vmlinuz, initrd string
	for _, k := range kernels {
		if k.Release == kverB {
			vmlinuz, initrd = copyOut(t, k.Vmlinuz), copyOut(t, k.Initrd)
		}
	}
	if vmlinuz == "" {
		t.Fatalf("kernel %s not in the image (%+v)", kverB, kernels)
	}
	rootArg, err := bootcheck.RootArg(root, "")
	if err != nil {
		t.Fatal(err)
	}
	copyDisk := func(name string, edit func(root string)) string {
		p := filepath.Join(t.TempDir(), name+".raw")
		if b, err := exec.Command("cp", "--sparse=always", raw, p).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, b)
		}
		if edit != nil {
			mnt, release := packertest.MountRoot(t, p, false)
			edit(mnt)
			if err := release(); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	overlay := func(base string) string {
		p := filepath.Join(t.TempDir(), "overlay.qcow2")
		if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, p).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, b)
		}
		return p
	}
	boot := func(name, disk, fwdPort string) pullProbe {
		t.Helper()
		res, err := qemu.Boot(context.Background(), qemu.Config{
			Kernel: vmlinuz, Initrd: initrd,
			Append:  "root=" + rootArg + " ro console=ttyS0 panic=-1",
			Disks:   []qemu.Disk{{Path: disk, Format: "qcow2"}},
			Markers: append([]qemu.Marker{qemu.SuccessOn("KMODPULL kernel="), qemu.FailureOn("emergency mode")}, qemu.KernelFailures...),
			// The guest's only network: restricted user networking and
			// one forward to the registry on the host's loopback.
			Args: []string{"-netdev", "user,id=n0,restrict=on,guestfwd=tcp:" + guestRegistry + "-tcp:127.0.0.1:" + fwdPort,
				"-device", "virtio-net-pci,netdev=n0"},
			Timeout:    6 * time.Minute,
			ConsoleLog: filepath.Join(dir, name+".console.log"),
		})
		if err != nil || res.Outcome != qemu.Success {
			t.Fatalf("%s: %v %v\n%s", name, res, err, res.Tail(60))
		}
		mm := pullProbeLine.FindStringSubmatch(res.Line)
		if mm == nil {
			t.Fatalf("%s: probe line %q", name, res.Line)
		}
		p := pullProbe{mm[1], mm[2], mm[3], mm[4], mm[5], mm[6], mm[7]}
		t.Logf("%s (%v): %+v", name, res.Elapsed.Round(time.Second), p)
		if p.kernel != kverB {
			t.Fatalf("%s booted %s, not %s", name, p.kernel, kverB)
		}
		return p
	}

	// Kernel B's first boot pulls, verifies, loads and reports; its second
	// verifies what was pulled and pulls nothing.
	disk := overlay(raw)
	p := boot("first", disk, port)
	if p.pull != firstboot.PullPulled || p.loaded != "kmodtest_base,kmodtest_dep," || p.pullUnit != "active" || p.firstboot != "active" {
		t.Errorf("first boot of %s: %+v", kverB, p)
	}
	p = boot("second", disk, port)
	if p.pull != firstboot.PullAlready || p.loaded != "kmodtest_base,kmodtest_dep," || !strings.HasPrefix(p.verify, "kmodctl_verify:_2/2_modules_verified_(pulled)") {
		t.Errorf("second boot of %s: %+v", kverB, p)
	}

	// A bundle signed by another key: refused, nothing installed; the pull
	// unit fails (on_uncovered_failure = "fail") and the boot goes on.
	otherDisk := copyDisk("otherkey", func(root string) {
		pc := filepath.Join(root, firstboot.PullConfigPath)
		os.WriteFile(pc, []byte(strings.Replace(string(mustRead(t, pc)), "/kmod/fleet:", "/kmod/otherkey:", 1)), 0o644)
	})
	p = boot("otherkey", overlay(otherDisk), port)
	if p.pull != firstboot.PullFailed || p.refused != "kmodtest_base" || p.loaded != "" || p.pullUnit != "failed" {
		t.Errorf("bundle signed by another key: %+v", p)
	}

	// The kernel hook: kernel B's postinst hooks run in a chroot of the
	// image as its package runs them (the registry reachable on the host's
	// loopback): its modules are there before any reboot, the early one in
	// its initramfs.
	hookDisk := copyDisk("hook", nil)
	mnt, release := packertest.MountRoot(t, hookDisk, false)
	defer release()
	pc := filepath.Join(mnt, firstboot.PullConfigPath)
	os.WriteFile(pc, []byte(strings.Replace(string(mustRead(t, pc)), guestRegistry, "127.0.0.1:"+port, 1)), 0o644)
	af := filepath.Join(mnt, "etc/kmodctl/registry-auth.json")
	os.WriteFile(af, []byte(strings.Replace(string(mustRead(t, af)), guestRegistry, "127.0.0.1:"+port, 1)), 0o600)
	// The order the package's postinst runs them in (linux-image's
	// postinst: run-parts over /etc/kernel/postinst.d with the release and
	// the image path): ours after initramfs-tools', so the initramfs it
	// injects into is the one just made.
	order := strings.Fields(chrootRun(t, mnt, "run-parts --test /etc/kernel/postinst.d"))
	if i, j := slices.Index(order, "/etc/kernel/postinst.d/initramfs-tools"), slices.Index(order, firstboot.KernelHookPath); i < 0 || j < i {
		t.Errorf("postinst.d order %v: want %s after initramfs-tools", order, firstboot.KernelHookPath)
	}
	hookOut := chrootRun(t, mnt, "INITRD=No run-parts --report --exit-on-error --arg="+kverB+" --arg=/boot/vmlinuz-"+kverB+" /etc/kernel/postinst.d 2>&1")
	t.Logf("kernel postinst hooks in the chroot:\n%s", hookOut)
	if !strings.Contains(hookOut, "kmodctl pull: kernel "+kverB+": 2 modules pulled from 127.0.0.1:"+port+"/kmod/fleet@sha256:") {
		t.Errorf("the kernel hook did not pull:\n%s", hookOut)
	}
	for _, n := range []string{"kmodtest_base", "kmodtest_dep"} {
		if _, err := os.Stat(filepath.Join(mnt, "lib/modules", kverB, firstboot.PulledDir, n+".ko")); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	inInitrd := func(when string) {
		t.Helper()
		im, err := initramfs.Open(filepath.Join(mnt, "boot", "initrd.img-"+kverB))
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		for _, e := range im.List() {
			if strings.HasSuffix(e, "/"+firstboot.PulledDir+"/kmodtest_base.ko") || strings.HasSuffix(e, "/kmodtest_base.ko") {
				return
			}
		}
		t.Errorf("kmodtest_base.ko (early) is not in %s's initramfs %s", kverB, when)
	}
	inInitrd("after the kernel hook")
	// A later regeneration keeps it: the initramfs tool's list names it.
	t.Logf("update-initramfs:\n%s", chrootRun(t, mnt, "update-initramfs -u -k "+kverB+" 2>&1"))
	inInitrd("after update-initramfs -u")
	st, err := manifest.Unmarshal(mustRead(t, filepath.Join(mnt, firstboot.PulledPath)))
	if err != nil || len(st.Kernels) != 1 || st.Kernels[0].Release != kverB {
		t.Errorf("pulled state: %+v %v", st, err)
	}
}
