package loadconf

import (
	"fmt"
	"sort"
	"strings"
)

// auditArches maps a GOARCH to the arch= values of its syscall rules.
// auditctl turns b64/b32 into the AUDIT_ARCH of the machine it runs on
// (its 32-bit companion for b32), so a rule must only name ABIs the
// target has:
//   - amd64: b64, and b32 for i386 processes (IA-32 emulation), which
//     reach init_module through their own syscall table;
//   - arm64: b64 only. b32 would mean AArch32 compat processes, but
//     auditctl accepts it only when built with ARM support, and one
//     rejected rule makes auditctl -R stop loading the rest of the
//     rules (without -c/-i);
//   - 32-bit targets: b32; other 64-bit targets: b64.
var auditArches = map[string][]string{
	"amd64":   {"b64", "b32"},
	"arm64":   {"b64"},
	"386":     {"b32"},
	"arm":     {"b32"},
	"ppc64le": {"b64"},
	"riscv64": {"b64"},
	"s390x":   {"b64"},
}

// auditSyscalls are the module syscalls: init_module (from a buffer),
// finit_module (from a file descriptor, what kmod uses) and
// delete_module. All exist under these names in every table above.
var auditSyscalls = []string{"init_module", "finit_module", "delete_module"}

// auditWatches are executables whose execution is recorded. insmod,
// rmmod and modprobe are usually symlinks to kmod, and an audit watch on
// a symlink does not fire when a program is run through it (the kernel
// records the inode executed, kmod's), so kmod itself is watched too.
// Both the /sbin and /usr/sbin spellings are watched: on a usr-merged
// system they name the same file, elsewhere only one exists; a watch on
// a missing file of an existing folder is accepted.
var auditWatches = []string{
	"/sbin/insmod", "/sbin/rmmod", "/sbin/modprobe",
	"/usr/sbin/insmod", "/usr/sbin/rmmod", "/usr/sbin/modprobe",
	"/bin/kmod", "/usr/bin/kmod",
}

func unknownArch(arch string) error {
	names := make([]string, 0, len(auditArches))
	for a := range auditArches {
		names = append(names, a)
	}
	sort.Strings(names)
	if arch == "" {
		return fmt.Errorf("the target architecture is needed for audit rules (one of %s)", strings.Join(names, ", "))
	}
	return fmt.Errorf("unsupported architecture %q (supported: %s)", arch, strings.Join(names, ", "))
}

// auditRules returns the lines of AuditPath for arch. The syscall rules
// put -F arch= before -S, as auditctl requires, and give each syscall its
// own -S so auditctl versions without comma lists read them.
func auditRules(arch string) ([]string, error) {
	abis, ok := auditArches[arch]
	if !ok {
		return nil, unknownArch(arch)
	}
	lines := []string{
		"# Record kernel module loading and unloading: the module syscalls of every",
		"# ABI of the target, and runs of the module tools.",
	}
	for _, abi := range abis {
		var b strings.Builder
		fmt.Fprintf(&b, "-a always,exit -F arch=%s", abi)
		for _, s := range auditSyscalls {
			b.WriteString(" -S " + s)
		}
		b.WriteString(" -k " + AuditKey)
		lines = append(lines, b.String())
	}
	for _, w := range auditWatches {
		lines = append(lines, "-w "+w+" -p x -k "+AuditKey)
	}
	return lines, nil
}
