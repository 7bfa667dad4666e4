package firstboot

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// testNow is the clock of every test report.
var testNow = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// env is an image tree (usr-merged, /lib an absolute symlink to /usr/lib)
// with the fixture test modules kmodtest_base and kmodtest_dep (which
// depends on it) signed and installed in updates/, their modules.dep, a
// manifest listing them in that order, and fake /sys/module, /proc and
// identity files. Its modprobe records the names and creates
// /sys/module/NAME as the kernel would.
type env struct {
	t    *testing.T
	root string
	kver string
	key  *sigtest.Key
	// files are the installed module files by name.
	files map[string][]byte
	m     *manifest.Manifest
	// calls are the modprobe calls; modprobeErr fails the named module.
	calls       []string
	modprobeErr map[string]error
	// onModprobe runs at each call before the module "loads".
	onModprobe func(name string)
}

var envModules = []string{"kmodtest_base", "kmodtest_dep"}

func signedModule(t *testing.T, key *sigtest.Key, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(fixture.TestModule(t, name))
	if err != nil {
		t.Fatal(err)
	}
	s, err := kmod.NewSigner(key.Signer, key.Cert)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := s.SignBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, root: t.TempDir(), kver: fixture.KVER(t), key: sigtest.GoKey(t, "ec:P-256"), files: map[string][]byte{}}
	moddir := filepath.Join(e.root, "usr/lib/modules", e.kver)
	e.mkdir("usr/lib/modules/" + e.kver + "/updates")
	if err := os.Symlink("/usr/lib", filepath.Join(e.root, "lib")); err != nil {
		t.Fatal(err)
	}
	e.m = &manifest.Manifest{Version: manifest.Version, Generator: "firstboot test",
		Certificates: []manifest.Certificate{manifest.NewCertificate(e.key.Cert)},
		Kernels:      []manifest.Kernel{{Release: e.kver}}}
	for _, name := range envModules {
		data := signedModule(t, e.key, name)
		e.files[name] = data
		host := filepath.Join(moddir, "updates", name+".ko")
		if err := os.WriteFile(host, data, 0o644); err != nil {
			t.Fatal(err)
		}
		mod, err := manifest.ModuleFromFile(host, "/lib/modules/"+e.kver+"/updates/"+name+".ko", []*x509.Certificate{e.key.Cert})
		if err != nil {
			t.Fatal(err)
		}
		mod.Load = true
		e.m.Kernels[0].Modules = append(e.m.Kernels[0].Modules, mod)
	}
	e.write("usr/lib/modules/"+e.kver+"/modules.dep",
		"kernel/drivers/net/dummy.ko:\nupdates/kmodtest_base.ko:\nupdates/kmodtest_dep.ko: updates/kmodtest_base.ko\n")
	e.writeManifest()
	e.mkdir("sys/module/ext4/parameters")
	e.write("proc/sys/kernel/modules_disabled", "0\n")
	e.write("proc/sys/kernel/random/boot_id", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
	e.write("etc/machine-id", "0123456789abcdef0123456789abcdef\n")
	return e
}

func (e *env) mkdir(rel string) {
	e.t.Helper()
	if err := os.MkdirAll(filepath.Join(e.root, rel), 0o755); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) write(rel, content string) {
	e.t.Helper()
	e.mkdir(filepath.Dir(rel))
	if err := os.WriteFile(filepath.Join(e.root, rel), []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) read(rel string) string {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.root, rel))
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

func (e *env) writeManifest() {
	e.t.Helper()
	data, err := e.m.Marshal()
	if err != nil {
		e.t.Fatal(err)
	}
	e.write("usr/lib/kmodctl/manifest.json", string(data))
}

// module is the manifest entry of name.
func (e *env) module(name string) *manifest.Module {
	for i := range e.m.Kernels[0].Modules {
		if e.m.Kernels[0].Modules[i].Name == name {
			return &e.m.Kernels[0].Modules[i]
		}
	}
	e.t.Fatalf("no module %s", name)
	return nil
}

// installFile replaces the installed file of a module.
func (e *env) installFile(name string, data []byte) {
	e.t.Helper()
	e.write("usr/lib/modules/"+e.kver+"/updates/"+name+".ko", string(data))
}

// load fakes a loaded module in /sys/module.
func (e *env) load(name, srcversion string) {
	e.t.Helper()
	e.write("sys/module/"+name+"/srcversion", srcversion+"\n")
	e.write("sys/module/"+name+"/taint", "OE\n")
	e.write("sys/module/"+name+"/initstate", "live\n")
	e.write("sys/module/"+name+"/parameters/debug", "0\n")
}

func (e *env) modprobe(ctx context.Context, name string) error {
	e.calls = append(e.calls, name)
	if e.onModprobe != nil {
		e.onModprobe(name)
	}
	if err := e.modprobeErr[name]; err != nil {
		return err
	}
	e.load(name, e.module(name).Srcversion)
	return nil
}

func (e *env) options() Options {
	return Options{Root: e.root, Kernel: e.kver, Modprobe: e.modprobe, Now: func() time.Time { return testNow }}
}

