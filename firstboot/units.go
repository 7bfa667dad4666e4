package firstboot

import (
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// HookSettings configure the files of the first-boot hook (RenderHook).
// The zero value is the default hook: systemd units, the first-boot part
// once per instance, warn on drift and on an uncovered kernel, no
// lockdown, only in virtual machines, agent at DefaultAgentPath.
type HookSettings struct {
	// Hook is "systemd" (default: kmodctl-firstboot.service runs the
	// first-boot part) or "cloud-init" (a cloud-init script runs it
	// instead). kmodctl-verify.service is installed with either.
	Hook string
	// Mode is "once" (default: the first-boot part runs once per
	// instance) or "every-boot".
	Mode string
	// OnDrift and OnUncovered are "warn" (default) or "fail": what a
	// drifted module and a kernel the manifest does not cover do to the
	// agent's exit status.
	OnDrift, OnUncovered string
	// Lockdown sets kernel.modules_disabled=1 once the managed modules
	// are loaded: the first-boot part does it on its run and
	// kmodctl-lockdown.service on every boot.
	Lockdown bool
	// ConditionVirtualization is systemd's ConditionVirtualization= for
	// every unit (default "vm"): a boolean, "vm", "container",
	// "private-users" or a systemd-detect-virt identifier such as "kvm",
	// optionally negated with a leading "!". The cloud-init script checks
	// the same condition with systemd-detect-virt.
	ConditionVirtualization string
	// NetworkDriver says a managed module is a network driver: the
	// first-boot part then runs early, ordered before network-pre.target
	// (which it pulls in), so the network comes up with the driver
	// loaded. It has no effect with the cloud-init hook: cloud-init runs
	// its scripts after the network is up.
	NetworkDriver bool
	// AgentPath is the agent binary in the image (default
	// DefaultAgentPath): an absolute, clean path of letters, digits and
	// "._+-" only, so it needs no quoting in a unit or a shell script.
	AgentPath string
	// Pull installs kmodctl-pull.service, which pulls the modules of a
	// running kernel the image does not cover from the bundle of
	// PullConfigPath once the network is online, and the kernel hook
	// KernelHookPath, which does the same when a kernel is installed.
	Pull bool
	// Report installs kmodctl-report.service, which posts every boot's
	// attestation to the catalog ReportConfigPath names once the network
	// is online (nothing waits for it), and kmodctl-recheck.timer, which
	// verifies and posts again daily.
	Report bool
}

// File is a file RenderHook renders: its absolute path in the image, its
// content and its permission bits. The provisioner creates missing parent
// directories (0755, root).
type File struct {
	Path    string
	Content []byte
	Mode    fs.FileMode
}

// Link is a symbolic link RenderHook asks for: Path (absolute, in the
// image) points to Target. They are the links `systemctl enable` would
// create from the units' [Install] sections; the provisioner creates them
// itself so no systemctl runs in the image.
type Link struct {
	Path, Target string
}

// DefaultAgentPath is where the provisioner installs the agent by default.
const DefaultAgentPath = "/usr/libexec/kmodctl/kmodctl"

// Values of HookSettings.
const (
	HookSystemd     = "systemd"
	HookCloudInit   = "cloud-init"
	ModeOnce        = "once"
	ModeEveryBoot   = "every-boot"
	hookVirtDefault = "vm"
)

// The hook's units and files in the image.
const (
	hookUnitDir      = "/etc/systemd/system"
	VerifyUnit       = "kmodctl-verify.service"
	RunUnit          = "kmodctl-firstboot.service"
	LockdownUnit     = "kmodctl-lockdown.service"
	PullUnit         = "kmodctl-pull.service"
	CloudInitOnceDir = "/var/lib/cloud/scripts/per-instance"
	CloudInitBootDir = "/var/lib/cloud/scripts/per-boot"
	CloudInitScript  = "kmodctl-firstboot"
	// DonePath records the instance the first-boot part last ran for
	// (the contract of `firstboot run --once`, see RenderHook; Done and
	// MarkDone read and write it).
	DonePath = "/var/lib/kmodctl/firstboot.done"
)

// hookManifestDir is the directory of manifest.Path, a path the verify
// unit waits to be mounted.
var hookManifestDir = path.Dir(manifest.Path)

var (
	hookAgentRe = regexp.MustCompile(`^(/[A-Za-z0-9._+-]+)+$`)
	// hookVirtIDs are the identifiers systemd-detect-virt reports other
	// than "none" (systemd's virtualization table: Debian 12's systemd 252
	// and upstream's have the same): ConditionVirtualization= compares
	// them verbatim, so a misspelt one would silently never match.
	hookVirtIDs = map[string]bool{
		"kvm": true, "amazon": true, "qemu": true, "bochs": true, "xen": true, "uml": true,
		"vmware": true, "oracle": true, "microsoft": true, "zvm": true, "parallels": true,
		"bhyve": true, "qnx": true, "acrn": true, "powervm": true, "apple": true, "sre": true,
		"google": true, "vm-other": true,
		"systemd-nspawn": true, "lxc-libvirt": true, "lxc": true, "openvz": true, "docker": true,
		"podman": true, "rkt": true, "wsl": true, "proot": true, "pouch": true, "container-other": true,
	}
)

// hookBool parses a boolean the way systemd's parse_boolean does.
func hookBool(s string) (v, ok bool) {
	switch strings.ToLower(s) {
	case "1", "yes", "y", "true", "t", "on":
		return true, true
	case "0", "no", "n", "false", "f", "off":
		return false, true
	}
	return false, false
}

// hookCheckVirt validates a ConditionVirtualization= value.
func hookCheckVirt(v string) error {
	bad := func(why string) error {
		return fmt.Errorf("condition_virtualization %q: %s", v, why)
	}
	if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return bad("contains white space or a control character")
	}
	w, _ := strings.CutPrefix(v, "!")
	switch {
	case w == "":
		return bad("empty")
	case strings.HasPrefix(w, "|"), strings.HasPrefix(w, "!"):
		return bad(`only a single leading "!" may prefix the value`)
	case w == "none":
		return bad(`"none" never matches in systemd; use "no" (or "!yes") for no virtualization`)
	case w == "vm", w == "container", w == "private-users", hookVirtIDs[w]:
		return nil
	}
	if _, ok := hookBool(w); ok {
		return nil
	}
	return bad(`want a boolean, "vm", "container", "private-users" or a systemd-detect-virt identifier such as "kvm" or "qemu" (see systemd-detect-virt --list), optionally negated with "!"`)
}

