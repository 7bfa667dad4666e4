package bundle

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
)

// Tests against Debian's docker-registry (distribution 2.8.2) and the oras
// CLI, both real.

func oras(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(fixture.RepoTool(t, "oras"), args...)
	cmd.Dir = dir
	// oras's own config and credential store stay in the test's folder.
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "DOCKER_CONFIG="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("oras %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// A registry with TLS (a CA made by the test) and htpasswd: a bundle of two
// kernels, one with '+' in its release, goes up and comes back byte for
// byte; oras pulls the module files by name; a wrong password names the
// registry and the 401.
func TestRegistryTLSAuth(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{TLS: true, Auth: true})
	k := sigtest.GoKey(t, "rsa:2048")
	kver := fixture.KVER(t)
	plus := "6.12.118+deb12-amd64"
	ctx := context.Background()
	loc, err := ParseLocation(reg.Ref("kmod/bundle:1.0"), false)
	if err != nil {
		t.Fatal(err)
	}
	auth := []Option{WithCAFile(reg.CAFile), WithBasicAuth(reg.Username, reg.Password)}
	bundles := []*Bundle{newBundle(t, kver, k), newBundle(t, plus, k)}
	res, err := Push(ctx, loc, bundles, auth...)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Kernels) != 2 || !strings.HasPrefix(res.Reference, reg.Host+"/kmod/bundle@sha256:") {
		t.Fatalf("push result %+v", res)
	}
	for _, b := range bundles {
		f, err := Fetch(ctx, loc, b.Config.Kernel.Release, "amd64", append(auth, WithTrustedCerts(k.Cert))...)
		if err != nil {
			t.Fatal(err)
		}
		sameFiles(t, b, f.Bundle)
		// oras gets the module files by name from the kernel's tag.
		dir := t.TempDir()
		oras(t, dir, "pull", "--ca-file", reg.CAFile, "--username", reg.Username, "--password", reg.Password,
			"-o", dir, reg.Ref("kmod/bundle:"+KernelTag(b.Config.Kernel.Release, "amd64")))
		for _, n := range b.FileNames() {
			got, err := os.ReadFile(filepath.Join(dir, n))
			x, _ := b.File(n)
			if err != nil || !bytes.Equal(got, x) {
				t.Errorf("oras pull: %s: %v (equal %v)", n, err, bytes.Equal(got, x))
			}
		}
	}
	// The '+' release is tagged without '+', and found by its annotation.
	if tag := KernelTag(plus, "amd64"); strings.Contains(tag, "+") {
		t.Errorf("tag %s", tag)
	}

	for name, opts := range map[string][]Option{
		"wrong password": {WithCAFile(reg.CAFile), WithBasicAuth(reg.Username, "wrong")},
		"anonymous":      {WithCAFile(reg.CAFile), WithKeychain(emptyKeychain{})},
	} {
		_, err := Fetch(ctx, loc, kver, "amd64", append(opts, WithTrustedCerts(k.Cert))...)
		if err == nil || !strings.Contains(err.Error(), reg.Host) || !strings.Contains(err.Error(), "401") && !strings.Contains(err.Error(), "UNAUTHORIZED") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Without the CA the registry's certificate is not trusted, and plain
	// HTTP is never tried instead.
	_, err = Fetch(ctx, loc, kver, "amd64", WithBasicAuth(reg.Username, reg.Password), WithTrustedCerts(k.Cert))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("no CA: %v", err)
	}
}

// kmodctl reads a bundle that oras pushed with the documented media
// types, config and annotations.
func TestOrasPushed(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	k := sigtest.GoKey(t, "rsa:2048")
	release := "6.1.0-1-amd64"
	b := newBundle(t, release, k)
	dir := t.TempDir()
	cfg, err := b.Config.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644)
	args := []string{"push", "--plain-http", "--artifact-type", ArtifactType,
		"--config", "config.json:" + ConfigMediaType,
		"--annotation", AnnotationRelease + "=" + release, "--annotation", AnnotationArch + "=amd64",
		reg.Ref("oras/bundle:" + KernelTag(release, "amd64"))}
	for _, n := range b.FileNames() {
		data, _ := b.File(n)
		os.WriteFile(filepath.Join(dir, n), data, 0o644)
		mt := ModuleMediaType
		if !IsModuleFile(n) {
			mt = CertMediaType
		}
		args = append(args, n+":"+mt)
	}
	oras(t, dir, args...)
	loc, err := ParseLocation(reg.Ref("oras/bundle:"+KernelTag(release, "amd64")), true)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Fetch(context.Background(), loc, release, "amd64", WithPlainHTTP(), WithTrustedCerts(k.Cert))
	if err != nil {
		t.Fatal(err)
	}
	sameFiles(t, b, f.Bundle)
}

// proxy sits between the client and a plain-HTTP registry: it records
// requests and may answer or alter some.
type proxy struct {
	srv *httptest.Server
	mu  sync.Mutex
	log []string
	// before may answer a request itself (a non-zero status).
	before func(r *http.Request) int
	// alter may change a response body.
	alter func(r *http.Request, body []byte) []byte
}

