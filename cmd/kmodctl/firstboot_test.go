package main

import (
	"bytes"
	"crypto/x509"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// firstbootTree is an image tree holding the signed fixture module
// kmodtest_base for the fixture kernel, its modules.dep and manifest, and
// the identity and sysctl files; it returns the root, the kernel release
// and the module's srcversion.
func firstbootTree(t *testing.T) (string, string, string) {
	t.Helper()
	root, kver := t.TempDir(), fixture.KVER(t)
	raw, err := os.ReadFile(fixture.TestModule(t, "kmodtest_base"))
	if err != nil {
		t.Fatal(err)
	}
	key := sigtest.GoKey(t, "ec:P-256")
	s, err := kmod.NewSigner(key.Signer, key.Cert)
	if err != nil {
		t.Fatal(err)
	}
	signed, _, err := s.SignBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	moddir := filepath.Join(root, "lib/modules", kver)
	write := func(p string, data []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	host := filepath.Join(moddir, "updates/kmodtest_base.ko")
	write(host, signed)
	write(filepath.Join(moddir, "modules.dep"), []byte("updates/kmodtest_base.ko:\n"))
	mod, err := manifest.ModuleFromFile(host, "/lib/modules/"+kver+"/updates/kmodtest_base.ko", []*x509.Certificate{key.Cert})
	if err != nil {
		t.Fatal(err)
	}
	mod.Load = true
	m := &manifest.Manifest{Certificates: []manifest.Certificate{manifest.NewCertificate(key.Cert)},
		Kernels: []manifest.Kernel{{Release: kver, Modules: []manifest.Module{mod}}}}
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(root, manifest.Path), data)
	write(filepath.Join(root, "etc/machine-id"), []byte("0123456789abcdef0123456789abcdef\n"))
	write(filepath.Join(root, "proc/sys/kernel/random/boot_id"), []byte("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n"))
	write(filepath.Join(root, "proc/sys/kernel/modules_disabled"), []byte("0\n"))
	if err := os.MkdirAll(filepath.Join(root, "sys/module"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root, kver, mod.Srcversion
}

// fakeModprobe is a script that "loads" a module into root's /sys/module
// (with srcversion) and logs the call.
func fakeModprobe(t *testing.T, root, srcversion string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "modprobe")
	script := "#!/bin/sh\nset -e\necho \"$1\" >> " + root + "/modprobe.log\nmkdir -p " + root + "/sys/module/\"$1\"\n" +
		"echo O > " + root + "/sys/module/\"$1\"/taint\necho " + srcversion + " > " + root + "/sys/module/\"$1\"/srcversion\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func readJSON(t *testing.T, p string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v\n%s", p, err, b)
	}
	return doc
}

