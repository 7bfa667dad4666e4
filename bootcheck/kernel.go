package bootcheck

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// Kernel is a bootable kernel found in a mounted image tree.
type Kernel struct {
	// Release is the kernel release (uname -r), e.g. 6.1.0-56-amd64.
	Release string
	// Vmlinuz and Initrd are host paths inside the tree (symbolic links
	// resolved within it); Initrd is "" when the release has none.
	Vmlinuz, Initrd string
}

// FindKernels lists the kernels of the image mounted at root (with its
// /boot mounted below it), newest first in version order (kmod.CompareReleases):
//
//   - /boot/vmlinuz-KVER, whose initrd is /boot/initrd.img-KVER (Debian,
//     Ubuntu), /boot/initramfs-KVER.img (Fedora, RHEL, Arch: dracut,
//     mkinitcpio), /boot/initrd-KVER.img or /boot/initrd-KVER (SUSE);
//   - /lib/modules/KVER/vmlinuz and /usr/lib/modules/KVER/vmlinuz (the
//     kernel-install layout) for releases without a /boot/vmlinuz-KVER, with
//     the same /boot initrd names or /lib/modules/KVER/initrd.
//
// A release with a vmlinuz but no initrd is listed with Initrd "". Empty
// files, names ending .old, .bak or .sig and dpkg leftovers (.dpkg-*) are
// skipped. Paths are resolved inside root: an absolute symbolic link in the
// image (/boot/vmlinuz-x -> /boot/real) points into root, never at the
// host. No kernel at all is not an error: the list is empty.
func FindKernels(root string) ([]Kernel, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("find kernels: %w", err)
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("find kernels: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("find kernels: %s is not a directory", root)
	}
	byRelease := map[string]Kernel{}
	var order []string
	add := func(k Kernel) {
		if _, ok := byRelease[k.Release]; ok {
			return
		}
		byRelease[k.Release] = k
		order = append(order, k.Release)
	}
	initrdFor := func(rel string, extra ...string) string {
		cands := []string{
			"/boot/initrd.img-" + rel,
			"/boot/initramfs-" + rel + ".img",
			"/boot/initrd-" + rel + ".img",
			"/boot/initrd-" + rel,
		}
		for _, c := range append(cands, extra...) {
			if p, ok := regularIn(root, c); ok {
				return p
			}
		}
		return ""
	}

	names, err := listDirIn(root, "/boot")
	if err != nil {
		return nil, fmt.Errorf("find kernels: %w", err)
	}
	for _, n := range names {
		rel, ok := strings.CutPrefix(n, "vmlinuz-")
		if !ok || skipRelease(rel) {
			continue
		}
		if p, ok := regularIn(root, "/boot/"+n); ok {
			add(Kernel{Release: rel, Vmlinuz: p, Initrd: initrdFor(rel)})
		}
	}
	for _, dir := range []string{"/lib/modules", "/usr/lib/modules"} {
		names, err := listDirIn(root, dir)
		if err != nil {
			return nil, fmt.Errorf("find kernels: %w", err)
		}
		for _, rel := range names {
			if skipRelease(rel) {
				continue
			}
			if p, ok := regularIn(root, dir+"/"+rel+"/vmlinuz"); ok {
				add(Kernel{Release: rel, Vmlinuz: p, Initrd: initrdFor(rel, dir+"/"+rel+"/initrd")})
			}
		}
	}

	ks := make([]Kernel, 0, len(order))
	for _, r := range order {
		ks = append(ks, byRelease[r])
	}
	sort.SliceStable(ks, func(i, j int) bool { return kmod.CompareReleases(ks[i].Release, ks[j].Release) > 0 })
	return ks, nil
}

func skipRelease(rel string) bool {
	if rel == "" || strings.Contains(rel, ".dpkg-") || strings.ContainsAny(rel, "/ \t\n") {
		return true
	}
	for _, s := range []string{".old", ".bak", ".sig"} {
		if strings.HasSuffix(rel, s) {
			return true
		}
	}
	return false
}

// listDirIn lists the names in the image directory p (symbolic links
// resolved inside root); a missing p (or one that is not a directory) lists
// nothing.
func listDirIn(root, p string) ([]string, error) {
	h, err := securejoin.SecureJoin(root, p)
	if err == nil {
		var es []os.DirEntry
		if es, err = os.ReadDir(h); err == nil {
			names := make([]string, 0, len(es))
			for _, e := range es {
				names = append(names, e.Name())
			}
			return names, nil
		}
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil
	}
	return nil, err
}

