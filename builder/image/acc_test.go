package image_test

// Acceptance tests: the real Packer 1.15.0 (bin/packer, `make packer`) runs
// the real plugin, installed with `packer plugins install --path`, on the
// fixture cloud image. They run as part of `make test` (root, loop devices).

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/packertest"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	packertest.Cleanup()
	os.Exit(code)
}

// TestAccQcow2ShellAptBootCheck is acceptance case (1) and the passing half of
// (4): qcow2 in; a shell provisioner writes a file and installs a Debian
// package; qcow2 and raw out; the file is in both; qemu-img check passes;
// the boot check passes with expect_modules = ["ext4"].
func TestAccQcow2ShellAptBootCheck(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageQcow2(t)
	qemutest.Slot(t)
	before := packertest.SumFile(t, src)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	tpl := `
source "kmod-image" "acc" {
  source_image     = ` + packertest.HCL(src) + `
  output_directory = ` + packertest.HCL(out) + `
  mount_path       = ` + packertest.HCL(filepath.Join(dir, "mnt")) + `
  output_name      = "debian12"
  output_formats   = ["qcow2", "raw"]
  pre_mount_commands  = ["echo {{.Device}} > ` + filepath.Join(dir, "pre-device") + `", "test -f {{.Image}}", "test ! -e {{.MountPath}}/etc"]
  post_mount_commands = ["test -f {{.MountPath}}/etc/os-release", "test -f {{.MountPath}}/boot/vmlinuz-*"]
  boot_check {
    expect_modules = ["ext4"]
  }
}

build {
  sources = ["source.kmod-image.acc"]
  provisioner "shell" {
    inline = [
      "echo kmod-image-acc > /etc/kmod-image-acc",
      "grep -q '^nameserver' /etc/resolv.conf || exit 9",
      "test -x /usr/sbin/policy-rc.d || exit 8",
      "apt-get update -q",
      "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends hello",
      "echo PATH=$PATH",
      "mkdir -p /usr/lib/kmodctl && echo '{\"kmodctl\":\"manifest\"}' > /usr/lib/kmodctl/manifest.json",
    ]
  }
}
`
	r := e.Start(t, dir, tpl)
	output, err := r.Wait(t, 15*time.Minute)
	if err != nil {
		t.Fatalf("packer build: %v\n%s\n--- log tail ---\n%s", err, output, r.LogTail(40))
	}
	t.Logf("packer output:\n%s", output)
	if after := packertest.SumFile(t, src); after != before {
		t.Errorf("source image changed: %+v → %+v", before, after)
	}
	if !strings.Contains(output, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") {
		t.Errorf("the chroot's PATH is not the clean one (host environment leaked?)")
	}
	packertest.CheckNoLeftovers(t, dir)

	qcow := filepath.Join(out, "debian12.qcow2")
	raw := filepath.Join(out, "debian12.raw")
	if b, err := exec.Command("qemu-img", "check", qcow).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check %s: %v\n%s", qcow, err, b)
	}
	// The qcow2 holds the same disk as the raw output.
	back := filepath.Join(dir, "from-qcow2.raw")
	if b, err := exec.Command("qemu-img", "convert", "-O", "raw", qcow, back).CombinedOutput(); err != nil {
		t.Fatalf("convert back: %v\n%s", err, b)
	}
	if a, b := packertest.SumFile(t, raw).Sum, packertest.SumFile(t, back).Sum; a != b {
		t.Errorf("qcow2 output (as raw %s) differs from raw output (%s)", b, a)
	}
	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"debian12.qcow2", "debian12.raw"} {
		want := packertest.SumFile(t, filepath.Join(out, name)).Sum + "  " + name
		if !strings.Contains(string(sums), want) {
			t.Errorf("SHA256SUMS lacks %q:\n%s", want, sums)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "pre-device")); err != nil || !strings.HasPrefix(string(b), "/dev/loop") {
		t.Errorf("pre_mount_commands did not see {{.Device}}: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "debian12-manifest.json")); err != nil || !strings.Contains(string(b), `"kmodctl":"manifest"`) {
		t.Errorf("manifest not exported: %q, %v", b, err)
	} else if want := packertest.SumFile(t, filepath.Join(out, "debian12-manifest.json")).Sum + "  debian12-manifest.json"; !strings.Contains(string(sums), want) {
		t.Errorf("SHA256SUMS lacks the manifest:\n%s", sums)
	}
	if _, err := os.Stat(filepath.Join(out, "debian12-boot.log")); err != nil {
		t.Errorf("boot log: %v", err)
	}
	for _, img := range []string{raw, back} {
		root := packertest.MountOutput(t, img)
		if b, err := os.ReadFile(filepath.Join(root, "etc/kmod-image-acc")); err != nil || string(b) != "kmod-image-acc\n" {
			t.Errorf("%s: /etc/kmod-image-acc = %q, %v", img, b, err)
		}
		if _, err := os.Stat(filepath.Join(root, "usr/bin/hello")); err != nil {
			t.Errorf("%s: package hello not installed: %v", img, err)
		}
		if _, err := os.Lstat(filepath.Join(root, "usr/sbin/policy-rc.d")); err == nil {
			t.Errorf("%s: policy-rc.d left in the image", img)
		}
		if _, err := os.Lstat(filepath.Join(root, "etc/.resolv.conf.packer-kmod-image")); err == nil {
			t.Errorf("%s: resolv.conf backup left in the image", img)
		}
	}
	srcRoot := packertest.MountOutput(t, filepath.Join(fixture.CloudImageRaw(t)))
	wantResolv, _ := os.Readlink(filepath.Join(srcRoot, "etc/resolv.conf"))
	wantContent, _ := os.ReadFile(filepath.Join(srcRoot, "etc/resolv.conf"))
	outRoot := packertest.MountOutput(t, raw)
	gotResolv, _ := os.Readlink(filepath.Join(outRoot, "etc/resolv.conf"))
	gotContent, _ := os.ReadFile(filepath.Join(outRoot, "etc/resolv.conf"))
	if gotResolv != wantResolv || !bytes.Equal(gotContent, wantContent) {
		t.Errorf("resolv.conf not restored: link %q content %q, want link %q content %q", gotResolv, gotContent, wantResolv, wantContent)
	}
	if !strings.Contains(output, "Expected modules loaded: ext4") {
		t.Errorf("the boot check did not report ext4")
	}
}

