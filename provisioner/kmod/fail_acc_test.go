package kmod_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/packertest"
	"github.com/kmodctl/packer-plugin-kmod/internal/qemutest"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
)

// patched writes a copy of a fixture test module with old replaced by new
// (same length) in its bytes.
func patched(t *testing.T, module, name, old, new string) string {
	t.Helper()
	if len(old) != len(new) {
		t.Fatalf("patch %q→%q changes the length", old, new)
	}
	data, err := os.ReadFile(fixture.TestModule(t, module))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("%s has no %q", module, old)
	}
	data = bytes.ReplaceAll(data, []byte(old), []byte(new))
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// failingBuild runs a kmod-image build of the DKMS fixture image (no boot
// check) with the given provisioner body and returns Packer's output; the
// build must fail, leave nothing attached and write no output image.
func failingBuild(t *testing.T, name, body string) string {
	t.Helper()
	e := packertest.Setup(t)
	src := fixture.CloudImageDKMSRaw(t)
	qemutest.Slot(t)
	key := sigtest.OpenSSLKey(t, "rsa:2048")
	before := packertest.SumFile(t, src)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	tpl := `
source "kmod-image" "` + name + `" {
  source_image     = ` + hcl(src) + `
  output_directory = ` + hcl(out) + `
  mount_path       = ` + hcl(filepath.Join(dir, "mnt")) + `
  output_formats   = ["raw"]
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.` + name + `"]
  provisioner "kmod" {
    signing_cert = ` + hcl(key.CertPath) + `
    signing_key  = ` + hcl(key.KeyPath) + `
` + body + `
  }
}
`
	r := e.Start(t, dir, tpl)
	output, err := r.Wait(t, 15*time.Minute)
	t.Logf("packer output:\n%s", output)
	if err == nil {
		t.Fatalf("the build succeeded")
	}
	packertest.CheckNoLeftovers(t, dir)
	if after := packertest.SumFile(t, src); after != before {
		t.Errorf("source image changed")
	}
	if ents, _ := os.ReadDir(out); len(ents) > 0 {
		t.Errorf("the failed build left outputs: %v", ents)
	}
	return output
}

func wantAll(t *testing.T, output string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(output, s) {
			t.Errorf("output lacks %q", s)
		}
	}
}

// TestAccKmodRejectsBadPrebuilt: one build with three bad modules reports
// all three, each with module, kernel and reason, and installs nothing.
func TestAccKmodRejectsBadPrebuilt(t *testing.T) {
	t.Parallel()
	kver := fixture.KVER(t)
	// Same length, other vermagic flags: the kernel refuses it.
	wrongMagic := patched(t, "kmodtest_base", "kmodtest_base.ko", " preempt ", " voluntr ")
	unresolved := fixture.TestModule(t, "kmodtest_unresolved")
	output := failingBuild(t, "badprebuilt", `
    module {
      prebuilt = [`+hcl(wrongMagic)+`]
    }
    module {
      prebuilt = [`+hcl(unresolved)+`]
    }
`)
	wantAll(t, output,
		"module kmodtest_base, kernel "+kver,
		"vermagic",
		"module kmodtest_unresolved, kernel "+kver,
		"kallsyms_lookup_name",
		"nothing installed",
	)
}

// TestAccKmodShadowsInTree: a module named like an in-tree module fails
// without replace_in_tree, naming the in-tree module.
func TestAccKmodShadowsInTree(t *testing.T) {
	t.Parallel()
	kver := fixture.KVER(t)
	// kmodtest_param renamed (same length) to Debian's in-tree
	// nls_iso8859_13 (fs/nls/nls_iso8859-13.ko).
	shadow := patched(t, "kmodtest_param", "nls_iso8859_13.ko", "name=kmodtest_param", "name=nls_iso8859_13")
	output := failingBuild(t, "shadow", `
    module {
      prebuilt = [`+hcl(shadow)+`]
    }
`)
	wantAll(t, output, "module nls_iso8859_13, kernel "+kver, "shadows the in-tree module nls_iso8859_13", "replace_in_tree")
}

// TestAccKmodAllowlistMiss: a module whose digest is not allowed.
func TestAccKmodAllowlistMiss(t *testing.T) {
	t.Parallel()
	kver := fixture.KVER(t)
	output := failingBuild(t, "allow", `
    allowed_sha256 = ["`+strings.Repeat("ab", 32)+`"]
    module {
      prebuilt = [`+hcl(fixture.TestModule(t, "kmodtest_base"))+`]
    }
`)
	wantAll(t, output, "module kmodtest_base, kernel "+kver, "not in the allowlist")
}

// TestAccKmodCompileError: a DKMS source that does not compile names the
// module, the kernel and the compiler's error.
func TestAccKmodCompileError(t *testing.T) {
	t.Parallel()
	kver := fixture.KVER(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "dkms.conf"), []byte("PACKAGE_NAME=\"kmodtest-broken\"\nPACKAGE_VERSION=\"0.1\"\nBUILT_MODULE_NAME[0]=\"kmodtest_broken\"\nDEST_MODULE_LOCATION[0]=\"/updates/dkms\"\n"), 0o644)
	os.WriteFile(filepath.Join(src, "Kbuild"), []byte("obj-m := kmodtest_broken.o\n"), 0o644)
	os.WriteFile(filepath.Join(src, "kmodtest_broken.c"), []byte("#include <linux/module.h>\nstatic int __init b_init(void) { return this_is_not_declared; }\nmodule_init(b_init);\nMODULE_LICENSE(\"GPL\");\n"), 0o644)
	output := failingBuild(t, "broken", `
    module {
      source = `+hcl(src)+`
    }
`)
	wantAll(t, output, "kmodtest-broken", kver, "this_is_not_declared")
}
