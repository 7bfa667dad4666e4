package dkms

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// chrootRunner runs commands in a chroot, as the kmod-image builder's
// chroot communicator does.
type chrootRunner struct{ root string }

func (r chrootRunner) Run(ctx context.Context, command string, stdout, stderr io.Writer) (int, error) {
	cmd := exec.CommandContext(ctx, "chroot", r.root, "/bin/sh", "-c", command)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

// mountedUnder lists the mount points at or under dir.
func mountedUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			mp := strings.ReplaceAll(fields[4], `\040`, " ")
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				m = append(m, mp)
			}
		}
	}
	return m
}

// dkmsRoot copies the rootfs-dkms fixture (never modified) to a throwaway
// tree with /proc, /sys and /dev bound and the host's resolv.conf, and
// releases everything at the end of the test, on every path.
func dkmsRoot(t *testing.T) string {
	t.Helper()
	fixture.NeedRoot(t)
	src := fixture.RootfsDKMS(t)
	reapStaleRoots(t)
	parent, err := os.MkdirTemp("/var/tmp", fmt.Sprintf("dkms-test-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(parent, "root")
	var mounted []string
	t.Cleanup(func() {
		for i := len(mounted) - 1; i >= 0; i-- {
			if out, err := exec.Command("umount", mounted[i]).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", mounted[i], err, out)
				exec.Command("umount", "-l", mounted[i]).Run()
			}
		}
		if left := mountedUnder(t, parent); len(left) > 0 {
			t.Errorf("still mounted, not removing %s: %q", parent, left)
			return
		}
		if err := os.RemoveAll(parent); err != nil {
			t.Errorf("remove %s: %v", parent, err)
		}
	})
	start := time.Now()
	if out, err := exec.Command("cp", "-a", "--reflink=auto", src, root).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v: %s", src, err, out)
	}
	t.Logf("copied %s in %v", src, time.Since(start).Round(time.Millisecond))
	for _, d := range []string{"proc", "sys", "dev"} {
		mp := filepath.Join(root, d)
		if out, err := exec.Command("mount", "--bind", "/"+d, mp).CombinedOutput(); err != nil {
			t.Fatalf("mount %s: %v: %s", mp, err, out)
		}
		mounted = append(mounted, mp)
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err == nil {
		dst := filepath.Join(root, "etc/resolv.conf")
		os.Remove(dst)
		if err := os.WriteFile(dst, resolv, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// reapStaleRoots releases and removes the trees of test processes that
// died without cleaning up (killed, or a test timeout's panic).
func reapStaleRoots(t *testing.T) {
	dirs, _ := filepath.Glob("/var/tmp/dkms-test-*-*")
	for _, dir := range dirs {
		f := strings.SplitN(strings.TrimPrefix(filepath.Base(dir), "dkms-test-"), "-", 2)
		pid, err := strconv.Atoi(f[0])
		if err != nil || pid == os.Getpid() || exists(fmt.Sprintf("/proc/%d", pid)) {
			continue
		}
		mps := mountedUnder(t, dir)
		sort.Sort(sort.Reverse(sort.StringSlice(mps)))
		for _, mp := range mps {
			exec.Command("umount", mp).Run()
		}
		if left := mountedUnder(t, dir); len(left) > 0 {
			t.Logf("stale %s still has mounts %q: left alone", dir, left)
			continue
		}
		t.Logf("removing stale %s", dir)
		os.RemoveAll(dir)
	}
}

// installSource puts the test module source at ROOT/usr/src/NAME-1.0 with
// the dkms.conf of testdata/kmodtest, edited by edit.
func installSource(t *testing.T, root, name string, editConf func(string) string, editBase func(string) string) {
	t.Helper()
	dst := filepath.Join(root, "usr/src", name+"-1.0")
	if err := os.MkdirAll(filepath.Join(dst, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	conf := strings.Replace(read("testdata/kmodtest/dkms.conf"), `PACKAGE_NAME="kmodtest"`, `PACKAGE_NAME="`+name+`"`, 1)
	if editConf != nil {
		conf = editConf(conf)
	}
	base := read("../testdata/modules/kmodtest_base.c")
	if editBase != nil {
		base = editBase(base)
	}
	for p, s := range map[string]string{
		"dkms.conf":            conf,
		"Kbuild":               read("testdata/kmodtest/Kbuild"),
		"sub/Kbuild":           read("testdata/kmodtest/sub/Kbuild"),
		"kmodtest_base.c":      base,
		"sub/kmodtest_param.c": read("../testdata/modules/kmodtest_param.c"),
	} {
		if err := os.WriteFile(filepath.Join(dst, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// treeHash hashes the paths, modes and contents under dir.
func treeHash(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s %v\n", rel, info.Mode())
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func TestDriverRealDKMS(t *testing.T) {
	root := dkmsRoot(t)
	kver := fixture.KVER(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var logMu sync.Mutex
	var logBuf strings.Builder
	d := &Driver{R: chrootRunner{root}, Log: func(s string) {
		logMu.Lock()
		logBuf.WriteString(s + "\n")
		logMu.Unlock()
	}}
	defer func() {
		if t.Failed() {
			t.Logf("driver log:\n%s", logBuf.String())
		}
	}()
	mok := []string{filepath.Join(root, "var/lib/dkms/mok.key"), filepath.Join(root, "var/lib/dkms/mok.pub")}
	etcBefore := treeHash(t, filepath.Join(root, "etc/dkms"))

	restore, err := d.DisableSigning(ctx)
	if err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			restore(context.Background())
		}
	}()

	t.Run("build", func(t *testing.T) {
		installSource(t, root, "kmodtest", nil, nil)
		start := time.Now()
		if err := d.Add(ctx, "kmodtest", "1.0"); err != nil {
			t.Fatal(err)
		}
		if err := d.Add(ctx, "kmodtest", "1.0"); err != nil {
			t.Fatalf("second add: %v", err)
		}
		res, err := d.Build(ctx, "kmodtest", "1.0", kver, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("add+build in %v", time.Since(start).Round(time.Millisecond))
		if res.Excluded || res.Kernel != kver || res.Arch != "x86_64" || len(res.Modules) != 2 {
			t.Fatalf("result %+v", res)
		}
		for i, want := range []string{"kmodtest_base", "kmodtest_param"} {
			m := res.Modules[i]
			wantPath := "/var/lib/dkms/kmodtest/1.0/" + kver + "/x86_64/module/" + want + ".ko"
			if m.Name != want || m.Path != wantPath || m.DestDir != "/updates/dkms" {
				t.Errorf("module %d: %+v, want %s at %s", i, m, want, wantPath)
			}
			mod, err := kmod.ParseFile(filepath.Join(root, m.Path))
			if err != nil {
				t.Fatal(err)
			}
			if mod.Signature != nil {
				t.Errorf("%s is signed", m.Path)
			}
		}
		for _, p := range mok {
			if exists(p) {
				t.Errorf("%s exists", p)
			}
		}
	})

	t.Run("compile error", func(t *testing.T) {
		installSource(t, root, "kmodbroken", nil, func(s string) string { return strings.Replace(s, "return 42;", "return 42 +;", 1) })
		if err := d.Add(ctx, "kmodbroken", "1.0"); err != nil {
			t.Fatal(err)
		}
		_, err := d.Build(ctx, "kmodbroken", "1.0", kver, "")
		if err == nil {
			t.Fatal("no error")
		}
		msg := err.Error()
		t.Logf("error:\n%s", msg)
		for _, want := range []string{"kmodbroken/1.0", "kernel " + kver, "kmodtest_base.c:7:", "error: expected expression before", "make.log"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error lacks %q", want)
			}
		}
		if n := strings.Count(msg, "\n"); n > 50 {
			t.Errorf("error has %d lines", n)
		}
	})

	t.Run("no headers", func(t *testing.T) {
		_, err := d.Build(ctx, "kmodtest", "1.0", "6.1.0-99-amd64", "")
		if err == nil || !strings.Contains(err.Error(), "no kernel headers for 6.1.0-99-amd64") || !strings.Contains(err.Error(), "linux-headers-6.1.0-99-amd64") {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("excluded", func(t *testing.T) {
		installSource(t, root, "kmodexcl", func(s string) string { return s + "BUILD_EXCLUSIVE_KERNEL=\"^5\\.\"\n" }, nil)
		if err := d.Add(ctx, "kmodexcl", "1.0"); err != nil {
			t.Fatal(err)
		}
		res, err := d.Build(ctx, "kmodexcl", "1.0", kver, "")
		if err != nil {
			t.Fatal(err)
		}
		if !res.Excluded || !strings.Contains(res.Reason, `BUILD_EXCLUSIVE_KERNEL "^5\\." does not match kernel `+kver) || len(res.Modules) != 0 {
			t.Fatalf("result %+v", res)
		}
	})

	t.Run("package", func(t *testing.T) {
		// -short (the alternate-kernel run of make test): the kernel-dependent
		// part, a real dkms build against this kernel's headers, is "build"
		// above; the package path (apt-get from Debian's mirror, the
		// package's own postinst) is the same on every kernel, and the main
		// run covers it.
		if testing.Short() {
			t.Skip("-short: the package path runs in the main run")
		}
		pm, err := DetectPackageManager(ctx, d.R)
		if err != nil || pm != Apt {
			t.Fatalf("package manager %q %v", pm, err)
		}
		var out strings.Builder
		start := time.Now()
		installed, err := InstallPackages(ctx, d.R, pm, []string{"v4l2loopback-dkms"}, &out)
		if err != nil {
			if strings.Contains(out.String(), "Temporary failure resolving") || strings.Contains(out.String(), "Could not resolve") {
				t.Skipf("no network: %v", err)
			}
			t.Fatalf("%v\n%s", err, lastLines(out.String(), 30))
		}
		t.Logf("apt-get update + install in %v: %q", time.Since(start).Round(time.Millisecond), installed)
		found := false
		for _, p := range installed {
			found = found || p == "v4l2loopback-dkms"
			if p == "dkms" || p == "gcc" {
				t.Errorf("%s was installed before, yet is reported", p)
			}
		}
		if !found {
			t.Errorf("v4l2loopback-dkms not reported as installed: %q", installed)
		}
		// the package's postinst built and installed the module for the
		// image's kernel, without signing and without a key
		for _, p := range mok {
			if exists(p) {
				t.Errorf("%s exists after the package's postinst", p)
			}
		}
		ko := filepath.Join(root, "lib/modules", kver, "updates/dkms/v4l2loopback.ko")
		if mod, err := kmod.ParseFile(ko); err != nil {
			t.Errorf("postinst did not install the module: %v\n%s", err, lastLines(out.String(), 30))
		} else if mod.Signature != nil {
			t.Errorf("%s is signed", ko)
		}
		mods, err := d.PackageModules(ctx, "v4l2loopback-dkms")
		if err != nil {
			t.Fatal(err)
		}
		if len(mods) != 1 || mods[0] != (NameVersion{"v4l2loopback", "0.12.7"}) {
			t.Errorf("PackageModules %+v", mods)
		}
		if _, err := d.PackageModules(ctx, "dkms"); err == nil {
			t.Error("dkms installs no dkms module, yet no error")
		}
		res, err := d.Build(ctx, "v4l2loopback", "0.12.7", kver, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Modules) != 1 || res.Modules[0].Name != "v4l2loopback" || res.Modules[0].DestDir != "/updates/dkms" {
			t.Errorf("build %+v", res)
		}
		if err := RemovePackages(ctx, d.R, pm, installed, &out); err != nil {
			t.Fatal(err)
		}
		after, err := installedSet(ctx, d.R, pm)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range installed {
			if after[p] {
				t.Errorf("%s still installed", p)
			}
		}
		if exists(ko) {
			t.Errorf("%s remains after the package's removal", ko)
		}
	})

	if err := restore(ctx); err != nil {
		t.Fatal(err)
	}
	restored = true
	if got := treeHash(t, filepath.Join(root, "etc/dkms")); got != etcBefore {
		t.Errorf("/etc/dkms differs after restore")
	}

	// Control: with the image's configuration dkms 3.0.10 generates a key
	// and signs, which is what DisableSigning prevented above.
	t.Run("signing control", func(t *testing.T) {
		res, err := d.Build(ctx, "kmodtest", "1.0", kver, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range mok {
			if !exists(p) {
				t.Errorf("%s does not exist: dkms did not generate its key", p)
			}
		}
		mod, err := kmod.ParseFile(filepath.Join(root, res.Modules[0].Path))
		if err != nil {
			t.Fatal(err)
		}
		if mod.Signature == nil {
			t.Errorf("%s is not signed", res.Modules[0].Path)
		}
	})
}

func TestBuildDependencies(t *testing.T) {
	for _, c := range []struct {
		pm      PackageManager
		kernels []string
		want    []string
	}{
		{Apt, []string{"6.1.0-56-amd64", "6.1.0-56-amd64", "6.1.0-57-amd64"}, []string{"dkms", "gcc", "make", "libc6-dev", "linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-57-amd64"}},
		{Dnf, []string{"6.5.6-300.fc39.x86_64"}, []string{"dkms", "gcc", "make", "kernel-devel-6.5.6-300.fc39.x86_64"}},
		{Zypper, []string{"6.4.0-150600.23.25-default", "5.14.21-150500.13.18-azure"}, []string{"dkms", "gcc", "make", "kernel-default-devel", "kernel-azure-devel"}},
	} {
		got := BuildDependencies(c.pm, c.kernels)
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("%s %q: %q, want %q", c.pm, c.kernels, got, c.want)
		}
	}
}

func TestMakeLogExcerpt(t *testing.T) {
	var lines []string
	for i := 0; i < 200; i++ {
		lines = append(lines, fmt.Sprintf("  CC [M]  file%d.o", i))
	}
	lines[50] = "file50.c:3:1: error: unknown type name 'foo'"
	lines[51] = "    3 | foo x;"
	lines[199] = "make: *** [Makefile:1: all] Error 2"
	ex := makeLogExcerpt(strings.Join(lines, "\n"), 40)
	got := strings.Split(ex, "\n")
	if len(got) > 42 || !strings.HasPrefix(ex, "errors:\n  file50.c:3:1: error: unknown type name 'foo'\n      3 | foo x;\n  make: *** [Makefile:1: all] Error 2\nlast lines:\n") || !strings.HasSuffix(ex, "file198.o") {
		t.Errorf("excerpt (%d lines):\n%s", len(got), ex)
	}
	if i, j := strings.Index(ex, "error: unknown"), strings.Index(ex, "file190.o"); i > j {
		t.Error("error lines not first")
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range [][2]string{{"2.8.7", "3.0.4"}, {"3.0.3", "3.0.4"}, {"3.0", "3.0.4"}} {
		if !versionLess(c[0], c[1]) || versionLess(c[1], c[0]) {
			t.Errorf("%v", c)
		}
	}
}