// failingBuild runs a kmod-image build of the cloud image fixture (one
// output format, no boot check) whose shell provisioner runs inline; during,
// if not nil, acts on the build while it runs. The build must fail within
// wait, leave nothing mounted or attached, leave the source unchanged and
// write no output. It returns Packer's output.
func failingBuild(t *testing.T, name, format string, inline []string, during func(r *packertest.Run), wait time.Duration) string {
	t.Helper()
	e := packertest.Setup(t)
	src := fixture.CloudImageRaw(t)
	qemutest.Slot(t)
	before := packertest.SumFile(t, src)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	lines := make([]string, len(inline))
	for i, l := range inline {
		lines[i] = packertest.HCL(l)
	}
	tpl := `
source "kmod-image" "` + name + `" {
  source_image     = ` + packertest.HCL(src) + `
  output_directory = ` + packertest.HCL(out) + `
  mount_path       = ` + packertest.HCL(filepath.Join(dir, "mnt")) + `
  output_formats   = ["` + format + `"]
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.` + name + `"]
  provisioner "shell" {
    inline = [` + strings.Join(lines, ", ") + `]
  }
}
`
	r := e.Start(t, dir, tpl)
	if during != nil {
		during(r)
	}
	output, err := r.Wait(t, wait)
	t.Logf("packer output:\n%s", output)
	if err == nil {
		t.Fatalf("packer build %s succeeded:\n%s", name, output)
	}
	packertest.CheckNoLeftovers(t, dir)
	if after := packertest.SumFile(t, src); after != before {
		t.Errorf("source image changed: %+v → %+v", before, after)
	}
	ents, _ := os.ReadDir(out)
	for _, e := range ents {
		t.Errorf("left in the output directory: %s", e.Name())
	}
	return output
}

// TestAccFailingProvisioner is acceptance case (2): the build fails, nothing
// is left mounted or attached, the source is unchanged, no outputs remain.
func TestAccFailingProvisioner(t *testing.T) {
	t.Parallel()
	output := failingBuild(t, "fail", "raw", []string{"echo about-to-fail", "exit 3"}, nil, 10*time.Minute)
	if !strings.Contains(output, "about-to-fail") || !strings.Contains(output, "exit status 3") && !strings.Contains(output, "non-zero exit status: 3") {
		t.Errorf("output does not show the provisioner failing with 3:\n%s", output)
	}
}

