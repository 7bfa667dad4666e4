package image

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// stepUnmount ends the customization: it runs the restore actions (leftover
// processes, policy-rc.d, resolv.conf, chroot mounts), unmounts every
// filesystem and detaches every loop device, and checks that nothing still
// holds the working copy, so the outputs are made from a clean, closed disk.
//
// Consumes: build.undo, build.tracker. Produces: a detached build.workImage.
type stepUnmount struct{}

func (s *stepUnmount) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	start := time.Now()
	if err := b.unwind(); err != nil {
		return halt(state, "restore the image before unmounting: %v", err)
	}
	if err := release(state); err != nil {
		return halt(state, "unmount the image: %v", err)
	}
	if err := diskimage.CheckNoLeftovers(b.workImage); err != nil {
		return halt(state, "%v", err)
	}
	u.Message(fmt.Sprintf("Unmounted and detached in %v", time.Since(start).Round(time.Millisecond)))
	b.since("finalize", start)
	return multistep.ActionContinue
}

func (s *stepUnmount) Cleanup(multistep.StateBag) {}
