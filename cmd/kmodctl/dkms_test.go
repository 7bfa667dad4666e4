package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/dkms"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// planKernel is a Debian 12 kernel release for the tests that need no
// fixture (the files are evaluated, nothing is built).
const planKernel = "6.1.0-57-amd64"

// debianConf is the dkms.conf of a Debian package from the corpus
// (dkms/testdata/conf), by package name.
func debianConf(t *testing.T, pkg string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(fixture.RepoRoot(t), "dkms/testdata/conf", pkg+"-dkms_*.dkms.conf"))
	if err != nil || len(m) != 1 {
		t.Fatalf("the corpus holds %d dkms.conf of %s (%v)", len(m), pkg, err)
	}
	return m[0]
}

// writeFile writes content to dir/name and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// plan runs kmodctl dkms plan --json, checks the exit status and decodes
// the document.
func plan(t *testing.T, want int, args ...string) (*dkmsPlanJSON, string) {
	t.Helper()
	args = append([]string{"dkms", "plan", "--json"}, args...)
	out, stderr, code := kmodctl(t, args...)
	if code != want {
		t.Fatalf("%v: exit %d, want %d: %s", args, code, want, stderr)
	}
	var d dkmsPlanJSON
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("%v: not one JSON document: %v\n%s", args, err, out)
	}
	return &d, stderr
}

func unknownNames(d *dkmsPlanJSON) []string {
	names := []string{}
	for _, u := range d.Unknown {
		names = append(names, u.Name)
	}
	return names
}

// TestDKMSPlanComplete: a complete plan (broadcom-sta), from the file and
// from its source folder, as text and as JSON, and what --distro,
// --os-release, --module, --module-version and --arch change.
func TestDKMSPlanComplete(t *testing.T) {
	conf := debianConf(t, "broadcom-sta")
	src := t.TempDir()
	fixture.CopyFile(t, conf, filepath.Join(src, "dkms.conf"))

	out, stderr, code := kmodctl(t, "dkms", "plan", "--kernel", planKernel, src)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"file:     " + filepath.Join(src, "dkms.conf") + "\n",
		"package:  broadcom-sta 6.30.223.271\n",
		"verdict:  built\n",
		"make:     make KVER=" + planKernel + "\n",
		"-jN KERNELRELEASE=" + planKernel + ` inserted after "make"`,
		"clean:    make -C /lib/modules/" + planKernel + "/build M=/var/lib/dkms/broadcom-sta/6.30.223.271/build clean\n",
		"patches:  none\n",
		"modules:  1 (destination folders under /lib/modules/" + planKernel + ")\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the plan has no %q:\n%s", want, out)
		}
	}
	if !regexpLine(out, `^\s+wl\s+wl\s+wl\.ko\s+/updates/dkms\s+yes$`) {
		t.Errorf("no module line for wl:\n%s", out)
	}
	if strings.Contains(out, "known only at build time") {
		t.Errorf("a complete plan lists unknowns:\n%s", out)
	}

	d, _ := plan(t, 0, "--kernel", planKernel, conf)
	want := &dkmsPlanJSON{
		File: conf, Overrides: []string{}, Kernel: planKernel, Arch: unameMachine[runtime.GOARCH], Distro: "debian",
		Complete: true, Package: dkmsPackageJSON{"broadcom-sta", "6.30.223.271"},
		Modules: []dkmsModuleJSON{{DestName: "wl", BuiltName: "wl", BuiltPath: "wl.ko", DestDir: "/updates/dkms", Strip: true}},
		Make:    "make KVER=" + planKernel,
		Clean:   "make -C /lib/modules/" + planKernel + "/build M=/var/lib/dkms/broadcom-sta/6.30.223.271/build clean",
		Patches: []string{}, Verdict: "built", Unknown: []dkmsUnknownJSON{}, Unsupported: []string{},
		Warnings: []string{}, Problems: []string{},
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("--json:\n got %+v\nwant %+v", d, want)
	}
	// The document's keys are the documented ones, lists never null.
	raw, _, _ := kmodctl(t, "dkms", "plan", "--json", "--kernel", planKernel, conf)
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"overrides", "modules", "patches", "unknown", "unsupported", "warnings", "problems"} {
		if _, ok := m[k].([]any); !ok {
			t.Errorf("%q is %T, want an array", k, m[k])
		}
	}
	for _, k := range []string{"file", "kernel", "arch", "distro", "complete", "package", "make", "clean", "verdict", "excluded", "reason", "rejected"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %v", k, m)
		}
	}
	for _, k := range append(keys(m), "dest_name", "built_name", "built_path", "dest_dir", "strip", "name", "why") {
		if !strings.Contains(dkmsPlanJSONHelp, `"`+k+`"`) {
			t.Errorf("the help does not document %q", k)
		}
	}

	// The destination folder is the distro's dkms's.
	if d, _ := plan(t, 0, "--kernel", planKernel, "--distro", "fedora", conf); d.Modules[0].DestDir != "/extra" || d.Distro != "fedora" {
		t.Errorf("--distro fedora: %+v", d)
	}
	osr := writeFile(t, t.TempDir(), "os-release", "ID=rocky\nID_LIKE=\"rhel centos fedora\"\n")
	if d, _ := plan(t, 0, "--kernel", planKernel, "--os-release", osr, conf); d.Modules[0].DestDir != "/extra" || d.Distro != "rhel centos fedora" {
		t.Errorf("--os-release of Rocky: %+v", d)
	}
	// $module and $module_version go into dkms's default make and clean.
	if d, _ := plan(t, 0, "--kernel", planKernel, "--module", "sta", "--module-version", "9", conf); !strings.HasSuffix(d.Clean, "M=/var/lib/dkms/sta/9/build clean") {
		t.Errorf("--module sta --module-version 9: clean %q", d.Clean)
	}
	if d, _ := plan(t, 0, "--kernel", planKernel, "--arch", "aarch64", conf); d.Arch != "aarch64" {
		t.Errorf("--arch aarch64: arch %q", d.Arch)
	}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// regexpLine reports whether a line of s matches the expression.
