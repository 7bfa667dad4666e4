package bundle

import (
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// seedConfig is a valid config for the fuzz corpus.
func seedConfig() []byte {
	c := Config{SchemaVersion: SchemaVersion, Kernel: Kernel{Release: "6.1.0-1-amd64", Arch: "amd64"},
		Certificates: []Certificate{{SHA256: "aa0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd", Subject: "CN=x", File: "cert-aa.der"}},
		Modules: []Module{{Name: "m", File: "m.ko", SHA256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
			CertSHA256: "aa0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd", Load: true, Depends: []string{"n"},
			Source: manifest.Source{Kind: manifest.SourceBuilt, Digest: "sha256:00"}}},
		Load: Load{Order: []string{"m"}, Options: map[string]string{"m": "x=1"}, Softdeps: map[string]string{"m": "pre: n"}}}
	b, err := c.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzParseConfig: arbitrary bytes never panic, and what parses
// re-encodes to a config that parses to the same thing.
func FuzzParseConfig(f *testing.F) {
	f.Add(seedConfig())
	f.Add([]byte(`{"schemaVersion":1}`))
	f.Add([]byte(`{"schemaVersion":1,"schemaVersion":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		again, err := c.Marshal()
		if err != nil {
			t.Fatalf("a parsed config does not marshal: %v", err)
		}
		c2, err := ParseConfig(again)
		if err != nil {
			t.Fatalf("a marshalled config does not parse: %v", err)
		}
		third, err := c2.Marshal()
		if err != nil || string(third) != string(again) {
			t.Fatalf("round trip changed the config (%v):\n%s\n%s", err, again, third)
		}
	})
}

// FuzzParseManifest and FuzzParseIndex: arbitrary bytes never panic; an
// accepted manifest has valid, unique titles and known media types.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.kmodctl.bundle.v1",` +
		`"config":{"mediaType":"application/vnd.kmodctl.bundle.config.v1+json","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size":10},` +
		`"layers":[{"mediaType":"application/vnd.kmodctl.module.v1","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size":3,"annotations":{"org.opencontainers.image.title":"m.ko"}}],` +
		`"annotations":{"io.kmodctl.kernel.release":"6.1.0-1-amd64","io.kmodctl.arch":"amd64"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		mf, err := ParseManifest(data, DefaultLimits)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, l := range mf.Layers {
			title := l.Annotations[AnnotationTitle]
			if CheckFileName(title) != nil || seen[title] {
				t.Fatalf("accepted title %q", title)
			}
			seen[title] = true
			if l.MediaType != ModuleMediaType && l.MediaType != CertMediaType {
				t.Fatalf("accepted media type %q", l.MediaType)
			}
		}
	})
}

func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size":10,"platform":{"os":"linux","architecture":"amd64"},` +
		`"annotations":{"io.kmodctl.kernel.release":"6.12.1+deb12-amd64","io.kmodctl.arch":"amd64"}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, es, err := ParseIndex(data, DefaultLimits)
		if err != nil {
			return
		}
		for _, e := range es {
			if CheckRelease(e.Release) != nil || CheckArch(e.Arch) != nil {
				t.Fatalf("accepted entry %+v", e)
			}
		}
	})
}

// FuzzKernelTag: every release gives a valid tag.
func FuzzKernelTag(f *testing.F) {
	f.Add("6.12.118+deb12-amd64", "amd64")
	f.Fuzz(func(t *testing.T, release, arch string) {
		if CheckRelease(release) != nil || CheckArch(arch) != nil {
			return
		}
		if tag := KernelTag(release, arch); !ValidTag(tag) {
			t.Fatalf("KernelTag(%q, %q) = %q", release, arch, tag)
		}
	})
}
