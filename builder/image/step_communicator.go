package image

import (
	"context"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepCommunicator hands provisioners the chroot communicator.
//
// Consumes: build.mountPath. Produces: state "communicator".
type stepCommunicator struct{ comm *Communicator }

func (s *stepCommunicator) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := get(state)
	s.comm.Root = b.mountPath
	b.provisionStart = time.Now()
	state.Put("communicator", s.comm)
	return multistep.ActionContinue
}

func (s *stepCommunicator) Cleanup(multistep.StateBag) {}