func (e *env) run(o Options) *Report {
	e.t.Helper()
	r, err := Run(context.Background(), o)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) verify(o Options) *VerifyResult {
	e.t.Helper()
	v, err := Verify(context.Background(), o)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(e.calls) != 0 {
		e.t.Fatalf("Verify called modprobe: %v", e.calls)
	}
	return v
}

func (e *env) blocked() string {
	b, err := os.ReadFile(filepath.Join(e.root, BlockedPath))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

func moduleReport(t *testing.T, mods []ModuleReport, name string) *ModuleReport {
	t.Helper()
	for i := range mods {
		if mods[i].Name == name {
			return &mods[i]
		}
	}
	t.Fatalf("no report of %s", name)
	return nil
}

func TestRunAllVerified(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run(e.options())
	if !reflect.DeepEqual(e.calls, envModules) {
		t.Errorf("modprobe calls %v, want %v (manifest order)", e.calls, envModules)
	}
	if got, want := r.Summary(), "kmodctl: 2/2 modules verified and loaded"; got != want || r.SummaryLine != want {
		t.Errorf("summary %q (field %q), want %q", got, r.SummaryLine, want)
	}
	if r.Status != StatusOK || !r.Covered || r.Kernel != e.kver || r.Verified != 2 || r.Total != 2 || r.Loaded != 2 || r.ToLoad != 2 {
		t.Errorf("report %+v", r)
	}
	if r.InstanceID != "0123456789abcdef0123456789abcdef" || r.InstanceIDSource != SourceMachineID || r.BootID != "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0" {
		t.Errorf("identity %q %q %q", r.InstanceID, r.InstanceIDSource, r.BootID)
	}
	if !r.GeneratedAt.Equal(testNow) {
		t.Errorf("generated_at %v", r.GeneratedAt)
	}
	for _, name := range envModules {
		m := moduleReport(t, r.Modules, name)
		want := hexSum(e.files[name])
		if m.ExpectedSHA256 != want || m.ActualSHA256 != want || !m.SignatureOK || !m.Verified || !m.Loaded || m.AlreadyLoaded || m.Blocked {
			t.Errorf("%s: %+v", name, m)
		}
		if m.Taint != "OE" || !reflect.DeepEqual(m.Params, map[string]string{"debug": "0"}) || len(m.Errors) != 0 {
			t.Errorf("%s: taint %q params %v errors %v", name, m.Taint, m.Params, m.Errors)
		}
		if m.Signer != "kmodctl Go ec:P-256" {
			t.Errorf("%s: signer %q", name, m.Signer)
		}
	}
	if b := e.blocked(); b != "" {
		t.Errorf("blocked file written:\n%s", b)
	}
	if r.Lockdown != nil || e.read("proc/sys/kernel/modules_disabled") != "0\n" {
		t.Errorf("lockdown without Options.Lockdown: %+v", r.Lockdown)
	}
	// A second run finds them loaded and loads nothing.
	e.calls = nil
	r2 := e.run(e.options())
	if len(e.calls) != 0 || r2.Summary() != "kmodctl: 2/2 modules verified and loaded" || !moduleReport(t, r2.Modules, "kmodtest_base").AlreadyLoaded {
		t.Errorf("second run: calls %v, %q", e.calls, r2.Summary())
	}
}

// TestReportJSON pins the field names the issue asks for and the
// atomic write.
func TestReportJSON(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.run(e.options())
	p := filepath.Join(e.root, ReportPath)
	if err := WriteReport(p, r); err != nil {
		t.Fatal(err)
	}
	data := e.read(ReportPath[1:])
	var doc map[string]any
	if err := json.Unmarshal([]byte(data), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"instance_id", "boot_id", "kernel", "covered", "modules", "generated_at", "status", "summary", "verified", "loaded", "blocked", "drifted", "on_drift", "on_uncovered", "errors"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	if doc["generated_at"] != "2025-03-04T05:06:07Z" || doc["covered"] != true || doc["summary"] != "kmodctl: 2/2 modules verified and loaded" {
		t.Errorf("report: %s", data)
	}
	mod := doc["modules"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "expected_sha256", "actual_sha256", "signature_ok", "loaded", "taint", "params", "errors"} {
		if _, ok := mod[k]; !ok {
			t.Errorf("module lacks %q", k)
		}
	}
	if _, ok := mod["errors"].([]any); !ok {
		t.Errorf("errors is %T, want a list", mod["errors"])
	}
	var back Report
	if err := json.Unmarshal([]byte(data), &back); err != nil || back.Summary() != r.Summary() {
		t.Errorf("round trip: %v, %q", err, back.Summary())
	}
	// Replacing keeps no temporary file behind.
	if err := WriteReport(p, r); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("report folder holds %d entries", len(ents))
	}
	e.calls = nil
	v := e.verify(e.options())
	vp := filepath.Join(e.root, VerifyPath)
	if err := WriteVerifyResult(vp, v); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.read(VerifyPath[1:]), `"summary": "kmodctl verify: 2/2 modules verified"`) {
		t.Errorf("verify.json:\n%s", e.read(VerifyPath[1:]))
	}
}

