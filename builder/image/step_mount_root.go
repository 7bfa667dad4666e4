package image

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepMountRoot mounts the root partition read-write on the mount path
// (mount_path, or a new directory under /var/tmp/packer-kmod-image).
//
// Consumes: build.rootDevice, build.rootFS. Produces: build.mountPath.
type stepMountRoot struct{ createdDir string }

func (s *stepMountRoot) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := get(state)
	start := time.Now()
	mp := b.cfg.MountPath
	if mp == "" {
		if err := os.MkdirAll(defaultMountParent, 0o755); err != nil {
			return halt(state, "mount path: %v", err)
		}
		d, err := os.MkdirTemp(defaultMountParent, b.cfg.PackerBuildName+"-")
		if err != nil {
			return halt(state, "mount path: %v", err)
		}
		mp, s.createdDir = d, d
	} else {
		ents, err := os.ReadDir(mp)
		switch {
		case os.IsNotExist(err):
			if err := os.MkdirAll(mp, 0o755); err != nil {
				return halt(state, "mount_path: %v", err)
			}
			s.createdDir = mp
		case err != nil:
			return halt(state, "mount_path: %v", err)
		case len(ents) > 0:
			return halt(state, "mount_path: %s is not empty (another build, or something mounted there?)", mp)
		}
	}
	b.mountPath = mp
	if err := b.saveRecord(); err != nil {
		return halt(state, "%v", err)
	}
	if err := b.tracker.Mount(ctx, b.rootDevice, mp, b.rootFS.Type); err != nil {
		return halt(state, "mount root partition %d (%s): %v", b.root.Number, b.rootFS.Type, err)
	}
	ui(state).Message(fmt.Sprintf("Mounted %s (%s) on %s", b.rootDevice, b.rootFS.Type, mp))
	b.since("attach", start)
	return multistep.ActionContinue
}

// Cleanup releases all mounts and loops, then removes the mount directory
// if this step created it and it is empty (never RemoveAll a mount point).
func (s *stepMountRoot) Cleanup(state multistep.StateBag) {
	if release(state) != nil {
		return
	}
	if s.createdDir != "" {
		if err := os.Remove(s.createdDir); err == nil {
			s.createdDir = ""
		}
	}
}
