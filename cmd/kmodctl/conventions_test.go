package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// TestExitStatus: a command line that cannot run exits 2, for every kind
// of usage error and every command group; a command that runs and fails
// exits 1.
func TestExitStatus(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.ko")
	conf := filepath.Join(dir, "dkms.conf")
	mod := fixture.TestModule(t, "kmodtest_base")
	for _, tc := range []struct {
		args []string
		code int
		want string // in stderr
	}{
		// Unknown commands, at the root and in a group.
		{[]string{"bogus"}, 2, `unknown command "bogus" for "kmodctl"`},
		{[]string{"module", "bogus"}, 2, `unknown command "bogus" for "kmodctl module"`},
		{[]string{"initramfs", "lss"}, 2, "did you mean ls?"},
		{[]string{"catalog", "token", "bogus"}, 2, "unknown command"},
		// Unknown flags, bad flag values, missing flags.
		{[]string{"module", "inspect", "--bogus", mod}, 2, "unknown flag: --bogus"},
		{[]string{"module", "inspect", "-j", "many", mod}, 2, `invalid argument "many"`},
		{[]string{"module", "sign", mod}, 2, `required flag(s) "cert", "key" not set`},
		{[]string{"module", "sign", "--key", "k", "--cert", "c", "--hash", "md5", mod}, 2, `--hash "md5"`},
		{[]string{"module", "verify", mod}, 2, `required flag(s) "cert" not set`},
		{[]string{"firstboot", "report", "--for", "soon"}, 2, `invalid argument "soon"`},
		{[]string{"initramfs", "inject", "x.img", "-m", mod, "--mode", "merge"}, 2, `--mode "merge"`},
		{[]string{"bundle", "pull", "--kernel", "6.1", "oci:x", "dir"}, 2, "--trusted-cert"},
		// Argument counts.
		{[]string{"module", "inspect"}, 2, "requires at least 1 arg"},
		{[]string{"initramfs", "ls"}, 2, "accepts 1 arg"},
		{[]string{"initramfs", "extract", "x.img"}, 2, "accepts 2 arg"},
		{[]string{"depmod", "6.1", "6.2"}, 2, "accepts at most 1 arg"},
		{[]string{"firstboot", "verify", "extra"}, 2, "unknown command"},
		{[]string{"bundle", "ls"}, 2, "accepts 1 arg"},
		// kmodctl dkms plan (conf does not exist: a usage error must come
		// before the file is read).
		{[]string{"dkms", "bogus"}, 2, `unknown command "bogus" for "kmodctl dkms"`},
		{[]string{"dkms", "plan", conf}, 2, `required flag(s) "kernel" not set`},
		{[]string{"dkms", "plan", "--kernel", "", conf}, 2, "--kernel: give a kernel release"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64"}, 2, "accepts 1 arg(s), received 0"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", conf, conf}, 2, "accepts 1 arg(s), received 2"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", "--module", "m", conf}, 2, "missing [module-version]"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", "--module-version", "1", conf}, 2, "missing [module]"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", "--module", "", "--module-version", "1", conf}, 2, "--module and --module-version"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", "--distro", "", conf}, 2, "--distro"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", "--distro", "fedora", "--os-release", conf, conf}, 2, "[distro os-release] were all set"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", "--bogus", conf}, 2, "unknown flag: --bogus"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", "--json=maybe", conf}, 2, `invalid argument "maybe"`},
		// Runtime failures.
		{[]string{"module", "inspect", missing}, 1, "no such file"},
		{[]string{"module", "verify", "--cert", missing, mod}, 1, "--cert"},
		{[]string{"initramfs", "ls", filepath.Join(dir, "missing.img")}, 1, "no such file"},
		{[]string{"firstboot", "verify", "--root", dir, "--kernel", "6.1.0-1-amd64", "--report", "-"}, 1, ""},
		{[]string{"bundle", "ls", "oci:" + filepath.Join(dir, "nolayout")}, 1, "nolayout"},
		{[]string{"dkms", "plan", "--kernel", "6.1.0-1-amd64", conf}, 1, "no such file"},
	} {
		_, stderr, code := kmodctl(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
		if tc.code == 2 && !strings.Contains(stderr, "--help' for usage") {
			t.Errorf("%v: usage error without the --help hint: %q", tc.args, stderr)
		}
	}
	// A group alone shows its help, as the root does.
	for _, args := range [][]string{nil, {"module"}, {"initramfs"}, {"dkms"}} {
		out, stderr, code := kmodctl(t, args...)
		if code != 0 || !strings.Contains(out, "Available Commands:") {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, stderr)
		}
	}
}

