package image

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepMountRoot mounts the root partition read-write on the mount path.
//
// Consumes: build.rootDevice, build.rootFS, build.mountPath. Produces: the
// root mount, held by build.tracker.
type stepMountRoot struct{}

func (s *stepMountRoot) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := get(state)
	start := time.Now()
	mp := b.mountPath
	if mp == "" {
		return halt(state, "internal error: no mount path chosen")
	}
	if err := b.tracker.Mount(ctx, b.rootDevice, mp, b.rootFS.Type); err != nil {
		return halt(state, "mount root partition %d (%s): %v", b.root.Number, b.rootFS.Type, err)
	}
	ui(state).Message(fmt.Sprintf("Mounted %s (%s) on %s", b.rootDevice, b.rootFS.Type, mp))
	b.since("attach", start)
	return multistep.ActionContinue
}

// Cleanup releases all mounts and loops (idempotent).
func (s *stepMountRoot) Cleanup(state multistep.StateBag) { release(state) }