// normalize fills the defaults and validates.
func (s HookSettings) normalize() (HookSettings, error) {
	def := func(p *string, d string) {
		if *p == "" {
			*p = d
		}
	}
	def(&s.Hook, HookSystemd)
	def(&s.Mode, ModeOnce)
	def(&s.OnDrift, string(PolicyWarn))
	def(&s.OnUncovered, string(PolicyWarn))
	def(&s.ConditionVirtualization, hookVirtDefault)
	def(&s.AgentPath, DefaultAgentPath)
	if s.Hook != HookSystemd && s.Hook != HookCloudInit {
		return s, fmt.Errorf("hook %q: want %q or %q", s.Hook, HookSystemd, HookCloudInit)
	}
	if s.Mode != ModeOnce && s.Mode != ModeEveryBoot {
		return s, fmt.Errorf("mode %q: want %q or %q", s.Mode, ModeOnce, ModeEveryBoot)
	}
	for _, p := range []struct{ name, v string }{{"on_drift", s.OnDrift}, {"on_uncovered", s.OnUncovered}} {
		if p.v != string(PolicyWarn) && p.v != string(PolicyFail) {
			return s, fmt.Errorf("%s %q: want %q or %q", p.name, p.v, PolicyWarn, PolicyFail)
		}
	}
	if err := hookCheckVirt(s.ConditionVirtualization); err != nil {
		return s, err
	}
	if !hookAgentRe.MatchString(s.AgentPath) || path.Clean(s.AgentPath) != s.AgentPath {
		return s, fmt.Errorf(`agent_path %q: want an absolute, clean path of letters, digits and "._+-"`, s.AgentPath)
	}
	return s, nil
}

