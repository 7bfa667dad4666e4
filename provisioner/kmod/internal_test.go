package kmod

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

func TestPrepareErrors(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "cert.pem")
	key := filepath.Join(dir, "key.pem")
	ko := filepath.Join(dir, "x.ko")
	for _, p := range []string{cert, key, ko} {
		os.WriteFile(p, []byte("x"), 0o600)
	}
	base := func() map[string]interface{} {
		return map[string]interface{}{"signing_cert": cert, "signing_key": key, "module": []map[string]interface{}{{"prebuilt": []string{ko}}}}
	}
	cases := []struct {
		name string
		mod  func(m map[string]interface{})
		want string
	}{
		{"no modules", func(m map[string]interface{}) { delete(m, "module") }, "at least one module block"},
		{"two kinds", func(m map[string]interface{}) {
			m["module"] = []map[string]interface{}{{"prebuilt": []string{ko}, "package": "x-dkms"}}
		}, "module[0]: exactly one of source, package, prebuilt and bundle"},
		{"missing source", func(m map[string]interface{}) {
			m["module"] = []map[string]interface{}{{"source": "/nonexistent/src"}}
		}, "module[0].source"},
		{"bad package", func(m map[string]interface{}) {
			m["module"] = []map[string]interface{}{{"package": "x; rm -rf /"}}
		}, "module[0].package"},
		{"no key", func(m map[string]interface{}) { delete(m, "signing_key") }, "one of signing_key and signing_key_pem"},
		{"allowed_from_catalog without catalog", func(m map[string]interface{}) { m["allowed_from_catalog"] = true }, "allowed_from_catalog needs the catalog block"},
		{"catalog over http", func(m map[string]interface{}) {
			m["catalog"] = map[string]interface{}{"url": "http://cat:8443", "token": "t"}
		}, "catalog.url"},
		{"catalog without token", func(m map[string]interface{}) {
			m["catalog"] = map[string]interface{}{"url": "https://cat:8443"}
		}, "catalog: token or token_file is required"},
		{"catalog on_error", func(m map[string]interface{}) {
			m["catalog"] = map[string]interface{}{"url": "https://cat:8443", "token": "t", "on_error": "ignore"}
		}, "catalog.on_error"},
		{"report token without url", func(m map[string]interface{}) {
			m["firstboot"] = map[string]interface{}{"report_token_file": "/etc/kmodctl/t"}
		}, "firstboot.report_token_file needs report_url"},
		{"report without token", func(m map[string]interface{}) {
			m["firstboot"] = map[string]interface{}{"report_url": "https://cat:8443"}
		}, "token_file: missing"},
		{"report token relative", func(m map[string]interface{}) {
			m["firstboot"] = map[string]interface{}{"report_url": "https://cat:8443", "report_token_file": "t"}
		}, "absolute, clean path"},
		{"both keys", func(m map[string]interface{}) { m["signing_key_pem"] = "x" }, "mutually exclusive"},
		{"no cert", func(m map[string]interface{}) { delete(m, "signing_cert") }, "signing_cert is required"},
		{"hash", func(m map[string]interface{}) { m["signing_hash"] = "md5" }, "signing_hash"},
		{"allow", func(m map[string]interface{}) { m["allowed_sha256"] = []string{"abc"} }, "allowed_sha256"},
		{"initramfs", func(m map[string]interface{}) { m["initramfs"] = "rebuild" }, "initramfs"},
		{"kernels", func(m map[string]interface{}) { m["kernels"] = []string{"installed", "6.1.0-9-amd64"} }, "cannot be combined"},
		{"kernel name", func(m map[string]interface{}) { m["kernels"] = []string{"6.1 amd64"} }, "is not a kernel release"},
		{"remove deps", func(m map[string]interface{}) { m["remove_build_dependencies"] = true }, "needs install_dependencies"},
		{"profile", func(m map[string]interface{}) { m["profiles"] = []string{"aws", "oracle"} }, "oracle"},
		{"bundle and prebuilt", func(m map[string]interface{}) {
			m["module"] = []map[string]interface{}{{"prebuilt": []string{ko}, "bundle": "registry.example/kmod/x:1"}}
		}, "exactly one of source, package, prebuilt and bundle"},
		{"bundle reference", func(m map[string]interface{}) {
			m["module"] = []map[string]interface{}{{"bundle": "Registry/UPPER case"}}
		}, "module[0].bundle"},
		{"trusted certs", func(m map[string]interface{}) { m["trusted_certs"] = []string{"/nonexistent/cert.pem"} }, "trusted_certs"},
		{"publish repository", func(m map[string]interface{}) { m["publish"] = map[string]interface{}{"tag": "v1"} }, "publish.repository is required"},
		{"publish with a tag", func(m map[string]interface{}) {
			m["publish"] = map[string]interface{}{"repository": "registry.example:5000/kmod/x:v1"}
		}, "without a tag or digest"},
		{"publish tag", func(m map[string]interface{}) {
			m["publish"] = map[string]interface{}{"repository": "registry.example/kmod/x", "tag": "a+b"}
		}, "publish.tag"},
		{"publish token and user", func(m map[string]interface{}) {
			m["publish"] = map[string]interface{}{"repository": "registry.example/kmod/x", "token": "t", "username": "u", "password": "p"}
		}, "publish: token and username/password are mutually exclusive"},
		{"publish user alone", func(m map[string]interface{}) {
			m["publish"] = map[string]interface{}{"repository": "registry.example/kmod/x", "username": "u"}
		}, "publish: username needs password"},
		{"publish ca file", func(m map[string]interface{}) {
			m["publish"] = map[string]interface{}{"repository": "registry.example/kmod/x", "ca_file": "/nonexistent/ca.pem"}
		}, "publish.ca_file"},
		{"cache repository", func(m map[string]interface{}) { m["cache"] = map[string]interface{}{"plain_http": true} }, "cache.repository is required"},
		{"registry password alone", func(m map[string]interface{}) { m["registry"] = map[string]interface{}{"password": "p"} }, "registry: password needs username"},
		{"pull without bundle", func(m map[string]interface{}) { m["firstboot"] = map[string]interface{}{"on_uncovered": "pull"} }, `on_uncovered = "pull" needs bundle`},
		{"bundle without pull", func(m map[string]interface{}) {
			m["firstboot"] = map[string]interface{}{"bundle": "registry.example/kmod/x:1"}
		}, `firstboot.bundle needs on_uncovered = "pull"`},
		{"pull failure policy", func(m map[string]interface{}) {
			m["firstboot"] = map[string]interface{}{"on_uncovered": "pull", "bundle": "registry.example/kmod/x:1", "on_uncovered_failure": "maybe"}
		}, `firstboot.on_uncovered_failure "maybe"`},
		{"pull auth file", func(m map[string]interface{}) {
			m["firstboot"] = map[string]interface{}{"on_uncovered": "pull", "bundle": "registry.example/kmod/x:1", "registry_auth_file": "relative/auth.json"}
		}, "registry_auth_file"},
		{"pull ca file", func(m map[string]interface{}) {
			m["firstboot"] = map[string]interface{}{"on_uncovered": "pull", "bundle": "registry.example/kmod/x:1", "ca_file": "/nonexistent/ca.pem"}
		}, "firstboot.ca_file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := base()
			c.mod(raw)
			var cfg Config
			err := cfg.Prepare(raw)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Prepare = %v, want an error containing %q", err, c.want)
			}
		})
	}
	var cfg Config
	if err := cfg.Prepare(base()); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if cfg.Initramfs != "inject" || cfg.SigningHash != "sha256" || cfg.Kernels[0] != "installed" || !*cfg.Modules[0].Load {
		t.Errorf("defaults: %+v", cfg)
	}
	raw := base()
	raw["publish"] = map[string]interface{}{"repository": "oci:" + dir + "/layout", "password": "s3cret-value", "username": "u"}
	var pc Config
	if err := pc.Prepare(raw); err != nil || pc.Publish.Tag != "latest" {
		t.Errorf("publish defaults: %v, tag %q", err, pc.Publish.Tag)
	}
	if got := packersdk.LogSecretFilter.FilterString("password is s3cret-value"); strings.Contains(got, "s3cret-value") {
		t.Errorf("the registry password is not filtered from the log: %q", got)
	}
}

func TestTreeDigest(t *testing.T) {
	a := t.TempDir()
	os.WriteFile(filepath.Join(a, "f"), []byte("1"), 0o644)
	d1, err := treeDigest(a)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(a, "f"), []byte("2"), 0o644)
	d2, _ := treeDigest(a)
	if d1 == d2 || len(d1) != 64 {
		t.Errorf("digest did not change: %s %s", d1, d2)
	}
}