func regexpLine(s, expr string) bool {
	re := regexp.MustCompile(expr)
	for _, ln := range strings.Split(s, "\n") {
		if re.MatchString(ln) {
			return true
		}
	}
	return false
}

// TestDKMSPlanExcluded: BUILD_EXCLUSIVE_KERNEL (r8168 on a 3.10 kernel)
// and BUILD_EXCLUSIVE_ARCH (an x86-only file on aarch64) exclude; an exclusion
// with another value unknown still exits 3.
func TestDKMSPlanExcluded(t *testing.T) {
	cfgDir := t.TempDir()
	cfg := writeFile(t, cfgDir, ".config", "CONFIG_PCI=y\nCONFIG_ACPI=y\n")
	r8168 := debianConf(t, "r8168")
	d, _ := plan(t, 0, "--kernel", "3.10.0-1-amd64", "--kernel-config", cfg, r8168)
	if !d.Excluded || d.Verdict != "excluded" || !strings.Contains(d.Reason, "BUILD_EXCLUSIVE_KERNEL") || !strings.Contains(d.Reason, "3.10.0-1-amd64") {
		t.Errorf("r8168 on 3.10: %+v", d)
	}
	out, _, code := kmodctl(t, "dkms", "plan", "--kernel", "3.10.0-1-amd64", "--kernel-config", cfgDir, r8168)
	if code != 0 || !strings.Contains(out, "verdict:  excluded: BUILD_EXCLUSIVE_KERNEL") {
		t.Errorf("r8168 on 3.10, --kernel-config a folder: exit %d\n%s", code, out)
	}
	// Built on 6.1 with the config; without it BUILD_EXCLUSIVE_CONFIG is
	// known only at build time.
	if d, _ := plan(t, 0, "--kernel", planKernel, "--kernel-config", cfg, r8168); d.Verdict != "built" || d.Excluded {
		t.Errorf("r8168 on 6.1: %+v", d)
	}
	d, stderr := plan(t, statusIncomplete, "--kernel", "3.10.0-1-amd64", r8168)
	if !d.Excluded || d.Complete || !reflect.DeepEqual(unknownNames(d), []string{"BUILD_EXCLUSIVE_CONFIG"}) || !strings.Contains(d.Unknown[0].Why, ".config") {
		t.Errorf("r8168 on 3.10 without the config: %+v", d)
	}
	if !strings.Contains(stderr, "BUILD_EXCLUSIVE_CONFIG known only at build time") {
		t.Errorf("stderr: %q", stderr)
	}
	// No Debian file excludes by architecture unconditionally: broadcom-sta
	// with acpi-call's x86 pattern added.
	x86 := writeFile(t, cfgDir, "dkms.conf", readString(t, debianConf(t, "broadcom-sta"))+"BUILD_EXCLUSIVE_ARCH=\"x86_64|i.86\"\n")
	d, _ = plan(t, 0, "--kernel", planKernel, "--arch", "aarch64", x86)
	if !d.Excluded || !strings.Contains(d.Reason, "BUILD_EXCLUSIVE_ARCH") || !strings.Contains(d.Reason, "aarch64") {
		t.Errorf("x86 only, on aarch64: %+v", d)
	}
	if d, _ := plan(t, 0, "--kernel", planKernel, "--arch", "i686", x86); d.Excluded {
		t.Errorf("x86 only, on i686: %+v", d)
	}
}

