package kmod

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// rootfsModulesDir is the fixture rootfs's module tree: the same kernel as
// fixture.ModulesDir, with the depmod index (modules.dep, modules.alias)
// that the bare kernel tree lacks.
func rootfsModulesDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(fixture.Rootfs(t), "lib/modules", fixture.KVER(t))
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err != nil {
		fixture.Missing(t, "modules.dep in "+dir)
	}
	return dir
}

func sortedAliases(m map[string][]string) map[string][]string {
	res := map[string][]string{}
	for a, owners := range m {
		res[a] = slices.Sorted(slices.Values(owners))
	}
	return res
}

// The in-tree modules and their aliases read from depmod's index agree with
// what parsing every module of the same kernel's tree finds.
func TestKernelInTreeIndexMatchesTree(t *testing.T) {
	dir := rootfsModulesDir(t)
	idx, err := LoadKernel(WithModulesDep(filepath.Join(dir, "modules.dep")),
		WithModulesAlias(filepath.Join(dir, "modules.alias")),
		WithModulesBuiltin(filepath.Join(dir, "modules.builtin")), WithRelease(fixture.KVER(t)))
	if err != nil {
		t.Fatal(err)
	}
	tree := loadFixtureKernel(t) // fixture.ModulesDir has no modules.dep: derived from the files
	if len(idx.InTree) < 1000 || len(idx.Aliases) < 1000 {
		t.Fatalf("index: %d in-tree modules, %d aliases", len(idx.InTree), len(idx.Aliases))
	}
	if !maps.Equal(idx.InTree, tree.InTree) {
		for n, p := range idx.InTree {
			if tree.InTree[n] != p {
				t.Errorf("%s: modules.dep %q, tree %q", n, p, tree.InTree[n])
			}
		}
		for n, p := range tree.InTree {
			if _, ok := idx.InTree[n]; !ok {
				t.Errorf("%s: only in the tree (%s)", n, p)
			}
		}
	}
	ia, ta := sortedAliases(idx.Aliases), sortedAliases(tree.Aliases)
	if !maps.EqualFunc(ia, ta, slices.Equal) {
		n := 0
		for a, o := range ia {
			if !slices.Equal(o, ta[a]) && n < 10 {
				t.Errorf("alias %s: modules.alias %v, tree %v", a, o, ta[a])
				n++
			}
		}
		t.Errorf("%d aliases in modules.alias, %d from the tree", len(ia), len(ta))
	}
	if !maps.Equal(idx.Builtin, tree.Builtin) {
		t.Errorf("modules.builtin: %d vs %d modules", len(idx.Builtin), len(tree.Builtin))
	}
}

func TestKernelModulesIndex(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dep := write("modules.dep", "kernel/drivers/net/foo-bar.ko.xz: kernel/lib/baz.ko\nkernel/lib/baz.ko:\nupdates/dkms/mine.ko:\nextra/other.ko:\nweak-updates/w.ko:\n")
	alias := write("modules.alias", "# Aliases extracted from modules themselves.\nalias pci:v00001234d* foo_bar\nalias pci:v00001234d* baz\nalias pci:v00001234d* mine\nalias net-pf-99 foo-bar\nalias junk\n")
	k, err := LoadKernel(WithModulesDep(dep), WithModulesAlias(alias))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"foo_bar": "kernel/drivers/net/foo-bar.ko.xz", "baz": "kernel/lib/baz.ko"}; !maps.Equal(k.InTree, want) {
		t.Errorf("InTree %v, want %v", k.InTree, want)
	}
	if got := k.Aliases["pci:v00001234d*"]; strings.Join(got, " ") != "foo_bar baz" {
		t.Errorf("aliases of pci:v00001234d*: %v (out-of-tree owners are left out)", got)
	}
	if got := k.Aliases["net-pf-99"]; strings.Join(got, " ") != "foo_bar" {
		t.Errorf("aliases of net-pf-99: %v", got)
	}
	if _, err := LoadKernel(WithModulesDep(write("bad.dep", "kernel/x.ko\n"))); err == nil || !strings.Contains(err.Error(), "bad.dep:1") {
		t.Errorf("malformed modules.dep: %v", err)
	}
	if _, err := LoadKernel(WithModulesBuiltin(filepath.Join(dir, "nonexistent"))); err == nil {
		t.Error("a missing modules.builtin given explicitly is not an error")
	}
}

