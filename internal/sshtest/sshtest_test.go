package sshtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/packertest"
)

// prepared is a copy of the rootfs fixture holding a random marker file
// (/etc/sshtest-marker), proof that a session sees the copy.
func prepared(t *testing.T) (root, marker string) {
	t.Helper()
	root = PrepareRoot(t, fixture.Rootfs(t))
	b := make([]byte, 16)
	rand.Read(b)
	marker = "sshtest-" + hex.EncodeToString(b)
	if err := os.WriteFile(filepath.Join(root, "etc/sshtest-marker"), []byte(marker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, marker
}

// mountPoints lists the mount points of a mounts file (/proc/PID/mounts).
func mountPoints(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			mps = append(mps, f[1])
		}
	}
	return mps
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

func TestServe(t *testing.T) {
	fixture.Tool(t, "ssh")
	root, marker := prepared(t)
	start := time.Now()
	s := Start(t, root)
	t.Logf("sshd on %s:%d (pid %d, %s) ready in %v", s.Host, s.Port, s.PID(), s.MountNamespace(), time.Since(start).Round(time.Millisecond))

	t.Run("os-release", func(t *testing.T) {
		want, err := os.ReadFile(filepath.Join(root, "etc/os-release"))
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Run(t, "cat /etc/os-release"); got != string(want) {
			t.Errorf("/etc/os-release over ssh:\n%s\nthe tree's:\n%s", got, want)
		}
		if !strings.Contains(string(want), `VERSION_ID="12"`) {
			t.Errorf("the fixture is not Debian 12:\n%s", want)
		}
	})
	t.Run("chroot", func(t *testing.T) {
		if got := strings.TrimSpace(s.Run(t, "cat /etc/sshtest-marker")); got != marker {
			t.Errorf("marker %q, want %q", got, marker)
		}
		// A file written in the session lands in the tree.
		s.Run(t, "echo written-over-ssh > /root/from-ssh")
		if b, err := os.ReadFile(filepath.Join(root, "root/from-ssh")); err != nil || string(b) != "written-over-ssh\n" {
			t.Errorf("root/from-ssh: %q, %v", b, err)
		}
		// The session's shell and tools are the tree's.
		if got := s.Run(t, `ls -di / | cut -d' ' -f1; readlink /proc/self/root; id -u; command -v sh`); got != fmt.Sprintf("%d\n/\n0\n/usr/bin/sh\n", inode(t, root)) {
			t.Errorf("session identity:\n%s", got)
		}
	})
	t.Run("proc-dev", func(t *testing.T) {
		if out := s.Run(t, "ls /proc/self"); !strings.Contains(out, "status") {
			t.Errorf("ls /proc/self:\n%s", out)
		}
		s.Run(t, "test -c /dev/null && test -c /dev/zero && test -c /dev/ptmx && test -d /dev/pts && test -e /sys/kernel && head -c 4 /dev/zero | wc -c | grep -qx 4 && echo x >/dev/shm/x")
		// Inside, the session's mounts are the bound ones.
		var inside []string
		for _, l := range strings.Split(s.Run(t, "cat /proc/self/mounts"), "\n") {
			if f := strings.Fields(l); len(f) >= 2 {
				inside = append(inside, f[1])
			}
		}
		for _, mp := range []string{"/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"} {
			if !slices.Contains(inside, mp) {
				t.Errorf("no %s among the session's mounts %v", mp, inside)
			}
		}
		// sshd's namespace has them; the host's mount table does not.
		// (root itself is PrepareRoot's overlay mount.)
		ns := mountPoints(t, fmt.Sprintf("/proc/%d/mounts", s.PID()))
		for _, mp := range ns {
			if under(mp, root) && mp != root {
				t.Errorf("sshd's namespace mounts %s under the tree's host path", mp)
			}
		}
		if !slices.Contains(ns, s.chroot+"/proc") {
			t.Errorf("sshd's namespace has no %s/proc: %v", s.chroot, ns)
		}
		for _, mp := range mountPoints(t, "/proc/self/mounts") {
			if under(mp, root) && mp != root || under(mp, s.chroot) {
				t.Errorf("host mount table holds %s", mp)
			}
		}
	})
	t.Run("sftp", func(t *testing.T) {
		fixture.Tool(t, "sftp")
		batch := filepath.Join(t.TempDir(), "batch")
		src := filepath.Join(t.TempDir(), "up")
		os.WriteFile(src, []byte("sftp-upload\n"), 0o644)
		os.WriteFile(batch, []byte("put "+src+" /tmp/sftp-up\nget /etc/sshtest-marker "+src+".back\n"), 0o644)
		args := slices.Clone(s.SSHArgs())
		args = slices.Replace(args, slices.Index(args, "-p"), slices.Index(args, "-p")+1, "-P")
		cmd := exec.Command("sftp", append([]string{"-b", batch}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sftp: %v\n%s", err, out)
		}
		if b, _ := os.ReadFile(filepath.Join(root, "tmp/sftp-up")); string(b) != "sftp-upload\n" {
			t.Errorf("uploaded: %q", b)
		}
		if b, _ := os.ReadFile(src + ".back"); strings.TrimSpace(string(b)) != marker {
			t.Errorf("downloaded: %q", b)
		}
	})

	// A process left running in the chroot, detached from its session.
	out := s.Run(t, "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!")
	left := backgroundPID(t, out, "sleep")
	ns, pid, config := s.MountNamespace(), s.PID(), s.Config()
	s.Stop()

	if exiting(left) {
		t.Errorf("the chroot's sleep (pid %d) survives Stop", left)
	}
	if exiting(pid) {
		t.Errorf("sshd (pid %d) survives Stop", pid)
	}
	if pids := NamespacePIDs(ns); len(pids) > 0 {
		t.Errorf("processes left in sshd's namespace: %v", pids)
	}
	if pids := withArg(config); len(pids) > 0 {
		t.Errorf("an sshd with our config still runs: %v", pids)
	}
	// root itself is PrepareRoot's overlay until the test's cleanup.
	for _, mp := range mountPoints(t, "/proc/self/mounts") {
		if under(mp, root) && mp != root || under(mp, s.chroot) {
			t.Errorf("mounted after Stop: %s", mp)
		}
	}
	if _, err := os.Stat(s.chroot); !os.IsNotExist(err) {
		t.Errorf("%s remains: %v", s.chroot, err)
	}
	// The tree is intact and still a directory tree (nothing mounted on it).
	if _, err := os.Stat(filepath.Join(root, "proc/self")); !os.IsNotExist(err) {
		t.Errorf("root/proc/self after Stop: %v", err)
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	out, err := exec.Command("stat", "-c", "%i", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	fmt.Sscan(string(out), &n)
	return n
}

// withArg lists the processes having arg on their command line.
func withArg(arg string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && slices.Contains(strings.Split(string(b), "\x00"), arg) && exiting(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestPacker runs the real Packer's null builder with the ssh communicator
// against the server: a shell provisioner (its script uploaded by sftp) and
// a file provisioner write into the tree.
func TestPacker(t *testing.T) {
	packer := filepath.Join(packertest.RepoRoot(t), "bin", "packer")
	if _, err := os.Stat(packer); err != nil {
		fixture.Missing(t, packer+" (make packer)")
	}
	root, marker := prepared(t)
	s := Start(t, root)
	dir := t.TempDir()
	upload := filepath.Join(dir, "upload.txt")
	if err := os.WriteFile(upload, []byte("file-provisioner\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tpl := fmt.Sprintf(`source "null" "x" {
  communicator             = "ssh"
  ssh_host                 = %q
  ssh_port                 = %d
  ssh_username             = %q
  ssh_private_key_file     = %q
  # The tree has no scp binary; sshd's internal-sftp needs none.
  ssh_file_transfer_method = "sftp"
  ssh_timeout              = "1m"
}

build {
  sources = ["source.null.x"]

  provisioner "shell" {
    inline = [
      "set -e",
      "echo packer-was-here > /root/packer-marker",
      "cp /etc/sshtest-marker /root/packer-saw-marker",
      ". /etc/os-release && echo \"$ID $VERSION_ID\" > /root/packer-os",
    ]
  }

  provisioner "file" {
    source      = %q
    destination = "/root/uploaded.txt"
  }
}
`, s.Host, s.Port, s.User, s.KeyFile, upload)
	tplFile := filepath.Join(dir, "sshtest.pkr.hcl")
	if err := os.WriteFile(tplFile, []byte(tpl), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, packer, "build", "-color=false", tplFile)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "PACKER_NO_COLOR=1",
		"PACKER_CONFIG_DIR="+filepath.Join(dir, "config"), "PACKER_PLUGIN_PATH="+filepath.Join(dir, "plugins"),
		"PACKER_LOG=1", "PACKER_LOG_PATH="+filepath.Join(dir, "packer.log"))
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "packer.log"))
		t.Fatalf("packer build: %v\n%s\n--- packer.log ---\n%s", err, out, log)
	}
	t.Logf("packer build in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	for f, want := range map[string]string{
		"root/packer-marker":     "packer-was-here\n",
		"root/packer-saw-marker": marker + "\n",
		"root/packer-os":         "debian 12\n",
		"root/uploaded.txt":      "file-provisioner\n",
	} {
		if b, err := os.ReadFile(filepath.Join(root, f)); err != nil || string(b) != want {
			t.Errorf("%s: %q (%v), want %q", f, b, err, want)
		}
	}
	// The shell provisioner removes its uploaded script.
	if m, _ := filepath.Glob(filepath.Join(root, "tmp/script_*.sh")); len(m) > 0 {
		t.Errorf("scripts left in the tree's /tmp: %v", m)
	}
}

func TestCheckRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		fixture.Missing(t, "root")
	}
	d := t.TempDir()
	ok := filepath.Join(d, "ok")
	gw := filepath.Join(d, "gw")
	file := filepath.Join(d, "file")
	os.Mkdir(ok, 0o755)
	os.Mkdir(gw, 0o755)
	os.Chmod(gw, 0o775)
	os.WriteFile(file, nil, 0o644)
	if err := CheckRoot(ok); err != nil {
		t.Errorf("%s: %v", ok, err)
	}
	for _, bad := range []string{gw, file, "relative/root", filepath.Join(d, "missing")} {
		if err := CheckRoot(bad); err == nil {
			t.Errorf("CheckRoot(%s) accepted it", bad)
		}
	}
	notRoot := filepath.Join(d, "user")
	os.Mkdir(notRoot, 0o755)
	os.Chown(notRoot, 1000, 1000)
	if err := CheckRoot(notRoot); err == nil {
		t.Errorf("CheckRoot accepted a folder owned by uid 1000")
	}
}

func TestCheckRootAccount(t *testing.T) {
	d := t.TempDir()
	for shadow, locked := range map[string]bool{
		"root:*:19000:0:99999:7:::\n":               false,
		"root:$y$j9T$abc:19000:0:99999:7:::\n":      false,
		"daemon:*:1::::::\nroot:!:19000::::::\n":    true,
		"root:!$y$j9T$abc:19000:0:99999:7:::\n":     true,
		"rooty:!:19000:0:99999:7:::\nroot::1::::\n": false,
	} {
		p := filepath.Join(d, "shadow")
		os.WriteFile(p, []byte(shadow), 0o600)
		if err := checkRootAccount(p); (err != nil) != locked {
			t.Errorf("%q: %v, locked %v", shadow, err, locked)
		}
	}
}

// TestDKMSBuild builds and installs a DKMS module over ssh in a copy of the
// DKMS rootfs fixture, for the fixture kernel (not the host's): the
// headers, the compiler and the bound /proc and /dev are enough, and dkms
// signs the module with the key it generates in the copy only.
func TestDKMSBuild(t *testing.T) {
	kver := fixture.KVER(t)
	fixtureRoot := fixture.RootfsDKMS(t)
	root := PrepareRoot(t, fixtureRoot)
	src := filepath.Join(root, "usr/src/sshtest-hello-1.0")
	files := map[string]string{
		"sshtest_hello.c": "#include <linux/module.h>\n" +
			"static int __init h_init(void) { return 0; }\n" +
			"static void __exit h_exit(void) { }\n" +
			"module_init(h_init);\nmodule_exit(h_exit);\n" +
			"MODULE_LICENSE(\"GPL\");\nMODULE_DESCRIPTION(\"sshtest DKMS module\");\n",
		"Makefile":  "obj-m := sshtest_hello.o\n",
		"dkms.conf": "PACKAGE_NAME=\"sshtest-hello\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"sshtest_hello\"\nDEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n",
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := Start(t, root)
	start := time.Now()
	out := s.Run(t, "dkms install -m sshtest-hello -v 1.0 -k "+kver+" 2>&1")
	t.Logf("dkms install in %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	ko, _ := filepath.Glob(filepath.Join(root, "lib/modules", kver, "updates/dkms/sshtest_hello.ko*"))
	if len(ko) != 1 {
		t.Fatalf("installed modules: %v", ko)
	}
	if got := strings.TrimSpace(s.Run(t, "modinfo -k "+kver+" -F vermagic sshtest_hello")); !strings.HasPrefix(got, kver+" ") {
		t.Errorf("vermagic %q, want %s ...", got, kver)
	}
	if got := strings.TrimSpace(s.Run(t, "modinfo -k "+kver+" -F signer sshtest_hello")); got == "" {
		t.Errorf("the module is not signed")
	}
	for _, f := range []string{"var/lib/dkms/mok.key", "var/lib/dkms/mok.pub"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("the copy: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(fixtureRoot, f)); err == nil {
			t.Errorf("the fixture holds /%s", f)
		}
	}
}

// TestReapStale: what a test killed hard leaves (sshd is dead by Pdeathsig,
// the lock released, a process still running in the chroot) is killed by
// ReapStale, which leaves a live server alone.
func TestReapStale(t *testing.T) {
	root, _ := prepared(t)
	s := Start(t, root)
	out := s.Run(t, "setsid sleep 1001 </dev/null >/dev/null 2>&1 & echo $!")
	left := backgroundPID(t, out, "sleep")
	if killed := ReapStale(); killed != "" {
		t.Fatalf("ReapStale killed %s of a live server", killed)
	}
	// The test process "dies": its lock goes, sshd gets SIGKILL.
	s.lock.Close()
	s.cmd.Process.Kill()
	<-s.done
	if !exiting(left) {
		t.Fatal("the sleep died with sshd")
	}
	killed := ReapStale()
	t.Logf("ReapStale killed %s", killed)
	// Another test process starting a server at the same moment (go test
	// runs packages in parallel) may have reaped it first: what matters is
	// that it is gone.
	if exiting(left) {
		t.Errorf("sleep %d still alive; ReapStale killed %q", left, killed)
	}
	for _, p := range []string{s.chroot, s.chroot + ".lock"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s remains: %v", p, err)
		}
	}
}

// backgroundPID reads the PID a shell printed with `echo $!` and waits until
// that process runs comm: $! is printed before the child has exec'd it.
func backgroundPID(t *testing.T, out, comm string) int {
	t.Helper()
	var pid int
	fmt.Sscan(out, &pid)
	for deadline := time.Now().Add(5 * time.Second); pid != 0 && procComm(pid) != comm && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if pid == 0 || procComm(pid) != comm {
		t.Fatalf("background %s: %q (comm %q)", comm, out, procComm(pid))
	}
	return pid
}

// TestHostLoopReleased: a loop-backed filesystem another test has mounted
// when sshd starts (its namespace begins as a copy of every host mount)
// must still unmount and detach on the host while sshd runs.
func TestHostLoopReleased(t *testing.T) {
	fixture.NeedTools(t, "mkfs.ext4", "losetup")
	root, _ := prepared(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	loop, err := diskimage.AttachRange(context.Background(), img, 0, 8<<20, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loop.Detach() })
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := diskimage.Mount(context.Background(), loop.Device, mnt, "ext4"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { diskimage.UnmountTree(mnt) })

	s := Start(t, root)
	for _, mp := range mountPoints(t, fmt.Sprintf("/proc/%d/mounts", s.PID())) {
		if under(mp, mnt) {
			t.Errorf("sshd's namespace holds the host's loop mount %s", mp)
		}
	}
	if _, err := diskimage.UnmountTree(mnt); err != nil {
		t.Fatal(err)
	}
	if err := loop.Detach(); err != nil {
		t.Errorf("with sshd running: %v", err)
	}
}
