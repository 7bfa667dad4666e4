package bundle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// signedInputs are the fixture's test modules signed with k:
// kmodtest_base, kmodtest_dep (which depends on it), and kmodtest_param
// compressed with xz as DKMS installs it.
func signedInputs(t testing.TB, k *sigtest.Key) []ModuleInput {
	t.Helper()
	s, err := kmod.NewSigner(k.Signer, k.Cert)
	if err != nil {
		t.Fatal(err)
	}
	var out []ModuleInput
	for _, name := range []string{"kmodtest_base", "kmodtest_dep", "kmodtest_param"} {
		data, err := os.ReadFile(fixture.TestModule(t, name))
		if err != nil {
			t.Fatal(err)
		}
		file := name + ".ko"
		if name == "kmodtest_param" {
			if data, err = compress.Compress(data, compress.XZ); err != nil {
				t.Fatal(err)
			}
			file += ".xz"
		}
		signed, _, err := s.SignBytes(data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ModuleInput{File: file, Data: signed, Load: name != "kmodtest_param", Early: name == "kmodtest_base",
			Source: manifest.Source{Kind: manifest.SourceBuilt, Name: "kmodtest", Version: "1.0", Digest: "sha256:" + strings.Repeat("ab", 32)}})
	}
	return out
}

func newBundle(t testing.TB, release string, k *sigtest.Key, opts ...CreateOption) *Bundle {
	t.Helper()
	b, err := New(release, "amd64", signedInputs(t, k), []*x509.Certificate{k.Cert}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameFiles fails the test unless got holds every file of want, equal.
func sameFiles(t *testing.T, want, got *Bundle) {
	t.Helper()
	for _, n := range want.FileNames() {
		x, _ := want.File(n)
		y, ok := got.File(n)
		if !ok || !bytes.Equal(x, y) {
			t.Errorf("%s: %s differs (present %v)", want.Config.Kernel.Release, n, ok)
		}
	}
}

func TestNew(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	kver := fixture.KVER(t)
	b := newBundle(t, kver, k, WithName("kmodtest"), WithVersion("1.0"))
	c := b.Config
	if c.SchemaVersion != SchemaVersion || c.Kernel != (Kernel{Release: kver, Arch: "amd64"}) || c.Name != "kmodtest" || c.Version != "1.0" {
		t.Fatalf("config head %+v", c)
	}
	csum := sha256.Sum256(k.Cert.Raw)
	if len(c.Certificates) != 1 || c.Certificates[0].SHA256 != hex.EncodeToString(csum[:]) || c.Certificates[0].Subject != k.Cert.Subject.String() {
		t.Fatalf("certificates %+v", c.Certificates)
	}
	if der, _ := b.File(c.Certificates[0].File); !bytes.Equal(der, k.Cert.Raw) {
		t.Error("the certificate layer is not the certificate's DER")
	}
	// Every entry as the manifest package describes the same file.
	for _, m := range c.Modules {
		data, _ := b.File(m.File)
		p := filepath.Join(t.TempDir(), m.File)
		os.WriteFile(p, data, 0o644)
		want, err := manifest.ModuleFromFile(p, "/lib/modules/x/updates/"+m.File, []*x509.Certificate{k.Cert})
		if err != nil {
			t.Fatal(err)
		}
		if m.Name != want.Name || m.SHA256 != want.SHA256 || m.Srcversion != want.Srcversion || m.Vermagic != want.Vermagic ||
			m.Signer != want.Signer || m.SigKey != want.SigKey || m.CertSHA256 != want.CertSHA256 || m.Version != want.Version {
			t.Errorf("module %s: %+v, the manifest package says %+v", m.Name, m, want)
		}
	}
	dep, _ := c.Module("kmodtest_dep")
	if dep == nil || !slices.Equal(dep.Depends, []string{"kmodtest_base"}) {
		t.Errorf("kmodtest_dep depends %v", dep)
	}
	if !slices.Equal(c.Load.Order, []string{"kmodtest_base", "kmodtest_dep"}) {
		t.Errorf("load order %v", c.Load.Order)
	}
	base, _ := c.Module("kmodtest_base")
	if !base.Early || base.Source.Kind != manifest.SourceBuilt {
		t.Errorf("kmodtest_base %+v", base)
	}
	if names := b.FileNames(); !slices.Equal(names, []string{"kmodtest_base.ko", "kmodtest_dep.ko", "kmodtest_param.ko.xz", c.Certificates[0].File}) {
		t.Errorf("files %v", names)
	}
}

func TestNewRefuses(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	other := sigtest.GoKey(t, "ec:P-256")
	in := signedInputs(t, k)
	unsigned := ModuleInput{File: "kmodtest_base.ko", Data: sigtest.Unsigned(t, in[0].Data)}
	cases := []struct {
		name  string
		mods  []ModuleInput
		certs []*x509.Certificate
		want  string
	}{
		{"unsigned", []ModuleInput{unsigned}, []*x509.Certificate{k.Cert}, "module kmodtest_base.ko: not signed"},
		{"other key", in, []*x509.Certificate{other.Cert}, "module kmodtest_base.ko: signature"},
		{"no certs", in, nil, "no certificates"},
		{"twice", []ModuleInput{in[0], in[0]}, []*x509.Certificate{k.Cert}, "given twice"},
		{"path", []ModuleInput{{File: "../kmodtest_base.ko", Data: in[0].Data}}, []*x509.Certificate{k.Cert}, "plain file name"},
		{"extension", []ModuleInput{{File: "kmodtest_base", Data: in[0].Data}}, []*x509.Certificate{k.Cert}, "plain file name"},
		{"none", nil, []*x509.Certificate{k.Cert}, "no modules"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := New("6.1.0-1-amd64", "amd64", c.mods, c.certs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New = %v, want %q", err, c.want)
			}
		})
	}
}

// Two bundles of the same inputs have the same manifest digest; the
// created annotation follows SOURCE_DATE_EPOCH.
func TestReproducible(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	digest := func() v1.Hash {
		img, err := newBundle(t, "6.1.0-1-amd64", k).Image()
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	a, b := digest(), digest()
	if a != b {
		t.Fatalf("digests differ: %s, %s", a, b)
	}
	img, _ := newBundle(t, "6.1.0-1-amd64", k).Image()
	mf, _ := img.Manifest()
	if got := mf.Annotations[AnnotationCreated]; got != "2023-11-14T22:13:20Z" {
		t.Errorf("created %q", got)
	}
	if mf.ArtifactType != ArtifactType || mf.Config.MediaType != ConfigMediaType || mf.MediaType != types.OCIManifestSchema1 {
		t.Errorf("manifest %+v", mf)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if c := digest(); c == a {
		t.Error("the digest did not change with the creation time")
	}
}

func TestLayoutRoundTrip(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	kver := fixture.KVER(t)
	plus := "6.12.118+deb12-amd64"
	dir := filepath.Join(t.TempDir(), "layout")
	loc, err := ParseLocation("oci:"+dir+":v1", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bundles := []*Bundle{newBundle(t, plus, k), newBundle(t, kver, k)}
	res, err := Push(ctx, loc, bundles)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Push(ctx, loc, bundles)
	if err != nil {
		t.Fatal(err)
	}
	if res.Index != again.Index || res.Kernels[0].Digest != again.Kernels[0].Digest {
		t.Errorf("second push gave other digests: %+v, %+v", res, again)
	}
	es, err := List(ctx, loc)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range es {
		got = append(got, e.String())
	}
	want := []string{kver + "/amd64", plus + "/amd64"}
	slices.SortFunc(want, func(a, b string) int {
		return manifest.CompareReleases(strings.TrimSuffix(a, "/amd64"), strings.TrimSuffix(b, "/amd64"))
	})
	if !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	for _, b := range bundles {
		f, err := Fetch(ctx, loc, b.Config.Kernel.Release, "amd64", WithTrustedCerts(k.Cert))
		if err != nil {
			t.Fatal(err)
		}
		sameFiles(t, b, f.Bundle)
		if f.Index != res.Index {
			t.Errorf("fetched from index %s, pushed %s", f.Index, res.Index)
		}
	}
	// The kernel's own tag names its manifest alone.
	tagged, err := ParseLocation("oci:"+dir+":"+KernelTag(plus, "amd64"), false)
	if err != nil {
		t.Fatal(err)
	}
	if f, err := Fetch(ctx, tagged, plus, "amd64", WithTrustedCerts(k.Cert)); err != nil || f.Index != (v1.Hash{}) {
		t.Errorf("fetch by kernel tag: %v", err)
	}
	// A kernel the index lacks is named with the kernels it has.
	_, err = Fetch(ctx, loc, "6.1.0-99-amd64", "amd64", WithTrustedCerts(k.Cert))
	var nk *NoKernelError
	if !errors.As(err, &nk) || !strings.Contains(err.Error(), "6.1.0-99-amd64") || !strings.Contains(err.Error(), plus+"/amd64") {
		t.Errorf("missing kernel: %v", err)
	}
	// No trusted certificate: refused before anything is read.
	if _, err := Fetch(ctx, loc, kver, "amd64"); !errors.Is(err, ErrUntrusted) {
		t.Errorf("no trusted certs: %v", err)
	}
	// Another key's certificate does not verify the modules.
	_, err = Fetch(ctx, loc, kver, "amd64", WithTrustedCerts(sigtest.GoKey(t, "ec:P-256").Cert))
	var se *SignatureError
	if !errors.As(err, &se) || se.Module != "kmodtest_base" {
		t.Errorf("other key: %v", err)
	}
}

func TestWriteDir(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	b := newBundle(t, "6.1.0-1-amd64", k)
	dir := filepath.Join(t.TempDir(), "kmodctl")
	if err := b.WriteDir(dir, 0o644); err != nil {
		t.Fatal(err)
	}
	check := func() {
		ents, _ := os.ReadDir(dir)
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		want := slices.Sorted(slices.Values(b.FileNames()))
		if !slices.Equal(names, want) {
			t.Fatalf("dir holds %v, want %v", names, want)
		}
		for _, n := range names {
			got, _ := os.ReadFile(filepath.Join(dir, n))
			x, _ := b.File(n)
			if !bytes.Equal(got, x) {
				t.Errorf("%s differs", n)
			}
		}
	}
	check()
	// Replaced whole: an old file disappears.
	os.WriteFile(filepath.Join(dir, "stale.ko"), []byte("old"), 0o644)
	if err := b.WriteDir(dir, 0o644); err != nil {
		t.Fatal(err)
	}
	check()
	// A folder that is not a bundle's is refused and left alone.
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	if err := b.WriteDir(dir, 0o644); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("WriteDir over a tree: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub")); err != nil {
		t.Error("the refused folder was changed")
	}
	// No temporary folder is left behind.
	ents, _ := os.ReadDir(filepath.Dir(dir))
	if len(ents) != 1 {
		t.Errorf("parent holds %d entries", len(ents))
	}
}

func TestKernelTag(t *testing.T) {
	long := strings.Repeat("6.1.0-", 30) + "amd64"
	cases := []struct{ release, arch, want string }{
		{"6.1.0-57-amd64", "amd64", "6.1.0-57-amd64"},
		{"6.12.118+deb12-amd64", "amd64", "6.12.118_deb12-amd64"},
		{"6.12.118+deb12-cloud-amd64", "amd64", "6.12.118_deb12-cloud-amd64"},
		{"6.5.6-300.fc39.x86_64", "amd64", "6.5.6-300.fc39.x86_64"},
		{"6.1.0-57-arm64", "arm64", "6.1.0-57-arm64"},
		{"6.6.0+rpt-rpi-v8", "arm64", "6.6.0_rpt-rpi-v8_arm64"},
		{"6.1.0-57", "amd64", "6.1.0-57_amd64"},
	}
	for _, c := range cases {
		if got := KernelTag(c.release, c.arch); got != c.want {
			t.Errorf("KernelTag(%q, %q) = %q, want %q", c.release, c.arch, got, c.want)
		}
	}
	// Lossy or long releases get a hash suffix; every tag is valid and
	// different releases never share one.
	seen := map[string]string{}
	for _, r := range []string{"6.1.0_57-amd64", "6.1.0+57-amd64", "6.1.0-57+amd64", "6.1.0-57-amd64", "6.1.0-57", "6.1.0~57-amd64",
		".6.1", "-6.1", long, long + "x", "6.6.0+rpt-rpi-v8", "6.6.0+rpt-rpi-v8_arm64", "6.6.0+rpt-rpi-v8+arm64"} {
		for _, a := range []string{"amd64", "arm64"} {
			tag := KernelTag(r, a)
			if !ValidTag(tag) {
				t.Errorf("KernelTag(%q, %q) = %q: not a valid tag", r, a, tag)
			}
			if prev, ok := seen[tag]; ok {
				t.Errorf("KernelTag(%q, %q) = %q, as for %s", r, a, tag, prev)
			}
			seen[tag] = r + "/" + a
		}
	}
	if tag := KernelTag(long, "amd64"); len(tag) > 128 || !strings.Contains(tag, "-") {
		t.Errorf("long release: %q", tag)
	}
}

func TestParseLocation(t *testing.T) {
	for _, c := range []struct{ in, dir, repo, tag, digest, str string }{
		{"oci:/tmp/x", "/tmp/x", "", "latest", "", "oci:/tmp/x:latest"},
		{"oci:/tmp/x:v1", "/tmp/x", "", "v1", "", "oci:/tmp/x:v1"},
		{"oci:rel/dir:v1", "rel/dir", "", "v1", "", "oci:rel/dir:v1"},
		{"oci:/tmp/x@sha256:" + strings.Repeat("a", 64), "/tmp/x", "", "", "sha256:" + strings.Repeat("a", 64), ""},
		{"127.0.0.1:5000/kmod/bundle:1.0", "", "127.0.0.1:5000/kmod/bundle", "1.0", "", "127.0.0.1:5000/kmod/bundle:1.0"},
		{"registry.example/kmod", "", "registry.example/kmod", "latest", "", "registry.example/kmod:latest"},
	} {
		l, err := ParseLocation(c.in, false)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		repo := ""
		if l.Repo != nil {
			repo = l.Repo.Name()
		}
		if l.Dir != c.dir || repo != c.repo || l.Tag != c.tag || l.Digest != c.digest || (c.str != "" && l.String() != c.str) {
			t.Errorf("%s: %+v (repo %s), %s", c.in, l, repo, l.String())
		}
	}
	for _, bad := range []string{"oci:", "oci:/tmp/x:bad+tag", "oci:/tmp/x@sha256:zz", "Registry/UPPER", "reg/repo:bad+tag"} {
		if _, err := ParseLocation(bad, false); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// craft writes a layout whose tag "t" names a manifest made by mutating a
// valid bundle's manifest (and config) JSON; every blob the valid bundle
// has is written, plus extra.
func craft(t *testing.T, b *Bundle, mutManifest func(m map[string]any), mutConfig func(c map[string]any), extra map[string][]byte) Location {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	img, err := b.Image()
	if err != nil {
		t.Fatal(err)
	}
	rawM, _ := img.RawManifest()
	rawC, _ := img.RawConfigFile()
	var m, c map[string]any
	json.Unmarshal(rawM, &m)
	json.Unmarshal(rawC, &c)
	if mutConfig != nil {
		mutConfig(c)
		rawC, _ = json.Marshal(c)
		sum := sha256.Sum256(rawC)
		cfg := m["config"].(map[string]any)
		cfg["digest"] = "sha256:" + hex.EncodeToString(sum[:])
		cfg["size"] = len(rawC)
	}
	if mutManifest != nil {
		mutManifest(m)
	}
	rawM, _ = json.Marshal(m)
	blobs := [][]byte{rawC, rawM}
	for _, n := range b.FileNames() {
		d, _ := b.File(n)
		blobs = append(blobs, d)
	}
	for _, d := range extra {
		blobs = append(blobs, d)
	}
	for _, d := range blobs {
		h, _, _ := v1.SHA256(bytes.NewReader(d))
		if err := p.WriteBlob(h, io.NopCloser(bytes.NewReader(d))); err != nil {
			t.Fatal(err)
		}
	}
	h, n, _ := v1.SHA256(bytes.NewReader(rawM))
	if err := p.AppendDescriptor(v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: h, Size: n,
		Annotations: map[string]string{refNameAnnotation: "t"}}); err != nil {
		t.Fatal(err)
	}
	loc, err := ParseLocation("oci:"+dir+":t", false)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func layer(m map[string]any, i int) map[string]any { return m["layers"].([]any)[i].(map[string]any) }
func setTitle(m map[string]any, i int, title string) {
	layer(m, i)["annotations"].(map[string]any)[AnnotationTitle] = title
}

// Fetch refuses, naming the location and the file, every malformed bundle
// the format forbids.
func TestFetchRefuses(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	b := newBundle(t, "6.1.0-1-amd64", k)
	other := newBundle(t, "6.1.0-1-amd64", sigtest.GoKey(t, "ec:P-256"))
	otherBase, _ := other.File("kmodtest_base.ko")
	otherSum := sha256.Sum256(otherBase)
	cases := []struct {
		name    string
		m       func(map[string]any)
		c       func(map[string]any)
		extra   map[string][]byte
		limits  Limits
		release string
		want    string
	}{
		{name: "slash", m: func(m map[string]any) { setTitle(m, 0, "sub/kmodtest_base.ko") }, want: `"sub/kmodtest_base.ko" contains '/'`},
		{name: "dotdot", m: func(m map[string]any) { setTitle(m, 0, "..") }, want: `".." is not a plain file name`},
		{name: "dotdot inside", m: func(m map[string]any) { setTitle(m, 0, "a..ko") }, want: `contains ".."`},
		{name: "nul", m: func(m map[string]any) { setTitle(m, 0, "kmodtest\x00.ko") }, want: `contains '/', '\' or NUL`},
		{name: "no title", m: func(m map[string]any) { delete(layer(m, 0), "annotations") }, want: `title: file name "" is not a plain file name`},
		{name: "two titles", m: func(m map[string]any) { setTitle(m, 1, "kmodtest_base.ko") }, want: `two layers are titled "kmodtest_base.ko"`},
		{name: "media type", m: func(m map[string]any) { layer(m, 0)["mediaType"] = "application/x-sh" }, want: `layer "kmodtest_base.ko" has media type "application/x-sh"`},
		{name: "layer size", limits: Limits{Layer: 1000}, want: `the limit is 1000`},
		{name: "total size", limits: Limits{Total: 1000}, want: `more than 1000 bytes in all`},
		{name: "manifest size", limits: Limits{Manifest: 100}, want: `the limit is 100`},
		{name: "config size", limits: Limits{Config: 100}, want: `config of`},
		{name: "artifact type", m: func(m map[string]any) { m["artifactType"] = "application/vnd.other" }, want: `artifactType "application/vnd.other"`},
		{name: "no release", m: func(m map[string]any) { delete(m["annotations"].(map[string]any), AnnotationRelease) }, want: AnnotationRelease},
		{name: "release mismatch", m: func(m map[string]any) { m["annotations"].(map[string]any)[AnnotationRelease] = "6.1.0-2-amd64" },
			release: "6.1.0-2-amd64", want: "kernel 6.1.0-2-amd64, its config for 6.1.0-1-amd64"},
		{name: "other kernel", m: func(m map[string]any) { m["annotations"].(map[string]any)[AnnotationRelease] = "6.1.0-2-amd64" },
			want: "has no bundle for kernel 6.1.0-1-amd64/amd64 (it has: 6.1.0-2-amd64/amd64)"},
		{name: "unlisted layer", c: func(c map[string]any) {
			c["modules"] = c["modules"].([]any)[1:]
			c["load"].(map[string]any)["order"] = []any{"kmodtest_dep"}
		}, want: "layer kmodtest_base.ko is not listed in the config"},
		{name: "missing layer", m: func(m map[string]any) { m["layers"] = m["layers"].([]any)[1:] }, want: "the config lists kmodtest_base.ko, no layer is titled so"},
		{name: "digest mismatch", c: func(c map[string]any) {
			c["modules"].([]any)[0].(map[string]any)["sha256"] = strings.Repeat("0", 64)
		}, want: "layer kmodtest_base.ko has digest"},
		{name: "unknown config field", c: func(c map[string]any) { c["script"] = "rm -rf /" }, want: `unknown field "script"`},
		{name: "config version", c: func(c map[string]any) { c["schemaVersion"] = 2 }, want: "schemaVersion 2"},
		{name: "other signer", m: func(m map[string]any) {
			l := layer(m, 0)
			l["digest"] = "sha256:" + hex.EncodeToString(otherSum[:])
			l["size"] = len(otherBase)
		}, c: func(c map[string]any) {
			c["modules"].([]any)[0].(map[string]any)["sha256"] = hex.EncodeToString(otherSum[:])
		}, extra: map[string][]byte{"other": otherBase}, want: "module kmodtest_base: file kmodtest_base.ko (signed by"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			loc := craft(t, b, c.m, c.c, c.extra)
			target := filepath.Join(t.TempDir(), "target")
			os.Mkdir(target, 0o755)
			os.WriteFile(filepath.Join(target, "old.ko"), []byte("old"), 0o644)
			release := c.release
			if release == "" {
				release = "6.1.0-1-amd64"
			}
			f, err := Fetch(context.Background(), loc, release, "amd64", WithTrustedCerts(k.Cert), WithLimits(c.limits))
			if err == nil {
				err = f.WriteDir(target, 0o644)
				t.Fatalf("Fetch succeeded (WriteDir: %v)", err)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), loc.Dir) {
				t.Fatalf("Fetch = %v\nwant %q and the location", err, c.want)
			}
			if ents, _ := os.ReadDir(target); len(ents) != 1 {
				t.Error("the target changed")
			}
		})
	}
	// The unmodified layout fetches (the cases fail for their reason).
	if _, err := Fetch(context.Background(), craft(t, b, nil, nil, nil), "6.1.0-1-amd64", "amd64", WithTrustedCerts(k.Cert)); err != nil {
		t.Fatal(err)
	}
}

func TestConfigRefuses(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	good, err := newBundle(t, "6.1.0-1-amd64", k).Config.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConfig(good); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(string) string{
		"duplicate key": func(s string) string {
			return strings.Replace(s, `"schemaVersion": 1,`, `"schemaVersion": 1, "schemaVersion": 1,`, 1)
		},
		"trailing": func(s string) string { return s + "{}" },
		"unknown": func(s string) string {
			return strings.Replace(s, `"schemaVersion": 1,`, `"schemaVersion": 1, "x": 1,`, 1)
		},
		"bad release":    func(s string) string { return strings.Replace(s, `"6.1.0-1-amd64"`, `"6.1 0"`, 1) },
		"order unknown":  func(s string) string { return strings.Replace(s, `"order": [`, `"order": ["nope",`, 1) },
		"cert not found": func(s string) string { return strings.Replace(s, `"cert_sha256": "`, `"cert_sha256": "0`, 1) },
	} {
		if _, err := ParseConfig([]byte(mut(string(good)))); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: ParseConfig = %v", name, err)
		}
	}
}

// TestOptionsRefuse: an option with an unusable argument is an error from
// the option, not a silent default.
func TestOptionsRefuse(t *testing.T) {
	for name, opt := range map[string]Option{
		"WithAuth(nil)":       WithAuth(nil),
		"WithKeychain(nil)":   WithKeychain(nil),
		"WithProgress(nil)":   WithProgress(nil),
		"WithUserAgent(\"\")": WithUserAgent(""),
		"WithTransport(nil)":  WithTransport(nil),
		"WithJobs(0)":         WithJobs(0),
		"WithRetries(-1)":     WithRetries(-1),
	} {
		if _, err := makeOptions([]Option{opt}); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	for name, opt := range map[string]CreateOption{
		"WithName(control)":    WithName("a\x01"),
		"WithVersion(control)": WithVersion("1\n"),
	} {
		if err := opt(&createOptions{}); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