// RenderHook renders the first-boot hook's files for s, in a fixed order,
// and the links that enable its units. The same settings always give the
// same bytes. The error names the setting (by its HCL name: hook, mode,
// on_drift, on_uncovered, condition_virtualization, agent_path) and its
// value.
//
// The files:
//
//   - /etc/systemd/system/kmodctl-verify.service, on every boot, with
//     either hook: `AGENT firstboot verify --on-drift=P --on-uncovered=P`
//     before systemd-modules-load.service (and sysinit.target). It runs
//     before local-fs.target and waits only for the mounts of the paths
//     it reads (RequiresMountsFor= the manifest's directory, the agent's
//     and /boot), so the agent must write nothing but under /run while
//     verifying.
//   - /etc/systemd/system/kmodctl-firstboot.service (hook "systemd"):
//     `AGENT firstboot run [--once] --on-drift=P --on-uncovered=P
//     [--lockdown]` after systemd-modules-load.service and
//     kmodctl-verify.service: a normal service after sysinit.target, or,
//     with NetworkDriver, an early one (after local-fs.target, before
//     network-pre.target, not after sysinit.target: on cloud-init images
//     the network comes up before sysinit.target).
//   - With hook "cloud-init", instead, the shell script
//     /var/lib/cloud/scripts/per-instance/kmodctl-firstboot (per-boot/
//     with Mode "every-boot"), mode 0755, that execs the same command
//     when the virtualization condition holds. cloud-init runs it late
//     (cloud-final.service, after multi-user.target).
//   - /etc/systemd/system/kmodctl-lockdown.service (Lockdown only), on
//     every boot after the first-boot part: `AGENT firstboot lockdown`.
//
// The once-per-instance contract of `firstboot run --once` (Mode "once"),
// implemented by the agent: the agent writes the instance ID it ran for
// (ReadIdentity) to DonePath once it has run, and when that file
// already holds the current instance ID it exits 0 at once with a note in
// the journal, checking and loading nothing. With the cloud-init hook,
// cloud-init also runs the script once per instance; --once is passed all
// the same. Mode "every-boot" passes no --once: the first-boot part runs
// on every boot.
//
// The policies: with "warn" the agent reports the problem and exits 0, with
// "fail" it exits non-zero and the unit fails. A failed verify unit does
// not stop systemd-modules-load: the agent blocks the modules that failed
// their checks itself (BlockedPath).
func RenderHook(s HookSettings) ([]File, []Link, error) {
	s, err := s.normalize()
	if err != nil {
		return nil, nil, err
	}
	policy := fmt.Sprintf("--on-drift=%s --on-uncovered=%s", s.OnDrift, s.OnUncovered)
	run := s.AgentPath + " firstboot run"
	if s.Mode == ModeOnce {
		run += " --once"
	}
	run += " " + policy
	if s.Lockdown {
		run += " --lockdown"
	}

	var files []File
	var links []Link
	unit := func(name, wantedBy, content string) {
		p := hookUnitDir + "/" + name
		files = append(files, File{Path: p, Content: []byte(content), Mode: 0o644})
		links = append(links, Link{Path: hookUnitDir + "/" + wantedBy + ".wants/" + name, Target: p})
	}

	verifyPolicy := policy
	if s.Pull {
		// Verify runs before the network: an uncovered kernel may still be
		// pulled, and the pull and first-boot units carry the policy.
		verifyPolicy = fmt.Sprintf("--on-drift=%s --on-uncovered=%s", s.OnDrift, PolicyWarn)
	}
	unit(VerifyUnit, "sysinit.target", hookRenderVerify(s, verifyPolicy))
	if s.Hook == HookSystemd {
		unit(RunUnit, "multi-user.target", hookRenderFirstboot(s, run))
	} else {
		dir := CloudInitOnceDir
		if s.Mode == ModeEveryBoot {
			dir = CloudInitBootDir
		}
		files = append(files, File{Path: dir + "/" + CloudInitScript, Content: []byte(hookRenderCloudInit(s, run)), Mode: 0o755})
	}
	if s.Lockdown {
		unit(LockdownUnit, "multi-user.target", hookRenderLockdown(s))
	}
	if s.Pull {
		unit(PullUnit, "multi-user.target", hookRenderPull(s))
		files = append(files, File{Path: KernelHookPath, Content: []byte(hookRenderKernelHook(s)), Mode: 0o755})
	}
	if s.Report {
		unit(ReportUnit, "multi-user.target", hookRenderReport(s))
		// The daily re-check: a service the timer starts (not enabled
		// itself) and the timer.
		files = append(files, File{Path: hookUnitDir + "/" + RecheckUnit, Content: []byte(hookRenderRecheck(s, verifyPolicy)), Mode: 0o644})
		unit(RecheckTimer, "timers.target", hookRenderRecheckTimer(s))
	}
	return files, links, nil
}

