package manifest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// testCert is a certificate made in the test, no fixture needed.
func testCert(t testing.TB) *x509.Certificate {
	t.Helper()
	return sigtest.GoKey(t, "ec:P-256").Cert
}

// sample is a small valid manifest with kernels out of order.
func sample(t testing.TB) *Manifest {
	t.Helper()
	c := NewCertificate(testCert(t))
	mod := func(name, rel string, i int) Module {
		return Module{
			Name: name, Version: "1.0", Path: "/lib/modules/" + rel + "/updates/" + name + ".ko.xz",
			SHA256: sum([]byte(name + rel)), Srcversion: "ABCDEF0123456789ABCDEF0", Vermagic: rel + " SMP mod_unload",
			Signer: "kmodctl <test>", SigKey: "12:34", CertSHA256: c.SHA256,
			InitramfsSHA256: sum([]byte(fmt.Sprint(i))), Early: i == 0, Load: true,
			Source: Source{Kind: SourcePackage, Name: "dkms-" + name, Version: "1.0-1", Digest: "sha256:" + sum([]byte(name))},
		}
	}
	return &Manifest{
		Version:      Version,
		Generator:    "packer-plugin-kmod test & <co>",
		Certificates: []Certificate{c},
		Kernels: []Kernel{
			{Release: "6.1.0-10-amd64", Modules: []Module{mod("zfs", "6.1.0-10-amd64", 0), mod("spl", "6.1.0-10-amd64", 1)}},
			{Release: "6.1.0-9-amd64", Modules: []Module{mod("zfs", "6.1.0-9-amd64", 0)}},
			{Release: "5.10.0-28-amd64", Modules: []Module{{Name: "nvidia", Path: "/lib/modules/5.10.0-28-amd64/updates/nvidia.ko", SHA256: sum(nil)}}},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	m := sample(t)
	before := fmt.Sprint(m.Kernels)
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m.Kernels) != before {
		t.Error("Marshal changed its receiver")
	}
	if !bytes.HasSuffix(data, []byte("}\n")) || !bytes.HasPrefix(data, []byte("{\n  \"version\": 1,\n")) {
		t.Errorf("not indented with a trailing newline:\n%s", data)
	}
	if !bytes.Contains(data, []byte(`"generator": "packer-plugin-kmod test & <co>"`)) {
		t.Errorf("HTML escaping in the output:\n%s", data)
	}
	back, err := Unmarshal(data)
	if err != nil {
		t.Fatalf("Unmarshal: %v\n%s", err, data)
	}
	var releases []string
	for _, k := range back.Kernels {
		releases = append(releases, k.Release)
	}
	if want := []string{"5.10.0-28-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"}; !reflect.DeepEqual(releases, want) {
		t.Errorf("kernels in order %v, want %v", releases, want)
	}
	want := *m
	want.Kernels = []Kernel{m.Kernels[2], m.Kernels[1], m.Kernels[0]}
	if !reflect.DeepEqual(*back, want) {
		t.Errorf("round trip differs:\n got %+v\nwant %+v", *back, want)
	}
	again, err := back.Marshal()
	if err != nil || !bytes.Equal(again, data) {
		t.Errorf("Marshal(Unmarshal(x)) != x (%v)", err)
	}
	k, ok := back.Kernel("6.1.0-10-amd64")
	if !ok || len(k.Modules) != 2 || k.Modules[0].Name != "zfs" || k.Modules[1].Name != "spl" {
		t.Errorf("Kernel(6.1.0-10-amd64) = %+v, %v (modules must keep their order)", k, ok)
	}
	k.Modules[0].Load = false
	if back.Kernels[2].Modules[0].Load {
		t.Error("Kernel does not return the manifest's own entry")
	}
	if _, ok := back.Kernel("6.1.0-11-amd64"); ok {
		t.Error("Kernel found a missing release")
	}
}

// TestMarshalFormat pins the JSON of a small manifest: field names and
// order, omitted empty fields, base64 DER, empty lists as [].
func TestMarshalFormat(t *testing.T) {
	m := &Manifest{
		Certificates: []Certificate{{SHA256: sum([]byte{1, 2, 3}), Subject: "CN=x", DER: []byte{1, 2, 3}}},
		Kernels: []Kernel{
			{Release: "6.1.0-1-amd64", Modules: []Module{{
				Name: "m", Path: "/lib/modules/6.1.0-1-amd64/extra/m.ko", SHA256: sum(nil),
				SigKey: "AB", CertSHA256: sum([]byte{1, 2, 3}), Early: true,
				Source: Source{Kind: SourceBuilt, Name: "m-src"},
			}}},
			{Release: "6.1.0-2-amd64"},
		},
	}
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "version": 1,
  "certificates": [
    {
      "sha256": "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81",
      "subject": "CN=x",
      "der": "AQID"
    }
  ],
  "kernels": [
    {
      "release": "6.1.0-1-amd64",
      "modules": [
        {
          "name": "m",
          "path": "/lib/modules/6.1.0-1-amd64/extra/m.ko",
          "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
          "sig_key": "AB",
          "cert_sha256": "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81",
          "early": true,
          "load": false,
          "source": {
            "kind": "source",
            "name": "m-src"
          }
        }
      ]
    },
    {
      "release": "6.1.0-2-amd64",
      "modules": []
    }
  ]
}
`
	if string(data) != want {
		t.Errorf("Marshal:\n%s\nwant:\n%s", data, want)
	}
	empty, err := (&Manifest{}).Marshal()
	if err != nil || string(empty) != "{\n  \"version\": 1,\n  \"certificates\": [],\n  \"kernels\": []\n}\n" {
		t.Errorf("empty manifest: %q, %v", empty, err)
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	m := sample(t)
	m.Kernels[0].Modules[0].Path = "lib/x.ko"
	if _, err := m.Marshal(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "lib/x.ko") {
		t.Errorf("Marshal of a relative path: %v", err)
	}
	m = sample(t)
	m.Version = 2
	if _, err := m.Marshal(); !errors.Is(err, ErrVersion) {
		t.Errorf("Marshal of version 2: %v", err)
	}
}

// edit marshals the sample, lets f change the decoded JSON tree and
// returns the new JSON.
func edit(t *testing.T, f func(doc map[string]any)) []byte {
	t.Helper()
	data, err := sample(t).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	f(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func firstModule(doc map[string]any) map[string]any {
	return doc["kernels"].([]any)[1].(map[string]any)["modules"].([]any)[0].(map[string]any)
}

func TestUnmarshalStrict(t *testing.T) {
	valid, err := sample(t).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		data  []byte
		is    error
		wants []string
	}{
		{"version 2", edit(t, func(d map[string]any) { d["version"] = 2; d["new_field"] = true }), ErrVersion, []string{"version 2", "reads version 1"}},
		{"version 0", edit(t, func(d map[string]any) { d["version"] = 0 }), ErrVersion, []string{"version 0"}},
		{"version string", edit(t, func(d map[string]any) { d["version"] = "1" }), ErrVersion, []string{`"1"`}},
		{"version float", []byte(`{"version": 1.5, "certificates": [], "kernels": []}`), ErrVersion, []string{"1.5"}},
		{"no version", edit(t, func(d map[string]any) { delete(d, "version") }), ErrInvalid, []string{"no version"}},
		{"unknown field", edit(t, func(d map[string]any) { d["extra"] = 1 }), ErrInvalid, []string{`"extra"`}},
		{"unknown module field", edit(t, func(d map[string]any) { firstModule(d)["license"] = "GPL" }), ErrInvalid, []string{`"license"`}},
		{"unknown source field", edit(t, func(d map[string]any) { firstModule(d)["source"].(map[string]any)["url"] = "x" }), ErrInvalid, []string{`"url"`}},
		{"upper-case key", bytes.Replace(valid, []byte(`"generator"`), []byte(`"Generator"`), 1), ErrInvalid, []string{`"Generator"`}},
		{"duplicate key", bytes.Replace(valid, []byte(`"version": 1,`), []byte(`"version": 1, "version": 1,`), 1), ErrInvalid, []string{"duplicate", `"version"`}},
		{"duplicate module key", bytes.Replace(valid, []byte(`"name": "nvidia",`), []byte(`"name": "nvidia", "name": "x",`), 1), ErrInvalid, []string{"duplicate", `"name"`}},
		{"trailing data", append(slices.Clone(valid), []byte(`{}`)...), ErrInvalid, []string{"after"}},
		{"not json", []byte(`version: 1`), ErrInvalid, nil},
		{"array", []byte(`[1]`), ErrInvalid, nil},
		{"too large", append(slices.Clone(valid), bytes.Repeat([]byte(" "), MaxSize)...), ErrInvalid, []string{"limit"}},
		{"wrong type", edit(t, func(d map[string]any) { firstModule(d)["early"] = "yes" }), ErrInvalid, []string{"early"}},
		{"bad sha256", edit(t, func(d map[string]any) { firstModule(d)["sha256"] = strings.Repeat("A", 64) }), ErrInvalid, []string{"sha256", "AAAA"}},
		{"short sha256", edit(t, func(d map[string]any) { firstModule(d)["sha256"] = "abc" }), ErrInvalid, []string{`"abc"`}},
		{"bad initramfs sha256", edit(t, func(d map[string]any) { firstModule(d)["initramfs_sha256"] = "x" }), ErrInvalid, []string{"initramfs_sha256"}},
		{"unlisted cert", edit(t, func(d map[string]any) { firstModule(d)["cert_sha256"] = sum([]byte("other")) }), ErrInvalid, []string{"cert_sha256", "not a listed certificate"}},
		{"cert checksum", edit(t, func(d map[string]any) {
			d["certificates"].([]any)[0].(map[string]any)["der"] = "AQID"
		}), ErrInvalid, []string{"certificates[0]", "not the SHA-256 of der"}},
		{"cert without der", edit(t, func(d map[string]any) { delete(d["certificates"].([]any)[0].(map[string]any), "der") }), ErrInvalid, []string{"der"}},
		{"duplicate cert", edit(t, func(d map[string]any) {
			d["certificates"] = append(d["certificates"].([]any), d["certificates"].([]any)[0])
		}), ErrInvalid, []string{"listed twice"}},
		{"relative path", edit(t, func(d map[string]any) { firstModule(d)["path"] = "lib/modules/x.ko" }), ErrInvalid, []string{"not absolute"}},
		{"unclean path", edit(t, func(d map[string]any) { firstModule(d)["path"] = "/lib/modules/../../etc/x.ko" }), ErrInvalid, []string{"not a clean"}},
		{"control character", edit(t, func(d map[string]any) { firstModule(d)["signer"] = "a\nb" }), ErrInvalid, []string{"signer", "control"}},
		{"bad module name", edit(t, func(d map[string]any) { firstModule(d)["name"] = "a b" }), ErrInvalid, []string{`"a b"`}},
		{"bad release", edit(t, func(d map[string]any) { d["kernels"].([]any)[0].(map[string]any)["release"] = "../6.1" }), ErrInvalid, []string{`"../6.1"`}},
		{"duplicate kernel", edit(t, func(d map[string]any) {
			d["kernels"] = append(d["kernels"].([]any), d["kernels"].([]any)[0])
		}), ErrInvalid, []string{"5.10.0-28-amd64", "twice"}},
		{"duplicate module", edit(t, func(d map[string]any) {
			k := d["kernels"].([]any)[2].(map[string]any)
			m := map[string]any{}
			for key, v := range k["modules"].([]any)[0].(map[string]any) {
				m[key] = v
			}
			m["name"] = "zfs"
			k["modules"] = append(k["modules"].([]any), m)
		}), ErrInvalid, []string{"zfs", "twice"}},
		{"bad source kind", edit(t, func(d map[string]any) { firstModule(d)["source"].(map[string]any)["kind"] = "git" }), ErrInvalid, []string{`"git"`}},
		{"source without kind", edit(t, func(d map[string]any) { firstModule(d)["source"] = map[string]any{"name": "x"} }), ErrInvalid, []string{"without a kind"}},
		{"bad digest", edit(t, func(d map[string]any) { firstModule(d)["source"].(map[string]any)["digest"] = "deadbeef" }), ErrInvalid, []string{"digest"}},
		{"too many kernels", edit(t, func(d map[string]any) {
			var ks []any
			for i := range MaxKernels + 1 {
				ks = append(ks, map[string]any{"release": fmt.Sprintf("6.1.%d", i), "modules": []any{}})
			}
			d["kernels"] = ks
		}), ErrInvalid, []string{"65 kernels"}},
		{"too deep", []byte(`{"version": 1, "kernels": [[[[[[[[[1]]]]]]]]]}`), ErrInvalid, []string{"deeper"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Unmarshal(tc.data)
			if err == nil {
				t.Fatalf("accepted: %+v", m)
			}
			if !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	// Null lists are accepted as empty; whitespace around the document too.
	m, err := Unmarshal([]byte(" {\"version\": 1, \"certificates\": null, \"kernels\": [{\"release\": \"6.1.0\", \"modules\": null}]}\n\n"))
	if err != nil || len(m.Kernels) != 1 {
		t.Errorf("null lists: %v", err)
	}
}

func TestCompareReleases(t *testing.T) {
	ordered := []string{
		"4.19.0-27-amd64",
		"5.4",
		"5.10.0-9-amd64",
		"5.10.0-10-amd64",
		"5.10.0-28-amd64",
		"6.1~rc1",
		"6.1",
		"6.1.0",
		"6.1.0-9-amd64",
		"6.1.0-9-cloud-amd64",
		"6.1.0-10-amd64",
		"6.1.0-10-cloud-amd64",
		"6.1.0-56-amd64",
		"6.12.9+bpo-amd64",
		"6.12.10+deb13-amd64",
		"6.12.10-amd64",
	}
	for i := range ordered {
		for j := range ordered {
			c := CompareReleases(ordered[i], ordered[j])
			if (i < j && c >= 0) || (i > j && c <= 0) || (i == j && c != 0) {
				t.Errorf("CompareReleases(%q, %q) = %d", ordered[i], ordered[j], c)
			}
		}
	}
	if CompareReleases("6.01", "6.1") == 0 {
		t.Error("distinct releases compare equal")
	}
	shuffled := slices.Clone(ordered)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	slices.SortFunc(shuffled, CompareReleases)
	if !reflect.DeepEqual(shuffled, ordered) {
		t.Errorf("sorted: %v", shuffled)
	}
}

// modinfoField runs the real modinfo for a field of a module file.
func modinfoField(t *testing.T, path, field string) string {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, "modinfo"), "-F", field, path).Output()
	if err != nil {
		t.Fatalf("modinfo -F %s %s: %v", field, path, err)
	}
	return strings.TrimSpace(string(out))
}

func TestModuleFromFileUnsigned(t *testing.T) {
	path := fixture.TestModule(t, "kmodtest_base")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const image = "/lib/modules/6.1.0-56-amd64/updates/kmodtest_base.ko"
	mod, err := ModuleFromFile(path, image, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Module{
		Name:       "kmodtest_base",
		Version:    modinfoField(t, path, "version"),
		Path:       image,
		SHA256:     sum(data),
		Srcversion: modinfoField(t, path, "srcversion"),
		Vermagic:   modinfoField(t, path, "vermagic"),
	}
	// modinfo prints vermagic without its trailing blank.
	mod.Vermagic = strings.TrimSpace(mod.Vermagic)
	if !reflect.DeepEqual(mod, want) {
		t.Errorf("got  %+v\nwant %+v", mod, want)
	}
	if mod.Version == "" || mod.Srcversion == "" || mod.Vermagic == "" {
		t.Errorf("fields missing: %+v", mod)
	}
	if _, err := ModuleFromFile(path, "relative/x.ko", nil); err == nil {
		t.Error("relative image path accepted")
	}
	if _, err := ModuleFromFile(filepath.Join(t.TempDir(), "none.ko"), image, nil); err == nil {
		t.Error("missing file accepted")
	}
	notko := filepath.Join(t.TempDir(), "x.ko")
	os.WriteFile(notko, []byte("not a module"), 0o644)
	if _, err := ModuleFromFile(notko, image, nil); err == nil {
		t.Error("non-module accepted")
	}
}

func TestModuleFromFileSigned(t *testing.T) {
	path := fixture.TestModule(t, "kmodtest_dep")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	key := sigtest.GoKey(t, "rsa:2048")
	signer, err := kmod.NewSigner(key.Signer, key.Cert)
	if err != nil {
		t.Fatal(err)
	}
	signed, _, err := signer.SignBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	xz, err := compress.Compress(signed, compress.XZ)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, data := range map[string][]byte{"kmodtest_dep.ko": signed, "kmodtest_dep.ko.xz": xz} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Run(name, func(t *testing.T) {
			image := "/usr/lib/modules/6.1.0-56-amd64/updates/" + name
			mod, err := ModuleFromFile(p, image, []*x509.Certificate{testCert(t), key.Cert})
			if err != nil {
				t.Fatal(err)
			}
			if mod.Name != "kmodtest_dep" || mod.SHA256 != sum(data) || mod.Path != image {
				t.Errorf("got %+v", mod)
			}
			if want := modinfoField(t, p, "signer"); mod.Signer != want || want == "" {
				t.Errorf("signer %q, modinfo says %q", mod.Signer, want)
			}
			if want := modinfoField(t, p, "sig_key"); mod.SigKey != want || want == "" {
				t.Errorf("sig_key %q, modinfo says %q", mod.SigKey, want)
			}
			if want := NewCertificate(key.Cert).SHA256; mod.CertSHA256 != want {
				t.Errorf("cert_sha256 %q, want %q", mod.CertSHA256, want)
			}
			// Without certificates: described, not verified, no error.
			mod2, err := ModuleFromFile(p, image, nil)
			if err != nil || mod2.CertSHA256 != "" || mod2.Signer != mod.Signer || mod2.SigKey != mod.SigKey {
				t.Errorf("without certs: %+v, %v", mod2, err)
			}
			// With certificates that do not verify it: described, error.
			mod3, err := ModuleFromFile(p, image, []*x509.Certificate{testCert(t)})
			if !errors.Is(err, ErrNotVerified) {
				t.Errorf("with another certificate: error %v", err)
			}
			if mod3.Signer != mod.Signer || mod3.CertSHA256 != "" || mod3.SHA256 != mod.SHA256 {
				t.Errorf("with another certificate: %+v", mod3)
			}
			// What ModuleFromFile gives goes into a valid manifest.
			m := &Manifest{Certificates: []Certificate{NewCertificate(key.Cert)}, Kernels: []Kernel{{Release: "6.1.0-56-amd64", Modules: []Module{mod}}}}
			data, err := m.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Unmarshal(data); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// image builds a usr-merged image tree (lib -> /usr/lib, absolute as
// some images have it) holding the fixture test modules and returns its
// root and a manifest of them.
func image(t *testing.T) (string, *Manifest) {
	t.Helper()
	root := t.TempDir()
	const rel = "6.1.0-56-amd64"
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/modules", rel, "updates"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/lib", filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	m := &Manifest{Generator: "test"}
	k := Kernel{Release: rel}
	for _, name := range []string{"kmodtest_base", "kmodtest_dep", "kmodtest_param"} {
		src := fixture.TestModule(t, name)
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		imagePath := "/lib/modules/" + rel + "/updates/" + name + ".ko"
		if err := os.WriteFile(filepath.Join(root, "usr", imagePath), data, 0o644); err != nil {
			t.Fatal(err)
		}
		mod, err := ModuleFromFile(src, imagePath, nil)
		if err != nil {
			t.Fatal(err)
		}
		k.Modules = append(k.Modules, mod)
	}
	m.Kernels = []Kernel{k}
	return root, m
}

func TestCheck(t *testing.T) {
	root, m := image(t)
	if mm := m.Check(root); len(mm) != 0 {
		t.Fatalf("untouched image: %v", mm)
	}
	// The manifest survives a round trip and still matches.
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m, err = Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if mm := m.Check(root); len(mm) != 0 {
		t.Fatalf("after round trip: %v", mm)
	}

	mods := m.Kernels[0].Modules
	host := func(i int) string { return filepath.Join(root, "usr", mods[i].Path) }
	// Tamper with one byte of the first module, remove the second, and
	// put a folder in place of the third.
	data, err = os.ReadFile(host(0))
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(host(0), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(host(1)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(host(2)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(host(2), 0o755); err != nil {
		t.Fatal(err)
	}
	got := m.Check(root)
	want := []Mismatch{
		{Kernel: "6.1.0-56-amd64", Module: "kmodtest_base", Path: mods[0].Path, Want: mods[0].SHA256, Got: sum(data), Reason: MismatchDifferent},
		{Kernel: "6.1.0-56-amd64", Module: "kmodtest_dep", Path: mods[1].Path, Want: mods[1].SHA256, Reason: MismatchMissing},
		{Kernel: "6.1.0-56-amd64", Module: "kmodtest_param", Path: mods[2].Path, Want: mods[2].SHA256, Reason: MismatchNotRegular},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Check:\n got %v\nwant %v", got, want)
	}
	if s := got[0].String(); !strings.Contains(s, "kmodtest_base") || !strings.Contains(s, sum(data)) {
		t.Errorf("String() = %q", s)
	}
}

// TestCheckStaysInRoot: a module path that is a symbolic link out of
// the image is followed inside the image, not on the host.
func TestCheckStaysInRoot(t *testing.T) {
	root, m := image(t)
	mod := m.Kernels[0].Modules[0]
	host := filepath.Join(root, "usr", mod.Path)
	outside := filepath.Join(t.TempDir(), "same.ko")
	data, _ := os.ReadFile(host)
	os.WriteFile(outside, data, 0o644)
	os.Remove(host)
	if err := os.Symlink(outside, host); err != nil {
		t.Fatal(err)
	}
	got := m.Check(root)
	if len(got) != 1 || got[0].Reason != MismatchMissing {
		t.Errorf("a link out of the image was followed: %v", got)
	}
	// A relative link inside the image is fine.
	os.Remove(host)
	inside := filepath.Join(root, "usr/lib/modules/copy.ko")
	os.WriteFile(inside, data, 0o644)
	if err := os.Symlink("../../copy.ko", host); err != nil {
		t.Fatal(err)
	}
	if got := m.Check(root); len(got) != 0 {
		t.Errorf("relative link inside the image: %v", got)
	}
}

// The published bundles are an optional part of version 1: a manifest
// without them reads as before, one with them round-trips, and a
// reference that does not name its digest is refused.
func TestBundles(t *testing.T) {
	m := sample(t)
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(`"bundles"`)) {
		t.Error("a manifest without bundles writes the key")
	}
	d := "sha256:" + strings.Repeat("ab", 32)
	m.Bundles = []Bundle{{Release: "6.12.118+deb12-amd64", Arch: "amd64", Reference: "registry.example/kmod/x@" + d, Digest: d}}
	data, err = m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Unmarshal(data)
	if err != nil || len(back.Bundles) != 1 || back.Bundles[0] != m.Bundles[0] {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for name, b := range map[string]Bundle{
		"other digest": {Release: "6.1.0-1-amd64", Arch: "amd64", Reference: "r/x@sha256:" + strings.Repeat("cd", 32), Digest: d},
		"bad arch":     {Release: "6.1.0-1-amd64", Arch: "AMD 64", Reference: "r/x@" + d, Digest: d},
		"bad release":  {Release: "6.1 0", Arch: "amd64", Reference: "r/x@" + d, Digest: d},
	} {
		m.Bundles = []Bundle{b}
		if _, err := m.Marshal(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Marshal = %v", name, err)
		}
	}
}

// The initramfs record is an optional part of version 1 like the bundles:
// a manifest without it reads as before and does not write the key, one
// with it round-trips, InitramfsFromFile describes the file, and a record
// breaking a rule is refused, naming the field.
func TestInitramfsRecord(t *testing.T) {
	m := sample(t)
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(`"initramfs"`)) {
		t.Error("a manifest without the record writes the key")
	}
	img := filepath.Join(t.TempDir(), "initrd.img")
	content := []byte("07070100000000...not really an initramfs, but bytes all the same")
	if err := os.WriteFile(img, content, 0o644); err != nil {
		t.Fatal(err)
	}
	rec, err := InitramfsFromFile(img, "/boot/initrd.img-6.1.0-9-amd64")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Initramfs{Path: "/boot/initrd.img-6.1.0-9-amd64", Size: int64(len(content)), SHA256: sum(content)}); *rec != want {
		t.Fatalf("InitramfsFromFile = %+v, want %+v", *rec, want)
	}
	m.Kernels[0].Initramfs = rec
	if data, err = m.Marshal(); err != nil {
		t.Fatal(err)
	}
	back, err := Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := back.Kernel(m.Kernels[0].Release); !ok || k.Initramfs == nil || *k.Initramfs != *rec {
		t.Fatalf("round trip: %+v", k)
	}
	for name, c := range map[string]struct{ host, image string }{
		"a relative image path": {img, "boot/initrd.img"},
		"a folder":              {t.TempDir(), "/boot/initrd.img"},
		"a missing file":        {img + ".missing", "/boot/initrd.img"},
	} {
		if _, err := InitramfsFromFile(c.host, c.image); err == nil {
			t.Errorf("InitramfsFromFile of %s: no error", name)
		}
	}
	for name, c := range map[string]struct {
		rec   Initramfs
		field string
	}{
		"relative path":  {Initramfs{Path: "boot/initrd.img", SHA256: rec.SHA256}, "initramfs path"},
		"unclean path":   {Initramfs{Path: "/boot/../initrd.img", SHA256: rec.SHA256}, "initramfs path"},
		"negative size":  {Initramfs{Path: rec.Path, Size: -1, SHA256: rec.SHA256}, "initramfs size"},
		"short sha256":   {Initramfs{Path: rec.Path, SHA256: rec.SHA256[:63]}, "initramfs sha256"},
		"upper sha256":   {Initramfs{Path: rec.Path, SHA256: strings.ToUpper(rec.SHA256)}, "initramfs sha256"},
		"missing sha256": {Initramfs{Path: rec.Path}, "initramfs sha256"},
	} {
		m.Kernels[0].Initramfs = &c.rec
		_, err := m.Marshal()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.field) || !strings.Contains(err.Error(), m.Kernels[0].Release) {
			t.Errorf("%s: Marshal = %v", name, err)
		}
	}
	// Unknown keys in the record are refused like anywhere else.
	doc := edit(t, func(doc map[string]any) {
		k := doc["kernels"].([]any)[0].(map[string]any)
		k["initramfs"] = map[string]any{"path": rec.Path, "size": rec.Size, "sha256": rec.SHA256, "mtime": 1}
	})
	if _, err := Unmarshal(doc); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown key in the record: %v", err)
	}
}
