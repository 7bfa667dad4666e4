package kmod_test

// Acceptance tests of the kmod provisioner with the real Packer, the real
// plugin, the image's real DKMS and Debian's v4l2loopback-dkms.

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/packertest"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemu"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sshtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

func TestMain(m *testing.M) {
	code := m.Run()
	packertest.Cleanup()
	os.Exit(code)
}

var hcl = packertest.HCL

// markerSource is the DKMS source of the test module printing a console
// marker (the example uses it too).
func markerSource(t *testing.T) string {
	return filepath.Join(packertest.RepoRoot(t), "example", "modules", "kmodtest-marker")
}

// kmodBlock is the provisioner block of the main acceptance build.
func kmodBlock(key *sigtest.Key, manifestOut, marker string) string {
	return `
  provisioner "kmod" {
    signing_cert    = ` + hcl(key.CertPath) + `
    signing_key     = ` + hcl(key.KeyPath) + `
    manifest_output = ` + hcl(manifestOut) + `
    module {
      source = ` + hcl(marker) + `
      early  = true
      load   = false
    }
    module {
      package = "v4l2loopback-dkms"
    }
    options = { v4l2loopback = "devices=2" }
  }
`
}

// TestAccKmodImage is the main acceptance build: the DKMS fixture image, the
// marker module from source (early, not in modules-load.d) and Debian's
// v4l2loopback-dkms, signed with a key made for the test.
func TestAccKmodImage(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageDKMSQcow2(t)
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	manifestOut := filepath.Join(dir, "manifest.json")
	tpl := `
source "kmod-image" "kmod" {
  source_image     = ` + hcl(src) + `
  output_directory = ` + hcl(out) + `
  mount_path       = ` + hcl(filepath.Join(dir, "mnt")) + `
  output_name      = "kmod"
  output_formats   = ["raw"]
  boot_check {
    expect_modules = ["v4l2loopback"]
  }
}
build {
  sources = ["source.kmod-image.kmod"]
` + kmodBlock(key, manifestOut, markerSource(t)) + `
}
`
	r := e.Start(t, dir, tpl)
	output, err := r.Wait(t, 20*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err != nil {
		t.Fatalf("packer build: %v\n--- log tail ---\n%s", err, r.LogTail(60))
	}
	packertest.CheckNoLeftovers(t, dir)
	raw := filepath.Join(out, "kmod.raw")
	root := packertest.MountOutput(t, raw)
	m := checkTree(t, root, key, manifestOut)

	// The early module loads inside the initramfs: boot the image's own
	// kernel and initrd with no root device at all.
	rel := m.Kernels[0].Release
	vmlinuz := copyOut(t, filepath.Join(root, "boot", "vmlinuz-"+rel))
	initrd := copyOut(t, filepath.Join(root, "boot", "initrd.img-"+rel))
	res, err := qemu.Boot(context.Background(), qemu.Config{
		Kernel: vmlinuz, Initrd: initrd, Append: qemu.InitramfsToolsCmdline,
		Markers: qemu.InitramfsToolsMarkers(qemu.SuccessOn(qemu.TestModuleMarker)),
		Timeout: 3 * time.Minute,
	})
	if err != nil || res.Outcome != qemu.Success {
		t.Fatalf("initramfs boot without a root: %v %v\n%s", res, err, res.Tail(40))
	}
	if !strings.Contains(output, "Expected modules loaded: v4l2loopback") {
		t.Errorf("the boot check did not confirm v4l2loopback")
	}
	// The first-boot hook's verify unit ran in that boot, before
	// systemd-modules-load, inside the real image.
	if log, _ := os.ReadFile(filepath.Join(out, "kmod-boot.log")); !strings.Contains(string(log), "kmodctl verify: 2/2 modules verified") {
		t.Errorf("no 'kmodctl verify: 2/2 modules verified' in the boot check's console log")
	}
	scanForKey(t, key, raw)
	scanForKey(t, key, decompressInitrd(t, filepath.Join(root, "boot", "initrd.img-"+rel)))
}

// TestAccKmodSSH runs the same provisioning over SSH (Packer's null
// builder) against a chroot of the DKMS fixture tree.
func TestAccKmodSSH(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	tree := fixture.RootfsDKMS(t)
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	root := sshtest.PrepareRoot(t, tree)
	srv := sshtest.Start(t, root)
	dir := t.TempDir()
	manifestOut := filepath.Join(dir, "manifest.json")
	tpl := `
source "null" "ssh" {
  communicator         = "ssh"
  ssh_host             = ` + hcl(srv.Host) + `
  ssh_port             = ` + itoa(srv.Port) + `
  ssh_username         = ` + hcl(srv.User) + `
  ssh_private_key_file = ` + hcl(srv.KeyFile) + `
  # The fixture trees have no scp; sshd's own sftp server needs nothing.
  ssh_file_transfer_method = "sftp"
}
build {
  sources = ["source.null.ssh"]
  provisioner "shell" {
    inline = ["cp /etc/resolv.conf /etc/resolv.conf.orig 2>/dev/null || true"]
  }
` + kmodBlock(key, manifestOut, markerSource(t)) + `
}
`
	r := e.Start(t, dir, tpl)
	output, err := r.Wait(t, 20*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err != nil {
		t.Fatalf("packer build: %v\n--- log tail ---\n%s", err, r.LogTail(60))
	}
	m := checkTree(t, root, key, manifestOut)
	rel := m.Kernels[0].Release
	im, err := initramfs.Open(filepath.Join(root, "boot", "initrd.img-"+rel))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	found := false
	for _, e := range im.List() {
		if strings.HasSuffix(e, "/kmodtest_marker.ko") {
			found = true
		}
	}
	if !found {
		t.Errorf("kmodtest_marker.ko not in the initramfs")
	}
	// The first-boot hook: agent and units in place, enabled, and the agent
	// inside the image verifies what the provisioner installed.
	for _, p := range []string{"usr/libexec/kmodctl/kmodctl", "etc/systemd/system/kmodctl-verify.service", "etc/systemd/system/kmodctl-firstboot.service",
		"etc/systemd/system/sysinit.target.wants/kmodctl-verify.service", "etc/systemd/system/multi-user.target.wants/kmodctl-firstboot.service"} {
		// Lstat: the enable links are absolute, meant for inside the image.
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("first-boot hook: %v", err)
		}
	}
	out := srv.Run(t, "/usr/libexec/kmodctl/kmodctl firstboot verify --kernel "+rel+" --report /tmp/verify.json")
	if !strings.Contains(out, "kmodctl verify: 2/2 modules verified") {
		t.Errorf("the agent in the image: %q", out)
	}
}

// checkTree checks an image tree after the provisioning: signer and a
// single signature per managed module, the manifest matches the files and
// the copy on the build host, no DKMS key, modules-load.d and modprobe.d.
func checkTree(t *testing.T, root string, key *sigtest.Key, manifestOut string) *manifest.Manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, manifest.Path))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if host, err := os.ReadFile(manifestOut); err != nil || !bytes.Equal(host, data) {
		t.Errorf("manifest_output differs from the image's manifest (%v)", err)
	}
	if len(m.Kernels) == 0 {
		t.Fatal("manifest lists no kernel")
	}
	if mm := m.Check(root); len(mm) > 0 {
		t.Errorf("manifest does not match the files: %+v", mm)
	}
	names := map[string]bool{}
	for _, k := range m.Kernels {
		for _, mod := range k.Modules {
			names[mod.Name] = true
			p := filepath.Join(root, mod.Path)
			out, err := exec.Command("modinfo", "-F", "signer", p).Output()
			if err != nil || strings.TrimSpace(string(out)) != key.Cert.Subject.CommonName {
				t.Errorf("%s: modinfo signer %q (%v), want %q", mod.Path, out, err, key.Cert.Subject.CommonName)
			}
			if n := signatureCount(t, p); n != 1 {
				t.Errorf("%s: %d signatures, want exactly 1", mod.Path, n)
			}
			if mod.Name == "kmodtest_marker" && (!mod.Early || mod.Load || mod.InitramfsSHA256 == "") {
				t.Errorf("kmodtest_marker: early %v load %v initramfs_sha256 %q", mod.Early, mod.Load, mod.InitramfsSHA256)
			}
		}
	}
	for _, want := range []string{"kmodtest_marker", "v4l2loopback"} {
		if !names[want] {
			t.Errorf("manifest lacks %s (has %v)", want, names)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "var/lib/dkms/mok.key")); err == nil {
		t.Errorf("/var/lib/dkms/mok.key exists in the image")
	}
	load, _ := os.ReadFile(filepath.Join(root, "etc/modules-load.d/kmodctl.conf"))
	if !strings.Contains(string(load), "\nv4l2loopback\n") && !strings.HasPrefix(string(load), "v4l2loopback\n") || strings.Contains(string(load), "kmodtest_marker") {
		t.Errorf("modules-load.d/kmodctl.conf:\n%s", load)
	}
	opts, _ := os.ReadFile(filepath.Join(root, "etc/modprobe.d/kmodctl.conf"))
	if !strings.Contains(string(opts), "options v4l2loopback devices=2") {
		t.Errorf("modprobe.d/kmodctl.conf:\n%s", opts)
	}
	persist, _ := os.ReadFile(filepath.Join(root, "etc/initramfs-tools/modules"))
	if !strings.Contains(string(persist), "\nkmodtest_marker\n") {
		t.Errorf("early module not persisted in /etc/initramfs-tools/modules:\n%s", persist)
	}
	return m
}