func TestDrift(t *testing.T) {
	t.Parallel()
	for _, policy := range []Policy{PolicyFail, PolicyWarn} {
		t.Run(string(policy), func(t *testing.T) {
			e := newEnv(t)
			changed := slices.Clone(e.files["kmodtest_dep"])
			changed[len(changed)/2] ^= 0x01
			e.installFile("kmodtest_dep", changed)
			o := e.options()
			o.OnDrift = policy
			wantStatus := map[Policy]Status{PolicyFail: StatusFail, PolicyWarn: StatusWarn}[policy]

			v := e.verify(o)
			wantBlocked := "blacklist kmodtest_dep\ninstall kmodtest_dep /bin/false\n"
			if b := e.blocked(); !strings.HasSuffix(b, wantBlocked) || strings.Contains(b, "kmodtest_base") {
				t.Errorf("blocked file:\n%s", b)
			}
			if v.Status != wantStatus || v.Verified != 1 || v.Total != 2 || !reflect.DeepEqual(v.Blocked, []string{"kmodtest_dep"}) {
				t.Errorf("verify: %+v", v)
			}
			wantSummary := "kmodctl verify: 1/2 modules verified; blocked: kmodtest_dep [" + string(wantStatus) + "]"
			if v.Summary() != wantSummary {
				t.Errorf("verify summary %q, want %q", v.Summary(), wantSummary)
			}

			r := e.run(o)
			if !reflect.DeepEqual(e.calls, []string{"kmodtest_base"}) {
				t.Errorf("modprobe calls %v: the drifted module was loaded or the good one was not", e.calls)
			}
			m := moduleReport(t, r.Modules, "kmodtest_dep")
			if m.ExpectedSHA256 != hexSum(e.files["kmodtest_dep"]) || m.ActualSHA256 != hexSum(changed) || m.Loaded || m.Verified || !m.Blocked || m.SignatureOK {
				t.Errorf("drifted module: %+v", m)
			}
			if len(m.Errors) != 1 || !strings.Contains(m.Errors[0], "drift") || !strings.Contains(m.Errors[0], m.ActualSHA256) {
				t.Errorf("errors %q", m.Errors)
			}
			if r.Status != wantStatus || r.Loaded != 1 || r.ToLoad != 2 || !reflect.DeepEqual(r.Drifted, []string{"kmodtest_dep"}) {
				t.Errorf("run: %+v", r)
			}
			want := "kmodctl: 1/2 modules verified and loaded; drifted, not loaded: kmodtest_dep [" + string(wantStatus) + "]"
			if r.Summary() != want {
				t.Errorf("summary %q, want %q", r.Summary(), want)
			}
			// Fixed: the next verify lifts the block.
			e.installFile("kmodtest_dep", e.files["kmodtest_dep"])
			e.calls = nil
			if v := e.verify(o); v.Status != StatusOK || e.blocked() != "" {
				t.Errorf("after the fix: %+v, blocked %q", v, e.blocked())
			}
		})
	}
}

func TestMissingModuleFile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if err := os.Remove(filepath.Join(e.root, "usr/lib/modules", e.kver, "updates/kmodtest_base.ko")); err != nil {
		t.Fatal(err)
	}
	r := e.run(e.options())
	m := moduleReport(t, r.Modules, "kmodtest_base")
	if m.ActualSHA256 != "" || m.Verified || !strings.Contains(strings.Join(m.Errors, ";"), "missing") {
		t.Errorf("%+v", m)
	}
	// The recording modprobe does not follow dependencies: the real one
	// would fail kmodtest_dep on the install /bin/false of its dependency.
	if !reflect.DeepEqual(e.calls, []string{"kmodtest_dep"}) || r.Status != StatusFail {
		t.Errorf("calls %v, status %s", e.calls, r.Status)
	}
}

func TestSignatureByAnotherCert(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := sigtest.GoKey(t, "rsa:2048")
	data := signedModule(t, other, "kmodtest_dep")
	e.installFile("kmodtest_dep", data)
	// The manifest lists the file as it is, and names the image's
	// certificate: the checksum matches, the signature does not verify.
	e.module("kmodtest_dep").SHA256 = hexSum(data)
	e.writeManifest()
	r := e.run(e.options())
	if !reflect.DeepEqual(e.calls, []string{"kmodtest_base"}) {
		t.Errorf("modprobe calls %v", e.calls)
	}
	m := moduleReport(t, r.Modules, "kmodtest_dep")
	if m.ActualSHA256 != m.ExpectedSHA256 || m.SignatureOK || m.Loaded || !m.Blocked || m.Signer != "kmodctl Go rsa:2048" {
		t.Errorf("%+v", m)
	}
	if len(m.Errors) != 1 || !strings.Contains(m.Errors[0], "signature") {
		t.Errorf("errors %q", m.Errors)
	}
	if r.Status != StatusFail || !strings.Contains(e.blocked(), "install kmodtest_dep /bin/false") {
		t.Errorf("status %s, blocked %q", r.Status, e.blocked())
	}

	// No certificate recorded: not verifiable, not loaded.
	e = newEnv(t)
	e.module("kmodtest_dep").CertSHA256 = ""
	e.writeManifest()
	r = e.run(e.options())
	if m := moduleReport(t, r.Modules, "kmodtest_dep"); m.SignatureOK || m.Loaded || !strings.Contains(strings.Join(m.Errors, ";"), "no certificate") {
		t.Errorf("without a certificate: %+v", m)
	}
	if !reflect.DeepEqual(e.calls, []string{"kmodtest_base"}) {
		t.Errorf("modprobe calls %v", e.calls)
	}
}

