package dkms

import (
	"reflect"
	"strings"
	"testing"
)

func mustParse(t *testing.T, src string) *Conf {
	t.Helper()
	c, err := Parse(strings.NewReader(src), "test.conf")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseRawFields(t *testing.T) {
	c, err := ParseFile("testdata/conf/crafted-quoting.conf")
	if err != nil {
		t.Fatal(err)
	}
	if c.PackageName != "quoting-test" || c.PackageVersion != "1.2.3" || !c.AutoInstall {
		t.Errorf("name %q version %q autoinstall %v", c.PackageName, c.PackageVersion, c.AutoInstall)
	}
	wantMake := `make -C ${kernel_source_dir}     M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build     KVER=$kernelver ARCH=$arch "quoted" $notexpanded 'single' back\slash`
	if len(c.Make) != 1 || c.Make[0] != wantMake {
		t.Errorf("Make = %q\nwant   %q", c.Make, wantMake)
	}
	if c.Clean != "make clean -s" {
		t.Errorf("Clean = %q", c.Clean)
	}
	want := []ConfModule{
		{Index: 0, BuiltName: "quoting_one", BuiltLocation: "src/", DestLocation: "/extra", StripDisabled: true},
		{Index: 1, BuiltName: "${PACKAGE_NAME//-/_}", DestName: "renamed", DestLocation: "/kernel/drivers/misc", StripDisabled: true},
	}
	if !reflect.DeepEqual(c.Modules, want) {
		t.Errorf("Modules = %+v\nwant %+v", c.Modules, want)
	}
	if c.Vars["HASH"] != "a#b" || c.Vars["BASE"] != "/opt/base dir/single $quoted" || c.Vars["BUILT_MODULE_NAME[1]"] != "${PACKAGE_NAME//-/_}" {
		t.Errorf("Vars = %q", c.Vars)
	}
	if len(c.Unsupported) != 0 || len(c.Unknown) != 0 {
		t.Errorf("Unsupported %q Unknown %q", c.Unsupported, c.Unknown)
	}
}

func TestParseErrorsNameFileAndLine(t *testing.T) {
	for src, want := range map[string]string{
		"A=1\nB=\"open\n\n":         "test.conf:2: unterminated double quote",
		"if true; then\n  A=1\n":    "test.conf:1: if without fi",
		"A=1\nB=$(echo\n":           "test.conf:2: unterminated $(",
		"A='x":                      "test.conf:1: unterminated single quote",
		"A=1\n)\n":                  "test.conf:2: unexpected",
		"case x in\n a) A=1;;\n":    "test.conf:1: case without esac",
		"A=${B\n":                   "test.conf:1: unterminated ${",
		"A=1\x00":                   "test.conf:1: NUL byte",
		"X=1\nY=2\nfi\n":            "test.conf:3: unexpected",
		"A=(1 2\n":                  "test.conf:1: unterminated array assignment",
		"echo `unterminated\nA=1\n": "test.conf:1: unterminated backquote",
	} {
		_, err := Parse(strings.NewReader(src), "test.conf")
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: error %v, want prefix %q", src, err, want)
		}
	}
}

