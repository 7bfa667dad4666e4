package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
)

// hostResolvConf is where the build host's resolver configuration is read.
const hostResolvConf = "/etc/resolv.conf"

// stepResolvConf puts the build host's resolv.conf in the image while
// provisioning (resolv_conf = "copy") so package managers can resolve names.
// The image's own entry — a file, a symlink or a dangling symlink such as
// systemd-resolved's — is moved aside by rename, which keeps it exactly, and
// moved back afterwards. If provisioning replaced our copy (say, by
// installing systemd-resolved), its version is kept instead.
//
// Consumes: build.mountPath. Produces: a temporary /etc/resolv.conf and an
// undo entry.
type stepResolvConf struct{ undo *undoer }

func (s *stepResolvConf) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := get(state)
	if b.cfg.ResolvConf != resolvConfCopy {
		return multistep.ActionContinue
	}
	restore, err := swapResolvConf(b.mountPath, hostResolvConf)
	if err != nil {
		return halt(state, "resolv_conf: %v", err)
	}
	s.undo = b.pushUndo("restore /etc/resolv.conf", restore)
	return multistep.ActionContinue
}

func (s *stepResolvConf) Cleanup(state multistep.StateBag) {
	if s.undo == nil {
		return
	}
	if err := s.undo.run(); err != nil {
		ui(state).Error(fmt.Sprintf("restore /etc/resolv.conf: %v", err))
	}
}

// swapResolvConf replaces root's /etc/resolv.conf with a copy of host and
// returns the function that undoes it.
func swapResolvConf(root, host string) (func() error, error) {
	content, err := os.ReadFile(host)
	if err != nil {
		return nil, fmt.Errorf("read the build host's %s: %w", host, err)
	}
	etc, err := securejoin.SecureJoin(root, "/etc")
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(etc); err != nil || !st.IsDir() {
		return func() error { return nil }, nil // no /etc: nothing to resolve with anyway
	}
	p := filepath.Join(etc, "resolv.conf")
	backup := filepath.Join(etc, ".resolv.conf.packer-kmod-image")
	if _, err := os.Lstat(backup); err == nil {
		return nil, fmt.Errorf("%s exists: a killed build left it; it holds the image's original resolv.conf (mv it back to %s)", backup, p)
	}
	had := false
	if _, err := os.Lstat(p); err == nil {
		if err := os.Rename(p, backup); err != nil {
			return nil, err
		}
		had = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := atomicfile.WriteFile(p, content, 0o644); err != nil {
		if had {
			os.Rename(backup, p)
		}
		return nil, err
	}
	ours, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	return func() error {
		cur, err := os.Lstat(p)
		switch {
		case err == nil && !isOurs(p, cur, ours, content):
			// Provisioning put its own resolv.conf there: keep it.
			if had {
				return os.Remove(backup)
			}
			return nil
		case err == nil:
			if err := os.Remove(p); err != nil {
				return err
			}
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
		if had {
			return os.Rename(backup, p)
		}
		return nil
	}, nil
}

// isOurs tells whether the file at p is still the copy we wrote (an inode
// number alone can be reused by a replacement).
func isOurs(p string, cur, ours os.FileInfo, content []byte) bool {
	if !os.SameFile(cur, ours) || !cur.Mode().IsRegular() {
		return false
	}
	data, err := os.ReadFile(p)
	return err == nil && bytes.Equal(data, content)
}