func TestUncoveredKernel(t *testing.T) {
	t.Parallel()
	for _, policy := range []Policy{PolicyWarn, PolicyFail} {
		t.Run(string(policy), func(t *testing.T) {
			e := newEnv(t)
			o := e.options()
			o.Kernel = "6.1.0-99-amd64"
			o.OnUncovered = policy
			wantStatus := map[Policy]Status{PolicyFail: StatusFail, PolicyWarn: StatusWarn}[policy]
			v := e.verify(o)
			if v.Covered || v.Status != wantStatus || len(v.Modules) != 0 || e.blocked() != "" {
				t.Errorf("verify: %+v", v)
			}
			if want := "kmodctl verify: uncovered kernel 6.1.0-99-amd64: the manifest has no modules for it [" + string(wantStatus) + "]"; v.Summary() != want {
				t.Errorf("verify summary %q", v.Summary())
			}
			r := e.run(o)
			if len(e.calls) != 0 || r.Covered || r.Status != wantStatus || r.Kernel != "6.1.0-99-amd64" {
				t.Errorf("run: calls %v, %+v", e.calls, r)
			}
			if !strings.Contains(r.Summary(), "uncovered kernel 6.1.0-99-amd64") || !strings.HasPrefix(r.Summary(), "kmodctl: ") {
				t.Errorf("summary %q", r.Summary())
			}
		})
	}
	// Default: warn.
	e := newEnv(t)
	o := e.options()
	o.Kernel = "6.1.0-99-amd64"
	if v := e.verify(o); v.Status != StatusWarn || v.OnUncovered != PolicyWarn || v.OnDrift != PolicyFail {
		t.Errorf("defaults: %+v", v)
	}
}

func TestAlreadyLoaded(t *testing.T) {
	t.Parallel()
	t.Run("matching srcversion", func(t *testing.T) {
		e := newEnv(t)
		e.load("kmodtest_base", e.module("kmodtest_base").Srcversion)
		r := e.run(e.options())
		if !reflect.DeepEqual(e.calls, []string{"kmodtest_dep"}) {
			t.Errorf("modprobe calls %v", e.calls)
		}
		m := moduleReport(t, r.Modules, "kmodtest_base")
		if !m.AlreadyLoaded || !m.Loaded || !m.Verified || m.LoadedSrcversion != m.Srcversion || m.Srcversion == "" || m.Taint != "OE" {
			t.Errorf("%+v", m)
		}
		if r.Summary() != "kmodctl: 2/2 modules verified and loaded" {
			t.Errorf("summary %q", r.Summary())
		}
	})
	t.Run("other srcversion", func(t *testing.T) {
		e := newEnv(t)
		e.load("kmodtest_base", "0123456789ABCDEF0123456")
		v := e.verify(e.options())
		m := moduleReport(t, v.Modules, "kmodtest_base")
		if m.Verified || !m.AlreadyLoaded || m.LoadedSrcversion != "0123456789ABCDEF0123456" || !strings.Contains(strings.Join(m.Errors, ";"), "srcversion") {
			t.Errorf("%+v", m)
		}
		// The file on disk is fine: the checksum and signature pass.
		if !m.SignatureOK || m.ActualSHA256 != m.ExpectedSHA256 {
			t.Errorf("file checks: %+v", m)
		}
		if !strings.Contains(e.blocked(), "blacklist kmodtest_base\n") || v.Status != StatusFail {
			t.Errorf("blocked %q, status %s", e.blocked(), v.Status)
		}
		r := e.run(e.options())
		if !reflect.DeepEqual(e.calls, []string{"kmodtest_dep"}) {
			t.Errorf("modprobe calls %v", e.calls)
		}
		m = moduleReport(t, r.Modules, "kmodtest_base")
		if !m.Loaded || m.Verified || m.Taint != "OE" || r.Loaded != 1 {
			t.Errorf("run: %+v", m)
		}
	})
	t.Run("no srcversion file", func(t *testing.T) {
		e := newEnv(t)
		e.mkdir("sys/module/kmodtest_base")
		v := e.verify(e.options())
		if m := moduleReport(t, v.Modules, "kmodtest_base"); m.Verified || !strings.Contains(strings.Join(m.Errors, ";"), "built in") {
			t.Errorf("%+v", m)
		}
	})
}