func TestParseUnknownAndUnsupported(t *testing.T) {
	c, err := ParseFile("testdata/conf/crafted-runtime.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"PACKAGE_VERSION", "BUILD_EXCLUSIVE_KERNEL", "BUILT_MODULE_NAME", "POST_BUILD"} {
		if c.UnknownWhy[n] == "" {
			t.Errorf("%s not unknown: %q", n, c.Unknown)
		}
	}
	if c.PackageName != "runtime" || c.UnknownWhy["PACKAGE_NAME"] != "" {
		t.Errorf("PACKAGE_NAME %q unknown %q", c.PackageName, c.UnknownWhy["PACKAGE_NAME"])
	}
	// the raw text is still reported
	if c.PackageVersion != "$(cat VERSION 2>/dev/null || echo 0.0)" || c.BuildExclusiveKernel != `^6\.` {
		t.Errorf("raw %q %q", c.PackageVersion, c.BuildExclusiveKernel)
	}
	joined := strings.Join(c.Unsupported, "\n")
	for _, want := range []string{
		"line 3: command substitution $(cat VERSION",
		"line 5: if: condition known only at build time",
		"line 13: function helper",
		"line 14: call of function helper",
		"line 18: pipeline",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("Unsupported lacks %q:\n%s", want, joined)
		}
	}
	p, err := c.Plan("6.1.0-56-amd64", "x86_64")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Modules) != 1 || p.Modules[0].Name != "runtime" {
		t.Errorf("Modules %+v", p.Modules)
	}
	if !reflect.DeepEqual(p.Unknown, []string{"BUILD_EXCLUSIVE_KERNEL", "BUILT_MODULE_NAME", "PACKAGE_VERSION", "POST_BUILD"}) {
		t.Errorf("Plan.Unknown %q", p.Unknown)
	}
}

func TestPlan(t *testing.T) {
	c := mustParse(t, `
PACKAGE_NAME=demo
PACKAGE_VERSION=1.0
BUILT_MODULE_NAME[0]=demo_core
BUILT_MODULE_LOCATION[0]=src
DEST_MODULE_LOCATION[0]=/kernel/drivers/misc
BUILT_MODULE_NAME[1]=demo-extra
DEST_MODULE_NAME[1]=demo_renamed
DEST_MODULE_LOCATION[1]=/extra
STRIP[1]=no
BUILD_EXCLUSIVE_KERNEL="^6\.1\."
BUILD_EXCLUSIVE_ARCH="x86_64|aarch64"
`)
	p, err := c.Plan("6.1.0-56-amd64", "x86_64")
	if err != nil {
		t.Fatal(err)
	}
	want := []PlannedModule{
		{Name: "demo_core", BuiltName: "demo_core", BuiltPath: "src/demo_core.ko", DestDir: "/updates/dkms", Strip: true},
		{Name: "demo_renamed", BuiltName: "demo-extra", BuiltPath: "demo-extra.ko", DestDir: "/updates/dkms", Strip: false},
	}
	if p.Excluded || !reflect.DeepEqual(p.Modules, want) {
		t.Errorf("plan %+v", p)
	}
	if p.Make != "make -C /lib/modules/6.1.0-56-amd64/build M=/var/lib/dkms/demo/1.0/build" {
		t.Errorf("Make %q", p.Make)
	}
	for distro, dir := range map[string]string{"fedora": "/extra", "rhel centos fedora": "/extra", "suse opensuse": "/updates", "ubuntu": "/updates/dkms", "gentoo": "/kernel/drivers/misc"} {
		p, err := c.PlanWith("6.1.0-56-amd64", "x86_64", PlanOptions{Distro: distro})
		if err != nil || p.Modules[0].DestDir != dir {
			t.Errorf("%s: DestDir %q, want %q (%v)", distro, p.Modules[0].DestDir, dir, err)
		}
	}
	p, _ = c.Plan("5.10.0-30-amd64", "x86_64")
	if !p.Excluded || !strings.Contains(p.Reason, `BUILD_EXCLUSIVE_KERNEL "^6\\.1\\." does not match kernel 5.10.0-30-amd64`) {
		t.Errorf("not excluded by kernel: %v %q", p.Excluded, p.Reason)
	}
	p, _ = c.Plan("6.1.0-56-armmp", "armv7l")
	if !p.Excluded || !strings.Contains(p.Reason, "BUILD_EXCLUSIVE_ARCH") {
		t.Errorf("not excluded by arch: %v %q", p.Excluded, p.Reason)
	}
}