// TestDKMSPlanUnknown: zfs decides values in code run only at build time:
// exit 3, each unknown value with why, the constructs with their lines.
func TestDKMSPlanUnknown(t *testing.T) {
	zfs := debianConf(t, "zfs")
	d, stderr := plan(t, statusIncomplete, "--kernel", planKernel, zfs)
	why := map[string]string{}
	for _, u := range d.Unknown {
		why[u.Name] = u.Why
	}
	if d.Complete || why["PRE_BUILD"] == "" || !strings.Contains(why["PRE_BUILD"], zfs) {
		t.Errorf("PRE_BUILD (a command substitution) is not unknown with a reason naming the file: %+v", d.Unknown)
	}
	if len(d.Unsupported) == 0 || !strings.HasPrefix(d.Unsupported[0], "line") {
		t.Errorf("unsupported: %q", d.Unsupported)
	}
	if !strings.Contains(stderr, zfs+": the plan is incomplete:") || !strings.Contains(stderr, "PRE_BUILD") {
		t.Errorf("stderr: %q", stderr)
	}
	if len(d.Modules) != 9 || d.Package.Name != "zfs" {
		t.Errorf("zfs: %d modules, package %+v", len(d.Modules), d.Package)
	}
	out, _, code := kmodctl(t, "dkms", "plan", "--kernel", planKernel, zfs)
	if code != statusIncomplete || !strings.Contains(out, "known only at build time:\n") || !strings.Contains(out, "\n  PRE_BUILD: ") ||
		!strings.Contains(out, "not evaluated:\n  line") {
		t.Errorf("exit %d, text:\n%s", code, out)
	}
}

// TestDKMSPlanKernelConfig: BUILD_EXCLUSIVE_CONFIG against the fixture
// kernel's own .config (its headers tree).
func TestDKMSPlanKernelConfig(t *testing.T) {
	headers := fixture.Headers(t)
	cfgPath := filepath.Join(headers, ".config")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		fixture.Missing(t, "kernel config "+cfgPath)
	}
	kver := fixture.KVER(t)
	r8168 := debianConf(t, "r8168") // BUILD_EXCLUSIVE_CONFIG="CONFIG_PCI"
	if !strings.Contains("\n"+string(cfg), "\nCONFIG_PCI=y\n") {
		t.Fatalf("%s does not set CONFIG_PCI=y: the test needs a kernel with PCI", cfgPath)
	}
	d, _ := plan(t, statusIncomplete, "--kernel", kver, r8168)
	if !reflect.DeepEqual(unknownNames(d), []string{"BUILD_EXCLUSIVE_CONFIG"}) || d.Verdict != "unknown" {
		t.Errorf("without --kernel-config: %+v", d)
	}
	for _, c := range []string{cfgPath, headers} {
		if d, _ := plan(t, 0, "--kernel", kver, "--kernel-config", c, r8168); d.Verdict != "built" || !d.Complete {
			t.Errorf("--kernel-config %s: %+v", c, d)
		}
	}
	not := writeFile(t, t.TempDir(), "dkms.conf", strings.Replace(readString(t, r8168),
		`BUILD_EXCLUSIVE_CONFIG="CONFIG_PCI"`, `BUILD_EXCLUSIVE_CONFIG="!CONFIG_PCI"`, 1))
	d, _ = plan(t, 0, "--kernel", kver, "--kernel-config", headers, not)
	if !d.Excluded || !strings.Contains(d.Reason, "BUILD_EXCLUSIVE_CONFIG") || !strings.Contains(d.Reason, "CONFIG_PCI") {
		t.Errorf("!CONFIG_PCI: %+v", d)
	}
	// The library's own plan with the same config agrees.
	c, err := dkms.ParseFile(not)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.PlanWith(kver, unameMachine[runtime.GOARCH], dkms.PlanOptions{KernelConfig: cfg})
	if err != nil || p.Excluded != d.Excluded || p.Reason != d.Reason {
		t.Errorf("dkms.Plan: %v %v %q; CLI %v %q", err, p.Excluded, p.Reason, d.Excluded, d.Reason)
	}
}

