package kmod_test

// Acceptance tests of the provisioner with registries: publish, bundle
// sources and the DKMS build cache, with the real Packer, the real plugin,
// the image's DKMS, Debian's docker-registry and oras.

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/packertest"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sshtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// registryBlock is the HCL of a registry's settings for the test registry.
func registryBlock(reg *registrytest.Registry) string {
	s := ""
	if reg.CAFile != "" {
		s += "    ca_file    = " + hcl(reg.CAFile) + "\n"
	} else {
		s += "    plain_http = true\n"
	}
	if reg.Username != "" {
		s += "    username   = " + hcl(reg.Username) + "\n    password   = var.registry_password\n"
	}
	return s
}

const passwordVar = `
variable "registry_password" {
  type      = string
  default   = ""
  sensitive = true
}
`

// TestAccKmodPublish: a kmod-image build of the DKMS image publishes its
// modules to a registry with TLS and htpasswd. The bundles' modules are
// the image's, oras pulls them, the manifest (in the image, manifest_output
// and next to the outputs) names the registry's digests, and the password
// never appears in Packer's output.
func TestAccKmodPublish(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageDKMSQcow2(t)
	reg := registrytest.Start(t, registrytest.Options{TLS: true, Auth: true})
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	manifestOut := filepath.Join(dir, "manifest.json")
	repo := reg.Ref("kmod/published")
	tpl := passwordVar + `
source "kmod-image" "kmod" {
  source_image     = ` + hcl(src) + `
  output_directory = ` + hcl(out) + `
  mount_path       = ` + hcl(filepath.Join(dir, "mnt")) + `
  output_name      = "kmod"
  output_formats   = ["raw"]
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.kmod"]
  provisioner "kmod" {
    signing_cert    = ` + hcl(key.CertPath) + `
    signing_key     = ` + hcl(key.KeyPath) + `
    manifest_output = ` + hcl(manifestOut) + `
    module {
      source = ` + hcl(markerSource(t)) + `
      early  = true
      load   = false
    }
    publish {
      repository = ` + hcl(repo) + `
      tag        = "build-1"
` + registryBlock(reg) + `    }
  }
}
`
	r := e.Start(t, dir, tpl, "-var", "registry_password="+reg.Password)
	output, err := r.Wait(t, 20*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err != nil {
		t.Fatalf("packer build: %v\n--- log tail ---\n%s", err, r.LogTail(60))
	}
	if strings.Contains(output, reg.Password) || strings.Contains(r.LogTail(100000), reg.Password) {
		t.Errorf("the registry password appears in Packer's output or log")
	}
	root := packertest.MountOutput(t, filepath.Join(out, "kmod.raw"))
	data, err := os.ReadFile(filepath.Join(root, manifest.Path))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []string{manifestOut, filepath.Join(out, "kmod-manifest.json")} {
		if b, err := os.ReadFile(other); err != nil || !bytes.Equal(b, data) {
			t.Errorf("%s differs from the image's manifest (%v)", other, err)
		}
	}
	if len(m.Bundles) != len(m.Kernels) || len(m.Bundles) == 0 {
		t.Fatalf("manifest bundles %+v for kernels %d", m.Bundles, len(m.Kernels))
	}
	loc, err := bundle.ParseLocation(repo+":build-1", false)
	if err != nil {
		t.Fatal(err)
	}
	opts := []bundle.Option{bundle.WithCAFile(reg.CAFile), bundle.WithBasicAuth(reg.Username, reg.Password)}
	es, err := bundle.List(context.Background(), loc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range m.Bundles {
		found := false
		for _, e := range es {
			found = found || e.Release == b.Release && e.Arch == b.Arch && e.Digest.String() == b.Digest
		}
		if !found || !strings.Contains(output, b.Reference) {
			t.Errorf("manifest bundle %+v: not in the registry's index %v, or not printed", b, es)
		}
		f, err := bundle.Fetch(context.Background(), loc, b.Release, b.Arch, append(opts, bundle.WithTrustedCerts(key.Cert))...)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := m.Kernel(b.Release)
		dirOras := t.TempDir()
		cmd := exec.Command(fixture.RepoTool(t, "oras"), "pull", "--ca-file", reg.CAFile, "--username", reg.Username, "--password", reg.Password,
			"-o", dirOras, repo+":"+bundle.KernelTag(b.Release, b.Arch))
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("oras pull: %v\n%s", err, o)
		}
		for _, mod := range k.Modules {
			inImage, err := os.ReadFile(filepath.Join(root, mod.Path))
			if err != nil {
				t.Fatal(err)
			}
			inBundle, _ := f.File(filepath.Base(mod.Path))
			byOras, _ := os.ReadFile(filepath.Join(dirOras, filepath.Base(mod.Path)))
			if !bytes.Equal(inImage, inBundle) || !bytes.Equal(inImage, byOras) {
				t.Errorf("%s: the image's file, the bundle's and oras's differ", mod.Path)
			}
			bm, ok := f.Config.Module(mod.Name)
			if !ok || bm.Early != mod.Early || bm.Load != mod.Load || bm.Source != mod.Source || bm.SHA256 != mod.SHA256 {
				t.Errorf("%s: bundle entry %+v, manifest entry %+v", mod.Name, bm, mod)
			}
		}
	}
}

// pushTestBundle pushes the fixture's kmodtest_base and kmodtest_dep,
// signed with k, as a bundle for release (amd64) to loc.
func pushTestBundle(t *testing.T, loc bundle.Location, release string, k *sigtest.Key, opts ...bundle.Option) {
	t.Helper()
	s, err := kmod.NewSigner(k.Signer, k.Cert)
	if err != nil {
		t.Fatal(err)
	}
	var in []bundle.ModuleInput
	for _, n := range []string{"kmodtest_base", "kmodtest_dep"} {
		data, err := os.ReadFile(fixture.TestModule(t, n))
		if err != nil {
			t.Fatal(err)
		}
		signed, _, err := s.SignBytes(data)
		if err != nil {
			t.Fatal(err)
		}
		in = append(in, bundle.ModuleInput{File: n + ".ko", Data: signed, Load: true,
			Source: manifest.Source{Kind: manifest.SourcePrebuilt, Name: n + ".ko"}})
	}
	b, err := bundle.New(release, "amd64", in, []*x509.Certificate{k.Cert}, bundle.WithLoad(bundle.Load{
		Order: []string{"kmodtest_base", "kmodtest_dep"}, Options: map[string]string{"kmodtest_base": "verbose=1"}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Push(context.Background(), loc, []*bundle.Bundle{b}, opts...); err != nil {
		t.Fatal(err)
	}
}

// TestAccKmodBundleSource: an image without dkms, a compiler or headers
// (the plain cloud image) takes its modules from a bundle; the boot check
// loads them. Then, over SSH: a bundle signed by another key fails before
// anything is installed, and so does a reference without the image's
// kernel, naming the kernel, the reference and the kernels it has.
func TestAccKmodBundleSource(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	src := fixture.CloudImageQcow2(t)
	kver := fixture.KVER(t)
	reg := registrytest.Start(t, registrytest.Options{})
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	good, _ := bundle.ParseLocation(reg.Ref("kmod/good:1"), true)
	pushTestBundle(t, good, kver, key, bundle.WithPlainHTTP())
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	body := func(ref string) string {
		return `
  provisioner "kmod" {
    signing_cert = ` + hcl(key.CertPath) + `
    signing_key  = ` + hcl(key.KeyPath) + `
    registry {
      plain_http = true
    }
    module {
      bundle = ` + hcl(ref) + `
    }
  }
`
	}
	tpl := `
source "kmod-image" "kmod" {
  source_image     = ` + hcl(src) + `
  output_directory = ` + hcl(out) + `
  mount_path       = ` + hcl(filepath.Join(dir, "mnt")) + `
  output_name      = "kmod"
  output_formats   = ["raw"]
  boot_check {
    expect_modules = ["kmodtest_base", "kmodtest_dep"]
  }
}
build {
  sources = ["source.kmod-image.kmod"]
` + body(good.String()) + `
}
`
	r := e.Start(t, dir, tpl)
	output, err := r.Wait(t, 20*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err != nil {
		t.Fatalf("packer build: %v\n--- log tail ---\n%s", err, r.LogTail(60))
	}
	if !strings.Contains(output, "Expected modules loaded: kmodtest_base, kmodtest_dep") {
		t.Errorf("the boot check did not confirm the bundle's modules")
	}
	if strings.Contains(output, "dkms build") {
		t.Errorf("dkms ran for a bundle source")
	}
	root := packertest.MountOutput(t, filepath.Join(out, "kmod.raw"))
	for _, p := range []string{"usr/sbin/dkms", "usr/bin/gcc", "usr/src/linux-headers-" + kver} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("/%s exists: the image was meant to have no DKMS toolchain", p)
		}
	}
	opts, _ := os.ReadFile(filepath.Join(root, "etc/modprobe.d/kmodctl-bundles.conf"))
	if !strings.Contains(string(opts), "options kmodtest_base verbose=1") {
		t.Errorf("the bundle's options are not in /etc/modprobe.d/kmodctl-bundles.conf:\n%s", opts)
	}
	m, err := manifest.Unmarshal(mustRead(t, filepath.Join(root, manifest.Path)))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Kernels) != 1 || len(m.Kernels[0].Modules) != 2 || m.Kernels[0].Modules[0].Source.Kind != manifest.SourcePrebuilt {
		t.Errorf("manifest %+v", m.Kernels)
	}

	// The failures, over SSH into a copy of the plain tree.
	other := sigtest.GoKey(t, "rsa:2048")
	bad, _ := bundle.ParseLocation(reg.Ref("kmod/otherkey:1"), true)
	pushTestBundle(t, bad, kver, other, bundle.WithPlainHTTP())
	lacking, _ := bundle.ParseLocation(reg.Ref("kmod/lacking:1"), true)
	pushTestBundle(t, lacking, "6.1.0-0-nosuch-amd64", key, bundle.WithPlainHTTP())
	for _, c := range []struct {
		name, ref string
		want      []string
	}{
		{"other key", bad.String(), []string{"module kmodtest_base", "signature not verified"}},
		{"lacking kernel", lacking.String(), []string{"has no bundle for kernel " + kver + "/amd64", "6.1.0-0-nosuch-amd64/amd64", lacking.String()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := sshtest.PrepareRoot(t, fixture.Rootfs(t))
			srv := sshtest.Start(t, root)
			dir := t.TempDir()
			r := e.Start(t, dir, sshSource(srv)+`
build {
  sources = ["source.null.ssh"]
`+body(c.ref)+`
}
`)
			output, err := r.Wait(t, 10*time.Minute)
			if err == nil {
				t.Fatalf("the build succeeded:\n%s", output)
			}
			for _, w := range c.want {
				if !strings.Contains(output, w) {
					t.Errorf("output lacks %q:\n%s", w, output)
				}
			}
			if ents, _ := os.ReadDir(filepath.Join(root, "lib/modules", kver, "updates")); len(ents) != 0 {
				t.Errorf("something was installed: %v", ents)
			}
			if _, err := os.Stat(filepath.Join(root, manifest.Path)); err == nil {
				t.Errorf("a manifest was written")
			}
		})
	}
}

// sshSource is a null source reaching srv over SSH.
func sshSource(srv *sshtest.Server) string {
	return `
source "null" "ssh" {
  communicator             = "ssh"
  ssh_host                 = ` + hcl(srv.Host) + `
  ssh_port                 = ` + itoa(srv.Port) + `
  ssh_username             = ` + hcl(srv.User) + `
  ssh_private_key_file     = ` + hcl(srv.KeyFile) + `
  ssh_file_transfer_method = "sftp"
}
`
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cacheBuild provisions a fresh copy of tree over SSH with the marker
// module from source (optionally with a cache) and returns Packer's output
// and the installed module's bytes.
func cacheBuild(t *testing.T, e *packertest.Env, tree, source string, key *sigtest.Key, cacheBlock string) (string, []byte) {
	t.Helper()
	root := sshtest.PrepareRoot(t, tree)
	srv := sshtest.Start(t, root)
	dir := t.TempDir()
	r := e.Start(t, dir, sshSource(srv)+`
build {
  sources = ["source.null.ssh"]
  provisioner "kmod" {
    signing_cert = `+hcl(key.CertPath)+`
    signing_key  = `+hcl(key.KeyPath)+`
    initramfs    = "none"
    module {
      source = `+hcl(source)+`
    }
`+cacheBlock+`
    firstboot {
      hook = "none"
    }
  }
}
`)
	output, err := r.Wait(t, 15*time.Minute)
	if err != nil {
		t.Fatalf("packer build: %v\n%s\n--- log tail ---\n%s", err, output, r.LogTail(40))
	}
	m, err := manifest.Unmarshal(mustRead(t, filepath.Join(root, manifest.Path)))
	if err != nil {
		t.Fatal(err)
	}
	return output, mustRead(t, filepath.Join(root, m.Kernels[0].Modules[0].Path))
}

// TestAccKmodCache: the second identical build takes the module from the
// cache (no dkms build); one changed source byte and another kernel miss;
// the cached file equals a fresh build's byte for byte; a dead registry
// degrades to building with a warning and makes publish fail clearly.
func TestAccKmodCache(t *testing.T) {
	t.Parallel()
	e := packertest.Setup(t)
	tree := fixture.RootfsDKMS(t)
	altTree := fixture.Path(t, "alt/rootfs-dkms")
	reg := registrytest.Start(t, registrytest.Options{})
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	cacheBlock := `
    cache {
      repository = ` + hcl(reg.Ref("kmod/cache")) + `
      plain_http = true
    }
`
	src := markerSource(t)
	out1, mod1 := cacheBuild(t, e, tree, src, key, cacheBlock)
	if !strings.Contains(out1, "cache miss for kmodtest-marker") || !strings.Contains(out1, "cache: stored kmodtest-marker") || !strings.Contains(out1, "dkms build") {
		t.Fatalf("first build: no miss, store and dkms build:\n%s", out1)
	}
	out2, mod2 := cacheBuild(t, e, tree, src, key, cacheBlock)
	if !strings.Contains(out2, "cache hit for kmodtest-marker") || strings.Contains(out2, "kmod: dkms build") {
		t.Fatalf("second build: no cache hit, or dkms built:\n%s", out2)
	}
	if !bytes.Equal(mod1, mod2) {
		t.Errorf("the cached module differs from the one the first build installed")
	}
	// One source byte changed: another key.
	changed := filepath.Join(t.TempDir(), "kmodtest-marker")
	if out, err := exec.Command("cp", "-rL", src, changed).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	c, err := os.ReadFile(filepath.Join(changed, "kmodtest_marker.c"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(changed, "kmodtest_marker.c"), append(c, '\n'), 0o644)
	out3, _ := cacheBuild(t, e, tree, changed, key, cacheBlock)
	if !strings.Contains(out3, "cache miss for kmodtest-marker") {
		t.Errorf("a changed source byte did not miss:\n%s", out3)
	}
	// Another kernel (the alternate fixture kernel): another key.
	out4, _ := cacheBuild(t, e, altTree, src, key, cacheBlock)
	if !strings.Contains(out4, "cache miss for kmodtest-marker") {
		t.Errorf("another kernel did not miss:\n%s", out4)
	}
	// A fresh build, without the cache, gives the cached bytes: DKMS output
	// is reproducible for this module (and RSA PKCS#1 v1.5 signing is
	// deterministic).
	_, fresh := cacheBuild(t, e, tree, src, key, "")
	if !bytes.Equal(fresh, mod2) {
		t.Errorf("a fresh build differs from the cached module (%d vs %d bytes)", len(fresh), len(mod2))
	}
	// The registry unreachable: the cache degrades to building, with a
	// warning; publish fails, naming the registry.
	dead := "127.0.0.1:1/kmod/cache"
	out5, _ := cacheBuild(t, e, tree, src, key, `
    cache {
      repository = "`+dead+`"
      plain_http = true
    }
`)
	if !strings.Contains(out5, "warning: cache lookup for kmodtest-marker") || !strings.Contains(out5, "dkms build") {
		t.Errorf("a dead cache did not degrade to building with a warning:\n%s", out5)
	}
	root := sshtest.PrepareRoot(t, tree)
	srv := sshtest.Start(t, root)
	r := e.Start(t, t.TempDir(), sshSource(srv)+`
build {
  sources = ["source.null.ssh"]
  provisioner "kmod" {
    signing_cert = `+hcl(key.CertPath)+`
    signing_key  = `+hcl(key.KeyPath)+`
    initramfs    = "none"
    module {
      source = `+hcl(src)+`
    }
    publish {
      repository = "127.0.0.1:1/kmod/published"
      plain_http = true
    }
  }
}
`)
	output, err := r.Wait(t, 15*time.Minute)
	if err == nil || !strings.Contains(output, "publish to 127.0.0.1:1/kmod/published:latest") || !strings.Contains(output, "connection refused") {
		t.Errorf("publish to a dead registry: %v\n%s", err, output)
	}
}
