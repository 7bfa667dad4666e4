package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// TestCatalogCLI drives `kmodctl catalog` against a real node: tokens,
// a recorded build, approvals of the build, an attestation from a report
// file, the queries in JSON and as tables, export and import, and the
// errors a user meets.
func TestCatalogCLI(t *testing.T) {
	c := catalogtest.Start(t, 1, catalogtest.Options{})
	n := c.Nodes[0]
	dir := t.TempDir()
	adminFile := filepath.Join(dir, "admin")
	os.WriteFile(adminFile, []byte(c.AdminToken+"\n"), 0o600)
	as := func(tokenFile string, args ...string) (string, string, int) {
		t.Helper()
		return kmodctl(t, append([]string{"catalog", "--url", n.URL(), "--ca-file", c.CAFile, "--token-file", tokenFile}, args...)...)
	}
	tok := func(name, role string, extra ...string) string {
		t.Helper()
		f := filepath.Join(dir, name+".token")
		out, errOut, code := as(adminFile, append([]string{"token", "create", name, "--role", role, "-o", f}, extra...)...)
		if code != 0 || !strings.Contains(out, "written to") {
			t.Fatalf("token create %s: %d %s %s", name, code, out, errOut)
		}
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("token file %s: %v %v", f, st, err)
		}
		return f
	}
	ci, sec, inst, audit := tok("ci", "builder"), tok("sec", "approver"), tok("i-1", "instance", "--instance", "i-1"), tok("audit", "auditor")

	k := "6.1.0-99-amd64"
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	m := manifest.Manifest{Version: manifest.Version, Certificates: []manifest.Certificate{}, Kernels: []manifest.Kernel{{Release: k,
		Modules: []manifest.Module{{Name: "kma", Version: "2.1", Path: "/lib/modules/" + k + "/updates/kma.ko", SHA256: sum("kma")}}}}}
	data, _ := m.Marshal()
	mf := filepath.Join(dir, "manifest.json")
	os.WriteFile(mf, data, 0o644)
	out, errOut, code := as(ci, "record", mf, "--image-name", "web", "--id", "b1", "--json")
	var b catalog.Build
	if code != 0 || json.Unmarshal([]byte(out), &b) != nil || b.ID != "b1" || len(b.Modules) != 1 {
		t.Fatalf("record: %d %s %s", code, out, errOut)
	}
	if _, errOut, code := as(ci, "approve", "--build", "b1"); code != 1 || !strings.Contains(errOut, "403") || !strings.Contains(errOut, "builder") {
		t.Errorf("approve with a builder token: %d %s", code, errOut)
	}
	if out, errOut, code := as(sec, "approve", "--build", "b1", "--note", "CHG-1"); code != 0 || !strings.Contains(out, "approved kma "+sum("kma")) {
		t.Errorf("approve --build: %d %s %s", code, out, errOut)
	}
	// Approving again is a no-op (the same id).
	if _, errOut, code := as(sec, "approve", "--kernel", k, "--module", "kma", "--sha256", sum("kma")); code != 0 {
		t.Errorf("approve again: %d %s", code, errOut)
	}
	if _, errOut, code := as(sec, "approve", "--kernel", k, "--module", "kma"); code != 2 || !strings.Contains(errOut, "--sha256") {
		t.Errorf("approve without --sha256: %d %s", code, errOut)
	}

	// An attestation from a report file: kma as built, kmb unknown.
	v := firstboot.VerifyResult{InstanceID: "i-1", BootID: "b", Kernel: k, Status: firstboot.StatusOK, Covered: true, GeneratedAt: time.Now().UTC(),
		Modules: []firstboot.ModuleReport{{Name: "kma", ActualSHA256: sum("kma"), Loaded: true, Verified: true},
			{Name: "kmb", ActualSHA256: sum("kmb"), Loaded: true}}}
	rep, _ := json.Marshal(v)
	rf := filepath.Join(dir, "report.json")
	os.WriteFile(rf, rep, 0o644)
	if out, errOut, code := as(inst, "attest", rf); code != 0 || !strings.Contains(out, "recorded") {
		t.Fatalf("attest: %d %s %s", code, out, errOut)
	}
	out, _, code = as(audit, "drift", "--json")
	var drift []catalog.Drift
	if code != 0 || json.Unmarshal([]byte(out), &drift) != nil || len(drift) != 1 || drift[0].Module != "kmb" || drift[0].Reason != "unknown" {
		t.Errorf("drift --json: %d %s", code, out)
	}
	if out, _, code := as(audit, "who-runs", "kma", "--version", "2.1"); code != 0 || !strings.Contains(out, "i-1") || !strings.Contains(out, "INSTANCE") {
		t.Errorf("who-runs: %d %s", code, out)
	}
	if out, _, code := as(audit, "uncovered"); code != 0 || !strings.Contains(out, k) {
		t.Errorf("uncovered: %d %s", code, out)
	}
	if out, _, code := as(audit, "instances"); code != 0 || !strings.Contains(out, "i-1") {
		t.Errorf("instances: %d %s", code, out)
	}
	if out, _, code := as(audit, "builds", "--image", "web"); code != 0 || !strings.Contains(out, "b1") {
		t.Errorf("builds: %d %s", code, out)
	}

	// Backup and restore into another catalog.
	backup := filepath.Join(dir, "backup.json")
	if out, errOut, code := as(adminFile, "export", "-o", backup); code != 0 || !strings.Contains(out, "1 builds, 1 approvals, 1 attestations") {
		t.Fatalf("export: %d %s %s", code, out, errOut)
	}
	c2 := catalogtest.Start(t, 1, catalogtest.Options{})
	admin2 := filepath.Join(dir, "admin2")
	os.WriteFile(admin2, []byte(c2.AdminToken+"\n"), 0o600)
	if out, errOut, code := kmodctl(t, "catalog", "--url", c2.Nodes[0].URL(), "--ca-file", c2.CAFile, "--token-file", admin2, "import", backup); code != 0 {
		t.Fatalf("import: %d %s %s", code, out, errOut)
	}
	out, _, code = kmodctl(t, "catalog", "--url", c2.Nodes[0].URL(), "--ca-file", c2.CAFile, "--token-file", audit, "drift", "--json")
	if code != 0 || !strings.Contains(out, "kmb") {
		t.Errorf("drift in the restored catalog (with the restored auditor token): %d %s", code, out)
	}

	// Errors a user meets.
	if _, errOut, code := kmodctl(t, "catalog", "builds"); code != 2 || !strings.Contains(errOut, "--url") {
		t.Errorf("no url: %d %s", code, errOut)
	}
	if _, errOut, code := kmodctl(t, "catalog", "--url", "http://127.0.0.1:1", "--token-file", audit, "builds"); code != 2 || !strings.Contains(errOut, "plain HTTP") {
		t.Errorf("http url: %d %s", code, errOut)
	}
	wrong := filepath.Join(dir, "wrong")
	os.WriteFile(wrong, []byte("kmc_wrong\n"), 0o600)
	if _, errOut, code := as(wrong, "builds"); code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("wrong token: %d %s", code, errOut)
	}
}
