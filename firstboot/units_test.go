package firstboot

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// hookDirectives is a file's content without its comment lines: what
// systemd (or sh) reads.
func hookDirectives(b []byte) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func mustRender(t *testing.T, s HookSettings) ([]File, []Link) {
	t.Helper()
	files, links, err := RenderHook(s)
	if err != nil {
		t.Fatalf("RenderHook(%+v): %v", s, err)
	}
	return files, links
}

func TestRenderHookGolden(t *testing.T) {
	verify := func(drift, cond string) string {
		return `
[Unit]
Description=kmodctl: verify the managed kernel modules against the image manifest
DefaultDependencies=no
RequiresMountsFor=/usr/lib/kmodctl /usr/libexec/kmodctl /boot
Conflicts=shutdown.target
Before=systemd-modules-load.service sysinit.target shutdown.target
ConditionVirtualization=` + cond + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/kmodctl/kmodctl firstboot verify --on-drift=` + drift + ` --on-uncovered=warn
StandardOutput=journal+console
TimeoutStartSec=5min

[Install]
WantedBy=sysinit.target
`
	}
	lockdown := func(after, cond string) string {
		return `
[Unit]
Description=kmodctl: disable module loading (kernel.modules_disabled=1)
DefaultDependencies=no
After=basic.target systemd-modules-load.service ` + after + `
Before=shutdown.target
Conflicts=shutdown.target
ConditionVirtualization=` + cond + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/kmodctl/kmodctl firstboot lockdown
StandardOutput=journal+console
TimeoutStartSec=90s

[Install]
WantedBy=multi-user.target
`
	}
	const (
		verifyPath    = "/etc/systemd/system/kmodctl-verify.service"
		firstbootPath = "/etc/systemd/system/kmodctl-firstboot.service"
		lockdownPath  = "/etc/systemd/system/kmodctl-lockdown.service"
	)
	link := func(target, unit string) Link {
		return Link{Path: "/etc/systemd/system/" + target + ".wants/" + unit, Target: "/etc/systemd/system/" + unit}
	}
	type golden struct {
		path string
		mode os.FileMode
		body string
	}
	for _, tc := range []struct {
		name  string
		s     HookSettings
		files []golden
		links []Link
	}{
		{
			name: "defaults",
			files: []golden{
				{verifyPath, 0o644, verify("warn", "vm")},
				{firstbootPath, 0o644, `
[Unit]
Description=kmodctl: check and load the managed kernel modules on first boot
After=local-fs.target systemd-modules-load.service kmodctl-verify.service
ConditionVirtualization=vm

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/kmodctl/kmodctl firstboot run --once --on-drift=warn --on-uncovered=warn
StandardOutput=journal+console
TimeoutStartSec=5min

[Install]
WantedBy=multi-user.target
`},
			},
			links: []Link{link("sysinit.target", "kmodctl-verify.service"), link("multi-user.target", "kmodctl-firstboot.service")},
		},
		{
			name: "network driver, lockdown, fail",
			s:    HookSettings{Hook: "systemd", Mode: "once", OnDrift: "fail", NetworkDriver: true, Lockdown: true, ConditionVirtualization: "kvm"},
			files: []golden{
				{verifyPath, 0o644, verify("fail", "kvm")},
				{firstbootPath, 0o644, `
[Unit]
Description=kmodctl: check and load the managed kernel modules on first boot
DefaultDependencies=no
Wants=network-pre.target
After=local-fs.target systemd-modules-load.service kmodctl-verify.service cloud-init-local.service
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
ConditionVirtualization=kvm

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/kmodctl/kmodctl firstboot run --once --on-drift=fail --on-uncovered=warn --lockdown
StandardOutput=journal+console
TimeoutStartSec=5min

[Install]
WantedBy=multi-user.target
`},
				{lockdownPath, 0o644, lockdown("kmodctl-firstboot.service", "kvm")},
			},
			links: []Link{link("sysinit.target", "kmodctl-verify.service"), link("multi-user.target", "kmodctl-firstboot.service"),
				link("multi-user.target", "kmodctl-lockdown.service")},
		},
		{
			name: "every boot",
			s:    HookSettings{Mode: "every-boot", OnUncovered: "fail"},
			files: []golden{
				{verifyPath, 0o644, strings.Replace(verify("warn", "vm"), "--on-uncovered=warn", "--on-uncovered=fail", 1)},
				{firstbootPath, 0o644, `
[Unit]
Description=kmodctl: check and load the managed kernel modules at boot
After=local-fs.target systemd-modules-load.service kmodctl-verify.service
ConditionVirtualization=vm

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/libexec/kmodctl/kmodctl firstboot run --on-drift=warn --on-uncovered=fail
StandardOutput=journal+console
TimeoutStartSec=5min

[Install]
WantedBy=multi-user.target
`},
			},
			links: []Link{link("sysinit.target", "kmodctl-verify.service"), link("multi-user.target", "kmodctl-firstboot.service")},
		},
		{
			name: "cloud-init, lockdown, not in a container",
			s:    HookSettings{Hook: "cloud-init", Lockdown: true, NetworkDriver: true, ConditionVirtualization: "!container"},
			files: []golden{
				{verifyPath, 0o644, verify("warn", "!container")},
				{"/var/lib/cloud/scripts/per-instance/kmodctl-firstboot", 0o755, `
if { systemd-detect-virt --quiet --container; }; then
	echo "kmodctl: first-boot part skipped: ConditionVirtualization=!container does not hold" >&2
	exit 0
fi
exec /usr/libexec/kmodctl/kmodctl firstboot run --once --on-drift=warn --on-uncovered=warn --lockdown
`},
				{lockdownPath, 0o644, lockdown("cloud-final.service", "!container")},
			},
			links: []Link{link("sysinit.target", "kmodctl-verify.service"), link("multi-user.target", "kmodctl-lockdown.service")},
		},
		{
			name: "cloud-init every boot",
			s:    HookSettings{Hook: "cloud-init", Mode: "every-boot", AgentPath: "/opt/kmodctl/bin/kmodctl"},
			files: []golden{
				{verifyPath, 0o644, strings.ReplaceAll(strings.Replace(verify("warn", "vm"), "/usr/libexec/kmodctl ", "/opt/kmodctl/bin ", 1),
					"/usr/libexec/kmodctl/kmodctl", "/opt/kmodctl/bin/kmodctl")},
				{"/var/lib/cloud/scripts/per-boot/kmodctl-firstboot", 0o755, `
if ! { systemd-detect-virt --quiet --vm && ! systemd-detect-virt --quiet --container; }; then
	echo "kmodctl: first-boot part skipped: ConditionVirtualization=vm does not hold" >&2
	exit 0
fi
exec /opt/kmodctl/bin/kmodctl firstboot run --on-drift=warn --on-uncovered=warn
`},
			},
			links: []Link{link("sysinit.target", "kmodctl-verify.service")},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, links := mustRender(t, tc.s)
			if len(files) != len(tc.files) {
				var got []string
				for _, f := range files {
					got = append(got, f.Path)
				}
				t.Fatalf("files %q, want %d", got, len(tc.files))
			}
			for i, want := range tc.files {
				f := files[i]
				if f.Path != want.path || f.Mode != want.mode {
					t.Errorf("file %d: %s %v, want %s %v", i, f.Path, f.Mode, want.path, want.mode)
				}
				if got, want := hookDirectives(f.Content), strings.TrimPrefix(want.body, "\n"); got != want {
					t.Errorf("%s directives:\n%s\nwant:\n%s", f.Path, got, want)
				}
				// The header: generated by packer-plugin-kmod, and what it does.
				lines := strings.SplitN(string(f.Content), "\n", 4)
				if want.mode == 0o755 {
					if lines[0] != "#!/bin/sh" {
						t.Errorf("%s starts %q", f.Path, lines[0])
					}
					lines = lines[1:]
				}
				if !strings.HasPrefix(lines[0], "# Generated by packer-plugin-kmod") || !strings.HasPrefix(lines[1], "# ") || len(lines[1]) < 20 {
					t.Errorf("%s header:\n%s\n%s", f.Path, lines[0], lines[1])
				}
				// The once-per-instance contract is in the file that runs
				// the first-boot part.
				once := strings.Contains(hookDirectives(f.Content), "--once")
				if hasDone := strings.Contains(string(f.Content), DonePath); once != hasDone {
					t.Errorf("%s: --once %v but mentions %s %v", f.Path, once, DonePath, hasDone)
				}
				if !bytes.HasSuffix(f.Content, []byte("\n")) {
					t.Errorf("%s does not end with a newline", f.Path)
				}
				for n, l := range strings.Split(string(f.Content), "\n") {
					if strings.TrimRight(l, " \t") != l || strings.HasPrefix(l, "#") && len(l) > 80 {
						t.Errorf("%s line %d: %q: trailing white space or a comment line over 80 characters", f.Path, n+1, l)
					}
				}
			}
			if !reflect.DeepEqual(links, tc.links) {
				t.Errorf("links %+v, want %+v", links, tc.links)
			}
			// Deterministic.
			files2, links2 := mustRender(t, tc.s)
			if !reflect.DeepEqual(files, files2) || !reflect.DeepEqual(links, links2) {
				t.Error("two renderings differ")
			}
		})
	}
}

