package firstboot

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
)

// Files the identity is read from (under Options.Root).
const (
	CloudInitInstanceIDPath = "/var/lib/cloud/data/instance-id"
	MachineIDPath           = "/etc/machine-id"
	BootIDPath              = "/proc/sys/kernel/random/boot_id"
)

// Sources of Identity.InstanceID.
const (
	SourceCloudInit = "cloud-init"
	SourceMachineID = "machine-id"
)

// maxIDSize bounds the identity files read.
const maxIDSize = 4096

// Identity names the instance and the boot a report is about.
type Identity struct {
	// InstanceID is cloud-init's instance-id when cloud-init wrote one,
	// else the machine-id; Source says which (SourceCloudInit,
	// SourceMachineID, or "" when neither could be read).
	InstanceID string
	Source     string
	// BootID is the kernel's random boot_id.
	BootID string
	// Problems lists what could not be read, for the report's warnings.
	Problems []string
}

// ReadIdentity reads the instance and boot identity of the system at root
// ("" or "/" for the running system). Missing or unreadable files leave
// their field empty with a Problem; it never fails.
func ReadIdentity(root string) Identity {
	var id Identity
	cloud, cerr := readID(root, CloudInitInstanceIDPath)
	switch {
	case cerr == nil && cloud != "":
		id.InstanceID, id.Source = cloud, SourceCloudInit
	default:
		if cerr != nil && !errors.Is(cerr, fs.ErrNotExist) {
			id.Problems = append(id.Problems, cerr.Error())
		}
		mid, err := readID(root, MachineIDPath)
		switch {
		case err != nil:
			id.Problems = append(id.Problems, err.Error())
		case mid == "" || mid == "uninitialized":
			id.Problems = append(id.Problems, MachineIDPath+": empty or uninitialized")
		default:
			id.InstanceID, id.Source = mid, SourceMachineID
		}
	}
	boot, err := readID(root, BootIDPath)
	if err != nil {
		id.Problems = append(id.Problems, err.Error())
	}
	id.BootID = boot
	return id
}

// readID reads a one-line identity file under root, trimmed; an ID that is
// not printable UTF-8 on one line is refused.
func readID(root, p string) (string, error) {
	f, err := os.Open(hostPath(root, p))
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, unwrapPathError(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIDSize+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, unwrapPathError(err))
	}
	if len(b) > maxIDSize {
		return "", fmt.Errorf("%s: longer than %d bytes", p, maxIDSize)
	}
	s := string(bytes.TrimSpace(b))
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", fmt.Errorf("%s: not a one-line printable identifier", p)
	}
	return s, nil
}

// hostPath is the system path p (absolute, trusted: /proc, /sys, /run,
// /etc, /var) under root.
func hostPath(root, p string) string {
	if root == "" || root == "/" {
		return p
	}
	return filepath.Join(root, p)
}

// unwrapPathError drops the *fs.PathError's host path (the caller names
// the image path), keeping the cause.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Done says whether the first-boot part already ran for the
// instance id names: the done file under root holds its InstanceID. An
// identity without an InstanceID is never done.
func Done(root string, id Identity) bool {
	if id.InstanceID == "" {
		return false
	}
	got, err := readID(root, DonePath)
	return err == nil && got == id.InstanceID
}

// MarkDone records that the first-boot part ran for id's
// instance (atomically, creating the folder). An identity without an
// InstanceID is not recorded.
func MarkDone(root string, id Identity) error {
	if id.InstanceID == "" {
		return errors.New("no instance ID to record: the first-boot part will run again")
	}
	p := hostPath(root, DonePath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return atomicfile.WriteFile(p, []byte(id.InstanceID+"\n"), 0o644)
}
