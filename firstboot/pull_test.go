package firstboot

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// pullEnv is env (an image covering the fixture kernel) plus a second
// kernel B, the alternate fixture kernel, with an empty module tree, and a
// registry holding a bundle of B's test modules.
type pullEnv struct {
	*env
	kernelB string
	reg     *registrytest.Registry
}

// bundleFor pushes kmodtest_base (early) and kmodtest_dep built for
// kernel B, signed with key, to the registry at repo:1, and returns the
// reference.
func (p *pullEnv) bundleFor(t *testing.T, key *sigtest.Key, repo, release string) string {
	t.Helper()
	s, err := kmod.NewSigner(key.Signer, key.Cert)
	if err != nil {
		t.Fatal(err)
	}
	var in []bundle.ModuleInput
	for _, n := range []string{"kmodtest_base", "kmodtest_dep"} {
		raw, err := os.ReadFile(fixture.Path(t, "alt/testmods/"+n+".ko"))
		if err != nil {
			t.Fatal(err)
		}
		signed, _, err := s.SignBytes(raw)
		if err != nil {
			t.Fatal(err)
		}
		in = append(in, bundle.ModuleInput{File: n + ".ko", Data: signed, Load: true, Early: n == "kmodtest_base"})
	}
	b, err := bundle.New(release, "amd64", in, []*x509.Certificate{key.Cert},
		bundle.WithLoad(bundle.Load{Order: []string{"kmodtest_base", "kmodtest_dep"}, Options: map[string]string{"kmodtest_dep": "level=2"}}))
	if err != nil {
		t.Fatal(err)
	}
	loc, _ := bundle.ParseLocation(p.reg.Ref(repo+":1"), true)
	if _, err := bundle.Push(context.Background(), loc, []*bundle.Bundle{b}, bundle.WithPlainHTTP()); err != nil {
		t.Fatal(err)
	}
	return loc.String()
}

