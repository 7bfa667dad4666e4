package loadconf

import (
	"bytes"
	"io/fs"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func render(t *testing.T, o Options) map[string]File {
	t.Helper()
	files, err := Render(o)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	m := map[string]File{}
	var paths []string
	for _, f := range files {
		if _, dup := m[f.Path]; dup {
			t.Fatalf("two files %s", f.Path)
		}
		m[f.Path] = f
		paths = append(paths, f.Path)
	}
	if !slices.IsSorted(paths) {
		t.Errorf("files not sorted by path: %v", paths)
	}
	return m
}

// settings returns the non-comment, non-empty lines of a file.
func settings(f File) []string {
	var out []string
	for _, l := range strings.Split(string(f.Content), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func paths(m map[string]File) []string {
	var p []string
	for k := range m {
		p = append(p, k)
	}
	slices.Sort(p)
	return p
}

func TestRenderAWSKubernetes(t *testing.T) {
	const header = "# managed by packer-plugin-kmod"
	m := render(t, Options{
		Profiles: []string{"aws", "kubernetes"},
		Load:     []string{"dummy", "nvme", "ip-vs"},
		Header:   header,
	})
	want := []string{
		"/etc/modprobe.d/kmodctl-aws.conf",
		"/etc/modules-load.d/kmodctl.conf",
		"/etc/sysctl.d/99-kmodctl-kubernetes.conf",
	}
	if got := paths(m); !reflect.DeepEqual(got, want) {
		t.Fatalf("paths = %v, want %v", got, want)
	}
	for _, f := range m {
		if !bytes.HasPrefix(f.Content, []byte(header+"\n")) {
			t.Errorf("%s does not start with the header:\n%s", f.Path, f.Content)
		}
		if !bytes.HasSuffix(f.Content, []byte("\n")) {
			t.Errorf("%s does not end with a newline", f.Path)
		}
		if f.Mode != 0o644 {
			t.Errorf("%s: mode %v", f.Path, f.Mode)
		}
	}
	// Profiles in the given order, then Load; nvme and ip-vs (= ip_vs)
	// are dropped as duplicates.
	wantLoad := []string{"nvme_core", "nvme", "ena", "overlay", "br_netfilter",
		"ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack", "dummy"}
	if got := settings(m[ModulesLoadPath]); !reflect.DeepEqual(got, wantLoad) {
		t.Errorf("modules-load = %v, want %v", got, wantLoad)
	}
	if got := settings(m["/etc/modprobe.d/kmodctl-aws.conf"]); !reflect.DeepEqual(got, []string{"options nvme_core io_timeout=4294967295"}) {
		t.Errorf("aws modprobe.d = %q", got)
	}
	wantSysctl := []string{
		"net.bridge.bridge-nf-call-iptables = 1",
		"net.bridge.bridge-nf-call-ip6tables = 1",
		"net.ipv4.ip_forward = 1",
	}
	if got := settings(m["/etc/sysctl.d/99-kmodctl-kubernetes.conf"]); !reflect.DeepEqual(got, wantSysctl) {
		t.Errorf("sysctl = %q", got)
	}
	// Every profile line is explained by a comment right before it.
	lines := strings.Split(string(m[ModulesLoadPath].Content), "\n")
	for i, l := range lines {
		if l == "nvme_core" && !strings.Contains(lines[i-1], "aws: ") {
			t.Errorf("nvme_core not preceded by its reason: %q", lines[i-1])
		}
		if l == "dummy" && strings.HasPrefix(lines[i-1], "# ") {
			t.Errorf("an explicit load got a reason comment: %q", lines[i-1])
		}
	}
}

func TestRenderEveryProfile(t *testing.T) {
	for _, p := range Profiles() {
		t.Run(p.Name, func(t *testing.T) {
			o := Options{Profiles: []string{p.Name}}
			if p.Name == "alibaba" {
				o.ThirdPartyNIC = true
			}
			m := render(t, o)
			if got := settings(m[ModulesLoadPath]); !reflect.DeepEqual(got, p.Load) {
				t.Errorf("modules-load = %v, want %v", got, p.Load)
			}
			if p.Sysctl != nil {
				if _, ok := m["/etc/sysctl.d/99-kmodctl-"+p.Name+".conf"]; !ok {
					t.Errorf("no sysctl file: %v", paths(m))
				}
			}
			for path, f := range m {
				if strings.HasPrefix(path, "/etc/modprobe.d/") {
					for _, l := range settings(f) {
						if !regexp.MustCompile(`^(options \S+ \S.*|blacklist \S+)$`).MatchString(l) {
							t.Errorf("%s: odd line %q", path, l)
						}
					}
				}
			}
		})
	}
	m := render(t, Options{Profiles: []string{"alibaba"}, ThirdPartyNIC: true})
	if got := settings(m["/etc/modprobe.d/kmodctl-alibaba.conf"]); !reflect.DeepEqual(got, []string{"blacklist ena"}) {
		t.Errorf("alibaba with ThirdPartyNIC: %q", got)
	}
	m = render(t, Options{Profiles: []string{"alibaba"}})
	if _, ok := m["/etc/modprobe.d/kmodctl-alibaba.conf"]; ok {
		t.Errorf("alibaba without ThirdPartyNIC blacklists: %v", paths(m))
	}
}

func TestProfiles(t *testing.T) {
	ps := Profiles()
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	if want := []string{"aws", "azure", "gcp", "alibaba", "generic", "kubernetes"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("profiles %v, want %v", names, want)
	}
	source := regexp.MustCompile(`\([^()]+\)$`)
	for _, p := range ps {
		if p.Description == "" || len(p.Load) == 0 {
			t.Errorf("%s: empty description or load list", p.Name)
		}
		n := len(p.Load) + len(p.Sysctl)
		for _, mc := range p.Modprobe {
			n += len(mc.Options) + len(mc.Blacklist)
		}
		conditional := 0
		for _, r := range p.Reasons {
			if strings.HasPrefix(r, "if ThirdPartyNIC: ") {
				conditional++
			}
			if !source.MatchString(r) {
				t.Errorf("%s: reason without its source in parentheses at the end: %q", p.Name, r)
			}
		}
		if len(p.Reasons) != n+conditional {
			t.Errorf("%s: %d reasons for %d settings (+%d conditional)", p.Name, len(p.Reasons), n, conditional)
		}
		for _, m := range p.Load {
			if err := checkModuleName(m); err != nil {
				t.Errorf("%s: %v", p.Name, err)
			}
		}
	}
	// Load orders that matter.
	idx := func(p Profile, m string) int { return slices.Index(p.Load, m) }
	aws, azure := ps[0], ps[1]
	if !(idx(aws, "nvme_core") < idx(aws, "nvme") && idx(aws, "nvme") < idx(aws, "ena")) {
		t.Errorf("aws order %v: want nvme_core, nvme, then ena", aws.Load)
	}
	if azure.Load[0] != "hv_vmbus" {
		t.Errorf("azure order %v: want hv_vmbus first", azure.Load)
	}
	if got := aws.Modprobe[0].Options["nvme_core"]; got != "io_timeout=4294967295" {
		t.Errorf("aws nvme_core options %q", got)
	}
}

func TestRenderDeterministic(t *testing.T) {
	o := Options{
		Profiles: []string{"generic", "kubernetes"},
		Modprobe: []ModprobeConf{{
			Name:     "many",
			Options:  map[string]string{"a": "x=1", "b": "y=2", "c": "z=3", "d": "w=4", "e-f": `s="a b" t`},
			Aliases:  map[string]string{"pci:v00001234d*": "a", "usb:v1*": "b", "net-pf-99": "c"},
			Softdeps: map[string]string{"a": "pre: b  c", "d": "post: e"},
			Installs: map[string]string{"g": "/sbin/modprobe --ignore-install g && echo x", "h": "/bin/true"},
		}},
		DisableModules: []string{"cramfs", "freevxfs", "cramfs"},
		Audit:          true, Arch: "amd64",
	}
	first, err := Render(o)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		again, err := Render(o)
		if err != nil || !reflect.DeepEqual(first, again) {
			t.Fatalf("Render is not deterministic (%v)", err)
		}
	}
	m := render(t, o)
	want := []string{
		"alias net-pf-99 c",
		"alias pci:v00001234d* a",
		"alias usb:v1* b",
		"options a x=1",
		"options b y=2",
		"options c z=3",
		"options d w=4",
		`options e-f s="a b" t`,
		"softdep a pre: b c",
		"softdep d post: e",
		"install g /sbin/modprobe --ignore-install g && echo x",
		"install h /bin/true",
	}
	if got := settings(m["/etc/modprobe.d/many.conf"]); !reflect.DeepEqual(got, want) {
		t.Errorf("many.conf:\n%s\nwant %q", strings.Join(got, "\n"), want)
	}
	wantDisable := []string{"install cramfs /bin/false", "blacklist cramfs", "install freevxfs /bin/false", "blacklist freevxfs"}
	if got := settings(m[DisablePath]); !reflect.DeepEqual(got, wantDisable) {
		t.Errorf("disable = %q", got)
	}
}

func TestRenderUdev(t *testing.T) {
	rules := []string{
		`ACTION=="add", SUBSYSTEM=="net", KERNEL=="eth*", RUN+="/usr/bin/true"`,
		`# a comment`,
		`SUBSYSTEM=="block",ATTRS{vendor}=="Amazon*", SYMLINK+="ebs/%k"`,
		`KERNEL=="nvme[0-9]*n*", ENV{ID_SERIAL}!="", PROGRAM=e"/bin/echo \"x\"", OPTIONS:="nowatch"`,
	}
	m := render(t, Options{UdevRules: []UdevRule{{Name: "60-kmodctl", Rules: rules}}})
	f := m["/etc/udev/rules.d/60-kmodctl.rules"]
	if got := strings.Split(strings.TrimSuffix(string(f.Content), "\n"), "\n"); !reflect.DeepEqual(got, rules) {
		t.Errorf("udev file %q", got)
	}
	if f.Mode != fs.FileMode(0o644) {
		t.Errorf("mode %v", f.Mode)
	}
}

// auditLineRE is the strict pattern of the lines Render writes in the
// audit rules file: auditctl is not installed on the build machines, so
// the syntax is checked here against what auditctl(8) and audit.rules(7)
// accept: -a always,exit, -F arch=b32|b64 before the -S syscalls, -k key;
// -w path -p x -k key.
var auditLineRE = regexp.MustCompile(`^(#.*|-a always,exit -F arch=b(32|64)( -S (init_module|finit_module|delete_module))+ -k kmodctl-modules|-w (/usr)?/s?bin/(insmod|rmmod|modprobe|kmod) -p x -k kmodctl-modules)$`)

func TestRenderAudit(t *testing.T) {
	for arch, abis := range map[string][]string{
		"amd64": {"b64", "b32"}, "arm64": {"b64"}, "386": {"b32"}, "arm": {"b32"},
		"ppc64le": {"b64"}, "riscv64": {"b64"}, "s390x": {"b64"},
	} {
		m := render(t, Options{Audit: true, Arch: arch, Header: "managed"})
		f, ok := m[AuditPath]
		if !ok || len(m) != 1 {
			t.Fatalf("%s: files %v", arch, paths(m))
		}
		if f.Mode != 0o640 {
			t.Errorf("%s: mode %v", arch, f.Mode)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSuffix(string(f.Content), "\n"), "\n") {
			if !auditLineRE.MatchString(l) {
				t.Errorf("%s: line not in auditctl syntax: %q", arch, l)
			}
			if a, ok := strings.CutPrefix(l, "-a always,exit -F arch="); ok {
				got = append(got, a[:3])
				for _, sc := range auditSyscalls {
					if !strings.Contains(l, " -S "+sc+" ") {
						t.Errorf("%s: %q lacks %s", arch, l, sc)
					}
				}
			}
		}
		if !reflect.DeepEqual(got, abis) {
			t.Errorf("%s: syscall rules for %v, want %v", arch, got, abis)
		}
		for _, w := range []string{"/sbin/insmod", "/sbin/rmmod", "/sbin/modprobe", "/usr/sbin/insmod", "/usr/sbin/rmmod", "/usr/sbin/modprobe", "/usr/bin/kmod"} {
			if !bytes.Contains(f.Content, []byte("-w "+w+" -p x -k "+AuditKey+"\n")) {
				t.Errorf("%s: no watch on %s", arch, w)
			}
		}
		if !bytes.HasPrefix(f.Content, []byte("# managed\n")) {
			t.Errorf("%s: header missing", arch)
		}
	}
}

func TestRenderEmpty(t *testing.T) {
	files, err := Render(Options{Header: "# x"})
	if err != nil || len(files) != 0 {
		t.Fatalf("Render(empty) = %v, %v", files, err)
	}
}

func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want []string // substrings of the error
	}{
		{"unknown profile", Options{Profiles: []string{"aws", "openstack"}},
			[]string{`Profiles[1]`, `"openstack"`, "aws, azure, gcp, alibaba, generic, kubernetes"}},
		{"profile twice", Options{Profiles: []string{"gcp", "gcp"}}, []string{`Profiles[1]`, `"gcp"`, "twice"}},
		{"bad load name", Options{Load: []string{"ok", "no way"}}, []string{`Load[1]`, `"no way"`}},
		{"newline in load", Options{Load: []string{"a\nb"}}, []string{`Load[0]`, `"a\nb"`}},
		{"long load name", Options{Load: []string{strings.Repeat("a", 56)}}, []string{`Load[0]`, "longer than 55"}},
		{"newline in options", Options{Modprobe: []ModprobeConf{{Name: "x", Options: map[string]string{"m": "a=1\ninstall m /bin/sh"}}}},
			[]string{`Modprobe[0] "x"`, `Options["m"]`, "newline"}},
		{"unbalanced quote", Options{Modprobe: []ModprobeConf{{Name: "x", Options: map[string]string{"m": `a="b`}}}},
			[]string{`Options["m"]`, "quote"}},
		{"trailing backslash", Options{Modprobe: []ModprobeConf{{Name: "x", Installs: map[string]string{"m": `/bin/x \`}}}},
			[]string{`Installs["m"]`, "backslash"}},
		{"bad softdep", Options{Modprobe: []ModprobeConf{{Name: "x", Softdeps: map[string]string{"m": "a b"}}}},
			[]string{`Softdeps["m"]`, `"a b"`, "pre:"}},
		{"empty softdep", Options{Modprobe: []ModprobeConf{{Name: "x", Softdeps: map[string]string{"m": "pre: post:"}}}},
			[]string{`Softdeps["m"]`, "no module"}},
		{"bad alias", Options{Modprobe: []ModprobeConf{{Name: "x", Aliases: map[string]string{"a b": "m"}}}},
			[]string{`Modprobe[0] "x"`, `"a b"`}},
		{"bad conf name", Options{Modprobe: []ModprobeConf{{Name: "../etc/passwd", Blacklist: []string{"m"}}}},
			[]string{`Modprobe[0]`, `"../etc/passwd"`}},
		{"empty conf", Options{Modprobe: []ModprobeConf{{Name: "x"}}}, []string{`Modprobe[0] "x"`, "no settings"}},
		{"duplicate conf", Options{Modprobe: []ModprobeConf{{Name: "x", Blacklist: []string{"a"}}, {Name: "x", Blacklist: []string{"b"}}}},
			[]string{`Modprobe[1] "x"`, "/etc/modprobe.d/x.conf", `Modprobe[0] "x"`}},
		{"conf named like a profile's", Options{Profiles: []string{"aws"}, Modprobe: []ModprobeConf{{Name: "kmodctl-aws", Blacklist: []string{"b"}}}},
			[]string{`Modprobe[0] "kmodctl-aws"`, `profile "aws"`}},
		{"conf named like the disable file", Options{DisableModules: []string{"udf"}, Modprobe: []ModprobeConf{{Name: "kmodctl-disable", Blacklist: []string{"b"}}}},
			[]string{"DisableModules", DisablePath, `Modprobe[0] "kmodctl-disable"`}},
		{"duplicate udev", Options{UdevRules: []UdevRule{{Name: "60-a", Rules: []string{`KERNEL=="x"`}}, {Name: "60-a", Rules: []string{`KERNEL=="y"`}}}},
			[]string{`UdevRules[1] "60-a"`, `UdevRules[0] "60-a"`}},
		{"udev name without priority", Options{UdevRules: []UdevRule{{Name: "kmodctl", Rules: []string{`KERNEL=="x"`}}}},
			[]string{`UdevRules[0]`, `"kmodctl"`, "priority"}},
		{"udev rule with newline", Options{UdevRules: []UdevRule{{Name: "60-a", Rules: []string{"KERNEL==\"x\"\nRUN+=\"/bin/sh\""}}}},
			[]string{`UdevRules[0] "60-a"`, "Rules[0]", "newline"}},
		{"udev rule unquoted", Options{UdevRules: []UdevRule{{Name: "60-a", Rules: []string{`KERNEL==x`}}}},
			[]string{`Rules[0]`, "double quotes"}},
		{"udev rule without operator", Options{UdevRules: []UdevRule{{Name: "60-a", Rules: []string{`KERNEL "x"`}}}},
			[]string{`Rules[0]`, "operator"}},
		{"udev rule unterminated", Options{UdevRules: []UdevRule{{Name: "60-a", Rules: []string{`KERNEL=="x`}}}},
			[]string{`Rules[0]`, "unterminated"}},
		{"udev rule missing comma", Options{UdevRules: []UdevRule{{Name: "60-a", Rules: []string{`KERNEL=="x"RUN+="y"`}}}},
			[]string{`Rules[0]`, "','"}},
		{"udev without rules", Options{UdevRules: []UdevRule{{Name: "60-a"}}}, []string{`UdevRules[0] "60-a"`, "no rules"}},
		{"load and disable", Options{Load: []string{"usb-storage"}, DisableModules: []string{"usb_storage"}},
			[]string{`"usb-storage"`, "Load[0]", "DisableModules[0]"}},
		{"load and blacklist", Options{Profiles: []string{"azure"}, Modprobe: []ModprobeConf{{Name: "x", Blacklist: []string{"hv_utils"}}}},
			[]string{`"hv_utils"`, `profile "azure"`, `blacklisted by Modprobe[0] "x"`}},
		{"load and install /bin/true", Options{Load: []string{"m"}, Modprobe: []ModprobeConf{{Name: "x", Installs: map[string]string{"m": "/bin/true"}}}},
			[]string{`"m"`, "Load[0]", "install /bin/true"}},
		{"aws and alibaba with third-party NIC", Options{Profiles: []string{"aws", "alibaba"}, ThirdPartyNIC: true},
			[]string{`"ena"`, `profile "aws"`, `blacklisted by profile "alibaba" (ThirdPartyNIC)`}},
		{"ThirdPartyNIC without alibaba", Options{Profiles: []string{"aws"}, ThirdPartyNIC: true}, []string{"ThirdPartyNIC", "alibaba"}},
		{"option conflict", Options{Profiles: []string{"aws"}, Modprobe: []ModprobeConf{{Name: "x", Options: map[string]string{"nvme-core": "io-timeout=30"}}}},
			[]string{`"nvme-core"`, "io-timeout=30", `Modprobe[0] "x"`, "io-timeout=4294967295", `profile "aws"`}},
		{"softdep conflict", Options{Modprobe: []ModprobeConf{{Name: "x", Softdeps: map[string]string{"m": "pre: a"}}, {Name: "y", Softdeps: map[string]string{"m": "pre: b"}}}},
			[]string{`"m"`, `"pre: b"`, `Modprobe[1] "y"`, `"pre: a"`, `Modprobe[0] "x"`}},
		{"install conflict", Options{DisableModules: []string{"m"}, Modprobe: []ModprobeConf{{Name: "x", Installs: map[string]string{"m": "/sbin/foo"}}}},
			[]string{`"m"`, `"/sbin/foo"`, `"/bin/false"`}},
		{"bad disable name", Options{DisableModules: []string{"a/b"}}, []string{`DisableModules[0]`, `"a/b"`}},
		{"audit without arch", Options{Audit: true}, []string{"Arch", "needed"}},
		{"audit unknown arch", Options{Audit: true, Arch: "mips64"}, []string{"Arch", `"mips64"`, "amd64"}},
		{"unknown arch", Options{Arch: "sparc"}, []string{"Arch", `"sparc"`}},
		{"header newline", Options{Header: "# a\nb", Load: []string{"m"}}, []string{"Header", "newline"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := Render(tc.o)
			if err == nil {
				t.Fatalf("no error; files %v", files)
			}
			if files != nil {
				t.Errorf("files returned with an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestRenderReportsEveryError(t *testing.T) {
	_, err := Render(Options{Load: []string{"a b", "c d"}, Profiles: []string{"x"}})
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"Load[0]", "Load[1]", "Profiles[0]"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

func TestParseOptions(t *testing.T) {
	ps, err := parseOptions(`a=1  b="x y"	c d-e=`)
	if err != nil {
		t.Fatal(err)
	}
	want := []param{{"a", "1"}, {"b", `"x y"`}, {"c", ""}, {"d-e", ""}}
	if !reflect.DeepEqual(ps, want) {
		t.Errorf("got %q, want %q", ps, want)
	}
	for _, bad := range []string{"", "   ", "=1", "a=1 =2", "a\x01", `a="b`, "a=\xff"} {
		if _, err := parseOptions(bad); err == nil {
			t.Errorf("parseOptions(%q) accepted", bad)
		}
	}
}
