package main

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// signedModules writes the fixture's test modules signed with k into dir.
func signedModules(t *testing.T, k *sigtest.Key, dir string, names ...string) []string {
	t.Helper()
	s, err := kmod.NewSigner(k.Signer, k.Cert)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		data, err := os.ReadFile(fixture.TestModule(t, n))
		if err != nil {
			t.Fatal(err)
		}
		signed, _, err := s.SignBytes(data)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, n+".ko")
		if err := os.WriteFile(p, signed, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func sameFiles(t *testing.T, dir string, files []string) {
	t.Helper()
	for _, f := range files {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Join(dir, filepath.Base(f)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s in %s: %v (equal %v)", filepath.Base(f), dir, err, bytes.Equal(got, want))
		}
	}
}

// The bundle commands against a registry with TLS and htpasswd: create two
// kernels (one with '+'), list, inspect, pull byte for byte, verify; wrong
// trust and usage errors exit 1 and 2.
func TestBundleCLI(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{TLS: true, Auth: true})
	k := sigtest.OpenSSLKey(t, "rsa:2048")
	other := sigtest.GoKey(t, "ec:P-256")
	kver := fixture.KVER(t)
	plus := "6.12.118+deb12-amd64"
	work := t.TempDir()
	mods := signedModules(t, k, work, "kmodtest_base", "kmodtest_dep")
	ref := reg.Ref("kmod/cli:1.0")
	auth := []string{"--ca-file", reg.CAFile, "--username", reg.Username, "--password-stdin"}
	run := func(args ...string) (string, string, int) { return kmodctlIn(t, reg.Password+"\n", args...) }

	for _, rel := range []string{kver, plus} {
		out, stderr, code := run(append(append([]string{"bundle", "create", "--kernel", rel, "--arch", "amd64", "--cert", k.CertPath,
			"--version", "1.0", "--early", "kmodtest_base"}, auth...), append([]string{ref}, mods...)...)...)
		if code != 0 || !strings.Contains(out, rel+"/amd64: "+reg.Host+"/kmod/cli@sha256:") {
			t.Fatalf("create %s: exit %d\n%s%s", rel, code, out, stderr)
		}
	}
	out, stderr, code := run(append([]string{"bundle", "ls", "--json"}, append(auth, ref)...)...)
	var es []struct{ Release, Arch string }
	if code != 0 || json.Unmarshal([]byte(out), &es) != nil || len(es) != 2 {
		t.Fatalf("ls: exit %d, %s%s", code, out, stderr)
	}
	out, stderr, code = run(append([]string{"bundle", "inspect", "--json", "--kernel", plus}, append(auth, ref)...)...)
	var in struct {
		Release string
		Config  struct {
			Version string
			Modules []struct {
				Name  string
				Early bool
			}
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &in) != nil || in.Release != plus || in.Config.Version != "1.0" || len(in.Config.Modules) != 2 || !in.Config.Modules[0].Early {
		t.Fatalf("inspect: exit %d, %+v\n%s%s", code, in, out, stderr)
	}
	dir := filepath.Join(work, "pulled")
	out, stderr, code = run(append([]string{"bundle", "pull", "--kernel", plus, "--trusted-cert", k.CertPath}, append(auth, ref, dir)...)...)
	if code != 0 || !strings.Contains(out, "2 modules verified") {
		t.Fatalf("pull: exit %d\n%s%s", code, out, stderr)
	}
	sameFiles(t, dir, mods)
	out, stderr, code = run(append([]string{"bundle", "verify", "--trusted-cert", k.CertPath}, append(auth, ref)...)...)
	if code != 0 || strings.Count(out, ": OK") != 2 {
		t.Errorf("verify: exit %d\n%s%s", code, out, stderr)
	}
	otherCert := filepath.Join(work, "other.pem")
	os.WriteFile(otherCert, other.CertPEM, 0o644)
	out, stderr, code = run(append([]string{"bundle", "verify", "--json", "--trusted-cert", otherCert}, append(auth, ref)...)...)
	if code != 1 || !strings.Contains(out, "signature not verified") {
		t.Errorf("verify with another key: exit %d\n%s%s", code, out, stderr)
	}
	_, stderr, code = run(append([]string{"bundle", "pull", "--kernel", kver, "--trusted-cert", otherCert}, append(auth, ref, dir)...)...)
	if code != 1 || !strings.Contains(stderr, "kmodtest_base") {
		t.Errorf("pull with another key: exit %d, %s", code, stderr)
	}
	sameFiles(t, dir, mods)
	for _, args := range [][]string{
		{"bundle", "pull", "--kernel", kver, ref, dir},
		{"bundle", "pull", "--trusted-cert", k.CertPath, ref, dir},
		{"bundle", "ls", "Not/A Reference"},
		{"bundle", "ls"},
		{"bundle", "create", "--cert", k.CertPath, ref, mods[0]},
		{"bundle", "verify", "--nope", ref},
	} {
		if _, stderr, code := run(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr)
		}
	}
}