// TestErrorsNameTheFileOnce: the message of a missing and of a corrupt
// file names it exactly once (the libraries name it; the CLI adds nothing).
func TestErrorsNameTheFileOnce(t *testing.T) {
	dir := t.TempDir()
	key, cert := genKey(t, dir, "rsa:2048")
	missing := filepath.Join(dir, "missing.ko")
	corrupt := filepath.Join(dir, "corrupt.ko")
	if err := os.WriteFile(corrupt, []byte("hello world, not ELF nor cpio"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"module", "sign", "--key", key, "--cert", cert},
		{"module", "verify", "--cert", cert},
		{"module", "inspect"},
		{"initramfs", "ls"},
	} {
		for _, file := range []string{missing, corrupt} {
			args := append(append([]string(nil), cmd...), file)
			_, stderr, code := kmodctl(t, args...)
			if code != 1 || strings.Count(stderr, file) != 1 {
				t.Errorf("%v: exit %d; stderr names the file %d times, want once: %q", args, code, strings.Count(stderr, file), stderr)
			}
		}
	}
}

// TestJSONShapes: the --json documents of sign, verify, initramfs ls and
// extract and firstboot verify are what their help says.
func TestJSONShapes(t *testing.T) {
	dir := t.TempDir()
	key, cert := genKey(t, dir, "rsa:2048")
	mod := filepath.Join(dir, "kmodtest_base.ko")
	fixture.CopyFile(t, fixture.TestModule(t, "kmodtest_base"), mod)
	missing := filepath.Join(dir, "missing.ko")

	decode := func(args []string, want int, v any) {
		t.Helper()
		out, stderr, code := kmodctl(t, args...)
		if code != want {
			t.Fatalf("%v: exit %d, want %d: %s", args, code, want, stderr)
		}
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("%v: not one JSON document: %v\n%s", args, err, out)
		}
	}

	var signed []signJSON
	decode([]string{"module", "sign", "--json", "--key", key, "--cert", cert, mod, missing}, 1, &signed)
	if len(signed) != 2 || signed[0].Filename != mod || !signed[0].OK || signed[0].Skipped ||
		signed[1].Filename != missing || signed[1].OK || !strings.Contains(signed[1].Error, "no such file") {
		t.Errorf("sign --json: %+v", signed)
	}
	decode([]string{"module", "sign", "--json", "--if-signed", "skip", "--key", key, "--cert", cert, mod}, 0, &signed)
	if len(signed) != 1 || !signed[0].OK || !signed[0].Skipped || signed[0].PreviousSigner != "kmodctl cli test" {
		t.Errorf("sign --json --if-signed skip: %+v", signed)
	}

	var verified []verifyJSON
	decode([]string{"module", "verify", "--json", "--cert", cert, mod, missing}, 1, &verified)
	if len(verified) != 2 || !verified[0].OK || verified[0].Signer != "kmodctl cli test" || verified[0].SigHashalgo != "sha256" ||
		verified[0].KeyAlgorithm != "rsa" || verified[0].SigKey == "" || verified[1].OK || verified[1].Error == "" {
		t.Errorf("verify --json: %+v", verified)
	}

	img := testImage(t)
	var paths []string
	decode([]string{"initramfs", "ls", "--json", img}, 0, &paths)
	out, _, _ := kmodctl(t, "initramfs", "ls", img)
	if strings.Join(paths, "\n")+"\n" != out {
		t.Errorf("ls --json %q, ls %q", paths, out)
	}
	var ex map[string]any
	to := filepath.Join(t.TempDir(), "x")
	decode([]string{"initramfs", "extract", "--json", img, to}, 0, &ex)
	for _, k := range []string{"image", "dir", "files", "dirs", "symlinks", "hard_links", "nodes", "bytes", "skipped"} {
		if _, ok := ex[k]; !ok {
			t.Errorf("extract --json has no %q: %v", k, ex)
		}
	}
	if ex["dir"] != to || ex["files"].(float64) < 1 {
		t.Errorf("extract --json: %v", ex)
	}

	root, kver, _ := firstbootTree(t)
	var v map[string]any
	decode([]string{"firstboot", "verify", "--json", "--root", root, "--kernel", kver}, 0, &v)
	if v["verified"] != 1.0 || v["kernel"] != kver {
		t.Errorf("firstboot verify --json: %v", v)
	}
	// The report is still written, and holds the same object.
	if doc := readJSON(t, filepath.Join(root, "run/kmodctl/verify.json")); doc["verified"] != v["verified"] || doc["summary"] != v["summary"] {
		t.Errorf("verify.json %v, --json %v", doc, v)
	}
}
