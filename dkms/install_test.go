package dkms

import (
	"context"
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
