package diskimage

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
)

// RootGPTTypes maps GOARCH values to the Discoverable Partitions root type.
var RootGPTTypes = map[string]string{
	"amd64":   GPTTypeRootX86_64,
	"arm64":   GPTTypeRootARM64,
	"386":     GPTTypeRootX86,
	"arm":     GPTTypeRootARM,
	"riscv64": GPTTypeRootRISCV64,
}

// RootLabels are the filesystem labels taken as the root filesystem.
var RootLabels = []string{"root", "cloudimg-rootfs"}

// RootOptions controls ChooseRoot.
type RootOptions struct {
	// Number selects a partition explicitly (> 0).
	Number int
	// Arch is a GOARCH value for the GPT root type; default runtime.GOARCH.
	Arch string
	// Probes holds probe results by partition number (partitions missing
	// here, or with an empty Type, are not considered by label).
	Probes map[int]FS
	// HasOSRelease, if set, is the last resort: it is called for each
	// partition with a probed Linux filesystem (ext*, xfs, btrfs) and should
	// report whether /etc/os-release (or /usr/lib/os-release) exists in it.
	// The builder passes a mount-based check here.
	HasOSRelease func(p Partition, fs FS) (bool, error)
}

// ChooseRoot picks the root partition: the explicit number; else the single
// partition with the GPT root type of the architecture; else the single
// filesystem labelled root or cloudimg-rootfs; else the single filesystem
// holding os-release. The string tells how it was chosen.
func ChooseRoot(t *Table, o RootOptions) (Partition, string, error) {
	if t == nil {
		return Partition{}, "", errors.New("no partition table")
	}
	if o.Number > 0 {
		p, ok := t.Partition(o.Number)
		if !ok {
			return Partition{}, "", fmt.Errorf("root partition %d not in the %s table (partitions: %s)", o.Number, t.Kind, numbers(t.Partitions))
		}
		if p.Extended {
			return Partition{}, "", fmt.Errorf("root partition %d is an MBR extended container", o.Number)
		}
		return p, "explicit partition number", nil
	}
	arch := o.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	if t.Kind == "gpt" {
		if typ, ok := RootGPTTypes[arch]; ok {
			var m []Partition
			for _, p := range t.Partitions {
				if p.Type == typ {
					m = append(m, p)
				}
			}
			if len(m) == 1 {
				return m[0], "GPT root partition type for " + arch, nil
			}
			if len(m) > 1 {
				return Partition{}, "", fmt.Errorf("%d partitions (%s) have the %s root type; choose one explicitly", len(m), numbers(m), arch)
			}
		}
	}
	var byLabel []Partition
	for _, p := range t.Partitions {
		fs, ok := o.Probes[p.Number]
		if !ok {
			continue
		}
		for _, l := range RootLabels {
			if fs.Label == l {
				byLabel = append(byLabel, p)
			}
		}
	}
	if len(byLabel) == 1 {
		return byLabel[0], "filesystem label " + o.Probes[byLabel[0].Number].Label, nil
	}
	if len(byLabel) > 1 {
		return Partition{}, "", fmt.Errorf("partitions %s all carry a root label; choose one explicitly", numbers(byLabel))
	}
	if o.HasOSRelease == nil {
		return Partition{}, "", fmt.Errorf("no root partition found in the %s table (no %s root type, no label %s); set the partition number", t.Kind, arch, strings.Join(RootLabels, "/"))
	}
	var found []Partition
	var errs []error
	for _, p := range t.Partitions {
		fs, ok := o.Probes[p.Number]
		if !ok || !isLinuxFS(fs.Type) {
			continue
		}
		has, err := o.HasOSRelease(p, fs)
		if err != nil {
			errs = append(errs, fmt.Errorf("partition %d: %w", p.Number, err))
			continue
		}
		if has {
			found = append(found, p)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], "filesystem holding os-release", nil
	case len(found) > 1:
		return Partition{}, "", fmt.Errorf("partitions %s all hold os-release; choose one explicitly", numbers(found))
	}
	err := fmt.Errorf("no root partition found in the %s table (no %s root type, no label %s, no filesystem with os-release); set the partition number", t.Kind, arch, strings.Join(RootLabels, "/"))
	if len(errs) > 0 {
		err = errors.Join(append([]error{err}, errs...)...)
	}
	return Partition{}, "", err
}

func isLinuxFS(t string) bool {
	switch t {
	case "ext2", "ext3", "ext4", "xfs", "btrfs":
		return true
	}
	return false
}

func numbers(ps []Partition) string {
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprint(p.Number))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