func newPullEnv(t *testing.T) *pullEnv {
	t.Helper()
	e := newEnv(t)
	p := &pullEnv{env: e, kernelB: strings.TrimSpace(string(mustReadFile(t, fixture.Path(t, "alt/KVER"))))}
	fixture.Tool(t, "depmod")
	e.mkdir("usr/lib/modules/" + p.kernelB + "/kernel")
	p.reg = registrytest.Start(t, registrytest.Options{})
	return p
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (p *pullEnv) config(ref string, onFailure Policy) {
	p.t.Helper()
	c := PullConfig{Bundle: ref, PlainHTTP: true, OnFailure: onFailure}
	data, err := c.Marshal()
	if err != nil {
		p.t.Fatal(err)
	}
	p.write("etc/kmodctl/pull.json", string(data))
}

func (p *pullEnv) pull(opts ...bundle.Option) *PullResult {
	p.t.Helper()
	o := p.options()
	o.Kernel = p.kernelB
	r, err := Pull(context.Background(), PullOptions{Options: o, Arch: "amd64", Load: true, BundleOptions: opts})
	if err != nil {
		p.t.Fatal(err)
	}
	return r
}

// A kernel the image does not cover: its bundle is pulled, verified
// against the image manifest's certificate, installed, depmod'ed, loaded
// and recorded; verify then checks it like the image's own; the second
// pull does nothing; a drifted file is blocked by verify and repaired by
// the next pull.
func TestPull(t *testing.T) {
	p := newPullEnv(t)
	p.config(p.bundleFor(t, p.key, "kmod/b", p.kernelB), PolicyFail)
	// Kernel B's own initramfs: the early module goes in.
	p.write("boot/initrd.img-"+p.kernelB, string(mustReadFile(t, fixture.Path(t, "alt/initrd/initramfs-tools-zstd.img"))))
	// An initramfs-tools image whose own list has no early module.
	p.write("etc/initramfs-tools/modules", "# the admin's\nvirtio_blk\n")
	r := p.pull()
	if r.Outcome != PullPulled || r.Status != StatusOK || len(r.Modules) != 2 || !r.Modules[0].Loaded || !r.Modules[1].Loaded {
		t.Fatalf("pull: %+v", r)
	}
	if r.Initramfs != "/boot/initrd.img-"+p.kernelB || len(r.Warnings) != 0 {
		t.Errorf("initramfs %q, warnings %v", r.Initramfs, r.Warnings)
	}
	if !strings.HasPrefix(r.Reference, p.reg.Host+"/kmod/b@sha256:") || !strings.Contains(r.SummaryLine, "2 modules pulled from") {
		t.Errorf("pull: %q, %q", r.Reference, r.SummaryLine)
	}
	dir := "usr/lib/modules/" + p.kernelB + "/updates/kmodctl/"
	for _, n := range []string{"kmodtest_base", "kmodtest_dep"} {
		if _, err := os.Stat(filepath.Join(p.root, dir+n+".ko")); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	if dep := p.read("usr/lib/modules/" + p.kernelB + "/modules.dep"); !strings.Contains(dep, "updates/kmodctl/kmodtest_dep.ko: updates/kmodctl/kmodtest_base.ko") {
		t.Errorf("modules.dep:\n%s", dep)
	}
	// Listed for initramfs-tools, so a regeneration keeps it; the admin's
	// lines stay.
	if l := p.read("etc/initramfs-tools/modules"); l != "# the admin's\nvirtio_blk\n# BEGIN kmodctl pulled\nkmodtest_base\n# END kmodctl pulled\n" {
		t.Errorf("/etc/initramfs-tools/modules:\n%s", l)
	}
	if mp := p.read("etc/modprobe.d/kmodctl-pulled.conf"); !strings.Contains(mp, "options kmodtest_dep level=2") {
		t.Errorf("modprobe settings:\n%s", mp)
	}
	state, err := manifest.Unmarshal([]byte(p.read("var/lib/kmodctl/pulled.json")))
	if err != nil || len(state.Bundles) != 1 || state.Bundles[0].Digest != r.Digest {
		t.Fatalf("state: %+v %v", state, err)
	}
	if k, _ := state.Kernel(p.kernelB); k.Modules[0].InitramfsSHA256 == "" || k.Modules[1].InitramfsSHA256 != "" {
		t.Errorf("initramfs copies recorded: %+v", k.Modules)
	}
	// The initramfs as the pull left it is recorded too.
	if k, _ := state.Kernel(p.kernelB); k.Initramfs == nil || k.Initramfs.Path != "/boot/initrd.img-"+p.kernelB || k.Initramfs.Size != int64(len(p.read("boot/initrd.img-"+p.kernelB))) {
		t.Errorf("initramfs file recorded: %+v", k.Initramfs)
	}
	o := p.options()
	o.Kernel = p.kernelB
	p.calls = nil
	v := p.verify(o)
	if !v.Covered || !v.Pulled || v.PulledFrom != r.Reference || v.Verified != 2 || v.Status != StatusOK {
		t.Fatalf("verify after the pull: %s (%+v)", v.SummaryLine, v)
	}
	if ic := v.Modules[0].Initramfs; ic == nil || !ic.OK || ic.Walked || ic.ImageSHA256 == "" {
		t.Errorf("the early module's initramfs copy, by the recorded file: %+v", ic)
	}
	// Again: recorded and intact, nothing fetched.
	p.reg.Kill()
	if r := p.pull(); r.Outcome != PullAlready || r.Status != StatusOK {
		t.Errorf("second pull: %+v", r)
	}
	// A byte changed: verify blocks it; the next pull repairs it.
	data := []byte(p.read(dir + "kmodtest_dep.ko"))
	data[len(data)/2] ^= 1
	p.write(dir+"kmodtest_dep.ko", string(data))
	p.calls = nil
	if v := p.verify(o); v.Verified != 1 || len(v.Blocked) != 1 || v.Blocked[0] != "kmodtest_dep" {
		t.Errorf("verify of a drifted pulled module: %s", v.SummaryLine)
	}
	p.reg.Restart(t)
	if r := p.pull(); r.Outcome != PullPulled {
		t.Errorf("pull over a drifted module: %+v", r)
	}
	p.calls = nil
	if v := p.verify(o); v.Verified != 2 {
		t.Errorf("verify after the repair: %s", v.SummaryLine)
	}
	// The image's own kernel needs nothing.
	o = p.options()
	if r, err := Pull(context.Background(), PullOptions{Options: o, Arch: "amd64"}); err != nil || r.Outcome != PullCovered {
		t.Errorf("covered kernel: %+v %v", r, err)
	}
}

// Refusals: a bundle signed by another key is never installed and the
// module is named; a bundle without the kernel names the kernels it has;
// an unreachable registry follows on_failure.
func TestPullRefused(t *testing.T) {
	p := newPullEnv(t)
	other := sigtest.GoKey(t, "rsa:2048")
	p.config(p.bundleFor(t, other, "kmod/other", p.kernelB), PolicyFail)
	r := p.pull()
	if r.Outcome != PullFailed || r.Status != StatusFail || r.Refused != "kmodtest_base" || !strings.Contains(r.Error, "signature not verified") {
		t.Errorf("another key: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(p.root, "usr/lib/modules", p.kernelB, "updates")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("something was installed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p.root, "var/lib/kmodctl/pulled.json")); err == nil {
		t.Error("a refused pull was recorded")
	}

	p.config(p.bundleFor(t, p.key, "kmod/lacking", "6.1.0-0-nosuch-amd64"), PolicyWarn)
	r = p.pull()
	if r.Outcome != PullFailed || r.Status != StatusWarn || !strings.Contains(r.Error, "has no bundle for kernel "+p.kernelB) || !strings.Contains(r.Error, "6.1.0-0-nosuch-amd64/amd64") {
		t.Errorf("lacking kernel: %+v", r)
	}

	p.config("127.0.0.1:1/kmod/down:1", PolicyWarn)
	r = p.pull(bundle.WithRetries(0))
	if r.Outcome != PullFailed || r.Status != StatusWarn || !strings.Contains(r.Error, "127.0.0.1:1") {
		t.Errorf("registry down, warn: %+v", r)
	}
	p.config("127.0.0.1:1/kmod/down:1", PolicyFail)
	if r := p.pull(bundle.WithRetries(0)); r.Status != StatusFail {
		t.Errorf("registry down, fail: %+v", r)
	}
}

// The kernel hook never fails a kernel install, whatever the agent says,
// and passes the new kernel's release.
func TestKernelHookScript(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "kmodctl")
	log := filepath.Join(dir, "args")
	os.WriteFile(agent, []byte("#!/bin/sh\necho \"$@\" > "+log+"\nexit 1\n"), 0o755)
	files, _, err := RenderHook(HookSettings{Pull: true, AgentPath: agent})
	if err != nil {
		t.Fatal(err)
	}
	var hook []byte
	for _, f := range files {
		if f.Path == KernelHookPath {
			hook = f.Content
			if f.Mode != 0o755 {
				t.Errorf("hook mode %v", f.Mode)
			}
		}
	}
	script := filepath.Join(dir, "hook")
	os.WriteFile(script, hook, 0o755)
	if out, err := exec.Command(script, "6.12.118+deb12-amd64", "/boot/vmlinuz-6.12.118+deb12-amd64").CombinedOutput(); err != nil {
		t.Errorf("the hook failed: %v %s", err, out)
	}
	if got := strings.TrimSpace(string(mustReadFile(t, log))); got != "firstboot pull --kernel 6.12.118+deb12-amd64 --no-load --hook" {
		t.Errorf("agent called with %q", got)
	}
	if out, err := exec.Command(script).CombinedOutput(); err != nil {
		t.Errorf("the hook without arguments failed: %v %s", err, out)
	}
}