func TestModulesDep(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// modprobe would load another file than the verified one.
	e.write("usr/lib/modules/"+e.kver+"/extra/kmodtest_base.ko", "other")
	e.write("usr/lib/modules/"+e.kver+"/modules.dep", "extra/kmodtest_base.ko:\nupdates/kmodtest_dep.ko: extra/kmodtest_base.ko\n")
	r := e.run(e.options())
	m := moduleReport(t, r.Modules, "kmodtest_base")
	if m.Verified || !strings.Contains(strings.Join(m.Errors, ";"), "/lib/modules/"+e.kver+"/extra/kmodtest_base.ko") {
		t.Errorf("%+v", m)
	}
	if !reflect.DeepEqual(e.calls, []string{"kmodtest_dep"}) {
		t.Errorf("calls %v", e.calls)
	}
	// Absolute paths (old depmod) resolve the same; a missing entry and a
	// missing modules.dep fail the module.
	e = newEnv(t)
	e.write("usr/lib/modules/"+e.kver+"/modules.dep", "/lib/modules/"+e.kver+"/updates/kmodtest_base.ko:\n")
	r = e.run(e.options())
	if !moduleReport(t, r.Modules, "kmodtest_base").Verified || moduleReport(t, r.Modules, "kmodtest_dep").Verified {
		t.Errorf("absolute modules.dep: %+v", r.Modules)
	}
	if err := os.Remove(filepath.Join(e.root, "usr/lib/modules", e.kver, "modules.dep")); err != nil {
		t.Fatal(err)
	}
	e.calls = nil
	r = e.run(e.options())
	if len(e.calls) != 0 || r.Verified != 0 || !strings.Contains(strings.Join(r.Modules[0].Errors, ";"), "modules.dep") {
		t.Errorf("without modules.dep: calls %v, %+v", e.calls, r.Modules[0])
	}
}

func TestLoadFailures(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.modprobeErr = map[string]error{"kmodtest_base": errors.New("modprobe: ERROR: could not insert 'kmodtest_base': Key was rejected by service")}
	r := e.run(e.options())
	m := moduleReport(t, r.Modules, "kmodtest_base")
	if m.Loaded || !m.Verified || !strings.Contains(strings.Join(m.Errors, ";"), "Key was rejected") {
		t.Errorf("%+v", m)
	}
	if r.Status != StatusFail || !reflect.DeepEqual(r.LoadFailed, []string{"kmodtest_base"}) || r.Loaded != 1 {
		t.Errorf("%+v", r)
	}
	if want := "kmodctl: 1/2 modules verified and loaded; failed to load: kmodtest_base [fail]"; r.Summary() != want {
		t.Errorf("summary %q", r.Summary())
	}
	// modprobe succeeds but the module is not there.
	e = newEnv(t)
	o := e.options()
	o.Modprobe = func(ctx context.Context, name string) error { e.calls = append(e.calls, name); return nil }
	r = e.run(o)
	if r.Loaded != 0 || r.Status != StatusFail || !strings.Contains(strings.Join(r.Modules[0].Errors, ";"), "/sys/module/kmodtest_base does not exist") {
		t.Errorf("%+v", r.Modules[0])
	}
	// Another root than / has no default modprobe.
	o.Modprobe = nil
	r = e.run(o)
	if r.Loaded != 0 || !strings.Contains(strings.Join(r.Modules[0].Errors, ";"), "no modprobe for root") {
		t.Errorf("%+v", r.Modules[0])
	}
}

func TestLoadFalse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.module("kmodtest_dep").Load = false
	e.writeManifest()
	r := e.run(e.options())
	if !reflect.DeepEqual(e.calls, []string{"kmodtest_base"}) || r.Status != StatusOK {
		t.Errorf("calls %v, status %s", e.calls, r.Status)
	}
	if want := "kmodctl: 1/1 modules verified and loaded (1 more not to load)"; r.Summary() != want {
		t.Errorf("summary %q", r.Summary())
	}
	if m := moduleReport(t, r.Modules, "kmodtest_dep"); !m.Verified || m.Loaded {
		t.Errorf("%+v", m)
	}
	// Early modules are loaded too (when the initramfs did not).
	e = newEnv(t)
	e.module("kmodtest_dep").Load = false
	e.module("kmodtest_dep").Early = true
	e.writeManifest()
	if r := e.run(e.options()); !reflect.DeepEqual(e.calls, envModules) || r.Loaded != 2 {
		t.Errorf("early: calls %v, %+v", e.calls, r)
	}
}

func TestManifestProblems(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, content string // content "" removes the manifest
		want          string
	}{
		{"missing", "", "missing"},
		{"not json", "{", "invalid manifest"},
		{"version 2", `{"version": 2, "certificates": [], "kernels": []}`, "unsupported manifest version 2"},
		{"unknown field", `{"version": 1, "certificates": [], "kernels": [], "x": 1}`, `"x"`},
		{"empty", " ", "invalid manifest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			p := filepath.Join(e.root, "usr/lib/kmodctl/manifest.json")
			if tc.content == "" {
				os.Remove(p)
			} else {
				e.write("usr/lib/kmodctl/manifest.json", tc.content)
			}
			for _, policy := range []Policy{PolicyFail, PolicyWarn} {
				o := e.options()
				o.OnDrift = policy
				o.Lockdown = true
				r := e.run(o)
				if len(e.calls) != 0 {
					t.Fatalf("modprobe called: %v", e.calls)
				}
				if !strings.Contains(r.ManifestError, tc.want) || !strings.Contains(r.ManifestError, manifest.Path) || r.Covered || len(r.Modules) != 0 {
					t.Errorf("manifest error %q, want %q: %+v", r.ManifestError, tc.want, r)
				}
				if want := map[Policy]Status{PolicyFail: StatusFail, PolicyWarn: StatusWarn}[policy]; r.Status != want {
					t.Errorf("%s: status %s", policy, r.Status)
				}
				if !strings.HasPrefix(r.Summary(), "kmodctl: manifest error: ") || !strings.Contains(r.Summary(), "no module loaded") {
					t.Errorf("summary %q", r.Summary())
				}
				// The lockdown is applied even so.
				if r.Lockdown == nil || !r.Lockdown.Applied {
					t.Errorf("lockdown %+v", r.Lockdown)
				}
				e.write("proc/sys/kernel/modules_disabled", "0\n")
			}
		})
	}
	// A directory in the manifest's place.
	e := newEnv(t)
	p := filepath.Join(e.root, "usr/lib/kmodctl/manifest.json")
	os.Remove(p)
	e.mkdir("usr/lib/kmodctl/manifest.json")
	if v := e.verify(e.options()); !strings.Contains(v.ManifestError, "not a regular file") {
		t.Errorf("%q", v.ManifestError)
	}
}