func readString(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDKMSPlanRejected: files dkms rejects exit 1, each problem on its own
// line, the file named once; unreadable inputs exit 1 naming them.
func TestDKMSPlanRejected(t *testing.T) {
	dir := t.TempDir()
	noName := writeFile(t, dir, "noname.conf", "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\n"+
		"BUILT_MODULE_LOCATION[0]=a\nBUILT_MODULE_LOCATION[1]=b\nDEST_MODULE_LOCATION[0]=/updates\nDEST_MODULE_LOCATION[1]=/updates\n")
	badDest := writeFile(t, dir, "baddest.conf", "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=foo\nDEST_MODULE_LOCATION[0]=/lib/foo\n")
	for _, tc := range []struct {
		file     string
		problems []string
	}{
		{noName, []string{"no BUILT_MODULE_NAME for record #0", "no BUILT_MODULE_NAME for record #1"}},
		{badDest, []string{`DEST_MODULE_LOCATION "/lib/foo" of record #0 does not begin with /kernel, /updates or /extra`}},
	} {
		out, stderr, code := kmodctl(t, "dkms", "plan", "--kernel", planKernel, tc.file)
		if code != 1 || out != "" || strings.Count(stderr, tc.file) != 1 || !strings.Contains(stderr, "dkms would reject") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", tc.file, code, out, stderr)
		}
		for _, p := range tc.problems {
			if !strings.Contains(stderr, "\n  "+p+"\n") {
				t.Errorf("%s: stderr does not list %q on its own line: %q", tc.file, p, stderr)
			}
		}
		d, _ := plan(t, 1, "--kernel", planKernel, tc.file)
		if !d.Rejected || d.Verdict != "rejected" || !reflect.DeepEqual(d.Problems, tc.problems) || !d.Complete {
			t.Errorf("%s --json: %+v", tc.file, d)
		}
	}

	syntax := writeFile(t, dir, "syntax.conf", "PACKAGE_NAME=foo\nif true; then\n")
	empty := t.TempDir()
	overrideBad := writeFile(t, dir, "override.conf", "MAKE[0]=\"unterminated\n")
	for _, tc := range []struct {
		args []string
		name string // in stderr, once
	}{
		{[]string{syntax}, syntax + ":"},
		{[]string{filepath.Join(dir, "missing.conf")}, filepath.Join(dir, "missing.conf")},
		{[]string{empty}, filepath.Join(empty, "dkms.conf")},
		{[]string{"--kernel-config", filepath.Join(dir, "missing.config"), debianConf(t, "r8168")}, filepath.Join(dir, "missing.config")},
		{[]string{"--override", overrideBad, debianConf(t, "r8168")}, overrideBad},
		{[]string{"--os-release", filepath.Join(dir, "missing-os-release"), debianConf(t, "r8168")}, filepath.Join(dir, "missing-os-release")},
	} {
		args := append([]string{"dkms", "plan", "--kernel", planKernel}, tc.args...)
		out, stderr, code := kmodctl(t, args...)
		if code != 1 || out != "" || strings.Count(stderr, tc.name) != 1 {
			t.Errorf("%v: exit %d, stdout %q; stderr names %s %d times, want once: %q", tc.args, code, out, tc.name, strings.Count(stderr, tc.name), stderr)
		}
		// --json prints no document for an unreadable input.
		if out, _, code := kmodctl(t, append(args, "--json")...); code != 1 || out != "" {
			t.Errorf("%v --json: exit %d, stdout %q", tc.args, code, out)
		}
	}
}