// signatureCount strips signatures until none is left.
func signatureCount(t *testing.T, p string) int {
	t.Helper()
	mod, err := kmod.ParseFile(p)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if mod.Compression != "" {
		t.Skipf("%s is compressed; count signatures on plain modules only", p)
	}
	n := 0
	for {
		content, sig, err := modsig.Split(raw)
		if err != nil || sig == nil || len(content) >= len(raw) {
			return n
		}
		n++
		raw = content
	}
}

func copyOut(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(p))
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

// decompressInitrd writes every file of an initramfs, concatenated, to a
// temporary file (the scan target).
func decompressInitrd(t *testing.T, p string) string {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "initrd-content")
	im, err := initramfs.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if _, err := initramfs.Extract(im, dir, initramfs.ExtractOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			in, err := os.Open(path)
			if err == nil {
				io.Copy(f, in)
				in.Close()
			}
		}
		return nil
	})
	return out
}

// scanForKey fails if file contains the private key in any encoding: a
// line of its PEM body, its DER, or the raw bytes of its first prime.
func scanForKey(t *testing.T, key *sigtest.Key, file string) {
	t.Helper()
	var needles [][]byte
	for _, line := range strings.Split(string(key.KeyPEM), "\n") {
		if len(line) >= 60 && !strings.HasPrefix(line, "-----") {
			needles = append(needles, []byte(line))
			break
		}
	}
	rk, ok := key.Signer.(*rsa.PrivateKey)
	if !ok {
		t.Fatalf("test key is not RSA")
	}
	needles = append(needles, rk.Primes[0].Bytes()[:32])
	der, _ := base64.StdEncoding.DecodeString(strings.Join(pemBody(key.KeyPEM), ""))
	if len(der) > 64 {
		needles = append(needles, der[:64])
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const chunk = 16 << 20
	buf := make([]byte, chunk+256)
	carry := 0
	var off int64
	for {
		n, err := io.ReadFull(f, buf[carry:carry+chunk])
		b := buf[:carry+n]
		for i, nd := range needles {
			if j := bytes.Index(b, nd); j >= 0 {
				t.Errorf("%s holds the private key (needle %d) at offset %d", file, i, off+int64(j)-int64(carry))
			}
		}
		if err != nil {
			break
		}
		carry = copy(buf, b[len(b)-255:])
		off += int64(n)
	}
}

func pemBody(p []byte) []string {
	var body []string
	for _, l := range strings.Split(string(p), "\n") {
		if l != "" && !strings.HasPrefix(l, "-----") {
			body = append(body, l)
		}
	}
	return body
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestAccKmodSettings goes over SSH with the image's own update-initramfs
// (initramfs = "regenerate"), a prebuilt early module, the key given as PEM
// text, MOK enrollment, a profile, disabled modules and audit rules.
func TestAccKmodSettings(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	tree := fixture.RootfsDKMS(t)
	marker := fixture.TestModule(t, "kmodtest_marker")
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	root := sshtest.PrepareRoot(t, tree)
	srv := sshtest.Start(t, root)
	dir := t.TempDir()
	tpl := `
variable "key_pem" {
  type      = string
  sensitive = true
}
source "null" "ssh" {
  communicator             = "ssh"
  ssh_host                 = ` + hcl(srv.Host) + `
  ssh_port                 = ` + itoa(srv.Port) + `
  ssh_username             = ` + hcl(srv.User) + `
  ssh_private_key_file     = ` + hcl(srv.KeyFile) + `
  ssh_file_transfer_method = "sftp"
}
build {
  sources = ["source.null.ssh"]
  provisioner "kmod" {
    signing_cert    = ` + hcl(key.CertPath) + `
    signing_key_pem = var.key_pem
    mok_enroll      = true
    initramfs       = "regenerate"
    profiles        = ["kubernetes"]
    disable_modules = ["cramfs", "udf"]
    audit           = true
    module {
      prebuilt = [` + hcl(marker) + `]
      early    = true
      load     = false
    }
  }
}
`
	os.WriteFile(filepath.Join(dir, "key.pem"), key.KeyPEM, 0o600)
	r := e.Start(t, dir, tpl, "-var", "key_pem="+string(key.KeyPEM))
	output, err := r.Wait(t, 15*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err != nil {
		t.Fatalf("packer build: %v\n--- log tail ---\n%s", err, r.LogTail(60))
	}
	if strings.Contains(output, "BEGIN PRIVATE KEY") || strings.Contains(output, pemBody(key.KeyPEM)[1]) {
		t.Errorf("the private key appears in Packer's output")
	}
	data, err := os.ReadFile(filepath.Join(root, manifest.Path))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	rel := m.Kernels[0].Release
	im, err := initramfs.Open(filepath.Join(root, "boot", "initrd.img-"+rel))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	found := false
	for _, p := range im.List() {
		found = found || strings.HasSuffix(p, "/kmodtest_marker.ko")
	}
	if !found {
		t.Errorf("update-initramfs did not put kmodtest_marker.ko in the initramfs")
	}
	// The recorded initramfs_sha256 is the copy the image's own
	// unmkinitramfs finds in the regenerated image.
	x := "/tmp/unmk-" + filepath.Base(t.TempDir())
	if out, err := exec.Command("chroot", root, "unmkinitramfs", "/boot/initrd.img-"+rel, x).CombinedOutput(); err != nil {
		t.Fatalf("unmkinitramfs: %v\n%s", err, out)
	}
	var copies []string
	filepath.Walk(filepath.Join(root, x), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Name() == "kmodtest_marker.ko" {
			b, _ := os.ReadFile(p)
			copies = append(copies, fmt.Sprintf("%x", sha256.Sum256(b)))
		}
		return nil
	})
	os.RemoveAll(filepath.Join(root, x))
	recorded := ""
	for _, mod := range m.Kernels[0].Modules {
		if mod.Name == "kmodtest_marker" {
			recorded = mod.InitramfsSHA256
		}
	}
	if len(copies) != 1 || copies[0] != recorded {
		t.Errorf("manifest initramfs_sha256 %q, unmkinitramfs finds copies %v", recorded, copies)
	}
	der, err := os.ReadFile(filepath.Join(root, "var/lib/kmodctl/mok/kmodctl.der"))
	if err != nil || !bytes.Equal(der, key.Cert.Raw) {
		t.Errorf("mok_enroll: %v", err)
	}
	for p, want := range map[string]string{
		"etc/modules-load.d/kmodctl.conf":         "br_netfilter",
		"etc/sysctl.d/99-kmodctl-kubernetes.conf": "net.bridge.bridge-nf-call-iptables = 1",
		"etc/modprobe.d/kmodctl-disable.conf":     "install cramfs /bin/false",
		"etc/audit/rules.d/kmodctl-modules.rules": "finit_module",
		"etc/initramfs-tools/modules":             "kmodtest_marker",
	} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil || !strings.Contains(strings.ReplaceAll(string(b), "=", " = "), strings.ReplaceAll(want, "=", " = ")) && !strings.Contains(string(b), want) {
			t.Errorf("/%s lacks %q (%v):\n%s", p, want, err, b)
		}
	}
	scanForKey(t, key, decompressInitrd(t, filepath.Join(root, "boot", "initrd.img-"+rel)))
}