func TestRenderHookErrors(t *testing.T) {
	for _, tc := range []struct {
		s            HookSettings
		field, value string
	}{
		{HookSettings{Hook: "upstart"}, "hook", "upstart"},
		{HookSettings{Hook: "Systemd"}, "hook", "Systemd"},
		{HookSettings{Mode: "always"}, "mode", "always"},
		{HookSettings{Mode: "every_boot"}, "mode", "every_boot"},
		{HookSettings{OnDrift: "ignore"}, "on_drift", "ignore"},
		{HookSettings{OnUncovered: "FAIL "}, "on_uncovered", "FAIL "},
		{HookSettings{ConditionVirtualization: "kvm qemu"}, "condition_virtualization", "kvm qemu"},
		{HookSettings{ConditionVirtualization: "vm\nExecStartPre=/bin/evil"}, "condition_virtualization", "vm\nExecStartPre=/bin/evil"},
		{HookSettings{ConditionVirtualization: "vm\t"}, "condition_virtualization", "vm\t"},
		{HookSettings{ConditionVirtualization: " vm"}, "condition_virtualization", " vm"},
		{HookSettings{ConditionVirtualization: "!"}, "condition_virtualization", "!"},
		{HookSettings{ConditionVirtualization: "!!vm"}, "condition_virtualization", "!!vm"},
		{HookSettings{ConditionVirtualization: "|vm"}, "condition_virtualization", "|vm"},
		{HookSettings{ConditionVirtualization: "none"}, "condition_virtualization", "none"},
		{HookSettings{ConditionVirtualization: "kmv"}, "condition_virtualization", "kmv"},
		{HookSettings{ConditionVirtualization: "KVM"}, "condition_virtualization", "KVM"},
		{HookSettings{ConditionVirtualization: "%H"}, "condition_virtualization", "%H"},
		{HookSettings{AgentPath: "kmodctl"}, "agent_path", "kmodctl"},
		{HookSettings{AgentPath: "/usr/lib/../bin/kmodctl"}, "agent_path", "/usr/lib/../bin/kmodctl"},
		{HookSettings{AgentPath: "/usr/bin/kmod ctl"}, "agent_path", "/usr/bin/kmod ctl"},
		{HookSettings{AgentPath: "/usr/bin/kmodctl%i"}, "agent_path", "/usr/bin/kmodctl%i"},
		{HookSettings{AgentPath: "/usr/bin/kmodctl/"}, "agent_path", "/usr/bin/kmodctl/"},
		{HookSettings{AgentPath: "/usr//bin/kmodctl"}, "agent_path", "/usr//bin/kmodctl"},
		{HookSettings{AgentPath: "/"}, "agent_path", "/"},
		{HookSettings{AgentPath: "/usr/./bin/kmodctl"}, "agent_path", "/usr/./bin/kmodctl"},
		{HookSettings{AgentPath: "/usr/bin/$X"}, "agent_path", "/usr/bin/$X"},
	} {
		files, links, err := RenderHook(tc.s)
		if err == nil {
			t.Errorf("%+v: no error (%d files, %d links)", tc.s, len(files), len(links))
			continue
		}
		if !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.value)) {
			t.Errorf("%+v: error %q does not name %s %q", tc.s, err, tc.field, tc.value)
		}
		if files != nil || links != nil {
			t.Errorf("%+v: files or links with the error", tc.s)
		}
	}
	for _, v := range []string{"vm", "!vm", "container", "!container", "private-users", "kvm", "!qemu", "amazon", "google",
		"vm-other", "systemd-nspawn", "yes", "No", "1", "false", "ON", "!true"} {
		files, _, err := RenderHook(HookSettings{ConditionVirtualization: v})
		if err != nil {
			t.Errorf("condition_virtualization %q: %v", v, err)
			continue
		}
		for _, f := range files {
			if !strings.Contains(string(f.Content), "\nConditionVirtualization="+v+"\n") {
				t.Errorf("%s lacks ConditionVirtualization=%s", f.Path, v)
			}
		}
	}
}