// TestAccInterrupt is acceptance case (3): SIGINT while a provisioner runs.
func TestAccInterrupt(t *testing.T) {
	t.Parallel()
	sigint := func(r *packertest.Run) {
		r.WaitFor(t, "provisioning-started", 5*time.Minute)
		time.Sleep(500 * time.Millisecond)
		// What a terminal's Ctrl-C does: SIGINT to the foreground group.
		if err := syscall.Kill(-r.Cmd.Process.Pid, syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
	}
	output := failingBuild(t, "int", "qcow2", []string{"echo provisioning-started", "sleep 600 & sleep 600"}, sigint, 3*time.Minute)
	if !strings.Contains(output, "cancel") && !strings.Contains(output, "Cancel") && !strings.Contains(output, "interrupt") {
		t.Errorf("output does not mention the cancellation:\n%s", output)
	}
	noSleepLeft(t, "the interrupted build's chroot")
}

// noSleepLeft fails the test if a "sleep 600" started in a build's chroot
// survived it.
func noSleepLeft(t *testing.T, where string) {
	t.Helper()
	if b, _ := exec.Command("pgrep", "-f", "^sleep 600").Output(); len(bytes.TrimSpace(b)) > 0 {
		t.Errorf("processes from %s survived: %s", where, b)
	}
}

// TestAccExpectModuleMissing is the failing half of acceptance case (4).
func TestAccExpectModuleMissing(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageRaw(t)
	qemutest.Slot(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	tpl := `
source "kmod-image" "expect" {
  source_image     = ` + packertest.HCL(src) + `
  output_directory = ` + packertest.HCL(out) + `
  mount_path       = ` + packertest.HCL(filepath.Join(dir, "mnt")) + `
  output_formats   = ["raw"]
  boot_check {
    expect_modules = ["ext4", "kmodtest_absent"]
  }
}
build {
  sources = ["source.kmod-image.expect"]
}
`
	r := e.Start(t, dir, tpl)
	output, err := r.Wait(t, 10*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err == nil {
		t.Fatalf("packer build succeeded though kmodtest_absent is not loaded:\n%s", output)
	}
	if !strings.Contains(output, "kmodtest_absent") {
		t.Errorf("the failure does not name kmodtest_absent:\n%s", output)
	}
	// The console log is kept for diagnosis, named after output_name.
	if matches, _ := filepath.Glob(filepath.Join(out, "*-boot.log")); len(matches) == 0 {
		t.Errorf("no boot log kept in %s after the failed boot check", out)
	}
	packertest.CheckNoLeftovers(t, dir)
}

// TestAccStaleState kills a build outright (SIGKILL to Packer and the
// plugin: no cleanup runs), then checks that the next build reports what was
// left with commands that really release it.
func TestAccStaleState(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageRaw(t)
	qemutest.Slot(t)
	dir := t.TempDir()
	tpl := func(name, cmd string) string {
		return `
source "kmod-image" "` + name + `" {
  source_image     = ` + packertest.HCL(src) + `
  output_directory = ` + packertest.HCL(filepath.Join(dir, "out-"+name)) + `
  mount_path       = ` + packertest.HCL(filepath.Join(dir, "mnt-"+name)) + `
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.` + name + `"]
  provisioner "shell" {
    inline = [` + packertest.HCL(cmd) + `]
  }
}
`
	}
	killedDir := filepath.Join(dir, "killed")
	os.Mkdir(killedDir, 0o755)
	r := e.Start(t, killedDir, tpl("killed", "echo killed-started; sleep 600"))
	r.WaitFor(t, "killed-started", 5*time.Minute)
	syscall.Kill(-r.Cmd.Process.Pid, syscall.SIGKILL)
	r.Wait(t, time.Minute)
	// The killed build's chroot process (own process group) still runs and
	// its mounts and loops are still there.
	killedMnt := filepath.Join(dir, "mnt-killed")
	if len(diskimage.MountsUnder(killedMnt)) == 0 {
		t.Fatalf("nothing left mounted under %s after SIGKILL; the test cannot check the report", killedMnt)
	}

	nextDir := filepath.Join(dir, "next")
	os.Mkdir(nextDir, 0o755)
	r2 := e.Start(t, nextDir, tpl("next", "exit 0"))
	output, err := r2.Wait(t, 10*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err != nil {
		t.Fatalf("the next build failed: %v", err)
	}
	i := strings.Index(output, "stale state")
	if i < 0 {
		t.Fatalf("no stale-state report")
	}
	var cmds []string
	for _, line := range strings.Split(output[i:], "\n")[1:] {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "==> kmod-image.next:"))
		if !strings.HasPrefix(line, "fuser ") && !strings.HasPrefix(line, "umount ") && !strings.HasPrefix(line, "losetup ") && !strings.HasPrefix(line, "rm ") {
			break
		}
		cmds = append(cmds, line)
	}
	joined := strings.Join(cmds, "\n")
	for _, want := range []string{"umount -R " + killedMnt, "losetup -d /dev/loop", "rm -rf " + filepath.Join(dir, "out-killed")} {
		if !strings.Contains(joined, want) {
			t.Errorf("cleanup commands lack %q:\n%s", want, joined)
		}
	}
	for _, c := range cmds {
		out, err := exec.Command("/bin/sh", "-c", c).CombinedOutput()
		t.Logf("$ %s → %v %s", c, err, out)
	}
	packertest.CheckNoLeftovers(t, dir)
	noSleepLeft(t, "the killed build's chroot (after the cleanup commands)")
}

// TestAccRootfsToCloudFormats builds a disk from a root filesystem tree (the
// fixture rootfs), writes the AWS and Azure import formats, and boot-checks
// the new disk.
func TestAccRootfsToCloudFormats(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	rootfs := fixture.Rootfs(t)
	qemutest.Slot(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	tpl := `
source "kmod-image" "rootfs" {
  source_rootfs    = ` + packertest.HCL(rootfs) + `
  disk_size        = "2G"
  output_directory = ` + packertest.HCL(out) + `
  mount_path       = ` + packertest.HCL(filepath.Join(dir, "mnt")) + `
  output_name      = "cloud"
  output_formats   = ["vhd", "vmdk"]
  boot_check {
    expect_modules = ["ext4"]
  }
}
build {
  sources = ["source.kmod-image.rootfs"]
  provisioner "file" {
    content     = "from-rootfs\n"
    destination = "/etc/kmod-image-rootfs"
  }
}
`
	r := e.Start(t, dir, tpl)
	output, err := r.Wait(t, 15*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err != nil {
		t.Fatalf("packer build: %v\n--- log tail ---\n%s", err, r.LogTail(40))
	}
	packertest.CheckNoLeftovers(t, dir)
	vhd, vmdk := filepath.Join(out, "cloud.vhd"), filepath.Join(out, "cloud.vmdk")
	info, err := exec.Command("qemu-img", "info", "--output=json", vmdk).Output()
	if err != nil || !strings.Contains(string(info), `"create-type": "streamOptimized"`) {
		t.Errorf("vmdk is not streamOptimized: %v\n%s", err, info)
	}
	st, err := os.Stat(vhd)
	if err != nil {
		t.Fatal(err)
	}
	if (st.Size()-512)%(1<<20) != 0 {
		t.Errorf("vhd size %d is not 1 MiB aligned plus the footer", st.Size())
	}
	f, _ := os.Open(vhd)
	footer := make([]byte, 512)
	f.ReadAt(footer, st.Size()-512)
	f.Close()
	if string(footer[:8]) != "conectix" || footer[63] != 2 {
		t.Errorf("vhd footer: cookie %q disk type %d, want conectix / 2 (fixed)", footer[:8], footer[63])
	}
	// The file provisioner's upload is in the disk (read back from the vhd).
	raw := filepath.Join(dir, "back.raw")
	if b, err := exec.Command("qemu-img", "convert", "-f", "vpc", "-O", "raw", vhd, raw).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	root := packertest.MountOutput(t, raw)
	if b, err := os.ReadFile(filepath.Join(root, "etc/kmod-image-rootfs")); err != nil || string(b) != "from-rootfs\n" {
		t.Errorf("/etc/kmod-image-rootfs = %q, %v", b, err)
	}
	if !strings.Contains(output, "Expected modules loaded: ext4") {
		t.Errorf("no boot check report")
	}
}

// TestAccSourceChecksum: a wrong source_checksum stops the build before
// anything is attached; the right one passes.
func TestAccSourceChecksum(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageRaw(t)
	qemutest.Slot(t)
	good := packertest.SumFile(t, src).Sum
	for _, c := range []struct {
		name, sum string
		ok        bool
	}{
		{"bad", strings.Repeat("0", 64), false},
		{"good", "sha256:" + good, true},
	} {
		dir := filepath.Join(t.TempDir(), c.name)
		os.MkdirAll(dir, 0o755)
		tpl := `
source "kmod-image" "sum" {
  source_image     = ` + packertest.HCL(src) + `
  source_checksum  = ` + packertest.HCL(c.sum) + `
  output_directory = ` + packertest.HCL(filepath.Join(dir, "out")) + `
  mount_path       = ` + packertest.HCL(filepath.Join(dir, "mnt")) + `
  output_formats   = ["raw"]
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.sum"]
}
`
		r := e.Start(t, dir, tpl)
		output, err := r.Wait(t, 10*time.Minute)
		t.Logf("%s: packer output:\n%s", c.name, output)
		if c.ok != (err == nil) {
			t.Fatalf("%s: packer build error %v, want success %v", c.name, err, c.ok)
		}
		if !c.ok {
			if !strings.Contains(output, "has sha256 "+good) || strings.Contains(output, "Attached") {
				t.Errorf("bad checksum: output should name the actual sha256 and attach nothing")
			}
		}
		packertest.CheckNoLeftovers(t, dir)
	}
}
