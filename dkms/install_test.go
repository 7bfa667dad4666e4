package dkms

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestInstallCommandLine(t *testing.T) {
	got := installCommand("kmod test", "1.0", "6.1.0-57-amd64", "x86_64")
	want := "dkms install --force --no-depmod -m 'kmod test' -v 1.0 -k 6.1.0-57-amd64/x86_64 2>&1 || dkms install --force -m 'kmod test' -v 1.0 -k 6.1.0-57-amd64/x86_64"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if got := installCommand("m", "1", "k", ""); !strings.HasSuffix(got, "|| dkms install --force -m m -v 1 -k k") {
		t.Errorf("without arch: %s", got)
	}
}

func TestInstall(t *testing.T) {
	var log []string
	f := (&fakeRunner{}).on(`^dkms install --force --no-depmod -m fake -v 2\.0 -k 6\.1/x86_64 `, "Installing to /lib/modules/6.1/updates/dkms/\n", 0)
	d := &Driver{R: f, Log: func(s string) { log = append(log, s) }}
	if err := d.Install(context.Background(), "fake", "2.0", "6.1", "x86_64"); err != nil {
		t.Fatal(err)
	}
	if len(f.cmds) != 1 || !strings.Contains(strings.Join(log, "\n"), "Installing to") {
		t.Errorf("commands %q, log %q", f.cmds, log)
	}

	f = (&fakeRunner{}).on(`^dkms install`, "Error! Bad return status for module build on kernel: 6.1 (x86_64)\n", 10)
	d = &Driver{R: f}
	err := d.Install(context.Background(), "fake", "2.0", "6.1", "")
	if err == nil || !strings.Contains(err.Error(), "dkms install of fake/2.0 for kernel 6.1 failed (exit status 10)") || !strings.Contains(err.Error(), "Bad return status") {
		t.Errorf("failure: %v", err)
	}
	if err := d.Install(context.Background(), "fake", "2.0", "", ""); err == nil || !strings.Contains(err.Error(), "no kernel given") {
		t.Errorf("no kernel: %v", err)
	}
}

// pathRunner runs commands with /bin/sh, PATH first searching dir (where
// the test puts a dkms stand-in that records its arguments).
type pathRunner struct{ dir string }

func (r pathRunner) Run(ctx context.Context, cmd string, stdout, stderr io.Writer) (int, error) {
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Env = []string{"PATH=" + r.dir + ":/usr/bin:/bin", "LOG=" + filepath.Join(r.dir, "log")}
	c.Stdout, c.Stderr = stdout, stderr
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}

// TestInstallAll: every install in one command, in order; a failure names
// its module and kernel and stops the rest.
func TestInstallAll(t *testing.T) {
	dir := t.TempDir()
	// The stand-in fails for module "bad" (both the --no-depmod form and
	// the retry without it).
	script := "#!/bin/sh\necho \"$*\" >>\"$LOG\"\ncase \" $* \" in *' -m bad '*) echo 'Error! bad failed'; exit 4;; esac\necho installed\n"
	if err := os.WriteFile(filepath.Join(dir, "dkms"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d := &Driver{R: pathRunner{dir}}
	ctx := context.Background()
	reqs := []InstallRequest{{"a", "1", "6.1", "x86_64"}, {"b", "2", "6.2", ""}}
	if err := d.InstallAll(ctx, reqs); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "log"))
	want := "install --force --no-depmod -m a -v 1 -k 6.1/x86_64\ninstall --force --no-depmod -m b -v 2 -k 6.2\n"
	if string(log) != want {
		t.Errorf("dkms ran:\n%s\nwant:\n%s", log, want)
	}
	os.Remove(filepath.Join(dir, "log"))
	err := d.InstallAll(ctx, []InstallRequest{{"a", "1", "6.1", ""}, {"bad", "3", "6.1", ""}, {"c", "1", "6.1", ""}})
	if err == nil || !strings.Contains(err.Error(), "dkms install of bad/3 for kernel 6.1 failed") || !strings.Contains(err.Error(), "bad failed") {
		t.Errorf("failure: %v", err)
	}
	if log, _ := os.ReadFile(filepath.Join(dir, "log")); strings.Contains(string(log), "-m c ") {
		t.Errorf("ran on after the failure:\n%s", log)
	}
	if err := d.InstallAll(ctx, []InstallRequest{{"a", "1", "", ""}}); err == nil || !strings.Contains(err.Error(), "no kernel given") {
		t.Errorf("no kernel: %v", err)
	}
}