// regularIn resolves p inside root (symbolic links followed, absolute
// targets and ".." never leaving root) and reports whether it is a
// non-empty regular file.
func regularIn(root, p string) (string, bool) {
	h, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return "", false
	}
	st, err := os.Stat(h)
	if err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
		return "", false
	}
	return h, true
}

// RootArg returns the root= value that boots the image mounted at root: the
// source of the "/" entry of root/etc/fstab (the last one if there are
// several). UUID=, LABEL=, PARTUUID= and PARTLABEL= sources are returned as
// they are (quotes around the value removed), /dev/disk/by-uuid/X,
// by-label/X, by-partuuid/X and by-partlabel/X are turned into those tags,
// and any other /dev/... name is refused: the guest sees virtio disks
// (/dev/vda...), so device names of the build machine or of another
// hypervisor cannot be trusted. Without an fstab or a "/" entry the result
// is "UUID=<fallbackUUID>" (fallbackUUID may also be given as UUID=...); an
// empty fallback is then an error.
//
// The tags need an initrd (udev or blkid) to be resolved, except PARTUUID=,
// which the kernel resolves itself.
func RootArg(root, fallbackUUID string) (string, error) {
	fallback := func(why string) (string, error) {
		u := strings.TrimPrefix(strings.TrimSpace(fallbackUUID), "UUID=")
		if u == "" {
			return "", fmt.Errorf("root=: %s and no filesystem UUID to fall back on", why)
		}
		if err := checkCmdlineValue(u); err != nil {
			return "", fmt.Errorf("root=: fallback UUID: %w", err)
		}
		return "UUID=" + u, nil
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("root=: %w", err)
	}
	fstab, err := securejoin.SecureJoin(root, "/etc/fstab")
	if err != nil {
		return "", fmt.Errorf("root=: %w", err)
	}
	f, err := os.Open(fstab)
	if errors.Is(err, os.ErrNotExist) {
		return fallback("no /etc/fstab in the image")
	}
	if err != nil {
		return "", fmt.Errorf("root=: %w", err)
	}
	entries, err := diskimage.ParseFstab(f)
	f.Close()
	if err != nil && !errors.Is(err, diskimage.ErrBadFstabLine) {
		return "", fmt.Errorf("root=: read %s: %w", fstab, err)
	}
	spec, line := "", 0
	for _, e := range entries {
		if path.Clean(e.File) == "/" {
			spec, line = e.Spec, e.Line
		}
	}
	if spec == "" {
		return fallback("/etc/fstab has no entry for /")
	}
	where := fmt.Sprintf("/etc/fstab line %d", line)
	if tag, val, ok := strings.Cut(spec, "="); ok {
		switch tag {
		case "UUID", "LABEL", "PARTUUID", "PARTLABEL":
			val = unquote(val)
			if val == "" {
				return "", fmt.Errorf("root=: %s: empty %s for /", where, tag)
			}
			if err := checkCmdlineValue(val); err != nil {
				return "", fmt.Errorf("root=: %s: %s for /: %w", where, tag, err)
			}
			return tag + "=" + val, nil
		}
	}
	if strings.HasPrefix(spec, "/dev/") {
		for dir, tag := range map[string]string{
			"/dev/disk/by-uuid/":      "UUID",
			"/dev/disk/by-label/":     "LABEL",
			"/dev/disk/by-partuuid/":  "PARTUUID",
			"/dev/disk/by-partlabel/": "PARTLABEL",
		} {
			if val, ok := strings.CutPrefix(spec, dir); ok && val != "" && !strings.Contains(val, "/") {
				if err := checkCmdlineValue(val); err != nil {
					return "", fmt.Errorf("root=: %s: %s for /: %w", where, spec, err)
				}
				return tag + "=" + val, nil
			}
		}
		return "", fmt.Errorf("root=: %s names the root filesystem by device name %s, which cannot be trusted in the check's VM (its disk is a virtio /dev/vda); name it by UUID=, LABEL=, PARTUUID= or PARTLABEL= in fstab, or pass the root= value explicitly", where, spec)
	}
	return "", fmt.Errorf("root=: %s: unsupported source %q for / (want UUID=, LABEL=, PARTUUID=, PARTLABEL= or /dev/disk/by-*/...)", where, spec)
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		return s[1 : len(s)-1]
	}
	return s
}

// checkCmdlineValue refuses what cannot be one kernel command line word.
func checkCmdlineValue(v string) error {
	if strings.ContainsAny(v, " \t\n\"'\\") {
		return fmt.Errorf("%q holds blanks, quotes or backslashes, which the kernel command line cannot carry", v)
	}
	return nil
}
