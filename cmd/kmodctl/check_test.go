package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// checkArgs describe the fixture kernel: its module tree, Module.symvers
// and config.
func checkArgs(t *testing.T) []string {
	t.Helper()
	cfg := filepath.Join(fixture.Rootfs(t), "boot", "config-"+fixture.KVER(t))
	if _, err := os.Stat(cfg); err != nil {
		fixture.Missing(t, cfg)
	}
	return []string{"module", "check", "--kernel-dir", fixture.ModulesDir(t),
		"--symvers", filepath.Join(fixture.Headers(t), "Module.symvers"), "--config", cfg}
}

func runCheckJSON(t *testing.T, args ...string) (checkJSON, int) {
	t.Helper()
	out, stderr, code := kmodctl(t, append(args, "--json")...)
	var res checkJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json output (exit %d, stderr %s) does not decode: %v\n%s", code, stderr, err, out)
	}
	return res, code
}

func TestCheckCertAndHash(t *testing.T) {
	dir := t.TempDir()
	_, ecCert := genKey(t, dir, "ec:prime256v1")
	_, rsaCert := genKey(t, t.TempDir(), "rsa:2048")
	mod := fixture.TestModule(t, "kmodtest_base")
	base := checkArgs(t)

	// Debian's kernel verifies RSA with sha256 only (no built-in ECDSA, SHA512 =m or unset).
	if out, stderr, code := kmodctl(t, append(base, "--cert", rsaCert, "--hash", "sha256", mod)...); code != 0 {
		t.Fatalf("RSA/sha256: exit %d: %s %s", code, out, stderr)
	}
	out, _, code := kmodctl(t, append(base, "--cert", ecCert, mod)...)
	if code != 1 || !strings.Contains(out, "cannot verify ECDSA module signatures (CONFIG_CRYPTO_ECDSA not set); sign with an RSA key [signature]") {
		t.Errorf("ECDSA: exit %d:\n%s", code, out)
	}
	res, code := runCheckJSON(t, append(base, "--cert", ecCert, "--hash", "sha512", mod)...)
	if code != 1 || res.OK || len(res.Problems) != 2 || len(res.Modules) != 1 || !res.Modules[0].OK {
		t.Fatalf("ECDSA/sha512: exit %d: %+v", code, res)
	}
	for i, want := range []string{"ECDSA module signatures", "sha512 module signatures"} {
		if p := res.Problems[i]; p.Kind != "signature" || p.Module != "" || !strings.Contains(p.Reason, want) {
			t.Errorf("problem %d: %+v, want a signature problem about %s", i, p, want)
		}
	}
	// Without the kernel's config nothing tells: refused, saying so.
	out, _, code = kmodctl(t, "module", "check", "--kernel-dir", fixture.ModulesDir(t),
		"--symvers", filepath.Join(fixture.Headers(t), "Module.symvers"), "--cert", ecCert, mod)
	if code != 1 || !strings.Contains(out, "no config to tell whether it can verify ECDSA") {
		t.Errorf("ECDSA without config: exit %d:\n%s", code, out)
	}
}

func TestCheckInTreeConflicts(t *testing.T) {
	dir := t.TempDir()
	inTree := filepath.Join(fixture.ModulesDir(t), "kernel/drivers/net/dummy.ko")
	shadow := filepath.Join(dir, "dummy.ko")
	fixture.CopyFile(t, inTree, shadow)
	base := checkArgs(t)

	res, code := runCheckJSON(t, append(base, shadow, fixture.TestModule(t, "kmodtest_base"))...)
	if code != 1 || res.OK || len(res.Problems) != 1 || len(res.Modules) != 2 {
		t.Fatalf("shadowing module: exit %d: %+v", code, res)
	}
	p := res.Modules[0].Problems
	if res.Modules[0].OK || len(p) != 1 || p[0].Kind != "shadow" || p[0].InTree != "dummy" || p[0].Module != "dummy" ||
		!strings.Contains(p[0].Reason, "shadows the in-tree module dummy (kernel/drivers/net/dummy.ko)") {
		t.Errorf("shadow problem: %+v", res.Modules[0])
	}
	if !res.Modules[1].OK || res.Modules[1].Problems == nil || res.Unreadable == nil {
		t.Errorf("clean module or empty lists: %+v", res)
	}
	// Intended replacement: a note. The in-tree file itself conflicts with nothing.
	if res, code := runCheckJSON(t, append(base, "--replace-in-tree", shadow)...); code != 0 || !res.OK || len(res.Notes) != 1 || res.Notes[0].Kind != "shadow" {
		t.Errorf("--replace-in-tree: exit %d: %+v", code, res)
	}
	if out, stderr, code := kmodctl(t, append(base, inTree)...); code != 0 || strings.Contains(out, "shadow") {
		t.Errorf("the in-tree file: exit %d: %s %s", code, out, stderr)
	}
	// Text output names module, reason and kind.
	out, _, _ := kmodctl(t, append(base, shadow)...)
	if !strings.Contains(out, "error: dummy: shadows the in-tree module dummy") || !strings.Contains(out, "[shadow]") {
		t.Errorf("text report:\n%s", out)
	}
}

func TestCheckJSONUnreadableAndUsage(t *testing.T) {
	base := checkArgs(t)
	bad := filepath.Join(t.TempDir(), "bad.ko")
	if err := os.WriteFile(bad, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, code := runCheckJSON(t, append(base, bad, fixture.TestModule(t, "kmodtest_base"))...)
	if code != 1 || res.OK || len(res.Unreadable) != 1 || res.Unreadable[0].Path != bad || len(res.Modules) != 1 {
		t.Errorf("unreadable file: exit %d: %+v", code, res)
	}
	for _, args := range [][]string{
		append(base, "--hash", "md5", fixture.TestModule(t, "kmodtest_base")),
		append(base, "--no-such-flag", fixture.TestModule(t, "kmodtest_base")),
		base,
		{"module", "check", fixture.TestModule(t, "kmodtest_base")},
	} {
		if _, stderr, code := kmodctl(t, args...); code != 2 || stderr == "" {
			t.Errorf("%v: exit %d (want 2): %s", args[2:], code, stderr)
		}
	}
}
