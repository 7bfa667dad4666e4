package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// depmodTree makes a small module tree (hard links to fixture modules)
// below a new root and returns the root and its module folder.
func depmodTree(t *testing.T) (string, string) {
	t.Helper()
	kver := fixture.KVER(t)
	src := fixture.ModulesDir(t)
	root := filepath.Join(t.TempDir(), "root")
	moddir := filepath.Join(root, "lib/modules", kver)
	link := func(from, to string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(from, to); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		link(filepath.Join(src, f), filepath.Join(moddir, f))
	}
	for _, p := range []string{"kernel/drivers/net/dummy.ko", "kernel/drivers/net/macvlan.ko",
		"kernel/drivers/net/macvtap.ko", "kernel/drivers/net/tap.ko", "kernel/fs/fat/vfat.ko", "kernel/fs/fat/fat.ko"} {
		if _, err := os.Stat(filepath.Join(src, p)); err != nil {
			t.Skipf("fixture module %s: %v", p, err)
		}
		link(filepath.Join(src, p), filepath.Join(moddir, p))
	}
	for _, m := range []string{"kmodtest_base", "kmodtest_dep", "kmodtest_param"} {
		link(fixture.TestModule(t, m), filepath.Join(moddir, "updates/dkms", m+".ko"))
	}
	return root, moddir
}

func TestDepmodCLI(t *testing.T) {
	depmod := fixture.Tool(t, "/usr/sbin/depmod")
	kver := fixture.KVER(t)
	root, moddir := depmodTree(t)
	ref := filepath.Join(t.TempDir(), "ref")
	if out, err := exec.Command("cp", "-al", root, ref).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	empty := t.TempDir()
	if out, err := exec.Command(depmod, "-b", ref, "-C", empty, kver).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	_, stderr, code := kmodctl(t, "depmod", "-b", root, "-C", empty, kver)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	names := []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
		"modules.softdep", "modules.symbols", "modules.symbols.bin", "modules.builtin.bin",
		"modules.builtin.alias.bin", "modules.devname"}
	for _, n := range names {
		got, err := os.ReadFile(filepath.Join(moddir, n))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(ref, "lib/modules", kver, n))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from depmod's (%d bytes, want %d)", n, len(got), len(want))
		}
	}
	dep, _ := os.ReadFile(filepath.Join(moddir, "modules.dep"))
	if !strings.Contains(string(dep), "updates/dkms/kmodtest_dep.ko: updates/dkms/kmodtest_base.ko\n") {
		t.Errorf("modules.dep:\n%s", dep)
	}

	// -n prints what depmod -n prints.
	want, err := exec.Command(depmod, "-n", "-b", ref, "-C", empty, kver).Output()
	if err != nil {
		t.Fatal(err)
	}
	got, stderr, code := kmodctl(t, "depmod", "-n", "-b", root, "-C", empty, kver)
	if code != 0 {
		t.Fatalf("-n: exit %d: %s", code, stderr)
	}
	if got != string(want) {
		t.Errorf("-n printed %d bytes, depmod -n %d", len(got), len(want))
	}

	// --json: the files in kmod's order and their sizes; with -n nothing
	// is written and the text files are not printed.
	stdout, stderr, code := kmodctl(t, "depmod", "-n", "--json", "-b", root, "-C", empty, kver)
	if code != 0 {
		t.Fatalf("-n --json: exit %d: %s", code, stderr)
	}
	var rep struct {
		Kernel, Basedir string
		Written         bool
		Files           []struct {
			Name string
			Size int
		}
		Warnings []string
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("-n --json: %v\n%s", err, stdout)
	}
	if rep.Kernel != kver || rep.Basedir != root || rep.Written || len(rep.Files) != len(names) || rep.Warnings == nil {
		t.Errorf("-n --json: %s", stdout)
	}
	for i, f := range rep.Files {
		st, err := os.Stat(filepath.Join(moddir, names[i]))
		if f.Name != names[i] || err != nil || st.Size() != int64(f.Size) {
			t.Errorf("-n --json: file %d is %s, %d bytes; want %s (%v)", i, f.Name, f.Size, names[i], err)
		}
	}

	// -e -E reports unknown symbols.
	unresolved := filepath.Join(moddir, "updates/kmodtest_unresolved.ko")
	if err := os.Link(fixture.TestModule(t, "kmodtest_unresolved"), unresolved); err != nil {
		t.Fatal(err)
	}
	symvers := filepath.Join(fixture.Headers(t), "Module.symvers")
	_, stderr, code = kmodctl(t, "depmod", "-b", root, "-C", empty, "-e", "-E", symvers, kver)
	if code != 0 || !strings.Contains(stderr, unresolved+" needs unknown symbol kallsyms_lookup_name") {
		t.Errorf("-e -E: exit %d: %s", code, stderr)
	}
	// With --json the warnings go into the object, not to standard error.
	stdout, stderr, code = kmodctl(t, "depmod", "--json", "-b", root, "-C", empty, "-e", "-E", symvers, kver)
	rep.Warnings = nil
	if err := json.Unmarshal([]byte(stdout), &rep); code != 0 || err != nil || !rep.Written || stderr != "" ||
		!slices.Contains(rep.Warnings, unresolved+" needs unknown symbol kallsyms_lookup_name") {
		t.Errorf("-e -E --json: exit %d (%v): %s\nstderr: %s", code, err, stdout, stderr)
	}
}

// TestDepmodCLIRelativeConfig: -C takes host paths relative to the
// working folder, as depmod does.
func TestDepmodCLIRelativeConfig(t *testing.T) {
	kver := fixture.KVER(t)
	root, moddir := depmodTree(t)
	work := t.TempDir()
	if err := os.MkdirAll(filepath.Join(work, "cfg"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "cfg/x.conf"), []byte("exclude dkms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(kmodctlBin, "depmod", "-b", root, "-C", "cfg/x.conf", kver)
	cmd.Dir = work
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	dep, err := os.ReadFile(filepath.Join(moddir, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(dep), "kmodtest") || !strings.Contains(string(dep), "kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n") {
		t.Errorf("modules.dep:\n%s", dep)
	}
}

func TestDepmodCLIErrors(t *testing.T) {
	kver := fixture.KVER(t)
	root, moddir := depmodTree(t)
	if _, stderr, code := kmodctl(t, "depmod", "-b", root, "notaversion"); code != 2 || !strings.Contains(stderr, "bad version") {
		t.Errorf("bad version: exit %d: %s", code, stderr)
	}
	if _, stderr, code := kmodctl(t, "depmod", "-b", root, kver, kver); code != 2 {
		t.Errorf("two releases: exit %d: %s", code, stderr)
	}
	if _, stderr, code := kmodctl(t, "depmod", "--no-such-flag", kver); code != 2 {
		t.Errorf("unknown flag: exit %d: %s", code, stderr)
	}
	if _, stderr, code := kmodctl(t, "depmod", "-b", root, "9.9.9-none"); code == 0 || !strings.Contains(stderr, "9.9.9-none") {
		t.Errorf("missing tree: exit %d: %s", code, stderr)
	}
	bad := filepath.Join(moddir, "kernel/broken.ko")
	if err := os.WriteFile(bad, []byte("not an ELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := kmodctl(t, "depmod", "-b", root, kver)
	if code == 0 || !strings.Contains(stderr, bad) {
		t.Errorf("corrupt module: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(moddir, "modules.dep")); err == nil {
		t.Error("modules.dep written despite the error")
	}
}
