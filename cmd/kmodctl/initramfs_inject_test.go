package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

func TestInitramfsInject(t *testing.T) {
	kver := fixture.KVER(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "initrd.img")
	fixture.CopyFile(t, fixture.Initrd(t, fixture.InitrdToolsZstd), img)
	marker := fixture.TestModule(t, "kmodtest_marker")
	param := fixture.TestModule(t, "kmodtest_param")
	out, stderr, code := kmodctl(t, "initramfs", "inject", img, "--module", marker, "-m", param, "--load", "--backup", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"modules", "dependencies", "firmware", "missing_firmware", "depmod", "overridden", "hard_links_broken", "warnings"} {
		if _, ok := res[k].([]any); !ok {
			t.Errorf("%q is %T, want an array", k, res[k])
		}
	}
	if res["mode"] != "append" || res["flavor"] != "initramfs-tools" || res["kernel_release"] != kver ||
		res["load_config"] != "conf/modules" || res["backup"] != img+".bak" || len(res["modules"].([]any)) != 2 {
		t.Errorf("result: %s", out)
	}
	if w := res["warnings"].([]any); len(w) != 1 || !strings.Contains(w[0].(string), "kmodtest/firmware.bin") {
		t.Errorf("warnings: %v", w)
	}
	if _, err := os.Stat(img + ".bak"); err != nil {
		t.Error(err)
	}
	ls, stderr, code := kmodctl(t, "initramfs", "ls", img)
	if code != 0 || !strings.Contains(ls, "usr/lib/modules/"+kver+"/updates/kmodtest_marker.ko\n") {
		t.Errorf("ls after inject: exit %d %s", code, stderr)
	}
	// Text output, rewrite mode, a warning on stderr.
	out, stderr, code = kmodctl(t, "initramfs", "inject", img, "-m", param, "--mode", "rewrite")
	if code != 0 || !strings.Contains(out, "rewrite (initramfs-tools, kernel "+kver+"), zstd archive") ||
		!strings.Contains(stderr, "warning: firmware kmodtest/firmware.bin") {
		t.Errorf("rewrite: exit %d\n%s%s", code, out, stderr)
	}
}

func TestInitramfsInjectErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "initrd.img")
	fixture.CopyFile(t, fixture.Initrd(t, fixture.InitrdToolsZstd), img)
	before, _ := os.ReadFile(img)
	dep := fixture.TestModule(t, "kmodtest_dep")
	for _, tc := range []struct {
		args []string
		want string
		code int // 2 for a usage error
	}{
		{[]string{img}, "give at least one --module", 2},
		{[]string{img, "-m", dep}, "kmodtest_dep depends on kmodtest_base", 1},
		{[]string{img, "-m", fixture.Path(t, "foreign/s390x/loop.ko")}, "was built for kernel", 1},
		{[]string{img, "-m", dep, "--mode", "merge"}, `--mode "merge"`, 2},
		{[]string{img, "--file", "nocolon", "-m", dep}, "HOST-FILE:IMAGE-PATH", 2},
	} {
		_, stderr, code := kmodctl(t, append([]string{"initramfs", "inject"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want exit %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	if after, _ := os.ReadFile(img); string(after) != string(before) {
		t.Error("a failed inject changed the image")
	}
}