func TestLockdown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.onModprobe = func(name string) {
		if v := e.read("proc/sys/kernel/modules_disabled"); v != "0\n" {
			t.Errorf("modules_disabled is %q while loading %s", v, name)
		}
	}
	o := e.options()
	o.Lockdown = true
	r := e.run(o)
	if len(e.calls) != 2 {
		t.Errorf("calls %v", e.calls)
	}
	if v := e.read("proc/sys/kernel/modules_disabled"); v != "1\n" {
		t.Errorf("modules_disabled %q after the run", v)
	}
	if l := r.Lockdown; l == nil || !l.Requested || !l.Applied || l.AlreadySet || l.Error != "" {
		t.Errorf("lockdown %+v", l)
	}
	if want := "kmodctl: 2/2 modules verified and loaded; lockdown: kernel.modules_disabled=1"; r.Summary() != want || r.Status != StatusOK {
		t.Errorf("summary %q, status %s", r.Summary(), r.Status)
	}

	// Lockdown alone, on a later boot: names the managed modules that
	// are not loaded and locks anyway.
	e2 := newEnv(t)
	e2.load("kmodtest_base", e2.module("kmodtest_base").Srcversion)
	l, err := Lockdown(context.Background(), e2.options())
	if err != nil {
		t.Fatal(err)
	}
	if !l.Applied || l.Status != StatusOK || !reflect.DeepEqual(l.Missing, []string{"kmodtest_dep"}) || l.Kernel != e2.kver || l.BootID == "" {
		t.Errorf("%+v", l)
	}
	if want := "kmodctl lockdown: kernel.modules_disabled=1; managed modules not loaded: kmodtest_dep"; l.Summary() != want {
		t.Errorf("summary %q", l.Summary())
	}
	if l, _ := Lockdown(context.Background(), e2.options()); !l.AlreadySet || !l.Applied {
		t.Errorf("again: %+v", l)
	}
	if err := WriteLockdownResult(filepath.Join(e2.root, LockdownReportPath), l); err != nil {
		t.Fatal(err)
	}
	// No sysctl file: the lockdown fails, and so does the run.
	os.Remove(filepath.Join(e2.root, ModulesDisabledPath))
	l, _ = Lockdown(context.Background(), e2.options())
	if l.Applied || l.Status != StatusFail || !strings.Contains(l.Error, ModulesDisabledPath) {
		t.Errorf("%+v", l)
	}
	o = e2.options()
	o.Lockdown = true
	if r := e2.run(o); r.Status != StatusFail || !strings.Contains(r.Summary(), "lockdown failed") {
		t.Errorf("run: %s %q", r.Status, r.Summary())
	}
}