func TestFirstbootCLI(t *testing.T) {
	root, kver, srcversion := firstbootTree(t)
	base := []string{"--root", root, "--kernel", kver}

	out, stderr, code := kmodctl(t, append([]string{"firstboot", "verify"}, base...)...)
	if code != 0 || out != "kmodctl verify: 1/1 modules verified\n" || stderr != "" {
		t.Fatalf("verify: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if doc := readJSON(t, filepath.Join(root, "run/kmodctl/verify.json")); doc["verified"] != 1.0 || doc["kernel"] != kver {
		t.Errorf("verify.json: %v", doc)
	}

	mp := fakeModprobe(t, root, srcversion)
	run := append([]string{"firstboot", "run", "--once", "--lockdown", "--modprobe", mp}, base...)
	out, stderr, code = kmodctl(t, run...)
	want := "kmodctl: 1/1 modules verified and loaded; lockdown: kernel.modules_disabled=1\n"
	if code != 0 || out != want || stderr != "" {
		t.Fatalf("run: exit %d, stdout %q (want %q), stderr %q", code, out, want, stderr)
	}
	if log, _ := os.ReadFile(filepath.Join(root, "modprobe.log")); string(log) != "kmodtest_base\n" {
		t.Errorf("modprobe log %q", log)
	}
	doc := readJSON(t, filepath.Join(root, "var/lib/kmodctl/report.json"))
	mods := doc["modules"].([]any)
	if len(mods) != 1 || mods[0].(map[string]any)["loaded"] != true || mods[0].(map[string]any)["taint"] != "O" || doc["instance_id"] != "0123456789abcdef0123456789abcdef" {
		t.Errorf("report: %v", doc)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "proc/sys/kernel/modules_disabled")); string(b) != "1\n" {
		t.Errorf("modules_disabled %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "var/lib/kmodctl/firstboot.done")); string(b) != "0123456789abcdef0123456789abcdef\n" {
		t.Errorf("firstboot.done %q", b)
	}
	// --once: the same instance does nothing; a new one runs again.
	out, _, code = kmodctl(t, run...)
	if code != 0 || !strings.Contains(out, "already ran for instance 0123456789abcdef0123456789abcdef") {
		t.Errorf("second run: exit %d, %q", code, out)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte("fedcba9876543210fedcba9876543210\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code = kmodctl(t, run...)
	if code != 0 || !strings.HasPrefix(out, "kmodctl: 1/1 modules verified and loaded") {
		t.Errorf("new instance: exit %d, %q", code, out)
	}

	// Lockdown alone.
	out, _, code = kmodctl(t, append([]string{"firstboot", "lockdown"}, base...)...)
	if code != 0 || out != "kmodctl lockdown: kernel.modules_disabled=1 (already set)\n" {
		t.Errorf("lockdown: exit %d, %q", code, out)
	}
	if doc := readJSON(t, filepath.Join(root, "run/kmodctl/lockdown.json")); doc["applied"] != true {
		t.Errorf("lockdown.json: %v", doc)
	}
	os.Remove(filepath.Join(root, "proc/sys/kernel/modules_disabled"))
	if out, _, code = kmodctl(t, append([]string{"firstboot", "lockdown"}, base...)...); code != 1 || !strings.Contains(out, "failed") {
		t.Errorf("lockdown without the sysctl: exit %d, %q", code, out)
	}
}

func TestFirstbootCLIPolicies(t *testing.T) {
	root, kver, _ := firstbootTree(t)
	p := filepath.Join(root, "lib/modules", kver, "updates/kmodtest_base.ko")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[100] ^= 0xff
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--root", root, "--kernel", kver}
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"firstboot", "verify"}, 1},
		{[]string{"firstboot", "verify", "--on-drift", "warn"}, 0},
		{[]string{"firstboot", "verify", "--on-drift=fail"}, 1},
		{[]string{"firstboot", "run", "--on-drift", "warn", "--modprobe", "/bin/false"}, 0},
		{[]string{"firstboot", "run", "--modprobe", "/bin/false"}, 1},
	} {
		out, stderr, code := kmodctl(t, append(tc.args, base...)...)
		if code != tc.code || !strings.Contains(out, "kmodtest_base") || stderr != "" {
			t.Errorf("%v: exit %d (want %d), stdout %q, stderr %q", tc.args, code, tc.code, out, stderr)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "run/modprobe.d/kmodctl-blocked.conf")); !bytes.Contains(b, []byte("install kmodtest_base /bin/false\n")) {
		t.Errorf("blocked file:\n%s", b)
	}
	// -v names the problem on stderr; --report - prints the JSON instead of
	// the summary.
	_, stderr, _ := kmodctl(t, append([]string{"firstboot", "verify", "-v"}, base...)...)
	if !strings.Contains(stderr, "kmodctl: kmodtest_base: drift: ") {
		t.Errorf("-v stderr %q", stderr)
	}
	out, _, code := kmodctl(t, append([]string{"firstboot", "verify", "--report", "-"}, base...)...)
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 1 || doc["status"] != "fail" {
		t.Errorf("--report -: exit %d, %v\n%s", code, err, out)
	}

	// Uncovered kernel: warn by default, fail when asked.
	other := []string{"--root", root, "--kernel", "6.1.0-99-amd64"}
	out, _, code = kmodctl(t, append([]string{"firstboot", "verify"}, other...)...)
	if code != 0 || !strings.Contains(out, "uncovered kernel 6.1.0-99-amd64") {
		t.Errorf("uncovered: exit %d, %q", code, out)
	}
	if _, _, code = kmodctl(t, append([]string{"firstboot", "run", "--on-uncovered", "fail"}, other...)...); code != 1 {
		t.Errorf("uncovered, fail: exit %d", code)
	}
	// Bad flags and arguments are usage errors.
	_, stderr, code = kmodctl(t, "firstboot", "verify", "--root", root, "--on-drift", "maybe")
	if code != 2 || !strings.Contains(stderr, "--on-drift") || !strings.Contains(stderr, "maybe") {
		t.Errorf("bad policy: exit %d, %q", code, stderr)
	}
	if _, _, code = kmodctl(t, "firstboot", "verify", "extra"); code != 2 {
		t.Errorf("extra argument: exit %d", code)
	}
}

// TestFirstbootArm64 builds the agent for arm64 as the provisioner installs
// it (static, CGO off) and, under qemu-aarch64-static when installed, runs
// its help and a verify against a manifest that covers no arm64 kernel.
func TestFirstbootArm64(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kmodctl for arm64")
	}
	bin := filepath.Join(t.TempDir(), "kmodctl-arm64")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build for arm64: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	if f.Machine != elf.EM_AARCH64 {
		t.Errorf("machine %v", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("not static: %v segment", p.Type)
		}
	}
	f.Close()

	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Skip("qemu-aarch64-static is not installed (apt-get install qemu-user-static)")
	}
	out, err := exec.Command(qemu, bin, "firstboot", "verify", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--on-uncovered") {
		t.Fatalf("verify --help under qemu: %v\n%s", err, out)
	}
	root, kver, _ := firstbootTree(t)
	if host, err := exec.Command("uname", "-r").Output(); err == nil && strings.TrimSpace(string(host)) == kver {
		t.Skip("the host runs the fixture kernel: the manifest covers it")
	}
	// The release the kernel reports through qemu-user's uname: the
	// manifest covers only the fixture amd64 kernel.
	c := exec.Command(qemu, bin, "firstboot", "verify", "--root", root, "--on-uncovered", "warn")
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		t.Fatalf("verify under qemu: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	doc := readJSON(t, filepath.Join(root, "run/kmodctl/verify.json"))
	rel, _ := doc["kernel"].(string)
	if rel == "" || doc["covered"] != false || stdout.String() != "kmodctl verify: uncovered kernel "+rel+": the manifest has no modules for it [warn]\n" {
		t.Errorf("verify under qemu: %q, %v", stdout.String(), doc)
	}
	t.Logf("arm64 agent under qemu: %s", strings.TrimSpace(stdout.String()))
	c = exec.Command(qemu, bin, "firstboot", "verify", "--root", root, "--on-uncovered", "fail")
	if err := c.Run(); err == nil {
		t.Error("uncovered kernel with --on-uncovered fail exited 0 under qemu")
	}
}