func hookRenderReport(s HookSettings) string {
	after := VerifyUnit
	if s.Hook == HookSystemd {
		after += " " + RunUnit
	}
	if s.Pull {
		after += " " + PullUnit
	}
	return hookHeader("posts every boot's attestation to the catalog") + `#
# On every boot, once the network is online and the kmodctl units before it
# are done, the kmodctl agent posts this boot's result to the catalog that
# ` + ReportConfigPath + ` names: the first-boot report when it is from
# this boot, else this boot's verification (` + VerifyPath + `), with the
# modules' loaded state read at that moment. It authenticates with the
# instance token in the file the settings name. It retries with backoff
# for up to 10 minutes; nothing waits for this unit, so it never holds the
# boot back. A refused or failed post fails this unit (see the journal).
[Unit]
Description=kmodctl: post this boot's module attestation to the catalog
Wants=network-online.target
After=network-online.target ` + after + `
ConditionVirtualization=` + s.ConditionVirtualization + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + s.AgentPath + ` firstboot report
StandardOutput=journal+console
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
`
}

func hookRenderRecheck(s HookSettings, policy string) string {
	return hookHeader("verifies the modules again and posts the result to the catalog, daily") + `#
# Started by ` + RecheckTimer + `: the kmodctl agent verifies the managed
# modules of the running kernel again (as ` + VerifyUnit + ` does at
# boot: a module changed since is blocked from loading again) and posts
# the result to the catalog, so an instance that runs for months is still
# attested. The verification's exit status does not stop the post.
[Unit]
Description=kmodctl: verify the managed kernel modules again and post the attestation
Wants=network-online.target
After=network-online.target ` + ReportUnit + `
ConditionVirtualization=` + s.ConditionVirtualization + `

[Service]
Type=oneshot
ExecStart=-` + s.AgentPath + ` firstboot verify ` + policy + `
ExecStart=` + s.AgentPath + ` firstboot report
StandardOutput=journal
TimeoutStartSec=15min
`
}

func hookRenderRecheckTimer(s HookSettings) string {
	return hookHeader("starts the daily re-check of the modules") + `[Unit]
Description=kmodctl: daily re-check of the managed kernel modules
ConditionVirtualization=` + s.ConditionVirtualization + `

[Timer]
OnBootSec=1d
OnUnitActiveSec=1d
RandomizedDelaySec=1h
Unit=` + RecheckUnit + `

[Install]
WantedBy=timers.target
`
}

func hookRenderPull(s HookSettings) string {
	before := ""
	if s.Hook == HookSystemd && !s.NetworkDriver {
		// The first-boot part then finds the pulled modules (with a
		// network driver it runs before the network: it cannot wait).
		before = "Before=" + RunUnit + "\n"
	}
	return hookHeader("pulls the signed modules of a kernel the image does not cover") + `#
# When the running kernel is not one the image's manifest covers (a newer
# kernel installed since the image was built), the kmodctl agent pulls
# its signed modules from the bundle ` + PullConfigPath + ` names, once the
# network is online: every module is verified against the image manifest's
# certificates (the trust anchor is the image, never the registry),
# installed under /lib/modules/KVER/` + PulledDir + `, depmod'ed and loaded;
# ` + PulledPath + ` records them, and kmodctl-verify.service checks
# them on every later boot like the image's own. Nothing happens for a
# covered kernel or one pulled before. The outcome is in ` + ReportPath + `
# (pull) and the journal; a failed pull fails this unit only when the
# settings' on_failure is fail.
[Unit]
Description=kmodctl: pull the signed modules of a kernel the image does not cover
Wants=network-online.target
After=network-online.target systemd-modules-load.service ` + VerifyUnit + `
` + before + `ConditionVirtualization=` + s.ConditionVirtualization + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + s.AgentPath + ` firstboot pull
StandardOutput=journal+console
TimeoutStartSec=10min

[Install]
WantedBy=multi-user.target
`
}