func TestInitramfsCopy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	img := filepath.Join(e.root, "boot/initrd.img-"+e.kver)
	e.mkdir("boot")
	orig, err := os.ReadFile(fixture.Initrd(t, fixture.InitrdToolsZstd))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	host := filepath.Join(e.root, "usr/lib/modules", e.kver, "updates/kmodtest_base.ko")
	res, err := initramfs.Inject(img, initramfs.WithModules(host), initramfs.WithLoad(true), initramfs.WithKernelRelease(e.kver))
	if err != nil {
		t.Fatal(err)
	}
	base := e.module("kmodtest_base")
	base.Early, base.InitramfsSHA256 = true, base.SHA256
	e.writeManifest()
	t0 := time.Now()
	v := e.verify(e.options())
	t.Logf("verify with the initramfs check: %v (image of %d bytes)", time.Since(t0), res.SizeAfter)
	m := moduleReport(t, v.Modules, "kmodtest_base")
	wantPath := "/" + strings.TrimPrefix(res.Modules[0].Path, "/")
	if !m.Verified || m.Initramfs == nil || !m.Initramfs.OK || m.Initramfs.ActualSHA256 != base.SHA256 || m.Initramfs.Path != wantPath || m.Initramfs.Image != "/boot/initrd.img-"+e.kver {
		t.Errorf("%+v %+v", m, m.Initramfs)
	}
	if dep := moduleReport(t, v.Modules, "kmodtest_dep"); dep.Initramfs != nil || !dep.Verified {
		t.Errorf("dep: %+v", dep)
	}

	// The initramfs holds a copy signed by another key: drift.
	other := filepath.Join(t.TempDir(), "kmodtest_base.ko")
	if err := os.WriteFile(other, signedModule(t, sigtest.GoKey(t, "rsa:2048"), "kmodtest_base"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := initramfs.Inject(img, initramfs.WithModules(other), initramfs.WithKernelRelease(e.kver)); err != nil {
		t.Fatal(err)
	}
	v = e.verify(e.options())
	m = moduleReport(t, v.Modules, "kmodtest_base")
	if m.Verified || m.Initramfs.OK || m.Initramfs.ActualSHA256 == base.SHA256 || m.Initramfs.ActualSHA256 == "" || !strings.Contains(strings.Join(m.Errors, ";"), "initramfs copy") {
		t.Errorf("other copy: %+v %+v", m, m.Initramfs)
	}
	if !strings.Contains(e.blocked(), "blacklist kmodtest_base") {
		t.Errorf("blocked %q", e.blocked())
	}

	// The initramfs without the module (the original image).
	if err := os.WriteFile(img, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	v = e.verify(e.options())
	if m := moduleReport(t, v.Modules, "kmodtest_base"); m.Verified || !strings.Contains(strings.Join(m.Errors, ";"), "holds no kmodtest_base") {
		t.Errorf("no copy: %+v", m)
	}
	// No initramfs at all; dracut's name is looked for too.
	if err := os.Rename(img, filepath.Join(e.root, "boot/initramfs-"+e.kver+".img")); err != nil {
		t.Fatal(err)
	}
	v = e.verify(e.options())
	if m := moduleReport(t, v.Modules, "kmodtest_base"); m.Initramfs.Image != "/boot/initramfs-"+e.kver+".img" {
		t.Errorf("dracut name: %+v", m.Initramfs)
	}
	os.Remove(filepath.Join(e.root, "boot/initramfs-"+e.kver+".img"))
	v = e.verify(e.options())
	if m := moduleReport(t, v.Modules, "kmodtest_base"); m.Verified || !strings.Contains(strings.Join(m.Errors, ";"), "no initramfs") {
		t.Errorf("no image: %+v", m)
	}
	// A file that is not an initramfs.
	e.write("boot/initrd.img-"+e.kver, "garbage")
	v = e.verify(e.options())
	if m := moduleReport(t, v.Modules, "kmodtest_base"); m.Verified || len(m.Errors) == 0 {
		t.Errorf("garbage image: %+v", m)
	}
}

func TestOptions(t *testing.T) {
	if _, err := Verify(context.Background(), Options{Root: t.TempDir(), OnDrift: "maybe"}); !errors.Is(err, ErrOptions) {
		t.Errorf("bad policy: %v", err)
	}
	if _, err := Run(context.Background(), Options{Root: t.TempDir(), Kernel: "../x"}); !errors.Is(err, ErrOptions) {
		t.Errorf("bad kernel: %v", err)
	}
	if p, err := ParsePolicy(" FAIL "); p != PolicyFail || err != nil {
		t.Errorf("ParsePolicy: %q %v", p, err)
	}
	rel, err := KernelRelease()
	if err != nil || rel == "" {
		t.Fatalf("KernelRelease: %q %v", rel, err)
	}
	// The default kernel is the running one; a relative root is made
	// absolute.
	dir := t.TempDir()
	t.Chdir(dir)
	v, err := Verify(context.Background(), Options{Root: "."})
	if err != nil || v.Kernel != rel || !strings.Contains(v.ManifestError, "missing") {
		t.Errorf("defaults: %+v %v", v, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); err == nil {
		t.Error("a result without drift created the blocked file's folder")
	}
}

// TestInitramfsRecord: the manifest records the initramfs file as the
// build left it (kernels[].initramfs, as the provisioner writes it). That
// file is not decoded; any change to it (one byte of the early module's
// copy, the copy replaced, a regenerated image, another path) makes verify
// walk it, which finds a drifted copy and passes an image that holds the
// right one; a manifest without the record (an older build's) walks.
func TestInitramfsRecord(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rel := "boot/initrd.img-" + e.kver
	img := filepath.Join(e.root, rel)
	orig, err := os.ReadFile(fixture.Initrd(t, fixture.InitrdToolsZstd))
	if err != nil {
		t.Fatal(err)
	}
	e.write(rel, string(orig))
	host := filepath.Join(e.root, "usr/lib/modules", e.kver, "updates/kmodtest_base.ko")
	res, err := initramfs.Inject(img, initramfs.WithModules(host), initramfs.WithLoad(true), initramfs.WithKernelRelease(e.kver))
	if err != nil {
		t.Fatal(err)
	}
	built, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	base := e.module("kmodtest_base")
	base.Early, base.InitramfsSHA256 = true, base.SHA256
	rec, err := manifest.InitramfsFromFile(img, "/"+rel)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Size != int64(len(built)) || rec.SHA256 != hexSum(built) || rec.Path != "/"+rel {
		t.Fatalf("record %+v", rec)
	}
	e.m.Kernels[0].Initramfs = rec
	e.writeManifest()

	// check verifies and returns the early module's report, after checking
	// whether it passed, whether its initramfs copy did and whether the
	// image was walked.
	check := func(what string, verified, copyOK, walked bool, errPart string) *ModuleReport {
		t.Helper()
		v := e.verify(e.options())
		m := moduleReport(t, v.Modules, "kmodtest_base")
		ic := m.Initramfs
		if ic == nil || m.Verified != verified || ic.OK != copyOK || ic.Walked != walked || !strings.Contains(strings.Join(m.Errors, "; "), errPart) {
			t.Errorf("%s: want verified=%v, copy ok=%v, walked=%v (error %q), got %+v %+v", what, verified, copyOK, walked, errPart, m, ic)
			return m
		}
		if dep := moduleReport(t, v.Modules, "kmodtest_dep"); dep.Initramfs != nil || !dep.Verified {
			t.Errorf("%s: kmodtest_dep %+v", what, dep)
		}
		return m
	}
	setImage := func(data []byte) {
		t.Helper()
		if err := os.WriteFile(img, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// As built: the file's digest is the record's, no walk.
	ic := check("as built", true, true, false, "").Initramfs
	if ic.ImageSHA256 != rec.SHA256 || ic.ActualSHA256 != base.SHA256 || ic.ExpectedSHA256 != base.SHA256 || ic.Path != "" || ic.Image != "/"+rel {
		t.Errorf("as built: %+v", ic)
	}

	// A manifest without the record: the walk finds the copy.
	e.m.Kernels[0].Initramfs = nil
	e.writeManifest()
	ic = check("no record", true, true, true, "").Initramfs
	if ic.ImageSHA256 != "" || ic.ActualSHA256 != base.SHA256 || ic.Path != "/"+strings.TrimPrefix(res.Modules[0].Path, "/") {
		t.Errorf("no record: %+v", ic)
	}
	// A record of another path (dracut's name): the walk.
	other := *rec
	other.Path = "/boot/initramfs-" + e.kver + ".img"
	e.m.Kernels[0].Initramfs = &other
	e.writeManifest()
	check("record of another path", true, true, true, "")
	e.m.Kernels[0].Initramfs = rec
	e.writeManifest()

	// One byte of the appended archive (the module's copy, compressed)
	// changed, the size kept: hashed, walked, refused.
	bad := slices.Clone(built)
	bad[res.SizeBefore+(res.SizeAfter-res.SizeBefore)/2] ^= 0x01
	setImage(bad)
	ic = check("one byte of the copy", false, false, true, "initramfs copy").Initramfs
	if ic.ImageSHA256 != hexSum(bad) {
		t.Errorf("one byte of the copy: image sha256 %q, want %s", ic.ImageSHA256, hexSum(bad))
	}
	if !strings.Contains(e.blocked(), "blacklist kmodtest_base") {
		t.Errorf("blocked %q", e.blocked())
	}

	// The copy replaced by one that differs in one byte (its .comment).
	i := strings.Index(string(e.files["kmodtest_base"]), "GCC: (")
	if i < 0 {
		t.Fatal("no .comment in kmodtest_base")
	}
	drifted := slices.Clone(e.files["kmodtest_base"])
	drifted[i+1] ^= 0x20
	driftedHost := filepath.Join(t.TempDir(), "kmodtest_base.ko")
	if err := os.WriteFile(driftedHost, drifted, 0o644); err != nil {
		t.Fatal(err)
	}
	setImage(orig)
	if _, err := initramfs.Inject(img, initramfs.WithModules(driftedHost), initramfs.WithLoad(true), initramfs.WithKernelRelease(e.kver)); err != nil {
		t.Fatal(err)
	}
	ic = check("a drifted copy", false, false, true, "drift: the initramfs copy").Initramfs
	if ic.ActualSHA256 != hexSum(drifted) {
		t.Errorf("a drifted copy: %+v", ic)
	}

	// Regenerated (another image of another size) with the right copy:
	// passes by the walk, the file not even hashed.
	setImage(orig)
	if _, err := initramfs.Inject(img, initramfs.WithModules(host), initramfs.WithLoad(true), initramfs.WithKernelRelease(e.kver), initramfs.WithMode(initramfs.Rewrite)); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(img); err != nil || st.Size() == rec.Size {
		t.Fatalf("the rewritten image: %v %v", st, err)
	}
	if ic = check("regenerated", true, true, true, "").Initramfs; ic.ImageSHA256 != "" || ic.ActualSHA256 != base.SHA256 {
		t.Errorf("regenerated: %+v", ic)
	}

	// The module file itself drifted by one byte: found whatever the
	// initramfs; the built image back is not walked.
	setImage(built)
	file := slices.Clone(e.files["kmodtest_base"])
	file[len(file)/2] ^= 0x01
	e.installFile("kmodtest_base", file)
	if m := check("the module file drifted", false, true, false, "drift: /lib/modules/"); m.Initramfs.ImageSHA256 != rec.SHA256 {
		t.Errorf("the module file drifted: the initramfs copy %+v", m.Initramfs)
	}
	e.installFile("kmodtest_base", e.files["kmodtest_base"])
	check("all back", true, true, false, "")
}
