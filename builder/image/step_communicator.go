package image

import (
	"context"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
)

// stepCommunicator hands provisioners the chroot communicator.
//
// Consumes: build.mountPath. Produces: state "communicator".
type stepCommunicator struct{ comm *Communicator }

func (s *stepCommunicator) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	s.comm.Root = get(state).mountPath
	state.Put("communicator", s.comm)
	return multistep.ActionContinue
}

func (s *stepCommunicator) Cleanup(multistep.StateBag) {}