func TestKernelCanVerify(t *testing.T) {
	dir := t.TempDir()
	load := func(cfg string) *Kernel {
		t.Helper()
		p := filepath.Join(dir, "config")
		if err := os.WriteFile(p, []byte("#\nCONFIG_X86_64=y\n"+cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		k, err := LoadKernel(WithConfig(p), WithRelease("6.1.0-56-amd64"))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k := load("")
	if err := k.CanVerify("rsa", "sha256"); err != nil {
		t.Errorf("rsa/sha256 refused: %v", err)
	}
	err := load("CONFIG_CRYPTO_ECDSA=m\n").CanVerify("ecdsa", "")
	if err == nil || !strings.Contains(err.Error(), "6.1.0-56-amd64 cannot verify ECDSA") || !strings.Contains(err.Error(), "=m") {
		t.Errorf("ecdsa as a module: %v", err)
	}
	if err := k.CanVerify("ecdsa", "sha256"); err == nil || err.Error() != "kernel 6.1.0-56-amd64 cannot verify ECDSA module signatures (CONFIG_CRYPTO_ECDSA not set); sign with an RSA key" {
		t.Errorf("ecdsa not set: %v", err)
	}
	full := load("CONFIG_CRYPTO_ECDSA=y\nCONFIG_CRYPTO_SHA512=y\n")
	if err := full.CanVerify("ecdsa", "sha512"); err != nil {
		t.Errorf("built-in ecdsa and sha512 refused: %v", err)
	}
	if got := strings.Join(full.VerifiableKeyTypes(), " ") + "/" + strings.Join(full.VerifiableHashes(), " "); got != "rsa ecdsa/sha256 sha384 sha512" {
		t.Errorf("verifiable: %s", got)
	}
	if got := strings.Join(k.VerifiableKeyTypes(), " ") + "/" + strings.Join(k.VerifiableHashes(), " "); got != "rsa/sha256" {
		t.Errorf("verifiable without ECDSA and SHA512: %s", got)
	}
	if err := k.CanVerify("rsa", "sha384"); err == nil || !strings.Contains(err.Error(), "CONFIG_CRYPTO_SHA512 not set); sign with sha256") {
		t.Errorf("sha384: %v", err)
	}
	if err := k.CanVerify("dsa", ""); err == nil || !strings.Contains(err.Error(), `key type "dsa"`) {
		t.Errorf("unknown key type: %v", err)
	}
	noConfig, err := LoadKernel(WithSymvers(filepath.Join(fixture.Headers(t), "Module.symvers")), WithRelease("x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := noConfig.CanVerify("ecdsa", "sha512"); err == nil || !strings.Contains(err.Error(), "no config") ||
		!strings.Contains(err.Error(), "ECDSA module signatures and sha512 module signatures") {
		t.Errorf("no config: %v", err)
	}
	if err := noConfig.CanVerify("rsa", "sha256"); err != nil {
		t.Errorf("no config, rsa/sha256: %v", err)
	}
}

// Debian 12's kernel, from the fixture: ECDSA must be refused there.
func TestKernelCanVerifyDebian(t *testing.T) {
	cfgs, _ := filepath.Glob(filepath.Join(fixture.Rootfs(t), "boot", "config-*"))
	if len(cfgs) == 0 {
		t.Fatal("no kernel config in the fixture rootfs")
	}
	k, err := LoadKernel(WithConfig(cfgs[0]), WithRelease(strings.TrimPrefix(filepath.Base(cfgs[0]), "config-")))
	if err != nil {
		t.Fatal(err)
	}
	err = k.CanVerify("ecdsa", "")
	if err == nil {
		t.Fatalf("Debian 12's kernel accepted for ECDSA")
	}
	t.Log(err)
}

func TestInTreeConflicts(t *testing.T) {
	dir := rootfsModulesDir(t)
	k, err := LoadKernel(WithModulesDep(filepath.Join(dir, "modules.dep")),
		WithModulesAlias(filepath.Join(dir, "modules.alias")), WithRelease(fixture.KVER(t)))
	if err != nil {
		t.Fatal(err)
	}
	inTree := filepath.Join(dir, "kernel/drivers/net/dummy.ko")
	data, err := os.ReadFile(inTree)
	if err != nil {
		t.Skipf("fixture module: %v", err)
	}
	own, err := ParseFile(inTree)
	if err != nil {
		t.Fatal(err)
	}
	shadow := parseBytes(t, "dummy.ko", data)
	renamed := parseBytes(t, "dummx.ko", replaceOnce(t, data, "name=dummy\x00", "name=dummx\x00"))
	mods := append([]*Module{own, shadow, renamed}, parseTestModules(t, "kmodtest_base", "kmodtest_param")...)
	got := InTreeConflicts(k, mods)
	if len(got) != 2 {
		t.Fatalf("conflicts %v, want a shadow and an alias claim", got)
	}
	if p := got[0]; p.Module != "dummy" || p.Kind != KindShadow || p.InTree != "dummy" ||
		p.Reason != "shadows the in-tree module dummy (kernel/drivers/net/dummy.ko): depmod ranks updates/ above the kernel's own tree, so this one would load instead of it" {
		t.Errorf("shadow: %+v", p)
	}
	if p := got[1]; p.Module != "dummx" || p.Kind != KindAlias || p.InTree != "dummy" || !strings.Contains(p.Reason, "claims 1 device alias(es) of the in-tree module dummy (e.g. rtnl-link-dummy)") {
		t.Errorf("alias: %+v", p)
	}

	// Added to a report: under their modules, counted, and printed.
	r := Check(k, mods[1:3])
	r.AddProblems(got...)
	r.AddProblems(Problem{Kind: KindSignature, Reason: "kernel x cannot verify ECDSA module signatures"})
	if len(r.Modules[0].Problems) == 0 || r.Modules[0].Problems[len(r.Modules[0].Problems)-1].Kind != KindShadow || r.OK() {
		t.Errorf("report:\n%s", r)
	}
	out := r.String()
	for _, want := range []string{"error: kernel x cannot verify ECDSA module signatures [signature]", "error: dummy: shadows the in-tree module dummy", "error: dummx: claims 1 device alias(es) [alias]"} {
		if !strings.Contains(out, strings.TrimSuffix(want, " [alias]")) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	r = &Report{Modules: []ModuleResult{{Module: "dummy"}}}
	r.AddNotes(got[0])
	if !r.OK() || len(r.Notes) != 1 || len(r.Modules[0].Notes) != 1 {
		t.Errorf("as notes: %+v", r)
	}
}

func TestDepClosure(t *testing.T) {
	dep := filepath.Join(t.TempDir(), "modules.dep")
	os.WriteFile(dep, []byte(`updates/dkms/a.ko: kernel/b.ko kernel/c.ko
kernel/b.ko: kernel/c.ko
kernel/c.ko:
kernel/d.ko: kernel/e.ko
`), 0o644)
	got, err := DepClosure(dep, []string{"updates/dkms/a.ko"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "kernel/b.ko kernel/c.ko" {
		t.Errorf("closure %v", got)
	}
}

// Against the fixture's real modules.dep: macvtap needs macvlan and tap.
func TestDepClosureFixture(t *testing.T) {
	dep := filepath.Join(rootfsModulesDir(t), "modules.dep")
	got, err := DepClosure(dep, []string{"kernel/drivers/net/macvtap.ko"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "kernel/drivers/net/macvlan.ko kernel/drivers/net/tap.ko" {
		t.Errorf("closure %v", got)
	}
}
