package catalog_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// testManifest is an image manifest with kernel k and modules named in
// mods (file digests sum(name+k)), with a bundle for k.
func testManifest(t *testing.T, k string, mods ...string) json.RawMessage {
	t.Helper()
	m := manifest.Manifest{Version: manifest.Version, Certificates: []manifest.Certificate{}}
	kern := manifest.Kernel{Release: k}
	for _, n := range mods {
		kern.Modules = append(kern.Modules, manifest.Module{Name: n, Version: "1.0", Path: "/lib/modules/" + k + "/updates/dkms/" + n + ".ko",
			SHA256: sum(n + k), Srcversion: "SRC" + n, Load: true})
	}
	m.Kernels = []manifest.Kernel{kern}
	d := "sha256:" + sum("bundle"+k)
	m.Bundles = []manifest.Bundle{{Release: k, Arch: "amd64", Reference: "registry.example/kmod/fleet@" + d, Digest: d}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func statusOf(err error) int {
	var se *catalog.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func wantStatus(t *testing.T, what string, err error, code int, field string) {
	t.Helper()
	var se *catalog.StatusError
	if !errors.As(err, &se) || se.Code != code {
		t.Errorf("%s: got %v, want status %d", what, err, code)
		return
	}
	if field != "" && se.Field != field {
		t.Errorf("%s: field %q, want %q (%v)", what, se.Field, field, err)
	}
}

func TestAPI(t *testing.T) {
	c := catalogtest.Start(t, 1, catalogtest.Options{Args: []string{"--rate", "20", "--burst", "20", "--max-body", "65536"}})
	n := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	admin := n.Client(t, c.AdminToken)
	tok := map[string]string{}
	for _, r := range []catalog.TokenRequest{{Name: "ci", Role: catalog.RoleBuilder}, {Name: "sec", Role: catalog.RoleApprover},
		{Name: "i-1", Role: catalog.RoleInstance, InstanceID: "i-1"}, {Name: "asg", Role: catalog.RoleInstance},
		{Name: "audit", Role: catalog.RoleAuditor}} {
		tk, err := admin.CreateToken(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(tk.Secret, "kmc_") {
			t.Fatalf("token secret %q", tk.Secret)
		}
		tok[r.Name] = tk.Secret
	}
	_, err := admin.CreateToken(ctx, catalog.TokenRequest{Name: "ci", Role: catalog.RoleBuilder})
	wantStatus(t, "token name twice", err, http.StatusConflict, "name")
	_, err = admin.CreateToken(ctx, catalog.TokenRequest{Name: "x", Role: "root"})
	wantStatus(t, "unknown role", err, http.StatusBadRequest, "role")
	list, err := admin.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range list {
		if tk.Secret != "" {
			t.Errorf("token list shows a secret: %+v", tk)
		}
	}
	builder, approver := n.Client(t, tok["ci"]), n.Client(t, tok["sec"])
	inst1, asg, auditor := n.Client(t, tok["i-1"]), n.Client(t, tok["asg"]), n.Client(t, tok["audit"])

	// Builds: recorded once, a retry answers the same record, another body
	// under the same id is a conflict.
	k1, k2 := "6.1.0-99-amd64", "6.1.0-100-amd64"
	b := &catalog.Build{ID: "build-1", BuildName: "kmod-image.debian", ImageName: "debian12-kmod", ImageID: "img-1",
		Manifest: testManifest(t, k1, "kma", "kmb")}
	got, err := builder.RecordBuild(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if got.RecordedBy != "ci" || len(got.Modules) != 2 || len(got.Bundles) != 1 || len(got.Kernels) != 1 || got.Kernels[0] != k1 {
		t.Errorf("recorded build: %+v", got)
	}
	again, err := builder.RecordBuild(ctx, b)
	if err != nil || !again.RecordedAt.Equal(got.RecordedAt) {
		t.Errorf("retried build: %v %v vs %v", err, again.RecordedAt, got.RecordedAt)
	}
	b2 := *b
	b2.ImageID = "img-2"
	_, err = builder.RecordBuild(ctx, &b2)
	wantStatus(t, "same id, other body", err, http.StatusConflict, "id")
	_, err = builder.RecordBuild(ctx, &catalog.Build{ID: "build-bad", Manifest: json.RawMessage(`{"version":1,"kernels":[{"release":"../x"}]}`)})
	wantStatus(t, "bad manifest", err, http.StatusBadRequest, "manifest")
	builds, err := auditor.Builds(ctx, "debian12-kmod")
	if err != nil || len(builds) != 1 || builds[0].ID != "build-1" {
		t.Errorf("builds of the image: %v %+v", err, builds)
	}

	// Authentication and roles: nothing is written.
	noTok, err := catalog.New(n.URL(), catalog.WithCAFile(c.CAFile), catalog.WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	_, err = noTok.Builds(ctx, "")
	wantStatus(t, "no token", err, http.StatusUnauthorized, "")
	_, err = n.Client(t, "kmc_wrong").Builds(ctx, "")
	wantStatus(t, "wrong token", err, http.StatusUnauthorized, "")
	_, err = builder.Approve(ctx, &catalog.Approval{Kernel: k1, Module: "kma", SHA256: sum("kma" + k1)})
	wantStatus(t, "builder approving", err, http.StatusForbidden, "")
	att := func(inst, kernel string, mods ...catalog.AttestedModule) *catalog.Attestation {
		return &catalog.Attestation{ID: "att-" + inst + "-" + kernel, InstanceID: inst, BootID: "boot-1", Kernel: kernel, Arch: "amd64",
			Status: "ok", Covered: true, GeneratedAt: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Modules: mods,
			Report: json.RawMessage(`{"status":"ok"}`)}
	}
	_, err = builder.Attest(ctx, att("i-1", k1))
	wantStatus(t, "builder attesting", err, http.StatusForbidden, "")
	_, err = inst1.Attest(ctx, att("i-2", k1))
	wantStatus(t, "instance i-1 attesting for i-2", err, http.StatusForbidden, "instance_id")
	_, err = inst1.Builds(ctx, "")
	wantStatus(t, "instance reading", err, http.StatusForbidden, "")
	if ins, err := auditor.Instances(ctx); err != nil || len(ins) != 0 {
		t.Errorf("refused writes left instances: %v %+v", err, ins)
	}

	// Malformed requests name the field; an oversized one is 413.
	post := func(path, body string) (int, catalog.Error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.URL()+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok["ci"])
		resp, err := catalogtest.HTTPClient(t, c).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e catalog.Error
		json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e
	}
	if code, e := post("/v1/builds", `{"id": 5}`); code != 400 || e.Field != "id" {
		t.Errorf("wrong type: %d %+v", code, e)
	}
	if code, e := post("/v1/builds", `{"id": "b", "imagename": "x"}`); code != 400 || e.Field != "imagename" {
		t.Errorf("unknown field: %d %+v", code, e)
	}
	if code, e := post("/v1/builds", `{"id": "b",`); code != 400 || !strings.Contains(e.Error, "JSON") {
		t.Errorf("truncated JSON: %d %+v", code, e)
	}
	if code, e := post("/v1/builds", `{"id":"big","image_name":"`+strings.Repeat("x", 70000)+`"}`); code != 413 {
		t.Errorf("oversized body: %d %+v", code, e)
	}
	if bs, _ := auditor.Builds(ctx, ""); len(bs) != 1 {
		t.Errorf("refused builds were written: %d builds", len(bs))
	}

	// Approvals: only digests a build recorded.
	_, err = approver.Approve(ctx, &catalog.Approval{Kernel: k1, Module: "kma", SHA256: sum("other")})
	wantStatus(t, "approving an unknown digest", err, http.StatusNotFound, "sha256")
	if _, err := approver.Approve(ctx, &catalog.Approval{ID: "ap-1", Kernel: k1, Module: "kma", SHA256: sum("kma" + k1), Note: "CHG-1"}); err != nil {
		t.Fatal(err)
	}
	if aps, err := builder.Approvals(ctx, k1); err != nil || len(aps) != 1 || aps[0].ApprovedBy != "sec" {
		t.Errorf("approvals: %v %+v", err, aps)
	}

	// Attestations: i-1 loads the approved kma, the built but unapproved
	// kmb and an unknown kmc; the unbound token binds to i-3 on first use.
	a1 := att("i-1", k1,
		catalog.AttestedModule{Name: "kma", SHA256: sum("kma" + k1), Loaded: true, Verified: true},
		catalog.AttestedModule{Name: "kmb", SHA256: sum("kmb" + k1), Loaded: true, Verified: true},
		catalog.AttestedModule{Name: "kmc", SHA256: sum("flipped"), Loaded: false})
	if _, err := inst1.Attest(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if _, err := inst1.Attest(ctx, a1); err != nil {
		t.Errorf("retried attestation: %v", err)
	}
	a1b := *a1
	a1b.Status = "fail"
	_, err = inst1.Attest(ctx, &a1b)
	wantStatus(t, "attestation id reused", err, http.StatusConflict, "id")
	if _, err := asg.Attest(ctx, att("i-3", k2, catalog.AttestedModule{Name: "kma", SHA256: sum("kma" + k2), Loaded: true})); err != nil {
		t.Fatal(err)
	}
	_, err = asg.Attest(ctx, att("i-4", k2))
	wantStatus(t, "bound-on-first-use token for another instance", err, http.StatusForbidden, "instance_id")

	ins, err := auditor.Instances(ctx)
	if err != nil || len(ins) != 2 || ins[0].InstanceID != "i-1" || ins[1].InstanceID != "i-3" {
		t.Errorf("instances: %v %+v", err, ins)
	}
	drift, err := auditor.Drift(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"i-1/kmb": "unapproved", "i-1/kmc": "unknown", "i-3/kma": "unknown"}
	if len(drift) != len(want) {
		t.Errorf("drift: %+v", drift)
	}
	for _, d := range drift {
		if want[d.InstanceID+"/"+d.Module] != d.Reason {
			t.Errorf("drift entry %+v, want reason %q", d, want[d.InstanceID+"/"+d.Module])
		}
	}
	unc, err := auditor.Uncovered(ctx)
	if err != nil || len(unc) != 1 || unc[0].Kernel != k2 || len(unc[0].Instances) != 1 || unc[0].Instances[0] != "i-3" {
		t.Errorf("uncovered: %v %+v", err, unc)
	}
	runs, err := auditor.WhoRuns(ctx, "kma", "1.0", "")
	if err != nil || len(runs) != 1 || runs[0].InstanceID != "i-1" {
		t.Errorf("who-runs kma 1.0: %v %+v", err, runs)
	}
	if runs, err := auditor.WhoRuns(ctx, "kma", "", sum("kma"+k2)); err != nil || len(runs) != 1 || runs[0].InstanceID != "i-3" {
		t.Errorf("who-runs kma by sha256: %v %+v", err, runs)
	}
	if runs, err := auditor.WhoRuns(ctx, "kmc", "", ""); err != nil || len(runs) != 0 {
		t.Errorf("who-runs of a module not loaded: %v %+v", err, runs)
	}

	// Per-token rate limit: a burst beyond it gets 429 (the limit is per
	// token: the admin is not limited by the auditor's burst).
	var wg sync.WaitGroup
	codes := make([]int, 60)
	for i := range codes {
		wg.Add(1)
		go func() { defer wg.Done(); _, err := auditor.Instances(ctx); codes[i] = statusOf(err) }()
	}
	wg.Wait()
	limited := 0
	for _, c := range codes {
		if c == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited == 0 {
		t.Errorf("60 concurrent requests of one token with burst 20: none got 429 (%v)", codes)
	}
	if _, err := admin.Tokens(ctx); err != nil {
		t.Errorf("another token is limited too: %v", err)
	}

	// Revocation.
	if err := admin.RevokeToken(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	_, err = builder.Builds(ctx, "")
	wantStatus(t, "revoked token", err, http.StatusUnauthorized, "")

	// Export, and import into a new catalog: the same records.
	exp, err := admin.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(exp.Builds) != 1 || len(exp.Approvals) != 1 || len(exp.Attestations) != 2 || len(exp.Tokens) != 6 {
		t.Fatalf("export: %d builds, %d approvals, %d attestations, %d tokens", len(exp.Builds), len(exp.Approvals), len(exp.Attestations), len(exp.Tokens))
	}
	c2 := catalogtest.Start(t, 1, catalogtest.Options{})
	admin2 := c2.Nodes[0].Client(t, c2.AdminToken)
	for range 2 { // twice: an import is idempotent
		if err := admin2.Import(ctx, exp); err != nil {
			t.Fatal(err)
		}
	}
	exp2, err := admin2.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	strip := func(e *catalog.Export) string {
		e.ExportedAt = time.Time{}
		var toks []catalog.ExportToken
		for _, tk := range e.Tokens {
			if tk.Name != "admin" {
				toks = append(toks, tk)
			}
		}
		e.Tokens = toks
		b, _ := json.Marshal(e)
		return string(b)
	}
	if a, b := strip(exp), strip(exp2); a != b {
		t.Errorf("export after import differs:\n%s\n%s", a, b)
	}
	// The imported instance token still works, bound as before.
	i1 := c2.Nodes[0].Client(t, tok["i-1"])
	_, err = i1.Attest(ctx, att("i-2", k1))
	wantStatus(t, "imported bound token", err, http.StatusForbidden, "instance_id")
	if _, err := i1.Attest(ctx, a1); err != nil {
		t.Errorf("imported attestation retried: %v", err)
	}
}

// TestAttestationBatchLimits: attestations whose rows exceed dqlite's 255
// parameters per statement, several at once (one batch), are written
// whole.
func TestAttestationBatchLimits(t *testing.T) {
	c := catalogtest.Start(t, 1, catalogtest.Options{Args: []string{"--rate", "1000", "--burst", "1000"}})
	n := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	admin := n.Client(t, c.AdminToken)
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		tk, err := admin.CreateToken(ctx, catalog.TokenRequest{Name: fmt.Sprintf("i%d", i), Role: catalog.RoleInstance})
		if err != nil {
			t.Fatal(err)
		}
		a := &catalog.Attestation{ID: fmt.Sprintf("a%d", i), InstanceID: fmt.Sprintf("i%d", i), BootID: "b", Kernel: "6.1.0-99-amd64",
			Arch: "amd64", Status: "ok", GeneratedAt: time.Now().UTC()}
		for m := 0; m < 100+i*30; m++ {
			a.Modules = append(a.Modules, catalog.AttestedModule{Name: fmt.Sprintf("m%03d", m), SHA256: sum(fmt.Sprint(i, m)), Loaded: m%2 == 0})
		}
		cli := n.Client(t, tk.Secret)
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = cli.Attest(ctx, a) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("attestation %d: %v", i, err)
		}
	}
	exp, err := admin.Export(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(exp.Attestations) != len(errs) {
		t.Fatalf("%d attestations stored, want %d", len(exp.Attestations), len(errs))
	}
	for _, a := range exp.Attestations {
		var i int
		fmt.Sscanf(a.ID, "a%d", &i)
		if len(a.Modules) != 100+i*30 {
			t.Errorf("%s: %d modules stored, want %d", a.ID, len(a.Modules), 100+i*30)
		}
	}
}