func newProxy(t *testing.T, reg *registrytest.Registry) *proxy {
	t.Helper()
	target, _ := url.Parse(reg.URL())
	p := &proxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		p.mu.Lock()
		alter := p.alter
		p.mu.Unlock()
		if alter == nil {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		body = alter(resp.Request, body)
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
		return nil
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.log = append(p.log, r.Method+" "+r.URL.Path)
		before := p.before
		p.mu.Unlock()
		if before != nil {
			if code := before(r); code != 0 {
				w.WriteHeader(code)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *proxy) host() string { return strings.TrimPrefix(p.srv.URL, "http://") }

// requests returns and clears the log.
func (p *proxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.log
	p.log = nil
	return l
}

func uploads(reqs []string) []string {
	var out []string
	for _, r := range reqs {
		if strings.Contains(r, "/blobs/uploads") {
			out = append(out, r)
		}
	}
	return out
}

// The same inputs pushed twice give the same digests, and the second push
// sends no blob; plain HTTP is used only when asked for.
func TestPushTwice(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	p := newProxy(t, reg)
	k := sigtest.GoKey(t, "rsa:2048")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	ctx := context.Background()
	loc, _ := ParseLocation(p.host()+"/kmod/twice:v1", true)
	first, err := Push(ctx, loc, []*Bundle{newBundle(t, "6.1.0-1-amd64", k)}, WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	if n := len(uploads(p.requests())); n < 5 {
		t.Fatalf("the first push started %d blob uploads, want the config and 4 files at least", n)
	}
	second, err := Push(ctx, loc, []*Bundle{newBundle(t, "6.1.0-1-amd64", k)}, WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	reqs := p.requests()
	if up := uploads(reqs); len(up) != 0 {
		t.Errorf("the second push uploaded blobs: %v", up)
	}
	if first.Index != second.Index || first.Kernels[0].Digest != second.Kernels[0].Digest {
		t.Errorf("digests differ: %+v, %+v", first, second)
	}
	t.Logf("second push: %d requests: %v", len(reqs), reqs)

	// Without WithPlainHTTP, HTTP is refused (no fallback from TLS).
	_, err = Push(ctx, loc, []*Bundle{newBundle(t, "6.1.0-1-amd64", k)})
	if err == nil || !strings.Contains(err.Error(), "plain HTTP refused") {
		t.Errorf("push without plain HTTP: %v", err)
	}
}

// A proxy that flips one byte of a module blob makes Fetch fail naming the
// blob; 503s and a 429 on the way are retried.
func TestTransportFaults(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	p := newProxy(t, reg)
	k := sigtest.GoKey(t, "rsa:2048")
	ctx := context.Background()
	loc, _ := ParseLocation(p.host()+"/kmod/faults:v1", true)
	b := newBundle(t, "6.1.0-1-amd64", k)
	var faults int
	p.before = func(r *http.Request) int {
		if strings.Contains(r.URL.Path, "/blobs/") && faults < 3 {
			faults++
			if faults == 2 {
				return http.StatusTooManyRequests
			}
			return http.StatusServiceUnavailable
		}
		return 0
	}
	if _, err := Push(ctx, loc, []*Bundle{b}, WithPlainHTTP()); err != nil {
		t.Fatalf("push through 503 and 429: %v", err)
	}
	if faults != 3 {
		t.Errorf("%d faults served", faults)
	}
	p.before = nil
	base, _ := b.File("kmodtest_base.ko")
	var flipped bool
	p.alter = func(r *http.Request, body []byte) []byte {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && bytes.Equal(body, base) {
			body = bytes.Clone(body)
			body[len(body)/2] ^= 1
			flipped = true
		}
		return body
	}
	_, err := Fetch(ctx, loc, "6.1.0-1-amd64", "amd64", WithPlainHTTP(), WithTrustedCerts(k.Cert), WithRetries(0))
	if !flipped || err == nil || !strings.Contains(err.Error(), "kmodtest_base.ko") {
		t.Errorf("flipped byte (flipped %v): %v", flipped, err)
	}
	p.alter = nil
	if _, err := Fetch(ctx, loc, "6.1.0-1-amd64", "amd64", WithPlainHTTP(), WithTrustedCerts(k.Cert)); err != nil {
		t.Fatal(err)
	}
}

// The registry killed in the middle of a push: the push fails; after a
// restart the same push completes and the bundle verifies.
func TestKilledMidPush(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	p := newProxy(t, reg)
	k := sigtest.GoKey(t, "rsa:2048")
	ctx := context.Background()
	loc, _ := ParseLocation(p.host()+"/kmod/killed:v1", true)
	b := newBundle(t, "6.1.0-1-amd64", k)
	var once sync.Once
	var seen int
	p.before = func(r *http.Request) int {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads") {
			seen++
			if seen == 2 {
				once.Do(reg.Kill)
			}
		}
		return 0
	}
	_, err := Push(ctx, loc, []*Bundle{b}, WithPlainHTTP(), WithRetries(1), WithJobs(1))
	if err == nil {
		t.Fatal("the push succeeded with the registry killed")
	}
	t.Logf("push with the registry killed: %v", err)
	p.before = nil
	reg.Restart(t)
	res, err := Push(ctx, loc, []*Bundle{b}, WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	f, err := Fetch(ctx, loc, "6.1.0-1-amd64", "amd64", WithPlainHTTP(), WithTrustedCerts(k.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if f.Digest != res.Kernels[0].Digest {
		t.Errorf("fetched %s, pushed %s", f.Digest, res.Kernels[0].Digest)
	}
}

// A Docker-style auth file (as cloud-init would write on an instance)
// authenticates.
func TestAuthFile(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{TLS: true, Auth: true})
	k := sigtest.GoKey(t, "rsa:2048")
	ctx := context.Background()
	loc, _ := ParseLocation(reg.Ref("kmod/auth:v1"), false)
	if _, err := Push(ctx, loc, []*Bundle{newBundle(t, "6.1.0-1-amd64", k)}, WithCAFile(reg.CAFile), WithBasicAuth(reg.Username, reg.Password)); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "auth.json")
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	os.WriteFile(file, []byte(`{"auths":{"`+reg.Host+`":{"auth":"`+enc(reg.Username+":"+reg.Password)+`"}}}`), 0o600)
	if _, err := Fetch(ctx, loc, "6.1.0-1-amd64", "amd64", WithCAFile(reg.CAFile), WithAuthFile(file), WithTrustedCerts(k.Cert)); err != nil {
		t.Fatal(err)
	}
	if err := WithAuthFile(filepath.Join(t.TempDir(), "missing.json"))(&options{}); err == nil {
		t.Error("a missing auth file was accepted")
	}
	// A CA file without a certificate is refused by name.
	bad := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(bad, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), 0o600)
	if err := WithCAFile(bad)(&options{}); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad CA file: %v", err)
	}
}

// emptyKeychain resolves every registry to anonymous.
type emptyKeychain struct{}

func (emptyKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.Anonymous, nil
}

// A bundle grows one kernel at a time with WithMerge, and Copy takes it
// from an image layout to a registry and back with the same digests.
func TestMergeAndCopy(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	k := sigtest.GoKey(t, "rsa:2048")
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "airgap")
	lay, _ := ParseLocation("oci:"+dir+":2.0", false)
	a, b := newBundle(t, "6.1.0-1-amd64", k), newBundle(t, "6.1.0-2-amd64", k)
	if _, err := Push(ctx, lay, []*Bundle{a}, WithMerge()); err != nil {
		t.Fatal(err)
	}
	res, err := Push(ctx, lay, []*Bundle{b}, WithMerge())
	if err != nil {
		t.Fatal(err)
	}
	es, err := List(ctx, lay)
	if err != nil || len(es) != 2 || es[0].Release != "6.1.0-1-amd64" || es[1].Release != "6.1.0-2-amd64" {
		t.Fatalf("after merge: %v, %v", es, err)
	}
	// Replacing a kernel keeps one entry for it.
	if _, err := Push(ctx, lay, []*Bundle{b}, WithMerge()); err != nil {
		t.Fatal(err)
	}
	if es, _ := List(ctx, lay); len(es) != 2 {
		t.Fatalf("after a second merge of the same kernel: %v", es)
	}

	remoteLoc, _ := ParseLocation(reg.Ref("kmod/airgap:2.0"), true)
	up, err := Copy(ctx, lay, remoteLoc, WithPlainHTTP(), WithTrustedCerts(k.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if up.Index != res.Index {
		t.Errorf("copy changed the index digest: %s -> %s", res.Index, up.Index)
	}
	back, _ := ParseLocation("oci:"+filepath.Join(t.TempDir(), "back")+":2.0", false)
	down, err := Copy(ctx, remoteLoc, back, WithPlainHTTP())
	if err != nil {
		t.Fatal(err)
	}
	if down.Index != res.Index {
		t.Errorf("copy back changed the index digest: %s -> %s", res.Index, down.Index)
	}
	for _, x := range []*Bundle{a, b} {
		f, err := Fetch(ctx, back, x.Config.Kernel.Release, "amd64", WithTrustedCerts(k.Cert))
		if err != nil {
			t.Fatal(err)
		}
		sameFiles(t, x, f.Bundle)
	}
	// Copy with another key's certificate refuses before writing.
	other, _ := ParseLocation("oci:"+filepath.Join(t.TempDir(), "other")+":2.0", false)
	if _, err := Copy(ctx, lay, other, WithTrustedCerts(sigtest.GoKey(t, "ec:P-256").Cert)); err == nil || !strings.Contains(err.Error(), "signature not verified") {
		t.Errorf("copy with another key: %v", err)
	}
	if _, err := os.Stat(other.Dir); err == nil {
		t.Error("a refused copy created its target")
	}
}