func hookRenderKernelHook(s HookSettings) string {
	return "#!/bin/sh\n" + hookHeader("pulls the signed modules of a newly installed kernel") + `#
# run-parts calls it with the new kernel's release when a kernel package is
# installed. For a kernel the image does not cover, the kmodctl agent pulls
# its signed modules from the bundle ` + PullConfigPath + ` names,
# verifies them against the image manifest's certificates, installs and
# depmod's them, and puts the early ones into the kernel's initramfs (the
# initramfs-tools and dracut hooks, which sort before this one, have
# generated it; a later regeneration keeps them, as their tools' module
# lists name them). The first boot of that kernel then has its modules.
# Offline, or without a bundle for the kernel, it logs and leaves the
# kernel install alone: it never fails.
version="$1"
[ -n "$version" ] || exit 0
[ -x ` + s.AgentPath + ` ] || exit 0
` + s.AgentPath + ` firstboot pull --kernel "$version" --no-load --hook >&2 || true
exit 0
`
}

// hookHeader is the comment every file starts with (after the script's
// "#!" line): generated by packer-plugin-kmod, and what the file does.
func hookHeader(what string) string {
	return "# Generated by packer-plugin-kmod (the kmod provisioner) at image build:\n" +
		"# " + what + ".\n" +
		"# Rebuild the image rather than editing this file.\n"
}

func hookRenderVerify(s HookSettings, policy string) string {
	mounts := []string{hookManifestDir}
	if d := path.Dir(s.AgentPath); d != hookManifestDir {
		mounts = append(mounts, d)
	}
	mounts = append(mounts, "/boot")
	var b strings.Builder
	b.WriteString(hookHeader("verifies the kernel modules on every boot, before they load"))
	b.WriteString(`#
# On every boot, before systemd-modules-load.service loads any module, the
# kmodctl agent checks the kernel modules the provisioner installed against
# its manifest (` + hookManifestDir + `/manifest.json): content, signature,
# modules.dep, the initramfs copy in /boot and what the initramfs already
# loaded. A module that fails a check is blocked for this boot
# (` + BlockedPath + `);
# the result is in ` + VerifyPath + ` and the journal.
# on-drift / on-uncovered "warn" exits 0, "fail" fails this unit.
#
# It runs before local-fs.target (DefaultDependencies=no) and waits only
# for the mounts of what it reads (RequiresMountsFor=), so it does not hold
# systemd-modules-load.service back behind every local mount (nor make a
# cycle with a mount ordered after systemd-modules-load.service). It writes
# under /run only.
[Unit]
Description=kmodctl: verify the managed kernel modules against the image manifest
DefaultDependencies=no
RequiresMountsFor=`)
	b.WriteString(strings.Join(mounts, " "))
	b.WriteString(`
Conflicts=shutdown.target
Before=systemd-modules-load.service sysinit.target shutdown.target
ConditionVirtualization=` + s.ConditionVirtualization + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + s.AgentPath + ` firstboot verify ` + policy + `
StandardOutput=journal+console
TimeoutStartSec=5min

[Install]
WantedBy=sysinit.target
`)
	return b.String()
}

// hookOnceNote is the once-per-instance contract, for the comments.
func hookOnceNote(s HookSettings) string {
	if s.Mode == ModeEveryBoot {
		return "# Mode every-boot: it checks and loads on every boot (no --once).\n"
	}
	return `# Once per instance (--once): the agent records the instance ID it ran for
# (cloud-init's instance-id, else /etc/machine-id) in
# ` + DonePath + ` and, when that file already holds the
# current instance ID, exits 0 at once with a note in the journal.
`
}

func hookRenderFirstboot(s HookSettings, run string) string {
	var b strings.Builder
	b.WriteString(hookHeader("the first-boot part: checks and loads the kernel modules"))
	b.WriteString(`#
# The first-boot part: the kmodctl agent checks the managed kernel modules
# again, loads those that passed (in manifest order, with modprobe),
# records what it did in ` + ReportPath + ` and the journal`)
	if s.Lockdown {
		b.WriteString(`,
# and sets kernel.modules_disabled=1 (--lockdown)`)
	}
	b.WriteString(".\n")
	b.WriteString(hookOnceNote(s))
	if s.NetworkDriver {
		b.WriteString(`#
# A managed module is a network driver: this runs before network-pre.target
# (which it pulls in), so no network service starts before the driver is
# loaded. It does without the default dependencies: cloud-init brings the
# network up before sysinit.target, so a unit after sysinit.target and
# before network-pre.target would make an ordering cycle. It is after
# local-fs.target (so ` + path.Dir(DonePath) + ` is writable) and
# cloud-init-local.service (which may write the instance ID).
`)
	}
	when := "on first boot"
	if s.Mode == ModeEveryBoot {
		when = "at boot"
	}
	b.WriteString(`[Unit]
Description=kmodctl: check and load the managed kernel modules ` + when + `
`)
	if s.NetworkDriver {
		b.WriteString(`DefaultDependencies=no
Wants=network-pre.target
After=local-fs.target systemd-modules-load.service ` + VerifyUnit + ` cloud-init-local.service
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
`)
	} else {
		after := "local-fs.target systemd-modules-load.service " + VerifyUnit
		if s.Pull {
			after += " " + PullUnit
		}
		b.WriteString(`After=` + after + `
`)
	}
	b.WriteString(`ConditionVirtualization=` + s.ConditionVirtualization + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + run + `
StandardOutput=journal+console
TimeoutStartSec=5min

[Install]
WantedBy=multi-user.target
`)
	return b.String()
}

