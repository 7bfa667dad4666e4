package firstboot

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
)

func TestRenderHookReport(t *testing.T) {
	files, links, err := RenderHook(HookSettings{Hook: HookSystemd, Pull: true, Report: true})
	if err != nil {
		t.Fatal(err)
	}
	var unit string
	for _, f := range files {
		if f.Path == hookUnitDir+"/"+ReportUnit {
			unit = string(f.Content)
		}
	}
	for _, want := range []string{"After=network-online.target " + VerifyUnit + " " + RunUnit + " " + PullUnit, "Wants=network-online.target",
		"ExecStart=" + DefaultAgentPath + " firstboot report", "WantedBy=multi-user.target"} {
		if !strings.Contains(unit, want) {
			t.Errorf("report unit lacks %q:\n%s", want, unit)
		}
	}
	// Nothing waits for it: no unit but the re-check orders itself after
	// it or requires it.
	got := map[string]string{}
	for _, f := range files {
		got[f.Path] = string(f.Content)
		if f.Path != hookUnitDir+"/"+ReportUnit && f.Path != hookUnitDir+"/"+RecheckUnit && strings.Contains(string(f.Content), ReportUnit) {
			t.Errorf("%s refers to %s", f.Path, ReportUnit)
		}
	}
	recheck, timer := got[hookUnitDir+"/"+RecheckUnit], got[hookUnitDir+"/"+RecheckTimer]
	if !strings.Contains(recheck, "ExecStart=-"+DefaultAgentPath+" firstboot verify --on-drift=warn --on-uncovered=warn\nExecStart="+DefaultAgentPath+" firstboot report") ||
		strings.Contains(recheck, "[Install]") {
		t.Errorf("re-check service:\n%s", recheck)
	}
	if !strings.Contains(timer, "OnUnitActiveSec=1d") || !strings.Contains(timer, "Unit="+RecheckUnit) {
		t.Errorf("re-check timer:\n%s", timer)
	}
	enabled := map[string]bool{}
	for _, l := range links {
		enabled[l.Path] = true
	}
	if !enabled[hookUnitDir+"/multi-user.target.wants/"+ReportUnit] || !enabled[hookUnitDir+"/timers.target.wants/"+RecheckTimer] {
		t.Errorf("the report unit and the re-check timer are not both enabled: %+v", links)
	}
	files, _, _ = RenderHook(HookSettings{Hook: HookSystemd})
	for _, f := range files {
		if strings.HasSuffix(f.Path, ReportUnit) {
			t.Errorf("%s rendered without report", f.Path)
		}
	}
}

