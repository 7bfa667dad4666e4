package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// fuzzKernel is the running kernel of the fuzz tree, fuzzInitrd its
// initramfs.
const (
	fuzzKernel = "6.1.0-56-amd64"
	fuzzInitrd = "\x00\x00\x00\x00070701garbage"
)

// fuzzSeeds are manifests for the fuzz tree: valid ones whose modules
// exist (as non-modules: the checksum matches, the signature cannot) or
// differ, and broken ones.
func fuzzSeeds(t testing.TB, root string) [][]byte {
	cert := manifest.NewCertificate(sigtest.GoKey(t, "ec:P-256").Cert)
	file := []byte("not a kernel module\n")
	sum := sha256.Sum256(file)
	dir := "/lib/modules/" + fuzzKernel + "/updates/"
	for _, n := range []string{"a", "b"} {
		p := filepath.Join(root, dir, n+".ko")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, file, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, dir, "../modules.dep"), []byte("updates/a.ko:\nupdates/b.ko: updates/a.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Certificates: []manifest.Certificate{cert}, Kernels: []manifest.Kernel{
		{Release: fuzzKernel, Modules: []manifest.Module{
			{Name: "a", Path: dir + "a.ko", SHA256: hex.EncodeToString(sum[:]), CertSHA256: cert.SHA256, Load: true, Srcversion: "X"},
			{Name: "b", Path: dir + "b.ko", SHA256: strings.Repeat("0", 64), CertSHA256: cert.SHA256, Early: true, InitramfsSHA256: strings.Repeat("1", 64)},
			{Name: "c", Path: "/etc/passwd", SHA256: strings.Repeat("2", 64), Load: true},
		}},
		{Release: "6.1.0-57-amd64"},
	}}
	valid, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The initramfs record (fuzzInitrd's file): matching, and not.
	isum := sha256.Sum256([]byte(fuzzInitrd))
	m.Kernels[0].Initramfs = &manifest.Initramfs{Path: "/boot/initrd.img-" + fuzzKernel, Size: int64(len(fuzzInitrd)), SHA256: hex.EncodeToString(isum[:])}
	recorded, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	m.Kernels[0].Initramfs.SHA256 = strings.Repeat("3", 64)
	otherFile, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{
		valid,
		recorded,
		otherFile,
		[]byte(`{"version": 1, "certificates": [], "kernels": [{"release": "` + fuzzKernel + `", "modules": []}]}`),
		[]byte(`{"version": 2}`),
		[]byte(`{"version": 1, "certificates": [], "kernels": [{"release": "` + fuzzKernel + `", "modules": [{"name": "a", "path": "/../a.ko", "sha256": "` + hex.EncodeToString(sum[:]) + `", "early": false, "load": true}]}]}`),
		[]byte("[[[[[[[[[[[[[[[["),
		nil,
	}
}

// FuzzVerifyManifest feeds arbitrary bytes as the manifest to Verify and
// Run: they must not panic, and nothing may be loaded, since no module of
// the tree is a validly signed one.
func FuzzVerifyManifest(f *testing.F) {
	root := f.TempDir()
	for _, s := range fuzzSeeds(f, root) {
		f.Add(s)
	}
	mp := filepath.Join(root, manifest.Path)
	if err := os.MkdirAll(filepath.Dir(mp), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "boot"), 0o755); err != nil {
		f.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "boot/initrd.img-"+fuzzKernel), []byte(fuzzInitrd), 0o644)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(mp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		var calls []string
		o := Options{Root: root, Kernel: fuzzKernel, Lockdown: true, Now: func() time.Time { return testNow },
			Modprobe: func(_ context.Context, name string) error { calls = append(calls, name); return nil }}
		v, err := Verify(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if len(calls) != 0 {
			t.Fatalf("modprobe called for %v", calls)
		}
		for _, x := range []*VerifyResult{v, &r.VerifyResult} {
			if x.Verified != 0 || x.Total != len(x.Modules) || len(x.Drifted) != x.Total || x.Total > 0 && x.Status == StatusOK {
				t.Fatalf("verified %d of %d, drifted %v, status %s", x.Verified, x.Total, x.Drifted, x.Status)
			}
			if (x.ManifestError != "" || !x.Covered) && len(x.Modules) != 0 {
				t.Fatalf("modules of an unusable manifest or uncovered kernel: %v", x.Modules)
			}
		}
		if r.Loaded != 0 || v.Summary() == "" || r.Summary() == "" {
			t.Fatalf("loaded %d", r.Loaded)
		}
		if err := WriteReport(filepath.Join(root, "report.json"), r); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzParseSettings: the pull and catalog settings files (written by the
// provisioner, but read from a disk anyone with root on the image could
// edit) parse or fail, never panic, and what parses validates.
func FuzzParseSettings(f *testing.F) {
	f.Add([]byte(`{"bundle":"registry.example/kmod/fleet:fleet","registry_auth_file":"/etc/kmodctl/auth.json","on_failure":"warn"}`))
	f.Add([]byte(`{"url":"https://cat:8443","token_file":"/etc/kmodctl/t","ca_file":"/etc/kmodctl/ca.pem"}`))
	f.Add([]byte(`{"url":"https://cat:8443","token_file":"t"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := ParsePullConfig(data); err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("parsed pull settings do not validate: %v", err)
			}
		}
		if c, err := ParseReportConfig(data); err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("parsed catalog settings do not validate: %v", err)
			}
		}
	})
}
