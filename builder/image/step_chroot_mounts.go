package image

import (
	"context"
	"fmt"
	"os"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// stepChrootMounts makes the chroot usable for provisioners: /proc, /sys,
// /dev, /dev/pts and a tmpfs /run by default (chroot_mounts), each target
// resolved inside the image so a symlink cannot point it at the host.
//
// Consumes: build.mountPath, config.chroot_mounts. Produces: mounts held by
// build.tracker, an undo entry that unmounts them (and anything provisioning
// mounted below them), deepest first.
type stepChrootMounts struct{ undo *undoer }

func (s *stepChrootMounts) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	var targets []string
	s.undo = b.pushUndo("chroot mounts", func() error {
		var firstErr error
		for i := len(targets) - 1; i >= 0; i-- {
			if _, err := diskimage.UnmountTree(targets[i]); err != nil && firstErr == nil {
				firstErr = err
			}
		}
		return firstErr
	})
	for _, m := range b.cfg.ChrootMounts {
		fstype, source, inside := m[0], m[1], m[2]
		target, err := securejoin.SecureJoin(b.mountPath, inside)
		if err != nil {
			return halt(state, "chroot_mounts %s: %v", inside, err)
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return halt(state, "chroot_mounts %s: %v", inside, err)
		}
		var opts []string
		if fstype == "bind" {
			fstype, opts = "", []string{"bind"}
		}
		if err := b.tracker.Mount(ctx, source, target, fstype, opts...); err != nil {
			return halt(state, "chroot_mounts %s: %v", inside, err)
		}
		targets = append(targets, target)
		u.Message(fmt.Sprintf("Mounted %s on %s", source, inside))
	}
	return multistep.ActionContinue
}

func (s *stepChrootMounts) Cleanup(state multistep.StateBag) {
	if s.undo == nil {
		return
	}
	if err := s.undo.run(); err != nil {
		ui(state).Error(fmt.Sprintf("unmount chroot mounts: %v", err))
	}
}
