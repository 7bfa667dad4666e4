package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// stepAttach reads the working copy's partition table in Go (the build
// host's kernel may not scan partition tables), chooses the root partition
// and attaches it to a loop device at its offset.
//
// Consumes: build.workImage, config.root_partition. Produces: build.table,
// build.probes, build.root, build.rootFS, build.rootDevice, build.tracker.
type stepAttach struct{}

func (s *stepAttach) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	start := time.Now()
	f, err := os.Open(b.workImage)
	if err != nil {
		return halt(state, "%v", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return halt(state, "%v", err)
	}
	t, err := diskimage.ReadTable(f, st.Size())
	if err != nil {
		f.Close()
		return halt(state, "%s: %v (kmod-image needs a partitioned disk image)", b.sourceName(), err)
	}
	b.table = t
	b.probes = diskimage.ProbeAll(f, t)
	f.Close()
	if t.UsedBackupGPT {
		u.Error(fmt.Sprintf("warning: %s: the primary GPT is damaged (%s); using the backup copy", b.sourceName(), t.PrimaryError))
	}
	for _, p := range t.Partitions {
		fs := b.probes[p.Number]
		u.Message(fmt.Sprintf("partition %d: %s %s %s %s", p.Number, humanBytes(p.Size), p.TypeName(), fs.Type, fs.Label))
	}

	if b.tracker == nil { // source_rootfs: stepSource reserved nothing
		b.tracker = &diskimage.Tracker{}
	}
	root, how, err := diskimage.ChooseRoot(t, diskimage.RootOptions{
		Number: b.cfg.RootPartition,
		Probes: b.probes,
		HasOSRelease: func(p diskimage.Partition, fs diskimage.FS) (bool, error) {
			return hasOSRelease(ctx, b.workImage, p, fs)
		},
	})
	if err != nil {
		return halt(state, "%s: root partition: %v (set root_partition)", b.sourceName(), err)
	}
	b.root, b.rootFS = root, b.probes[root.Number]
	if b.rootFS.Type == "" {
		return halt(state, "%s: root partition %d has no filesystem this builder recognises", b.sourceName(), root.Number)
	}
	u.Say(fmt.Sprintf("Root is partition %d (%s, %s; %s)", root.Number, b.rootFS.Type, b.rootFS.UUID, how))
	l, err := b.tracker.AttachPartition(ctx, b.workImage, root, false)
	if err != nil {
		return halt(state, "attach root partition %d: %v", root.Number, err)
	}
	b.rootDevice = l.Device
	u.Message(fmt.Sprintf("Attached partition %d to %s", root.Number, l.Device))
	b.since("attach", start)
	return multistep.ActionContinue
}

// Cleanup releases every mount and loop device of the build (idempotent;
// later steps' cleanups have normally released them already).
func (s *stepAttach) Cleanup(state multistep.StateBag) {
	release(state)
}

// release releases everything the tracker holds and reports what it did.
func release(state multistep.StateBag) error {
	b := get(state)
	if b.tracker == nil {
		return nil
	}
	_, err := b.tracker.Release()
	if err != nil {
		ui(state).Error(fmt.Sprintf("release mounts and loop devices: %v", err))
	}
	return err
}

// hasOSRelease mounts p read-only to look for os-release.
func hasOSRelease(ctx context.Context, image string, p diskimage.Partition, fs diskimage.FS) (bool, error) {
	var t diskimage.Tracker
	defer t.Release()
	l, err := t.AttachPartition(ctx, image, p, true)
	if err != nil {
		return false, err
	}
	dir, err := os.MkdirTemp("", "kmod-image-probe-")
	if err != nil {
		return false, err
	}
	defer os.Remove(dir)
	if err := t.Mount(ctx, l.Device, dir, fs.Type, "ro"); err != nil {
		return false, err
	}
	defer t.Release()
	for _, rel := range []string{"etc/os-release", "usr/lib/os-release"} {
		if _, err := os.Lstat(filepath.Join(dir, rel)); err == nil {
			return true, nil
		}
	}
	return false, nil
}

func (b *build) sourceName() string {
	if b.cfg.SourceImage != "" {
		return b.cfg.SourceImage
	}
	return b.cfg.SourceRootfs
}