// hookVirtHolds is systemd's ConditionVirtualization= test (condition.c)
// for a VM vm (or "none"), a container ctr (or "none") and a user
// namespace userns: the detected virtualization is the container if any,
// else the VM.
func hookVirtHolds(cond, vm, ctr string, userns bool) bool {
	v, neg := strings.CutPrefix(cond, "!")
	det, isVM := ctr, false
	if ctr == "none" {
		det, isVM = vm, vm != "none"
	}
	var r bool
	switch b, isBool := hookBool(v); {
	case v == "private-users":
		r = userns
	case isBool:
		r = b == (det != "none")
	case v == "vm":
		r = isVM
	case v == "container":
		r = ctr != "none"
	default:
		r = det != "none" && det == v
	}
	return r != neg
}

// TestCloudInitScriptCondition runs the cloud-init script with a fake
// systemd-detect-virt and a fake agent: the agent runs, with the rendered
// arguments, exactly when systemd's ConditionVirtualization= would hold.
func TestCloudInitScriptCondition(t *testing.T) {
	sh := fixture.Tool(t, "sh")
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// Like systemd-detect-virt: --vm looks at the VM only, --container at
	// the container only, no option at the container if any, else the VM.
	fake := `#!/bin/sh
quiet= mode=any
for a; do
	case $a in
	--quiet|-q) quiet=1 ;;
	--vm|-v) mode=vm ;;
	--container|-c) mode=container ;;
	--private-users) mode=userns ;;
	*) echo "fake systemd-detect-virt: unexpected $a" >&2; exit 2 ;;
	esac
done
case $mode in
vm) v=$FAKE_VM ;;
container) v=$FAKE_CONTAINER ;;
userns) [ "$FAKE_USERNS" = 1 ] && exit 0; exit 1 ;;
any) v=$FAKE_CONTAINER; [ "$v" = none ] && v=$FAKE_VM ;;
esac
[ -n "$quiet" ] || echo "$v"
[ "$v" != none ]
`
	if err := os.WriteFile(filepath.Join(bin, "systemd-detect-virt"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(dir, "agent", "kmodctl")
	if err := os.Mkdir(filepath.Dir(agent), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agent, []byte("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGS_OUT\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	envs := []struct {
		vm, ctr string
		userns  bool
	}{
		{"kvm", "none", false}, {"qemu", "none", false}, {"none", "none", false}, {"none", "docker", true},
		{"kvm", "systemd-nspawn", true}, {"amazon", "none", false},
	}
	for _, cond := range []string{"vm", "!vm", "container", "!container", "kvm", "!kvm", "qemu", "docker",
		"yes", "no", "!yes", "private-users", "!private-users", "amazon"} {
		for _, mode := range []string{"once", "every-boot"} {
			s := HookSettings{Hook: "cloud-init", Mode: mode, ConditionVirtualization: cond, AgentPath: agent, Lockdown: mode == "once"}
			files, _ := mustRender(t, s)
			script := files[1]
			wantArgs := "firstboot\nrun\n--once\n--on-drift=warn\n--on-uncovered=warn\n--lockdown\n"
			if mode == "every-boot" {
				wantArgs = "firstboot\nrun\n--on-drift=warn\n--on-uncovered=warn\n"
			}
			p := filepath.Join(dir, "script")
			if err := os.WriteFile(p, script.Content, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, e := range envs {
				out := filepath.Join(dir, "args")
				os.Remove(out)
				cmd := exec.Command(sh, p)
				cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "ARGS_OUT=" + out,
					"FAKE_VM=" + e.vm, "FAKE_CONTAINER=" + e.ctr, fmt.Sprintf("FAKE_USERNS=%d", map[bool]int{true: 1}[e.userns])}
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				if err := cmd.Run(); err != nil {
					t.Errorf("%s %+v: %v\n%s", cond, e, err, stderr.String())
					continue
				}
				args, err := os.ReadFile(out)
				ran := err == nil
				if want := hookVirtHolds(cond, e.vm, e.ctr, e.userns); ran != want {
					t.Errorf("ConditionVirtualization=%s, vm %s, container %s, userns %v: agent ran %v, want %v (stderr %q)",
						cond, e.vm, e.ctr, e.userns, ran, want, stderr.String())
				}
				if ran && string(args) != wantArgs {
					t.Errorf("%s: agent args %q, want %q", cond, args, wantArgs)
				}
				if !ran && !strings.Contains(stderr.String(), "skipped: ConditionVirtualization="+cond+" does not hold") {
					t.Errorf("%s: skipped without a note: %q", cond, stderr.String())
				}
			}
		}
	}
}

// The test tree: a copy of the fixture Debian 12 rootfs, with a separate
// /boot mount (as the fixture cloud image has in its fstab), a local mount
// ordered after systemd-modules-load.service (what fstab's
// x-systemd.after=systemd-modules-load.service gives), and, for the
// cloud phase, stand-ins with the ordering of Debian 12's cloud-init
// (22.4.2) units and systemd-networkd enabled.
var hookTreeUnits = map[string]string{
	// /boot from fstab: the generator's unit, without the fsck.
	"boot.mount": `[Unit]
Before=local-fs.target
[Mount]
What=/dev/disk/by-uuid/6b6d6f64-b007-4000-8000-000000000002
Where=/boot
Type=ext4
`,
	"srv-modload.mount": `[Unit]
After=systemd-modules-load.service
Before=local-fs.target
[Mount]
What=/dev/disk/by-label/modload
Where=/srv/modload
Type=ext4
`,
}

// hookCloudUnits are the cloud-init stand-ins: each unit's ordering and
// dependencies, and a command that does nothing.
var hookCloudUnits = map[string]string{
	"cloud-init-local.service": `[Unit]
DefaultDependencies=no
Wants=network-pre.target
After=systemd-remount-fs.service
Before=network-pre.target sysinit.target shutdown.target
Conflicts=shutdown.target
RequiresMountsFor=/var/lib/cloud
[Service]
Type=oneshot
ExecStart=/bin/true
[Install]
WantedBy=cloud-init.target
`,
	"cloud-init.service": `[Unit]
DefaultDependencies=no
Wants=cloud-init-local.service
After=cloud-init-local.service systemd-networkd-wait-online.service networking.service
Before=network-online.target sysinit.target shutdown.target systemd-user-sessions.service
Conflicts=shutdown.target
[Service]
Type=oneshot
ExecStart=/bin/true
[Install]
WantedBy=cloud-init.target
`,
	"cloud-config.target": `[Unit]
Wants=cloud-init-local.service cloud-init.service
After=cloud-init-local.service cloud-init.service
`,
	"cloud-config.service": `[Unit]
After=network-online.target cloud-config.target
Wants=network-online.target cloud-config.target
[Service]
Type=oneshot
ExecStart=/bin/true
[Install]
WantedBy=cloud-init.target
`,
	"cloud-final.service": `[Unit]
After=network-online.target cloud-config.service rc-local.service multi-user.target
Wants=network-online.target cloud-config.service
[Service]
Type=oneshot
ExecStart=/bin/true
[Install]
WantedBy=cloud-init.target
`,
	"cloud-init.target": `[Unit]
After=multi-user.target
[Install]
WantedBy=multi-user.target
`,
}

type hookTree struct {
	t                      *testing.T
	root, analyze, systemc string
}

func (h *hookTree) writeUnit(name, content string) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.root, "etc/systemd/system", name), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// systemctl runs systemctl --root on the tree.
func (h *hookTree) systemctl(args ...string) {
	h.t.Helper()
	out, err := exec.Command(h.systemc, append([]string{"--root=" + h.root, "--quiet"}, args...)...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("systemctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// verify runs systemd-analyze verify on units of the tree and returns its
// output and error.
func (h *hookTree) verify(units ...string) (string, error) {
	cmd := exec.Command(h.analyze, append([]string{"verify", "--root=" + h.root, "--man=no"}, units...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// wantsLinks lists the tree's symbolic links in etc/systemd/system/*.wants
// to kmodctl units, as Links.
func (h *hookTree) wantsLinks() []Link {
	h.t.Helper()
	ms, err := filepath.Glob(filepath.Join(h.root, "etc/systemd/system/*.wants/kmodctl-*"))
	if err != nil {
		h.t.Fatal(err)
	}
	var links []Link
	for _, m := range ms {
		target, err := os.Readlink(m)
		if err != nil {
			h.t.Fatal(err)
		}
		links = append(links, Link{Path: strings.TrimPrefix(m, h.root), Target: target})
	}
	return links
}

// install writes the rendered files and links into the tree, the way the
// provisioner does, and returns the function that removes them.
func (h *hookTree) install(files []File, links []Link) func() {
	h.t.Helper()
	var made []string
	for _, f := range files {
		p := filepath.Join(h.root, f.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			h.t.Fatal(err)
		}
		if err := os.WriteFile(p, f.Content, f.Mode); err != nil {
			h.t.Fatal(err)
		}
		made = append(made, p)
	}
	for _, l := range links {
		p := filepath.Join(h.root, l.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			h.t.Fatal(err)
		}
		if err := os.Symlink(l.Target, p); err != nil {
			h.t.Fatal(err)
		}
		made = append(made, p)
	}
	return func() {
		for _, p := range made {
			if err := os.Remove(p); err != nil {
				h.t.Error(err)
			}
		}
	}
}

// TestRenderHookSystemdAnalyze checks the rendered units with the host's
// systemd-analyze verify in a copy of the fixture Debian 12 tree (with a
// fake agent): no warning for any combination of the settings, and no
// ordering cycle once installed (sysinit.target and multi-user.target), in
// the plain tree and with cloud-init. Its negative controls show that the
// check sees the cycles the units avoid.
func TestRenderHookSystemdAnalyze(t *testing.T) {
	if os.Geteuid() != 0 {
		fixture.Missing(t, "root (a rootfs copy keeps its owners)")
	}
	src := fixture.Rootfs(t)
	h := &hookTree{t: t, analyze: fixture.Tool(t, "systemd-analyze"), systemc: fixture.Tool(t, "systemctl")}
	parent := t
	h.root = filepath.Join(t.TempDir(), "root")
	start := time.Now()
	if out, err := exec.Command("cp", "-a", "--reflink=auto", "--", src, h.root).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s: %v\n%s", src, err, out)
	}
	t.Logf("copied %s in %v", src, time.Since(start).Round(time.Millisecond))
	for _, agent := range []string{DefaultAgentPath, "/opt/kmodctl/bin/kmodctl"} {
		p := filepath.Join(h.root, agent)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(hookTreeUnits)) {
		h.writeUnit(name, hookTreeUnits[name])
	}
	for _, l := range []string{"local-fs.target.requires/boot.mount", "local-fs.target.wants/srv-modload.mount"} {
		p := filepath.Join(h.root, "etc/systemd/system", l)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/systemd/system/"+filepath.Base(l), p); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := h.verify("sysinit.target", "multi-user.target"); err != nil || out != "" {
		t.Fatalf("the tree is not clean before the units: %v\n%s", err, out)
	}

	var settings []HookSettings
	for _, hook := range []string{"systemd", "cloud-init"} {
		for _, lockdown := range []bool{false, true} {
			for _, net := range []bool{false, true} {
				settings = append(settings, HookSettings{Hook: hook, Lockdown: lockdown, NetworkDriver: net})
			}
		}
		settings = append(settings, HookSettings{Hook: hook, Mode: "every-boot", OnDrift: "fail", OnUncovered: "fail",
			Lockdown: true, NetworkDriver: true, ConditionVirtualization: "!container", AgentPath: "/opt/kmodctl/bin/kmodctl"})
		for _, net := range []bool{false, true} {
			settings = append(settings, HookSettings{Hook: hook, Pull: true, Lockdown: true, NetworkDriver: net})
		}
	}
	check := func(phase string) {
		for _, s := range settings {
			files, links := mustRender(t, s)
			var units []string
			for _, f := range files {
				if strings.HasPrefix(f.Path, "/etc/systemd/system/") {
					units = append(units, filepath.Base(f.Path))
				}
			}
			name := fmt.Sprintf("%s/%s/mode=%s/lockdown=%v/net=%v/pull=%v", phase, s.Hook, s.Mode, s.Lockdown, s.NetworkDriver, s.Pull)
			t.Run(name, func(t *testing.T) {
				h.t = t
				defer func() { h.t = parent }()
				// The links are what systemctl enable makes of [Install].
				remove := h.install(files, nil)
				h.systemctl(append([]string{"enable"}, units...)...)
				if got := h.wantsLinks(); !reflect.DeepEqual(got, sortedLinks(links)) {
					t.Errorf("systemctl enable made %+v, RenderHook %+v", got, links)
				}
				h.systemctl(append([]string{"disable"}, units...)...)
				if got := h.wantsLinks(); len(got) != 0 {
					t.Fatalf("systemctl disable left %+v", got)
				}
				remove()
				defer h.install(files, links)()

				if out, err := h.verify(units...); err != nil || out != "" {
					t.Errorf("systemd-analyze verify %s: %v\n%s", strings.Join(units, " "), err, out)
				}
				out, err := h.verify("sysinit.target", "multi-user.target")
				if strings.Contains(out, "cycle") {
					t.Errorf("ordering cycle:\n%s", out)
				} else if err != nil || out != "" {
					t.Errorf("systemd-analyze verify sysinit.target multi-user.target: %v\n%s", err, out)
				}
			})
		}
	}
	// control installs a unit that should make an ordering cycle and checks
	// that systemd-analyze verify reports it.
	control := func(name, why, unit string) {
		t.Run("control/"+name, func(t *testing.T) {
			h.t = t
			defer func() { h.t = parent }()
			h.writeUnit("kmodctl-control.service", unit)
			h.systemctl("enable", "kmodctl-control.service")
			defer func() {
				h.systemctl("disable", "kmodctl-control.service")
				os.Remove(filepath.Join(h.root, "etc/systemd/system/kmodctl-control.service"))
			}()
			out, _ := h.verify("sysinit.target", "multi-user.target")
			if !strings.Contains(out, "ordering cycle") || !strings.Contains(out, "kmodctl-control.service") {
				t.Errorf("%s: no ordering cycle reported:\n%s", why, out)
			}
			t.Logf("%s:\n%s", why, out)
		})
	}

	check("plain")
	t.Run("control/agent missing", func(t *testing.T) {
		h.t = t
		defer func() { h.t = parent }()
		files, links := mustRender(t, HookSettings{AgentPath: "/usr/libexec/kmodctl/missing"})
		defer h.install(files, links)()
		out, _ := h.verify(VerifyUnit, RunUnit)
		if !strings.Contains(out, "/usr/libexec/kmodctl/missing") {
			t.Errorf("systemd-analyze verify does not see the missing agent:\n%s", out)
		}
	})
	control("verify after local-fs.target",
		"a verify unit after local-fs.target and before systemd-modules-load.service, with a local mount after systemd-modules-load.service", `[Unit]
DefaultDependencies=no
After=local-fs.target
Before=systemd-modules-load.service sysinit.target
[Service]
Type=oneshot
ExecStart=/bin/true
[Install]
WantedBy=sysinit.target
`)

	// With cloud-init, whose network stage is before sysinit.target, and
	// systemd-networkd.
	for _, name := range slices.Sorted(maps.Keys(hookCloudUnits)) {
		h.writeUnit(name, hookCloudUnits[name])
	}
	h.systemctl("enable", "cloud-init.target", "cloud-init-local.service", "cloud-init.service", "cloud-config.service",
		"cloud-final.service", "systemd-networkd.service")
	if out, err := h.verify("sysinit.target", "multi-user.target"); err != nil || out != "" {
		t.Fatalf("the cloud tree is not clean before the units: %v\n%s", err, out)
	}
	check("cloud")
	control("first boot before network-pre.target with the default dependencies",
		"a first-boot unit after sysinit.target and before network-pre.target, with cloud-init", `[Unit]
Wants=network-pre.target
Before=network-pre.target
[Service]
Type=oneshot
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
`)
	control("lockdown after cloud-final.service with the default dependencies",
		"a lockdown unit wanted by multi-user.target after cloud-final.service", `[Unit]
After=cloud-final.service
[Service]
Type=oneshot
ExecStart=/bin/true
[Install]
WantedBy=multi-user.target
`)
}

func sortedLinks(l []Link) []Link {
	l = slices.Clone(l)
	slices.SortFunc(l, func(a, b Link) int { return strings.Compare(a.Path, b.Path) })
	return l
}

// With pull: the pull unit and the kernel hook are there; verify, which runs
// before the network, only warns on an uncovered kernel (it may still be
// pulled); the pull and first-boot units carry the policy.
func TestRenderHookPull(t *testing.T) {
	files, links, err := RenderHook(HookSettings{Hook: HookSystemd, OnUncovered: "fail", Pull: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range files {
		got[f.Path] = string(f.Content)
	}
	verify, first, pull := got[hookUnitDir+"/"+VerifyUnit], got[hookUnitDir+"/"+RunUnit], got[hookUnitDir+"/"+PullUnit]
	if !strings.Contains(verify, "--on-uncovered=warn") || !strings.Contains(first, "--on-uncovered=fail") {
		t.Errorf("policies:\nverify: %s\nfirstboot: %s", verify, first)
	}
	if !strings.Contains(pull, "After=network-online.target") || !strings.Contains(pull, "Before="+RunUnit) || !strings.Contains(first, PullUnit) {
		t.Errorf("ordering:\n%s\n%s", pull, first)
	}
	if hook, ok := got[KernelHookPath]; !ok || !strings.Contains(hook, "|| true") {
		t.Errorf("kernel hook: %q", hook)
	}
	found := false
	for _, l := range links {
		found = found || l.Path == hookUnitDir+"/multi-user.target.wants/"+PullUnit
	}
	if !found {
		t.Errorf("the pull unit is not enabled: %+v", links)
	}
	// Without pull, none of it.
	files, _, _ = RenderHook(HookSettings{Hook: HookSystemd})
	for _, f := range files {
		if f.Path == KernelHookPath || strings.HasSuffix(f.Path, PullUnit) {
			t.Errorf("%s rendered without pull", f.Path)
		}
	}
}
