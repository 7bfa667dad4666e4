package initramfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

func TestMergeModuleLines(t *testing.T) {
	old := "# comment\nloop\nfoo-bar opt=1"
	got := string(mergeModuleLines([]byte(old), []string{"foo_bar", "kmodtest_marker", "loop", "kmodtest_marker"}))
	want := "# comment\nloop\nfoo-bar opt=1\nkmodtest_marker\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := string(mergeModuleLines(nil, []string{"a"})); got != "a\n" {
		t.Fatalf("empty: %q", got)
	}
}

func TestMergeDriverPre(t *testing.T) {
	got := string(dracutCmdline(mergeDriverPre([]byte("rd.driver.pre=a,b-c rd.debug\nrd.driver.pre=d\n"), []string{"b_c", "e"})))
	if got != "rd.driver.pre=a,b-c,d,e\n" {
		t.Fatalf("got %q", got)
	}
	if got := string(dracutCmdline(mergeDriverPre(nil, []string{"x"}))); got != "rd.driver.pre=x\n" {
		t.Fatalf("empty: %q", got)
	}
}

func TestMergeMkinitcpioConfig(t *testing.T) {
	for _, tc := range []struct{ old, want string }{
		{"EARLYHOOKS=\"\"\nHOOKS=\"udev\"\n", "MODULES=\"kmodtest_marker\"\nEARLYHOOKS=\"\"\nHOOKS=\"udev\"\n"},
		{"MODULES=\"ext4 kmodtest-marker\"\nHOOKS=\"udev\"\n", "MODULES=\"ext4 kmodtest-marker\"\nHOOKS=\"udev\"\n"},
		{"MODULES=\"ext4\"\nHOOKS=\"udev\"\n", "MODULES=\"ext4 kmodtest_marker\"\nHOOKS=\"udev\"\n"},
		{"MODULES=ext4", "MODULES=\"ext4 kmodtest_marker\""},
	} {
		got, err := mergeMkinitcpioConfig([]byte(tc.old), []string{"kmodtest_marker"})
		if err != nil || string(got) != tc.want {
			t.Errorf("merge %q = %q, %v; want %q", tc.old, got, err, tc.want)
		}
	}
	if _, err := mergeMkinitcpioConfig([]byte("MODULES=\"$(x)\"\n"), []string{"a"}); err == nil {
		t.Error("merged into a command substitution")
	}
}

func TestResolveClosure(t *testing.T) {
	kver := fixture.KVER(t)
	dep := fixture.TestModule(t, "kmodtest_dep")
	base := fixture.TestModule(t, "kmodtest_base")
	tree := filepath.Join(t.TempDir(), "lib/modules", kver)
	if err := os.MkdirAll(filepath.Join(tree, "extra"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(base)
	os.WriteFile(filepath.Join(tree, "extra/kmodtest_base.ko"), b, 0o644)
	idx, err := indexModuleTree(tree)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := resolveClosure(closureRequest{kver: kver, modules: []string{dep}, tree: idx})
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 2 || mods[0].Name != "kmodtest_dep" || mods[0].Rel != "updates/kmodtest_dep.ko" ||
		mods[1].Name != "kmodtest_base" || mods[1].Rel != "extra/kmodtest_base.ko" || !mods[1].Dependency || mods[1].NeededBy != "kmodtest_dep" {
		t.Fatalf("closure: %+v %+v", mods[0], mods[1])
	}
	// In the image already: nothing pulled.
	mods, err = resolveClosure(closureRequest{kver: kver, modules: []string{dep}, imageHas: func(n string) bool { return n == "kmodtest_base" }})
	if err != nil || len(mods) != 1 {
		t.Fatalf("image has base: %v %d", err, len(mods))
	}
	// Missing everywhere: the error names the dependency.
	os.Remove(filepath.Join(tree, "extra/kmodtest_base.ko"))
	idx, _ = indexModuleTree(tree)
	_, err = resolveClosure(closureRequest{kver: kver, modules: []string{dep}, tree: idx})
	if err == nil || !strings.Contains(err.Error(), "kmodtest_base") {
		t.Fatalf("missing dependency: %v", err)
	}
	// Wrong kernel: the error names the module.
	_, err = resolveClosure(closureRequest{kver: "5.10.0-99-amd64", modules: []string{base}})
	if err == nil || !strings.Contains(err.Error(), "kmodtest_base") || !strings.Contains(err.Error(), kver) {
		t.Fatalf("vermagic: %v", err)
	}
}
