package dkms

import (
	"context"
	"io"
	"regexp"
	"strings"
	"testing"
)

// fakeRunner answers commands by the first rule whose pattern matches.
type fakeRunner struct {
	rules []fakeRule
	cmds  []string
}

type fakeRule struct {
	re     *regexp.Regexp
	out    string
	status int
}

func (f *fakeRunner) on(pattern, out string, status int) *fakeRunner {
	f.rules = append(f.rules, fakeRule{regexp.MustCompile(pattern), out, status})
	return f
}

func (f *fakeRunner) Run(ctx context.Context, cmd string, stdout, stderr io.Writer) (int, error) {
	f.cmds = append(f.cmds, cmd)
	for _, r := range f.rules {
		if r.re.MatchString(cmd) {
			io.WriteString(stdout, r.out)
			return r.status, nil
		}
	}
	return 127, nil
}

const fakeConf = "PACKAGE_NAME=fake\nPACKAGE_VERSION=2.0\nBUILT_MODULE_NAME[0]=fake_a\nDEST_MODULE_LOCATION[0]=/extra\nBUILT_MODULE_NAME[1]=fake_b\nDEST_MODULE_LOCATION[1]=/extra\n"

func fakeTarget(buildOut string, buildStatus int, moduleDir string) *fakeRunner {
	return (&fakeRunner{}).
		on(`^cat /etc/dkms/framework.conf `, "", 0).
		on(`build/include`, "headers\nx86_64\n", 0).
		on(`^cat /var/lib/dkms/fake/2.0/source/dkms.conf$`, fakeConf, 0).
		on(`os-release`, "ID=debian\n", 0).
		on(`/\.config'?$`, "CONFIG_PCI=y\n", 0).
		on(`/etc/dkms/fake`, "", 3).
		on(`^dkms build`, buildOut, buildStatus).
		on(`ls -1A`, moduleDir, 0)
}

func TestBuildNothingBuilt(t *testing.T) {
	// exit 0 without modules, like dkms's "skipping" paths
	r := fakeTarget("No kernel headers were found, skipping module build\n", 0, "/var/lib/dkms/fake/2.0/6.1.0-56-amd64/x86_64/module\n")
	_, err := (&Driver{R: r}).Build(context.Background(), "fake", "2.0", "6.1.0-56-amd64", "")
	if err == nil || !strings.Contains(err.Error(), "dkms exited 0 but built no module") || !strings.Contains(err.Error(), "skipping module build") || !strings.Contains(err.Error(), "fake/2.0 for kernel 6.1.0-56-amd64") {
		t.Fatalf("error %v", err)
	}
}

func TestBuildMissingPlannedModule(t *testing.T) {
	r := fakeTarget("", 0, "/var/lib/dkms/fake/2.0/6.1.0-56-amd64/x86_64/module\nfake_a.ko.xz\n")
	_, err := (&Driver{R: r}).Build(context.Background(), "fake", "2.0", "6.1.0-56-amd64", "")
	if err == nil || !strings.Contains(err.Error(), "fake_b missing") || !strings.Contains(err.Error(), "built: fake_a.ko.xz") {
		t.Fatalf("error %v", err)
	}
	r = fakeTarget("", 0, "/var/lib/dkms/fake/2.0/6.1.0-56-amd64/x86_64/module\nfake_a.ko.xz\nfake_b.ko.zst\n")
	res, err := (&Driver{R: r}).Build(context.Background(), "fake", "2.0", "6.1.0-56-amd64", "")
	if err != nil {
		t.Fatal(err)
	}
	want := []BuiltModule{
		{Name: "fake_a", Path: "/var/lib/dkms/fake/2.0/6.1.0-56-amd64/x86_64/module/fake_a.ko.xz", DestDir: "/updates/dkms"},
		{Name: "fake_b", Path: "/var/lib/dkms/fake/2.0/6.1.0-56-amd64/x86_64/module/fake_b.ko.zst", DestDir: "/updates/dkms"},
	}
	if len(res.Modules) != 2 || res.Modules[0] != want[0] || res.Modules[1] != want[1] {
		t.Errorf("modules %+v", res.Modules)
	}
}

func TestBuildExcludedOldExitStatus(t *testing.T) {
	// upstream dkms 3.0.10 and older exit 9 (Debian's exits 77)
	r := fakeTarget("Error! The /var/lib/dkms/fake/2.0/6.1.0-56-amd64/x86_64/dkms.conf for module fake includes a BUILD_EXCLUSIVE directive which does not match this kernel/arch.\n", 9, "")
	res, err := (&Driver{R: r}).Build(context.Background(), "fake", "2.0", "6.1.0-56-amd64", "")
	if err != nil || !res.Excluded {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestDisableSigningLegacy(t *testing.T) {
	r := (&fakeRunner{}).
		on(`^dkms --version`, "dkms-2.8.7\n", 0).
		on(`^if \[ -f /etc/dkms/framework.conf \]`, "yes\n# original\nverbose=1\n", 0).
		on(`>> /etc/dkms/framework.conf$`, "", 0).
		on(`> /etc/dkms/framework.conf$`, "", 0)
	restore, err := (&Driver{R: r}).DisableSigning(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	last := r.cmds[len(r.cmds)-1]
	if last != "printf '%s' '# original\nverbose=1\n' > /etc/dkms/framework.conf" {
		t.Errorf("restore ran %q", last)
	}
	if !strings.Contains(r.cmds[2], `sign_tool=""`) {
		t.Errorf("append ran %q", r.cmds[2])
	}
}

func TestPackageModulesDirectoryWins(t *testing.T) {
	r := (&fakeRunner{}).
		on(`dpkg-query -L`, "/.\n/usr\n/usr/src\n/usr/src/foo-1.2\n/usr/src/foo-1.2/dkms.conf\n/usr/src/foo-1.2/sub/dkms.conf\n/usr/src/bar-3/dkms.conf\n", 0).
		on(`^cat /usr/src/foo-1.2/dkms.conf$`, "PACKAGE_NAME=foo\nPACKAGE_VERSION=1.2\n", 0).
		on(`^cat /usr/src/bar-3/dkms.conf$`, "PACKAGE_NAME=bar\nPACKAGE_VERSION=$(cat VERSION)\n", 0)
	mods, err := (&Driver{R: r}).PackageModules(context.Background(), "foo-dkms")
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 2 || mods[0] != (NameVersion{"foo", "1.2"}) || mods[1] != (NameVersion{"bar", "3"}) {
		t.Errorf("%+v", mods)
	}
}
