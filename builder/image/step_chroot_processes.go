package image

import (
	"context"
	"fmt"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// stepChrootProcesses does nothing when run; its undo kills every process
// still using the image (daemons started by provisioning, a command left
// behind by Ctrl-C) so that nothing keeps the filesystems busy. Placed after
// the chroot mounts, it runs before they are unmounted.
//
// Consumes: build.mountPath. Produces: an undo entry.
type stepChrootProcesses struct{ undo *undoer }

func (s *stepChrootProcesses) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	s.undo = b.pushUndo("stop chroot processes", func() error {
		if pids := diskimage.KillUsers(b.mountPath); len(pids) > 0 {
			u.Message(fmt.Sprintf("Killed processes left in the chroot: %v", pids))
		}
		return nil
	})
	return multistep.ActionContinue
}

func (s *stepChrootProcesses) Cleanup(multistep.StateBag) {
	if s.undo != nil {
		s.undo.run()
	}
}
