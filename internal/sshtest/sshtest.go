// Package sshtest serves a directory tree over SSH on 127.0.0.1: a private
// OpenSSH server (/usr/sbin/sshd, its own keys and config) whose sessions run
// chrooted in the tree, for acceptance tests that run Packer's null builder
// with the ssh communicator against "a machine" that is a copy of a fixture
// rootfs.
//
// How it works. sshd runs in a mount namespace of its own, where the tree is
// bind-mounted on an empty folder under /run/kmodctl-sshtest (sshd's
// ChrootDirectory wants every component of its path root-owned and not
// group- or world-writable, which t.TempDir under /tmp is not) with /proc,
// /sys, /dev and /dev/pts bound into it, and a private tmpfs on /dev/shm.
// The host's mount table never holds them; they are released when the last
// process of the namespace exits, whatever way the test ends. Stop (run at
// t.Cleanup) kills every process of that namespace: sshd, its sessions, and
// what the sessions left running in the chroot. sshd dies with the test
// process (Pdeathsig) even when no cleanup runs (kill -9); what its sessions
// left running then is killed by the next Start (ReapStale).
//
// Inside a session: user root, its login shell from the host's passwd
// (/bin/bash on Debian) executed from the tree, the tree's binaries and
// libraries, the host's kernel, processes and devices. File transfer: the
// sftp subsystem is sshd's internal-sftp (works in the chroot without any
// binary); scp needs an scp binary in the tree, which the fixture trees do
// not have, so Packer templates set ssh_file_transfer_method = "sftp".
//
// Requires root (skip, or fail with CI=true, otherwise), openssh-server and
// openssh-client (scripts/deps.sh), and a root account whose shadow password
// is not locked with "!" (sshd without PAM refuses locked accounts, even for
// keys).
package sshtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// Server is a running sshd serving Root.
type Server struct {
	Host string // 127.0.0.1
	Port int
	User string // root
	// KeyFile is the client's private key (ed25519, no passphrase).
	KeyFile string
	// KnownHostsFile holds the server's host key for [Host]:Port.
	KnownHostsFile string
	// Root is the tree the sessions are chrooted in.
	Root string

	t        testing.TB
	cmd      *exec.Cmd
	mntns    string // sshd's mount namespace, "mnt:[N]"
	chroot   string // where Root is bound in that namespace
	lock     *os.File
	config   string
	log      *syncBuffer
	done     chan struct{}
	stopOnce sync.Once
}

// RunDir is the parent of the chroot mount points: root-owned, mode 0755.
const RunDir = "/run/kmodctl-sshtest"

// PrepareRoot returns a writable view of the fixture tree src for Start:
// an overlay mount with src as its read-only lower layer and the test's
// changes in an upper layer under t.TempDir(), so tests never modify a
// fixture and pay nothing for a copy (a cp -a of the DKMS tree wrote about
// 1 GB per test, 11 GB in the provisioner's package). The mount is released
// at t.Cleanup, before the temporary folder is removed (lazily if it is
// still busy, so the removal never crosses it). A src whose path the
// overlay options cannot carry (',' or ':') is copied with cp -a instead.
func PrepareRoot(t testing.TB, src string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		fixture.Missing(t, "root (a rootfs copy keeps its owners)")
	}
	src, err := filepath.Abs(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "root")
	if strings.ContainsAny(src+dir, ",:") {
		if out, err := exec.Command("cp", "-a", "--", src, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
		}
		return dst
	}
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	for _, d := range []string{upper, work, dst} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The merged root takes the upper layer's owner and mode: src's, so
	// CheckRoot (sshd's rule) sees what it would see on a copy.
	if err := os.Chmod(upper, st.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("overlay", dst, "overlay", 0, "lowerdir="+src+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatalf("overlay mount of %s on %s: %v", src, dst, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dst, 0); err != nil {
			t.Logf("unmount %s: %v; detaching it", dst, err)
			if err := syscall.Unmount(dst, syscall.MNT_DETACH); err != nil {
				t.Errorf("detach %s: %v", dst, err)
			}
		}
	})
	return dst
}

