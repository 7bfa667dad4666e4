package kmod_test

// The catalog end to end: a real kmod-catalog node, a real packer build
// that takes its allowlist from the catalog's approvals and records its
// build, and full systemd boots in QEMU whose only network is user
// networking with restrict=on and one guestfwd to the catalog, posting
// their attestations; a module flipped offline shows as drift.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/bootcheck"
	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/packertest"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemu"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// guestCatalog is where a guest reaches the catalog (QEMU's guestfwd).
const guestCatalog = "10.0.2.100:8443"

const catalogProbeUnit = `[Unit]
Description=kmodctl catalog acceptance probe
After=kmodctl-report.service kmodctl-firstboot.service systemd-modules-load.service
[Service]
Type=oneshot
ExecStart=/usr/local/bin/kmodctl-catprobe
[Install]
WantedBy=multi-user.target
`

const catalogProbeScript = `#!/bin/sh
l=$(grep -o '^kmodtest_[a-z]*' /proc/modules | sort | tr '\n' ,)
echo "KMODCAT kernel=$(uname -r) report=$(systemctl is-failed kmodctl-report.service) loaded=$l end" > /dev/console
`

var catalogProbeLine = regexp.MustCompile(`KMODCAT kernel=(\S+) report=(\S+) loaded=(\S*) end`)