// TestDKMSPlanOverride: an /etc/dkms override replaces what dkms.conf set.
func TestDKMSPlanOverride(t *testing.T) {
	o := writeFile(t, t.TempDir(), "broadcom-sta.conf", "MAKE[0]=\"make KVER=$kernelver EXTRA=1\"\n")
	d, _ := plan(t, 0, "--kernel", planKernel, "--override", o, debianConf(t, "broadcom-sta"))
	if d.Make != "make KVER="+planKernel+" EXTRA=1" || !reflect.DeepEqual(d.Overrides, []string{o}) {
		t.Errorf("override: make %q, overrides %q", d.Make, d.Overrides)
	}
}

// TestDKMSPlanAgreesWithLibrary: for every file of the corpus, the CLI's
// plan is the dkms package's Plan, field for field, and its exit status
// follows from it: the CLI only formats.
func TestDKMSPlanAgreesWithLibrary(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(fixture.RepoRoot(t), "dkms/testdata/conf", "*.conf"))
	if err != nil || len(files) < 40 {
		t.Fatalf("%d files in the corpus (%v)", len(files), err)
	}
	arch := unameMachine[runtime.GOARCH]
	for _, f := range files {
		for _, kernel := range []string{planKernel, "3.10.0-1-amd64"} {
			c, err := dkms.ParseFile(f)
			if err != nil {
				t.Errorf("%s: %v", f, err)
				continue
			}
			p, err := c.PlanWith(kernel, arch, dkms.PlanOptions{})
			want := 0
			var ce *dkms.ConfError
			switch {
			case errors.As(err, &ce):
				want = 1
			case err != nil:
				t.Errorf("%s: %v", f, err)
				continue
			case len(p.Unknown) > 0:
				want = statusIncomplete
			}
			d, _ := plan(t, want, "--kernel", kernel, f)
			var mods []dkmsModuleJSON
			for _, m := range p.Modules {
				mods = append(mods, dkmsModuleJSON{m.Name, m.BuiltName, m.BuiltPath, m.DestDir, m.Strip})
			}
			var unknown []dkmsUnknownJSON
			for _, n := range p.Unknown {
				unknown = append(unknown, dkmsUnknownJSON{n, p.UnknownWhy[n]})
			}
			for _, cmp := range []struct {
				what      string
				got, want any
			}{
				{"modules", d.Modules, mods},
				{"unknown", d.Unknown, unknown},
				{"package", d.Package, dkmsPackageJSON{p.PackageName, p.PackageVersion}},
				{"make", d.Make, p.Make},
				{"clean", d.Clean, p.Clean},
				{"patches", d.Patches, p.Patches},
				{"excluded", d.Excluded, p.Excluded},
				{"reason", d.Reason != "" || !d.Excluded, p.Reason != "" || !p.Excluded},
				{"warnings", d.Warnings, p.Warnings},
				{"unsupported", d.Unsupported, c.Unsupported},
				{"rejected", d.Rejected, ce != nil},
			} {
				g, w := reflect.ValueOf(cmp.got), reflect.ValueOf(cmp.want)
				if g.Kind() == reflect.Slice && g.Len() == 0 && w.Len() == 0 {
					continue // [] in JSON, nil in the library
				}
				if !reflect.DeepEqual(cmp.got, cmp.want) {
					t.Errorf("%s on %s: %s: CLI %+v, dkms.Plan %+v", filepath.Base(f), kernel, cmp.what, cmp.got, cmp.want)
				}
			}
			if p.Excluded && d.Reason != p.Reason {
				t.Errorf("%s on %s: reason %q, dkms.Plan %q", filepath.Base(f), kernel, d.Reason, p.Reason)
			}
		}
	}
}
