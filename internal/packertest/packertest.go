// Package packertest runs the real Packer (bin/packer, `make packer`) with
// the plugin built from this checkout and installed into a private plugin
// folder, for acceptance tests of the builder and the provisioner.
package packertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// Env is an isolated Packer installation with the plugin installed.
type Env struct {
	packer    string
	pluginDir string
	configDir string
}

var (
	envOnce sync.Once
	env     *Env
	envErr  error
	envTmp  string
)

// Cleanup removes what Setup built; call it from TestMain after m.Run.
func Cleanup() {
	if envTmp != "" {
		os.RemoveAll(envTmp)
	}
}

// RepoRoot is the checkout: the nearest folder above the test's working
// directory holding go.mod.
func RepoRoot(t testing.TB) string { return fixture.RepoRoot(t) }

// Setup builds the plugin once per test binary and installs it into a
// private plugin directory.
func Setup(t *testing.T) *Env {
	t.Helper()
	if os.Geteuid() != 0 {
		fixture.Missing(t, "root (kmod-image attaches loop devices)")
	}
	root := RepoRoot(t)
	packer := filepath.Join(root, "bin", "packer")
	if _, err := os.Stat(packer); err != nil {
		fixture.Missing(t, packer+" (make packer)")
	}
	envOnce.Do(func() {
		envTmp, envErr = os.MkdirTemp("", "kmod-image-acc-")
		if envErr != nil {
			return
		}
		bin := filepath.Join(envTmp, "packer-plugin-kmod")
		// The plugin carries the first-boot agents (make plugin does the same).
		agents := exec.Command("bash", filepath.Join(root, "scripts", "agents.sh"))
		if out, err := agents.CombinedOutput(); err != nil {
			envErr = fmt.Errorf("build the first-boot agents: %v\n%s", err, out)
			return
		}
		build := exec.Command("go", "build", "-trimpath", "-tags", "embedagents", "-o", bin,
			"-ldflags", "-X github.com/kmodctl/packer-plugin-kmod/version.VersionPrerelease=dev",
			"./cmd/packer-plugin-kmod")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			envErr = fmt.Errorf("build plugin: %v\n%s", err, out)
			return
		}
		e := &Env{packer: packer, pluginDir: filepath.Join(envTmp, "plugins"), configDir: filepath.Join(envTmp, "config")}
		install := exec.Command(packer, "plugins", "install", "--path", bin, "github.com/kmodctl/kmod")
		install.Env = e.Environ()
		if out, err := install.CombinedOutput(); err != nil {
			envErr = fmt.Errorf("packer plugins install: %v\n%s", err, out)
			return
		}
		env = e
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
	return env
}

func (e *Env) Environ() []string {
	return append(os.Environ(), "PACKER_PLUGIN_PATH="+e.pluginDir, "PACKER_CONFIG_DIR="+e.configDir, "CHECKPOINT_DISABLE=1", "PACKER_NO_COLOR=1")
}

// run is one `packer build` of a template.
type Run struct {
	Cmd    *exec.Cmd
	Out    *lockedBuffer
	logf   string
	waitCh chan error
}

type lockedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start writes template into dir and starts packer build on it.
func (e *Env) Start(t *testing.T, dir, template string, args ...string) *Run {
	t.Helper()
	tpl := filepath.Join(dir, "build.pkr.hcl")
	if err := os.WriteFile(tpl, []byte(template), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &Run{Out: &lockedBuffer{}, logf: filepath.Join(dir, "packer.log"), waitCh: make(chan error, 1)}
	r.Cmd = exec.Command(e.packer, append(append([]string{"build"}, args...), tpl)...)
	r.Cmd.Dir = dir
	r.Cmd.Env = append(e.Environ(), "PACKER_LOG=1", "PACKER_LOG_PATH="+r.logf)
	r.Cmd.Stdout, r.Cmd.Stderr = r.Out, r.Out
	// Its own process group, like a shell job: Ctrl-C reaches the whole
	// group (Packer's wrapper process ignores SIGINT and relies on that).
	r.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A killed build's orphans may hold Packer's output pipe open.
	r.Cmd.WaitDelay = 10 * time.Second
	t.Logf("packer build %s", tpl)
	if err := r.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.waitCh <- r.Cmd.Wait() }()
	return r
}

// wait waits for the build and returns its error and output.
func (r *Run) Wait(t *testing.T, timeout time.Duration) (string, error) {
	t.Helper()
	select {
	case err := <-r.waitCh:
		return r.Out.String(), err
	case <-time.After(timeout):
		syscall.Kill(-r.Cmd.Process.Pid, syscall.SIGKILL)
		<-r.waitCh
		t.Fatalf("packer build did not finish in %v; output:\n%s", timeout, r.Out.String())
		return "", nil
	}
}

// waitFor waits until the build's output contains s.
func (r *Run) WaitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(r.Out.String(), s) {
			return
		}
		select {
		case err := <-r.waitCh:
			r.waitCh <- err
			t.Fatalf("packer exited (%v) before printing %q:\n%s", err, s, r.Out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("no %q in packer output after %v:\n%s", s, timeout, r.Out.String())
}

func (r *Run) LogTail(n int) string {
	data, _ := os.ReadFile(r.logf)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fileSum is a source file's identity: the build must not change it.
type FileSum struct {
	Size  int64
	Mtime time.Time
	Sum   string
}

func SumFile(t *testing.T, p string) FileSum {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return FileSum{st.Size(), st.ModTime(), hex.EncodeToString(h.Sum(nil))}
}

// checkNoLeftovers fails if a loop device is backed by a file under dir or
// anything is mounted under the builder's mount parent or dir.
func CheckNoLeftovers(t *testing.T, dirs ...string) {
	t.Helper()
	out, err := exec.Command("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE").Output()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		for _, d := range dirs {
			if strings.Contains(sc.Text(), d) {
				t.Errorf("loop device left behind: %s", sc.Text())
			}
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		for _, d := range dirs {
			if strings.HasPrefix(f[1], d) {
				t.Errorf("mount left behind: %s", line)
			}
		}
	}
}

// MountOutput mounts a raw image's root (read-only) and its /boot and
// returns the root directory; everything is released when the test ends.
func MountOutput(t *testing.T, raw string) string {
	t.Helper()
	dir, release := MountRoot(t, raw, true)
	t.Cleanup(func() {
		if err := release(); err != nil {
			t.Errorf("release %s: %v", raw, err)
		}
	})
	return dir
}

// MountRoot mounts a raw image's root filesystem (and a partition labelled
// boot on /boot) on a new directory; release unmounts and detaches (it is
// idempotent; call it before the image is used elsewhere).
func MountRoot(t *testing.T, raw string, readOnly bool) (dir string, release func() error) {
	t.Helper()
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	tbl, err := diskimage.ReadTable(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	probes := diskimage.ProbeAll(f, tbl)
	f.Close()
	rootPart, _, err := diskimage.ChooseRoot(tbl, diskimage.RootOptions{Probes: probes})
	if err != nil {
		t.Fatal(err)
	}
	tr := &diskimage.Tracker{}
	release = func() error { _, err := tr.Release(); return err }
	var opts []string
	if readOnly {
		opts = []string{"ro"}
	}
	mount := func(p diskimage.Partition, at string) {
		l, err := tr.AttachPartition(context.Background(), raw, p, readOnly)
		if err != nil {
			release()
			t.Fatal(err)
		}
		if err := tr.Mount(context.Background(), l.Device, at, probes[p.Number].Type, opts...); err != nil {
			release()
			t.Fatal(err)
		}
	}
	dir = t.TempDir()
	mount(rootPart, dir)
	for _, p := range tbl.Partitions {
		if p.Number != rootPart.Number && probes[p.Number].Label == "boot" {
			mount(p, filepath.Join(dir, "boot"))
		}
	}
	return dir, release
}

func HCL(s string) string { return fmt.Sprintf("%q", s) }