func hookRenderLockdown(s HookSettings) string {
	after, why := RunUnit, `# It does without the default dependencies, like with the cloud-init hook
# (where it follows cloud-final.service): multi-user.target does not wait
# for it.
`
	if s.Hook == HookCloudInit {
		after, why = "cloud-final.service", `# cloud-final.service runs the first-boot script. It is after
# multi-user.target: this unit does without the default dependencies, or
# multi-user.target would be after it and make an ordering cycle;
# multi-user.target does not wait for it.
`
	}
	return hookHeader("disables module loading on every boot once the managed modules are loaded") + `#
# On every boot, once the managed modules are loaded (after
# systemd-modules-load.service and ` + after + `), the kmodctl agent
# sets kernel.modules_disabled=1: no module loads after it until the next
# boot. The result is in ` + LockdownReportPath + ` and the journal.
` + why + `[Unit]
Description=kmodctl: disable module loading (kernel.modules_disabled=1)
DefaultDependencies=no
After=basic.target systemd-modules-load.service ` + after + `
Before=shutdown.target
Conflicts=shutdown.target
ConditionVirtualization=` + s.ConditionVirtualization + `

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=` + s.AgentPath + ` firstboot lockdown
StandardOutput=journal+console
TimeoutStartSec=90s

[Install]
WantedBy=multi-user.target
`
}

// hookVirtTest is a POSIX shell command list whose status is 0 when the
// ConditionVirtualization= value v (valid, without "!") holds, following
// systemd: the detected virtualization is the container if any, else the
// VM.
func hookVirtTest(v string) string {
	const dv = "systemd-detect-virt --quiet"
	switch v {
	case "vm":
		return dv + " --vm && ! " + dv + " --container"
	case "container":
		return dv + " --container"
	case "private-users":
		return dv + " --private-users"
	}
	if yes, ok := hookBool(v); ok {
		if yes {
			return dv
		}
		return "! " + dv
	}
	return `[ "$(systemd-detect-virt)" = ` + v + ` ]`
}

func hookRenderCloudInit(s HookSettings, run string) string {
	v, neg := strings.CutPrefix(s.ConditionVirtualization, "!")
	cond := "if ! { " + hookVirtTest(v) + "; }; then"
	if neg {
		cond = "if { " + hookVirtTest(v) + "; }; then"
	}
	when := "once per instance"
	if s.Mode == ModeEveryBoot {
		when = "on every boot"
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	b.WriteString(hookHeader("the first-boot part, run by cloud-init: checks and loads the kernel modules"))
	b.WriteString(`#
# The first-boot part, run by cloud-init ` + when + `
# (cloud-final.service): the kmodctl agent checks the managed kernel
# modules again, loads those that passed (in manifest order, with
# modprobe) and records what it did in ` + ReportPath + `
# and the journal`)
	if s.Lockdown {
		b.WriteString(`; it then sets
# kernel.modules_disabled=1 (--lockdown)`)
	}
	b.WriteString(".\n")
	b.WriteString(hookOnceNote(s))
	b.WriteString(`# kmodctl-verify.service checks the modules on every boot all the same.
#
# Like the units' ConditionVirtualization=` + s.ConditionVirtualization + `, it does nothing
# unless that condition holds.
` + cond + `
	echo "kmodctl: first-boot part skipped: ConditionVirtualization=` + s.ConditionVirtualization + ` does not hold" >&2
	exit 0
fi
exec ` + run + `
`)
	return b.String()
}
