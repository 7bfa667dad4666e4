package image

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/diskimage/rootfs"
)

// stepSource makes the raw working copy the build customizes: source_image
// checked against source_checksum and converted (or sparse-copied), or a new
// GPT disk made from source_rootfs. The source is only ever read.
//
// The copy of a source_image is a scratch file, never fsynced here: the
// loop devices the build will mount its partitions from are attached to it
// while it is still empty (Tracker.Reserve: attaching one later would fsync
// the whole copy), and made write-through, so that nothing writes it to
// disk unless a raw output keeps it (stepOutputs syncs that).
//
// Consumes: config, build.workImage. Produces: the file at build.workImage,
// build.tracker (holding the spare loop devices).
type stepSource struct{}

func (s *stepSource) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	cfg := b.cfg
	start := time.Now()
	if cfg.SourceRootfs != "" {
		size, _ := parseSize(cfg.DiskSize)
		u.Say(fmt.Sprintf("Creating a %s %s disk from %s...", humanBytes(size), cfg.Filesystem, cfg.SourceRootfs))
		_, err := rootfs.CreateImage(ctx, cfg.SourceRootfs, b.workImage, rootfs.Options{
			Size: size, Filesystem: cfg.Filesystem, Log: u.Message,
		})
		if err != nil {
			return halt(state, "source_rootfs %s: %v", cfg.SourceRootfs, err)
		}
		u.Message(fmt.Sprintf("Disk created in %v", time.Since(start).Round(time.Millisecond)))
		b.since("source", start)
		return multistep.ActionContinue
	}

	info, err := diskimage.Inspect(ctx, cfg.SourceImage)
	if err != nil {
		return halt(state, "source_image %s: %v", cfg.SourceImage, err)
	}
	if info.BackingFile != "" {
		// A backing file points at another host file; refuse rather than
		// silently reading it.
		return halt(state, "source_image %s has a backing file (%s); flatten it first (qemu-img convert -O qcow2 %s flat.qcow2)", cfg.SourceImage, info.BackingFile, cfg.SourceImage)
	}
	format := cfg.SourceFormat
	if format == "" {
		format = info.Format
	} else if format != info.Format {
		return halt(state, "source_format is %s but qemu-img reads %s as %s", format, cfg.SourceImage, info.Format)
	}
	opts := []diskimage.ConvertOption{diskimage.WithSourceFormat(format), diskimage.WithProgress(progress(u, "copy"))}
	var got string
	if cfg.SourceChecksum != "" {
		// Hashed by the copy's own read of the source, checked before
		// anything uses the copy.
		u.Say(fmt.Sprintf("Verifying the checksum of %s while copying it...", cfg.SourceImage))
		opts = append(opts, diskimage.WithSourceSHA256(&got))
	}
	u.Say(fmt.Sprintf("Making a raw working copy of %s (%s, %s)...", cfg.SourceImage, format, humanBytes(info.VirtualSize)))
	f, err := os.OpenFile(b.workImage, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return halt(state, "working copy: %v", err)
	}
	defer f.Close()
	if err := f.Truncate(info.VirtualSize); err != nil {
		return halt(state, "working copy: %v", err)
	}
	b.tracker = &diskimage.Tracker{}
	if err := b.tracker.Reserve(ctx, b.workImage, spareLoops(cfg.SourceImage, format)); err != nil {
		return halt(state, "working copy: %v", err)
	}
	if err := diskimage.CopyRaw(ctx, cfg.SourceImage, f, opts...); err != nil {
		return halt(state, "source_image %s: %v", cfg.SourceImage, err)
	}
	if want, _ := parseChecksum(cfg.SourceChecksum); cfg.SourceChecksum != "" && got != want {
		return halt(state, "source_checksum: %s has sha256 %s, want %s", cfg.SourceImage, got, want)
	}
	if err := f.Close(); err != nil {
		return halt(state, "working copy: %v", err)
	}
	u.Message(fmt.Sprintf("Working copy ready in %v", time.Since(start).Round(time.Millisecond)))
	b.since("source", start)
	return multistep.ActionContinue
}

// spareLoops is how many loop devices to reserve before the copy: one per
// partition holding a filesystem (the root and what its fstab may mount),
// read from a raw source's partition table. Other formats are read by
// qemu-img only, so three are guessed (root, /boot, the ESP). A mount
// beyond them attaches a new device, which fsyncs the working copy:
// slower, not wrong. Those no mount takes are detached after the mounts.
func spareLoops(source, format string) int {
	const guess, most = 3, 8
	if format != "raw" {
		return guess
	}
	f, err := os.Open(source)
	if err != nil {
		return guess
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return guess
	}
	t, err := diskimage.ReadTable(f, st.Size())
	if err != nil {
		return 1 // stepAttach reports the table; the root needs one
	}
	n := 0
	for _, fs := range diskimage.ProbeAll(f, t) {
		if fs.Type != "" {
			n++
		}
	}
	return min(max(n, 1), most)
}

// Cleanup releases the loop devices (a failed copy leaves its spares; the
// attach step's Cleanup, which normally does it, runs first) and removes
// the working copy (the preflight step removes its folder).
func (s *stepSource) Cleanup(state multistep.StateBag) {
	b := get(state)
	if release(state) != nil || b.workImage == "" {
		return
	}
	if loops, _ := diskimage.ListLoopsFor(b.workImage); len(loops) > 0 {
		return // still attached; preflight's cleanup reports it
	}
	os.Remove(b.workImage)
}