func TestParseReportConfig(t *testing.T) {
	if c, err := ParseReportConfig([]byte(`{"url":"https://cat:8443","token_file":"/etc/kmodctl/t","ca_file":"/etc/kmodctl/ca.pem"}`)); err != nil || c.URL != "https://cat:8443" {
		t.Fatalf("%+v %v", c, err)
	}
	for body, want := range map[string]string{
		`{"url":"http://cat","token_file":"/t"}`:                    "want https",
		`{"url":"https://cat"}`:                                     "token_file: missing",
		`{"url":"https://cat","token_file":"t"}`:                    "absolute, clean path",
		`{"url":"https://cat","token_file":"/t","x":1}`:             "unknown field",
		`{"url":"https://cat","token_file":"/t"} {}`:                "after",
		`{"url":"https://cat","url":"https://b","token_file":"/t"}`: "url",
	} {
		if _, err := ParseReportConfig([]byte(body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}

// TestPostReport posts from a system tree to a real catalog node: the
// first-boot report of this boot, then (another boot) the verification;
// posting again changes nothing; a revoked token fails at once.
func TestPostReport(t *testing.T) {
	c := catalogtest.Start(t, 1, catalogtest.Options{})
	node := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	admin := node.Client(t, c.AdminToken)
	instTok := c.Token(t, "i", catalog.RoleInstance, "")
	auditor := node.Client(t, c.Token(t, "audit", catalog.RoleAuditor, ""))
	root := t.TempDir()
	write := func(rel, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	write("etc/kmodctl/catalog.json", `{"url":"`+node.URL()+`","token_file":"/etc/kmodctl/token","ca_file":"/etc/kmodctl/ca.pem"}`, 0o644)
	write("etc/kmodctl/token", instTok+"\n", 0o600)
	write("etc/kmodctl/ca.pem", string(ca), 0o644)
	write("etc/machine-id", "0123456789abcdef0123456789abcdef\n", 0o444)
	write("proc/sys/kernel/random/boot_id", "boot-one\n", 0o444)
	write("sys/module/kma/refcnt", "0\n", 0o444)
	rep := Report{VerifyResult: VerifyResult{InstanceID: "0123456789abcdef0123456789abcdef", BootID: "boot-one", Kernel: "6.1.0-99-amd64",
		Covered: true, Status: StatusOK, GeneratedAt: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC),
		Modules: []ModuleReport{{Name: "kma", ActualSHA256: strings.Repeat("a", 64), Verified: true}, {Name: "kmb", ActualSHA256: strings.Repeat("b", 64), Verified: true, Loaded: true}}}}
	data, _ := json.Marshal(rep)
	write("var/lib/kmodctl/report.json", string(data), 0o644)
	opts := ReportOptions{Root: root, For: time.Minute}
	a, err := PostReport(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if a.BootID != "boot-one" || len(a.Modules) != 2 || !a.Modules[0].Loaded || a.Modules[1].Loaded {
		t.Errorf("attestation (loaded read from /sys/module now): %+v", a)
	}
	if again, err := PostReport(ctx, opts); err != nil || again.ID != a.ID {
		t.Errorf("posting again: %v %v", again, err)
	}
	// The daily re-check in the same boot: its verification is newer than
	// the first-boot report, so it is what goes.
	rv := rep.VerifyResult
	rv.GeneratedAt, rv.Status = rv.GeneratedAt.Add(24*time.Hour), StatusWarn
	data, _ = json.Marshal(rv)
	write("run/kmodctl/verify.json", string(data), 0o644)
	if re, err := PostReport(ctx, opts); err != nil || re.ID == a.ID || re.Status != "warn" || re.BootID != "boot-one" {
		t.Errorf("re-check: %+v %v", re, err)
	}
	// Another boot: the report is old, this boot's verification is posted.
	write("proc/sys/kernel/random/boot_id", "boot-two\n", 0o444)
	v := rep.VerifyResult
	v.BootID, v.GeneratedAt, v.Status = "boot-two", v.GeneratedAt.Add(48*time.Hour), StatusWarn
	data, _ = json.Marshal(v)
	write("run/kmodctl/verify.json", string(data), 0o644)
	b, err := PostReport(ctx, opts)
	if err != nil || b.BootID != "boot-two" || b.ID == a.ID {
		t.Fatalf("second boot: %+v %v", b, err)
	}
	ins, err := auditor.Instances(ctx)
	if err != nil || len(ins) != 1 || ins[0].BootID != "boot-two" || ins[0].Status != "warn" {
		t.Errorf("instances: %v %+v", err, ins)
	}
	exp, err := admin.Export(ctx)
	if err != nil || len(exp.Attestations) != 3 {
		t.Errorf("attestations: %v %d", err, len(exp.Attestations))
	}
	// Refused: no retries until the deadline.
	if err := admin.RevokeToken(ctx, "i"); err != nil {
		t.Fatal(err)
	}
	write("proc/sys/kernel/random/boot_id", "boot-three\n", 0o444)
	v.BootID, v.GeneratedAt = "boot-three", v.GeneratedAt.Add(time.Hour)
	data, _ = json.Marshal(v)
	write("run/kmodctl/verify.json", string(data), 0o644)
	_, err = PostReport(ctx, ReportOptions{Root: root, For: 10 * time.Minute})
	var se *catalog.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Errorf("revoked token: %v", err)
	}
}