// Start serves root (a prepared tree: Start copies nothing) over SSH on a
// free port of 127.0.0.1 and stops the server at t.Cleanup. root must be
// owned by root and not group- or world-writable (sshd's rule for
// ChrootDirectory); the mount points proc, sys and dev are created in it
// when missing.
func Start(t testing.TB, root string) *Server {
	t.Helper()
	if os.Geteuid() != 0 {
		fixture.Missing(t, "root (sshd's ChrootDirectory)")
	}
	sshd := fixture.Tool(t, "/usr/sbin/sshd")
	keygen := fixture.Tool(t, "ssh-keygen")
	fixture.Tool(t, "mount")
	root, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckRoot(root); err != nil {
		t.Fatal(err)
	}
	if err := checkRootAccount("/etc/shadow"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	s := &Server{
		Host:           "127.0.0.1",
		User:           "root",
		KeyFile:        filepath.Join(dir, "id_ed25519"),
		KnownHostsFile: filepath.Join(dir, "known_hosts"),
		Root:           root,
		t:              t,
		config:         filepath.Join(dir, "sshd_config"),
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	for _, k := range []struct{ file, comment string }{{hostKey, "sshtest-host"}, {s.KeyFile, "sshtest-client"}} {
		if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-C", k.comment, "-f", k.file).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(s.KeyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}

	// sshd's privilege separation folder (Debian's service creates it).
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if killed := ReapStale(); killed != "" {
		t.Logf("sshtest: killed what a dead test left in its chroot: %s", killed)
	}
	// The lock, held while the server lives, tells ReapStale that the
	// chroot folder of the same name is in use.
	if s.lock, err = os.CreateTemp(RunDir, "root-*.lock"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(s.lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	s.chroot = strings.TrimSuffix(s.lock.Name(), ".lock")
	if err := os.Mkdir(s.chroot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.chroot, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/", "/run", RunDir} {
		if err := checkChrootComponent(d); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(s.Stop)

	// A port found free may be taken before sshd binds it: try again.
	for attempt := 1; ; attempt++ {
		err := s.start(sshd, hostKey, authorized)
		if err == nil {
			break
		}
		if !errors.Is(err, errBind) || attempt == 5 {
			t.Fatalf("sshtest: %v\n--- sshd log ---\n%s", err, s.log.String())
		}
		t.Logf("sshtest: %v; again", err)
	}
	line := fmt.Sprintf("[%s]:%d %s", s.Host, s.Port, hostPub)
	if err := os.WriteFile(s.KnownHostsFile, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

var errBind = errors.New("sshd could not bind its port")

// mountScript runs in sshd's new mount namespace (private propagation:
// nothing reaches the host) and then becomes sshd. The namespace starts as
// a copy of every host mount; loop-backed ones (other tests' images) are
// detached first, or sshd would keep those loop devices busy after their
// owners unmount them on the host.
const mountScript = `set -e
root=$1 c=$2
shift 2
awk '$1 ~ /^\/dev\/loop/ {print $2}' /proc/self/mounts | sort -r | while read -r m; do
	umount -l "$(printf '%b' "$m")" 2>/dev/null || true
done
mount --bind "$root" "$c"
mount --bind /proc "$c/proc"
mount --bind /sys "$c/sys"
mount --bind /dev "$c/dev"
mount --bind /dev/pts "$c/dev/pts"
if [ -d "$c/dev/shm" ]; then mount -t tmpfs -o mode=1777,nosuid,nodev shm "$c/dev/shm"; fi
exec "$@"
`

// start runs sshd once on a new free port and waits until it serves.
func (s *Server) start(sshd, hostKey, authorized string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.Port = port
	if err := os.WriteFile(s.config, []byte(s.sshdConfig(hostKey, authorized)), 0o600); err != nil {
		return err
	}
	s.log = &syncBuffer{}
	s.done = make(chan struct{})
	cmd := exec.Command("/bin/sh", "-c", mountScript, "sh", s.Root, s.chroot, sshd, "-D", "-e", "-f", s.config)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	// Go makes / private (MS_REC|MS_PRIVATE) in the new namespace.
	// Pdeathsig: sshd dies with the test binary (a test killed hard).
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	go func() { cmd.Wait(); close(s.done) }()
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid))
	self, err2 := os.Readlink("/proc/self/ns/mnt")
	if err != nil || err2 != nil || ns == self {
		// Never kill by namespace unless it is sshd's own.
		cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("sshd's mount namespace %q (ours %q): %v %v", ns, self, err, err2)
	}
	s.mntns = ns

	listening := fmt.Sprintf("Server listening on %s port %d", s.Host, s.Port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-s.done:
			if strings.Contains(s.log.String(), "Bind to port") || strings.Contains(s.log.String(), "Cannot bind any address") {
				return fmt.Errorf("%w %d", errBind, s.Port)
			}
			return fmt.Errorf("sshd exited: %v", cmd.ProcessState)
		default:
		}
		if strings.Contains(s.log.String(), listening) && banner(s.Host, s.Port) {
			return nil
		}
		if time.Now().After(deadline) {
			s.killAll()
			return fmt.Errorf("sshd is not serving %s:%d after 20 s", s.Host, s.Port)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) sshdConfig(hostKey, authorized string) string {
	return fmt.Sprintf(`# sshtest: a private sshd serving %[6]s chrooted.
Port %[1]d
ListenAddress %[2]s
AddressFamily inet
HostKey "%[3]s"
PidFile none
UsePAM no
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile "%[4]s"
# The key files live under /tmp (world-writable).
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
GSSAPIAuthentication no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 100
MaxSessions 100
ChrootDirectory "%[5]s"
Subsystem sftp internal-sftp
LogLevel INFO
`, s.Port, s.Host, hostKey, authorized, s.chroot, s.Root)
}

// Stop stops sshd and kills every process left in its mount namespace
// (sessions and what they started in the chroot); the namespace's mounts go
// with them. Start registers it with t.Cleanup; calling it earlier is fine.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil {
			if pids := s.killAll(); pids != "" {
				s.t.Logf("sshtest: killed %s", pids)
			}
			select {
			case <-s.done:
			case <-time.After(10 * time.Second):
				s.t.Errorf("sshtest: sshd (pid %d) did not exit", s.cmd.Process.Pid)
			}
			if s.t.Failed() {
				s.t.Logf("sshtest: sshd log:\n%s", s.log.String())
			}
		}
		if s.chroot != "" {
			if err := os.Remove(s.chroot); err != nil && !os.IsNotExist(err) {
				s.t.Errorf("sshtest: %v", err)
			}
		}
		if s.lock != nil {
			os.Remove(s.lock.Name())
			s.lock.Close()
		}
	})
}

// ReapStale cleans up after servers whose test process died without its
// cleanup (kill -9; sshd itself dies with it): for each chroot folder under
// RunDir whose lock no process holds, it kills the processes still
// chrooted there and every process of their mount namespaces, then removes
// the folder. It returns what it killed. Start calls it.
func ReapStale() string {
	locks, _ := filepath.Glob(filepath.Join(RunDir, "root-*.lock"))
	self, _ := os.Readlink("/proc/self/ns/mnt")
	var killed []string
	for _, l := range locks {
		f, err := os.Open(l)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close() // a live server's
			continue
		}
		dir := strings.TrimSuffix(l, ".lock")
		namespaces := map[string]bool{}
		for _, pid := range allPIDs() {
			r, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
			if err != nil || !(r == dir || strings.HasPrefix(r, dir+"/")) {
				continue
			}
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns != self {
				namespaces[ns] = true
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		var pending []int
		for ns := range namespaces {
			for pids := NamespacePIDs(ns); len(pids) > 0 && time.Now().Before(deadline); pids = NamespacePIDs(ns) {
				for _, pid := range pids {
					killed = append(killed, fmt.Sprintf("%d (%s)", pid, procComm(pid)))
					syscall.Kill(pid, syscall.SIGKILL)
					pending = append(pending, pid)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		// A killed process leaves its namespace before it is gone (it
		// is still exiting, not yet a zombie): wait for that too, so
		// that the caller finds it dead (seen once under load).
		for _, pid := range pending {
			for exiting(pid) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		os.Remove(dir)
		os.Remove(l)
		f.Close()
	}
	return strings.Join(killed, ", ")
}

// exiting reports whether process pid still exists and is not a zombie
// (a zombie is dead; only its parent has not reaped it yet).
func exiting(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func allPIDs() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killAll SIGKILLs every process in sshd's mount namespace until none is
// left and names those that were not sshd itself.
func (s *Server) killAll() string {
	if s.mntns == "" {
		return ""
	}
	var others []string
	seen := map[int]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := NamespacePIDs(s.mntns)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
			if !seen[pid] && pid != s.cmd.Process.Pid {
				others = append(others, fmt.Sprintf("%d (%s)", pid, procComm(pid)))
			}
			seen[pid] = true
		}
		if time.Now().After(deadline) {
			s.t.Errorf("sshtest: processes survive SIGKILL in the chroot: %v", pids)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return strings.Join(others, ", ")
}

// PID is sshd's process id (0 before Start succeeded).
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// MountNamespace is sshd's mount namespace ("mnt:[N]", as in
// /proc/PID/ns/mnt), shared by the sessions and what they start.
func (s *Server) MountNamespace() string { return s.mntns }

// Config is the path of the server's sshd_config.
func (s *Server) Config() string { return s.config }

// Log is what sshd logged so far.
func (s *Server) Log() string { return s.log.String() }

// SSHArgs are the arguments of an OpenSSH client logging into the server
// with KeyFile, checking the host key against KnownHostsFile, ignoring the
// user's ssh configuration; command (if any) follows them.
func (s *Server) SSHArgs(command ...string) []string {
	args := []string{"-F", "/dev/null", "-i", s.KeyFile, "-p", strconv.Itoa(s.Port),
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + s.KnownHostsFile,
		"-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
		s.User + "@" + s.Host}
	if len(command) > 0 {
		args = append(append(args, "--"), command...)
	}
	return args
}

// Command is an ssh client command running command (a shell command line)
// in the chroot.
func (s *Server) Command(command ...string) *exec.Cmd {
	return exec.Command("ssh", s.SSHArgs(command...)...)
}

// Run runs command in the chroot over ssh and returns its stdout; the test
// fails (with stderr) when it does not exit 0.
func (s *Server) Run(t testing.TB, command string) string {
	t.Helper()
	fixture.Tool(t, "ssh")
	cmd := s.Command(command)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ssh %s: %v\n%s", command, err, stderr.String())
	}
	return string(out)
}

// CheckRoot reports why sshd would refuse root as a ChrootDirectory: not an
// absolute path of a directory owned by root and not writable by group or
// others. (Start binds it under RunDir, so the folders above it do not
// matter.)
func CheckRoot(root string) error {
	if !filepath.IsAbs(root) {
		return fmt.Errorf("sshtest: root %q is not absolute", root)
	}
	st, err := os.Stat(root)
	if err != nil {
		return fmt.Errorf("sshtest: root: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("sshtest: root %s is not a directory", root)
	}
	return chrootPerm(root, st)
}

func checkChrootComponent(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("sshtest: %w", err)
	}
	return chrootPerm(p, st)
}

func chrootPerm(p string, st os.FileInfo) error {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || sys.Uid != 0 {
		return fmt.Errorf("sshtest: %s is not owned by root (sshd's ChrootDirectory rule)", p)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("sshtest: %s has mode %v: group or others may write it (sshd's ChrootDirectory rule)", p, st.Mode().Perm())
	}
	return nil
}

// checkRootAccount fails when root's password is locked with "!": sshd
// without PAM refuses such an account even with a key.
func checkRootAccount(shadow string) error {
	data, err := os.ReadFile(shadow)
	if err != nil {
		return nil // sshd will say what it thinks
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) >= 2 && f[0] == "root" && strings.HasPrefix(f[1], "!") {
			return errors.New("sshtest: root's password is locked (\"!\" in /etc/shadow) and sshd without PAM refuses locked accounts; unlock it without a password: usermod -p '*' root")
		}
	}
	return nil
}

// NamespacePIDs lists the live processes whose mount namespace is ns
// ("mnt:[N]"); zombies have none.
func NamespacePIDs(ns string) []int {
	var pids []int
	for _, pid := range allPIDs() {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && l == ns {
			pids = append(pids, pid)
		}
	}
	return pids
}

func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// banner reports whether an SSH server answers on host:port.
func banner(host string, port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 8)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "SSH-2.0-"
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	if b == nil {
		return ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
