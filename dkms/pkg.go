package dkms

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// PackageManager is the target's package manager.
type PackageManager string

const (
	Apt    PackageManager = "apt"
	Dnf    PackageManager = "dnf"
	Zypper PackageManager = "zypper"
)

// DetectPackageManager finds apt-get, dnf or zypper on the target (in that
// order).
func DetectPackageManager(ctx context.Context, r Runner) (PackageManager, error) {
	out, _, st, err := runOn(ctx, r, "for p in apt-get dnf zypper yum; do if command -v $p >/dev/null 2>&1; then echo $p; exit 0; fi; done; exit 1", nil)
	if err != nil {
		return "", fmt.Errorf("detect the package manager: %w", err)
	}
	switch strings.TrimSpace(out) {
	case "apt-get":
		return Apt, nil
	case "dnf":
		return Dnf, nil
	case "zypper":
		return Zypper, nil
	case "yum":
		return "", fmt.Errorf("the target has yum but not dnf: not supported")
	}
	_ = st
	return "", fmt.Errorf("no supported package manager on the target (apt-get, dnf or zypper)")
}

// installedCmd lists installed packages, one per line, in the form removal
// takes: dpkg's package[:arch] names; rpm's name-version-release.arch, so
// that a second kernel-devel of another version counts as new.
func installedCmd(pm PackageManager) (string, error) {
	switch pm {
	case Apt:
		return `dpkg-query -W -f='${Status}\t${binary:Package}\n' | awk -F '\t' '$1 ~ / installed$/ {print $2}'`, nil
	case Dnf, Zypper:
		return `rpm -qa --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\n'`, nil
	}
	return "", fmt.Errorf("unsupported package manager %q", pm)
}

func installedSet(ctx context.Context, r Runner, pm PackageManager) (map[string]bool, error) {
	cmd, err := installedCmd(pm)
	if err != nil {
		return nil, err
	}
	out, errOut, st, err := runOn(ctx, r, cmd, nil)
	if err != nil {
		return nil, fmt.Errorf("list installed packages: %w", err)
	}
	if st != 0 {
		return nil, fmt.Errorf("list installed packages: exit status %d: %s", st, lastLines(errOut, 5))
	}
	set := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			set[l] = true
		}
	}
	return set, nil
}

// InstallPackages refreshes the package lists (base images ship none) and
// installs pkgs without recommended packages, non-interactively. It returns
// every package the installation added, requested or pulled in as a
// dependency, sorted, so that RemovePackages can take exactly them away
// again; packages already installed are not in it. out receives the
// package manager's output.
func InstallPackages(ctx context.Context, r Runner, pm PackageManager, pkgs []string, out io.Writer) (installed []string, err error) {
	if len(pkgs) == 0 {
		return nil, nil
	}
	before, err := installedSet(ctx, r, pm)
	if err != nil {
		return nil, err
	}
	var cmd string
	switch pm {
	case Apt:
		cmd = "export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get install -y --no-install-recommends " +
			"-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold " + shquote.Join(pkgs...)
	case Dnf:
		cmd = "dnf -y --refresh --setopt=install_weak_deps=False install " + shquote.Join(pkgs...)
	case Zypper:
		cmd = "zypper --non-interactive refresh && zypper --non-interactive install --no-recommends " + shquote.Join(pkgs...)
	default:
		return nil, fmt.Errorf("unsupported package manager %q", pm)
	}
	tail := &tailWriter{w: out}
	st, runErr := r.Run(ctx, cmd, tail, tail)
	after, err := installedSet(ctx, r, pm)
	if err == nil {
		for p := range after {
			if !before[p] {
				installed = append(installed, p)
			}
		}
		sort.Strings(installed)
	}
	switch {
	case runErr != nil:
		return installed, fmt.Errorf("install %s: %w", strings.Join(pkgs, " "), runErr)
	case st != 0:
		return installed, fmt.Errorf("install %s: %s exit status %d: %s", strings.Join(pkgs, " "), pm, st, tail.tail())
	case err != nil:
		return nil, err
	}
	return installed, nil
}

// RemovePackages removes (apt: purges) packages non-interactively.
func RemovePackages(ctx context.Context, r Runner, pm PackageManager, pkgs []string, out io.Writer) error {
	if len(pkgs) == 0 {
		return nil
	}
	var cmd string
	switch pm {
	case Apt:
		cmd = "export DEBIAN_FRONTEND=noninteractive; apt-get purge -y " + shquote.Join(pkgs...)
	case Dnf:
		cmd = "dnf -y remove " + shquote.Join(pkgs...)
	case Zypper:
		cmd = "zypper --non-interactive remove " + shquote.Join(pkgs...)
	default:
		return fmt.Errorf("unsupported package manager %q", pm)
	}
	tail := &tailWriter{w: out}
	st, err := r.Run(ctx, cmd, tail, tail)
	if err != nil {
		return fmt.Errorf("remove %s: %w", strings.Join(pkgs, " "), err)
	}
	if st != 0 {
		return fmt.Errorf("remove %s: %s exit status %d: %s", strings.Join(pkgs, " "), pm, st, tail.tail())
	}
	return nil
}

// BuildDependencies lists what a dkms build for the kernels needs: dkms,
// gcc, make and each kernel's headers (Debian/Ubuntu linux-headers-KVER,
// plus libc6-dev, which gcc only recommends; Fedora/RHEL kernel-devel-KVER;
// SUSE kernel-FLAVOR-devel, the flavor being the release's suffix, default
// when there is none). RHEL needs EPEL for dkms.
func BuildDependencies(pm PackageManager, kernels []string) []string {
	deps := []string{"dkms", "gcc", "make"}
	if pm == Apt {
		deps = append(deps, "libc6-dev")
	}
	seen := map[string]bool{}
	for _, d := range deps {
		seen[d] = true
	}
	for _, k := range kernels {
		var p string
		switch pm {
		case Apt:
			p = "linux-headers-" + k
		case Dnf:
			p = "kernel-devel-" + k
		case Zypper:
			flavor := "default"
			if i := strings.LastIndex(k, "-"); i >= 0 && i+1 < len(k) && !strings.ContainsAny(k[i+1:], "0123456789") {
				flavor = k[i+1:]
			}
			p = "kernel-" + flavor + "-devel"
		default:
			continue
		}
		if !seen[p] {
			seen[p] = true
			deps = append(deps, p)
		}
	}
	return deps
}

// tailWriter passes output on and keeps its last lines for error messages.
type tailWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.w != nil {
		t.w.Write(p)
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > 16<<10 {
		t.buf = t.buf[len(t.buf)-8<<10:]
	}
	return len(p), nil
}

func (t *tailWriter) tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(lastLines(string(t.buf), 15))
}
