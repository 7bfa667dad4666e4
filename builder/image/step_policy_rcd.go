package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
)

// policyRCD denies every service start (invoke-rc.d's policy interface):
// in a chroot a started daemon would run on the build host and keep the
// image busy at unmount.
const policyRCD = "#!/bin/sh\n# packer kmod-image: no service starts while provisioning\nexit 101\n"

// stepPolicyRCD installs /usr/sbin/policy-rc.d for the provisioning, unless
// start_services is set, and restores the image's own one afterwards.
//
// Consumes: build.mountPath. Produces: /usr/sbin/policy-rc.d and an undo
// entry.
type stepPolicyRCD struct{ undo *undoer }

func (s *stepPolicyRCD) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := get(state)
	if b.cfg.StartServices {
		return multistep.ActionContinue
	}
	restore, err := installPolicyRCD(b.mountPath)
	if err != nil {
		return halt(state, "policy-rc.d: %v", err)
	}
	s.undo = b.pushUndo("remove policy-rc.d", restore)
	return multistep.ActionContinue
}

func (s *stepPolicyRCD) Cleanup(state multistep.StateBag) {
	if s.undo == nil {
		return
	}
	if err := s.undo.run(); err != nil {
		ui(state).Error(fmt.Sprintf("restore /usr/sbin/policy-rc.d: %v", err))
	}
}

func installPolicyRCD(root string) (func() error, error) {
	dir, err := securejoin.SecureJoin(root, "/usr/sbin")
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return func() error { return nil }, nil
	}
	p := filepath.Join(dir, "policy-rc.d")
	backup := filepath.Join(dir, ".policy-rc.d.packer-kmod-image")
	had := false
	if _, err := os.Lstat(p); err == nil {
		if _, err := os.Lstat(backup); err == nil {
			return nil, fmt.Errorf("%s exists: a killed build left it; it is the image's own policy-rc.d (mv it back to %s)", backup, p)
		}
		if err := os.Rename(p, backup); err != nil {
			return nil, err
		}
		had = true
	}
	if err := atomicfile.WriteFile(p, []byte(policyRCD), 0o755); err != nil {
		if had {
			os.Rename(backup, p)
		}
		return nil, err
	}
	return func() error {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if had {
			return os.Rename(backup, p)
		}
		return nil
	}, nil
}