// pull through a proxy that flips one byte of a module blob fails and
// leaves the target folder as it was.
func TestBundlePullTampered(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	k := sigtest.OpenSSLKey(t, "rsa:2048")
	work := t.TempDir()
	mods := signedModules(t, k, work, "kmodtest_base")
	modData, _ := os.ReadFile(mods[0])
	target, _ := url.Parse(reg.URL())
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodGet || !strings.Contains(resp.Request.URL.Path, "/blobs/") {
			return nil
		}
		var buf bytes.Buffer
		buf.ReadFrom(resp.Body)
		resp.Body.Close()
		body := buf.Bytes()
		if bytes.Equal(body, modData) {
			body[100] ^= 0x80
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		return nil
	}
	srv := httptest.NewServer(rp)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/kmod/tampered:1"
	if _, stderr, code := kmodctl(t, "bundle", "create", "--plain-http", "--kernel", "6.1.0-1-amd64", "--cert", k.CertPath, ref, mods[0]); code != 0 {
		t.Fatalf("create: %s", stderr)
	}
	dir := filepath.Join(work, "target")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "kept.ko"), []byte("old"), 0o644)
	_, stderr, code := kmodctl(t, "bundle", "pull", "--plain-http", "--kernel", "6.1.0-1-amd64", "--trusted-cert", k.CertPath, ref, dir)
	if code != 1 || !strings.Contains(stderr, "kmodtest_base.ko") {
		t.Fatalf("tampered pull: exit %d, %s", code, stderr)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "kept.ko" {
		t.Errorf("the target changed: %v", ents)
	}
	if ents, _ := os.ReadDir(work); len(ents) != 2 {
		t.Errorf("work folder holds %d entries (a temporary folder left?)", len(ents))
	}
}

// Air gap: create into an image layout from an image manifest (as the
// provisioner leaves it), push the layout to a registry, pull back.
func TestBundleAirGap(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	k := sigtest.OpenSSLKey(t, "rsa:2048")
	kver := fixture.KVER(t)
	root := t.TempDir()
	updates := filepath.Join(root, "lib/modules", kver, "updates")
	os.MkdirAll(updates, 0o755)
	mods := signedModules(t, k, updates, "kmodtest_base", "kmodtest_dep")
	m := manifest.Manifest{Certificates: []manifest.Certificate{manifest.NewCertificate(k.Cert)}}
	mk := manifest.Kernel{Release: kver}
	for _, p := range mods {
		e, err := manifest.ModuleFromFile(p, "/"+strings.TrimPrefix(p, root+"/"), []*x509.Certificate{k.Cert})
		if err != nil {
			t.Fatal(err)
		}
		e.Load = true
		mk.Modules = append(mk.Modules, e)
	}
	m.Kernels = []manifest.Kernel{mk}
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	mpath := filepath.Join(root, "manifest.json")
	os.WriteFile(mpath, data, 0o644)
	lay := "oci:" + filepath.Join(t.TempDir(), "usb") + ":build-7"
	if out, stderr, code := kmodctl(t, "bundle", "create", "--manifest", mpath, "--root", root, lay); code != 0 {
		t.Fatalf("create from manifest: %s%s", out, stderr)
	}
	ref := reg.Ref("kmod/airgap:build-7")
	out, stderr, code := kmodctl(t, "bundle", "push", "--plain-http", "--trusted-cert", k.CertPath, lay, ref)
	if code != 0 {
		t.Fatalf("push: %s%s", out, stderr)
	}
	dir := filepath.Join(t.TempDir(), "pulled")
	if out, stderr, code := kmodctl(t, "bundle", "pull", "--plain-http", "--kernel", kver, "--trusted-cert", k.CertPath, ref, dir); code != 0 {
		t.Fatalf("pull: %s%s", out, stderr)
	}
	sameFiles(t, dir, mods)
}