func TestPlanDefaultsAndErrors(t *testing.T) {
	// a single DEST_MODULE_LOCATION names the module after the package
	p, err := mustParse(t, "PACKAGE_NAME=solo\nPACKAGE_VERSION=2\nDEST_MODULE_LOCATION=/extra\n").Plan("6.1.0-56-amd64", "x86_64")
	if err != nil || len(p.Modules) != 1 || p.Modules[0].Name != "solo" || p.Modules[0].BuiltPath != "solo.ko" {
		t.Errorf("%+v %v", p, err)
	}
	for src, want := range map[string]string{
		"PACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/extra":                                                       "no PACKAGE_NAME",
		"PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x":                                                                    "no DEST_MODULE_LOCATION",
		"PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x.ko\nDEST_MODULE_LOCATION=/extra":                                    "ends in .o or .ko",
		"PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/opt":                                         "does not begin with /kernel",
		"PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[1]=x\nDEST_MODULE_LOCATION[1]=/extra\nDEST_MODULE_LOCATION[2]=/extra": "no BUILT_MODULE_NAME for record #0",
	} {
		_, err := mustParse(t, src).Plan("6.1.0-56-amd64", "x86_64")
		var ce *ConfError
		if err == nil || !strings.Contains(err.Error(), want) || !asConfError(err, &ce) {
			t.Errorf("%q: %v, want %q", src, err, want)
		}
	}
}

func asConfError(err error, ce **ConfError) bool {
	e, ok := err.(*ConfError)
	*ce = e
	return ok
}

func TestPlanKernelConfig(t *testing.T) {
	c := mustParse(t, "PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/extra\nBUILD_EXCLUSIVE_CONFIG=\"CONFIG_PCI !CONFIG_PREEMPT_RT\"\n")
	p, _ := c.Plan("6.1.0-56-amd64", "x86_64")
	if p.Excluded || !reflect.DeepEqual(p.Unknown, []string{"BUILD_EXCLUSIVE_CONFIG"}) {
		t.Errorf("without config: %+v", p)
	}
	p, _ = c.PlanWith("6.1.0-56-amd64", "x86_64", PlanOptions{KernelConfig: []byte("CONFIG_PCI=y\n")})
	if p.Excluded {
		t.Errorf("excluded: %q", p.Reason)
	}
	p, _ = c.PlanWith("6.1.0-56-rt-amd64", "x86_64", PlanOptions{KernelConfig: []byte("CONFIG_PCI=y\nCONFIG_PREEMPT_RT=y\n")})
	if !p.Excluded || !strings.Contains(p.Reason, "CONFIG_PREEMPT_RT is set") {
		t.Errorf("not excluded: %q", p.Reason)
	}
}

func TestPlanOverrides(t *testing.T) {
	c := mustParse(t, "PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/extra\nMAKE=make\n")
	o := mustParse(t, "MAKE=\"$MAKE EXTRA=1\"\n")
	p, err := c.PlanWith("6.1.0-56-amd64", "x86_64", PlanOptions{Overrides: []*Conf{o}})
	if err != nil || p.Make != "make EXTRA=1" {
		t.Errorf("Make %q %v", p.Make, err)
	}
}

func TestDistroFromOSRelease(t *testing.T) {
	for osr, want := range map[string]string{
		"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n": "debian",
		"NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n":                "ubuntu",
		"ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n":              "rhel centos fedora",
		"ID=fedora\n": "fedora",
		"ID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n": "suse opensuse",
		"ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n":         "ubuntu debian",
	} {
		if got := DistroFromOSRelease([]byte(osr)); got != want {
			t.Errorf("%q: %q, want %q", osr, got, want)
		}
	}
}

func TestPlanWarnsAboutUnameR(t *testing.T) {
	p, err := mustParse(t, "PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/extra\nMAKE[0]=\"make KVER=$(uname -r)\"\n").Plan("6.1.0-56-amd64", "x86_64")
	if err != nil || len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0], "MAKE[0] runs uname -r") {
		t.Errorf("warnings %q %v", p.Warnings, err)
	}
}
