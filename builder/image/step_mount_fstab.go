package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// stepMountFstab mounts the image's own /etc/fstab filesystems that live on
// its partitions (/boot, /boot/efi, /var, ...) under the root, parents
// first. A filesystem the build host cannot mount is skipped with a warning
// unless required_mounts names it.
//
// Consumes: build.mountPath, build.table, build.probes. Produces: mounts
// held by build.tracker.
type stepMountFstab struct{}

func (s *stepMountFstab) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	start := time.Now()
	// The loop devices stepSource reserved and no mount took are not
	// needed past this step.
	defer func() {
		if err := b.tracker.DropSpares(); err != nil {
			u.Error(fmt.Sprintf("detach spare loop devices: %v", err))
		}
	}()
	required := map[string]bool{}
	for _, m := range b.cfg.RequiredMounts {
		required[filepath.Clean(m)] = true
	}
	fstabPath, err := securejoin.SecureJoin(b.mountPath, "/etc/fstab")
	if err != nil {
		return halt(state, "/etc/fstab: %v", err)
	}
	f, err := os.Open(fstabPath)
	var entries []diskimage.FstabEntry
	switch {
	case os.IsNotExist(err):
		u.Message("The image has no /etc/fstab; only the root partition is mounted")
	case err != nil:
		return halt(state, "/etc/fstab: %v", err)
	default:
		entries, err = diskimage.ParseFstab(f)
		f.Close()
		if err != nil {
			return halt(state, "image /etc/fstab: %v", err)
		}
	}
	sortByMountPoint(entries)
	hostFS := hostFilesystems()
	mounted := map[string]bool{}
	byPart := map[int]string{}
	for _, e := range entries {
		mp := filepath.Clean(e.File)
		if !strings.HasPrefix(mp, "/") || mp == "/" || e.Type == "swap" {
			continue
		}
		p, ok := matchPartition(e.Spec, b.table, b.probes)
		if !ok {
			continue // tmpfs, network filesystems, other disks
		}
		if p.Number == b.root.Number {
			continue
		}
		if prev, ok := byPart[p.Number]; ok {
			// Mounting one filesystem read-write twice through two loop
			// devices corrupts it.
			u.Error(fmt.Sprintf("warning: skipping %s (fstab line %d): partition %d is already mounted on %s", mp, e.Line, p.Number, prev))
			continue
		}
		fs := b.probes[p.Number]
		fsType := e.Type
		if fsType == "auto" || fsType == "" {
			fsType = fs.Type
		}
		if e.HasOption("noauto") && !required[mp] {
			u.Message(fmt.Sprintf("Skipping %s (noauto in /etc/fstab)", mp))
			continue
		}
		if fsType == "" || !hostFS[fsType] {
			msg := fmt.Sprintf("%s (partition %d, %s) cannot be mounted: the build host's kernel has no %q filesystem", mp, p.Number, e.Spec, fsType)
			if required[mp] {
				return halt(state, "required_mounts: %s", msg)
			}
			u.Error("warning: skipping " + msg + "; files provisioned under it go to the filesystem below it (list it in required_mounts to make this an error)")
			continue
		}
		target, err := securejoin.SecureJoin(b.mountPath, mp)
		if err != nil {
			return halt(state, "fstab line %d: mount point %s: %v", e.Line, mp, err)
		}
		l, err := b.tracker.AttachPartition(ctx, b.workImage, p, false)
		if err != nil {
			return halt(state, "attach partition %d for %s: %v", p.Number, mp, err)
		}
		if err := b.tracker.Mount(ctx, l.Device, target, fsType); err != nil {
			if e.HasOption("nofail") && !required[mp] {
				u.Error(fmt.Sprintf("warning: %s (nofail) not mounted: %v", mp, err))
				continue
			}
			return halt(state, "mount %s (partition %d, %s): %v", mp, p.Number, fsType, err)
		}
		mounted[mp] = true
		byPart[p.Number] = mp
		u.Message(fmt.Sprintf("Mounted partition %d (%s) on %s", p.Number, fsType, mp))
	}
	for m := range required {
		if !mounted[m] {
			return halt(state, "required_mounts: %s is not a partition of this image in its /etc/fstab", m)
		}
	}
	b.since("attach", start)
	return multistep.ActionContinue
}

// Cleanup: the mounts are the tracker's; stepMountRoot releases them.
func (s *stepMountFstab) Cleanup(state multistep.StateBag) {}