func TestAccCatalog(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageDKMSRaw(t)
	kver := fixture.KVER(t)
	if _, err := exec.LookPath("socat"); err != nil {
		fixture.Missing(t, "socat (scripts/deps.sh)")
	}
	c := catalogtest.Start(t, 1, catalogtest.Options{Hosts: []string{"10.0.2.100"}})
	node := c.Nodes[0]
	qemutest.Slot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	secret := func(name string, role catalog.Role) string { return c.Token(t, name, role, "") }
	builderTok, approverTok, instTok, auditTok := secret("ci", catalog.RoleBuilder), secret("security", catalog.RoleApprover),
		secret("asg-1", catalog.RoleInstance), secret("audit", catalog.RoleAuditor)
	auditor := node.Client(t, auditTok)

	// An earlier build of the same modules, approved: signatures are
	// deterministic, so this build's files have the same digests and pass
	// allowed_from_catalog.
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	signer, err := kmod.NewSigner(key.Signer, key.Cert)
	if err != nil {
		t.Fatal(err)
	}
	prev := manifest.Manifest{Version: manifest.Version, Certificates: []manifest.Certificate{}}
	kern := manifest.Kernel{Release: kver}
	digests := map[string]string{}
	for _, n := range []string{"kmodtest_base", "kmodtest_dep"} {
		signed, _, err := signer.SignBytes(mustRead(t, fixture.TestModule(t, n)))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(signed)
		digests[n] = hex.EncodeToString(sum[:])
		kern.Modules = append(kern.Modules, manifest.Module{Name: n, Path: "/lib/modules/" + kver + "/updates/kmodctl-prebuilt/" + n + ".ko", SHA256: digests[n]})
	}
	prev.Kernels = []manifest.Kernel{kern}
	prevData, err := prev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Client(t, builderTok).RecordBuild(ctx, &catalog.Build{ID: "previous", ImageName: "earlier", Manifest: prevData}); err != nil {
		t.Fatal(err)
	}
	approver := node.Client(t, approverTok)
	for n, d := range digests {
		if _, err := approver.Approve(ctx, &catalog.Approval{Kernel: kver, Module: n, SHA256: d, Note: "CHG-42"}); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	os.WriteFile(filepath.Join(dir, "kmodctl-catprobe.service"), []byte(catalogProbeUnit), 0o644)
	os.WriteFile(filepath.Join(dir, "kmodctl-catprobe"), []byte(catalogProbeScript), 0o755)
	os.WriteFile(filepath.Join(dir, "catalog-token"), []byte(instTok+"\n"), 0o600)
	tpl := `
variable "catalog_token" {
  type      = string
  sensitive = true
}
source "kmod-image" "cat" {
  source_image     = ` + hcl(src) + `
  output_directory = ` + hcl(out) + `
  mount_path       = ` + hcl(filepath.Join(dir, "mnt")) + `
  output_name      = "cat"
  output_formats   = ["raw"]
  boot_check {
    enabled = false
  }
}
build {
  name    = "fleet"
  sources = ["source.kmod-image.cat"]
  # What cloud-init user data would write on the instance: its token; and
  # the instance's network (DHCP on the user network).
  provisioner "file" {
    source      = ` + hcl(filepath.Join(dir, "catalog-token")) + `
    destination = "/tmp/catalog-token"
  }
  provisioner "shell" {
    inline = [
      "install -D -m 0600 /tmp/catalog-token /etc/kmodctl/catalog-token && rm /tmp/catalog-token",
      "printf '[Match]\\nName=en* eth*\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/80-dhcp.network",
      "systemctl enable systemd-networkd.service systemd-networkd-wait-online.service",
    ]
  }
  provisioner "kmod" {
    signing_cert = ` + hcl(key.CertPath) + `
    signing_key  = ` + hcl(key.KeyPath) + `
    kernels      = [` + hcl(kver) + `]
    module {
      prebuilt = [` + hcl(fixture.TestModule(t, "kmodtest_base")) + `, ` + hcl(fixture.TestModule(t, "kmodtest_dep")) + `]
    }
    allowed_from_catalog = true
    catalog {
      url        = "https://` + node.API + `"
      token      = var.catalog_token
      ca_file    = ` + hcl(c.CAFile) + `
      image_name = "debian12-fleet"
    }
    firstboot {
      report_url        = "https://` + guestCatalog + `"
      report_token_file = "/etc/kmodctl/catalog-token"
      report_ca_file    = ` + hcl(c.CAFile) + `
    }
  }
  provisioner "file" {
    source      = ` + hcl(filepath.Join(dir, "kmodctl-catprobe.service")) + `
    destination = "/etc/systemd/system/kmodctl-catprobe.service"
  }
  provisioner "file" {
    source      = ` + hcl(filepath.Join(dir, "kmodctl-catprobe")) + `
    destination = "/usr/local/bin/kmodctl-catprobe"
  }
  provisioner "shell" {
    inline = ["chmod 0755 /usr/local/bin/kmodctl-catprobe", "systemctl enable kmodctl-catprobe.service"]
  }
}
`
	r := e.Start(t, dir, tpl, "-var", "catalog_token="+builderTok)
	output, err := r.Wait(t, 20*time.Minute)
	if err != nil {
		t.Fatalf("packer build: %v\n%s\n--- log tail ---\n%s", err, output, r.LogTail(60))
	}
	if !strings.Contains(output, "allowlist: 2 approvals from the catalog") {
		t.Errorf("the build did not take its allowlist from the catalog:\n%s", output)
	}
	if strings.Contains(output, builderTok) || strings.Contains(r.LogTail(10000), builderTok) {
		t.Errorf("the catalog token is in Packer's output or log")
	}
	builds, err := auditor.Builds(ctx, "debian12-fleet")
	if err != nil || len(builds) != 1 {
		t.Fatalf("builds of debian12-fleet: %v %+v", err, builds)
	}
	b := builds[0]
	t.Logf("recorded build %s: build name %q, image %q, by %s", b.ID, b.BuildName, b.ImageName, b.RecordedBy)
	if b.BuildName == "" || b.RecordedBy != "ci" || len(b.Kernels) != 1 || b.Kernels[0] != kver || len(b.Modules) != 2 {
		t.Errorf("recorded build: %+v", b)
	}
	for _, m := range b.Modules {
		if digests[m.Name] != m.SHA256 {
			t.Errorf("recorded %s sha256 %s, signed file %s", m.Name, m.SHA256, digests[m.Name])
		}
	}

	raw := filepath.Join(out, "cat.raw")
	root := packertest.MountOutput(t, raw)
	for _, p := range []string{firstboot.ReportConfigPath, "/etc/kmodctl/catalog-ca.pem", "/etc/systemd/system/" + firstboot.ReportUnit,
		"/etc/systemd/system/multi-user.target.wants/" + firstboot.ReportUnit} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("the image lacks %s: %v", p, err)
		}
	}
	kernels, err := bootcheck.FindKernels(root)
	if err != nil {
		t.Fatal(err)
	}
	var vmlinuz, initrd string
	for _, k := range kernels {
		if k.Release == kver {
			vmlinuz, initrd = copyOut(t, k.Vmlinuz), copyOut(t, k.Initrd)
		}
	}
	rootArg, err := bootcheck.RootArg(root, "")
	if err != nil {
		t.Fatal(err)
	}
	depPath := ""
	m, err := manifest.Unmarshal(mustRead(t, filepath.Join(root, manifest.Path)))
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range m.Kernels[0].Modules {
		if mod.Name == "kmodtest_dep" {
			depPath = mod.Path
		}
	}
	_, apiPort, _ := net.SplitHostPort(node.API)
	boot := func(name, base string) (kernel, report, loaded string) {
		t.Helper()
		disk := filepath.Join(t.TempDir(), "overlay.qcow2")
		if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, disk).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, b)
		}
		res, err := qemu.Boot(context.Background(), qemu.Config{
			Kernel: vmlinuz, Initrd: initrd,
			Append:  "root=" + rootArg + " ro console=ttyS0 panic=-1",
			Disks:   []qemu.Disk{{Path: disk, Format: "qcow2"}},
			Markers: append([]qemu.Marker{qemu.SuccessOn("KMODCAT kernel="), qemu.FailureOn("emergency mode")}, qemu.KernelFailures...),
			// The guest's only network: restricted user networking and
			// one forward to the catalog on the host's loopback, a socat
			// per connection (a tcp: forward is a single connection made
			// when QEMU starts, which the catalog closes when no TLS
			// handshake follows within its timeout).
			Args: []string{"-netdev", "user,id=n0,restrict=on,guestfwd=tcp:" + guestCatalog + "-cmd:socat - TCP:127.0.0.1:" + apiPort,
				"-device", "virtio-net-pci,netdev=n0"},
			Timeout:    6 * time.Minute,
			ConsoleLog: filepath.Join(dir, name+".console.log"),
		})
		if err != nil || res.Outcome != qemu.Success {
			t.Fatalf("%s: %v %v\n%s", name, res, err, res.Tail(60))
		}
		mm := catalogProbeLine.FindStringSubmatch(res.Line)
		if mm == nil {
			t.Fatalf("%s: probe line %q", name, res.Line)
		}
		t.Logf("%s (%v): kernel %s, report unit %s, loaded %s", name, res.Elapsed.Round(time.Second), mm[1], mm[2], mm[3])
		return mm[1], mm[2], mm[3]
	}

	// The image as built: the attestation is posted, nothing drifts.
	if k, rep, loaded := boot("first", raw); k != kver || rep != "active" || loaded != "kmodtest_base,kmodtest_dep," {
		t.Errorf("first boot: kernel %s, report unit %s, loaded %s", k, rep, loaded)
	}
	ins, err := auditor.Instances(ctx)
	if err != nil || len(ins) != 1 || ins[0].Kernel != kver || ins[0].Status != "ok" {
		t.Fatalf("instances after the first boot: %v %+v", err, ins)
	}
	instance := ins[0].InstanceID
	if d, err := auditor.Drift(ctx); err != nil || len(d) != 0 {
		t.Errorf("drift after the first boot: %v %+v", err, d)
	}
	if runs, err := auditor.WhoRuns(ctx, "kmodtest_dep", "", digests["kmodtest_dep"]); err != nil || len(runs) != 1 || runs[0].InstanceID != instance {
		t.Errorf("who-runs kmodtest_dep: %v %+v", err, runs)
	}

	// One byte of kmodtest_dep flipped offline in a copy of the image: the
	// new instance's boot blocks it, and the catalog shows its drift.
	flipped := filepath.Join(t.TempDir(), "flipped.raw")
	if b, err := exec.Command("cp", "--sparse=always", raw, flipped).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, b)
	}
	mnt, release := packertest.MountRoot(t, flipped, false)
	ko := filepath.Join(mnt, depPath)
	data := mustRead(t, ko)
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(ko, data, 0o644); err != nil {
		t.Fatal(err)
	}
	flippedSum := sha256.Sum256(data)
	// A new instance has its own token (cloud-init user data would write
	// it): the first instance's token is bound to that instance.
	if err := os.WriteFile(filepath.Join(mnt, "etc/kmodctl/catalog-token"), []byte(secret("asg-2", catalog.RoleInstance)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if k, rep, loaded := boot("flipped", flipped); k != kver || rep != "active" || loaded != "kmodtest_base," {
		t.Errorf("flipped boot: kernel %s, report unit %s, loaded %s", k, rep, loaded)
	}
	drift, err := auditor.Drift(ctx)
	if err != nil || len(drift) != 1 || drift[0].Module != "kmodtest_dep" ||
		drift[0].SHA256 != hex.EncodeToString(flippedSum[:]) || drift[0].Reason != "unknown" || drift[0].Loaded {
		t.Errorf("drift after flipping kmodtest_dep: %v %+v", err, drift)
	}
	if ins, err := auditor.Instances(ctx); err == nil {
		t.Logf("instances: %+v (first: %s)", ins, instance)
	}
	if unc, err := auditor.Uncovered(ctx); err != nil || len(unc) != 1 || unc[0].Kernel != kver {
		// The build published no bundle, so its kernel is uncovered.
		t.Errorf("uncovered: %v %+v", err, unc)
	}
}
