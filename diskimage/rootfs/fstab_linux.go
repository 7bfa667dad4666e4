//go:build linux

package rootfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

type fstabFile struct {
	path        string // in the tree, symlinks resolved, e.g. "/etc/fstab"
	exists      bool
	old         []byte
	mode        uint32 // permission bits (of the existing file, else 0644)
	uid, gid    uint32
	missingDirs []string // folders to create first, top down
	hasRoot     bool     // an entry mounts "/"
}

// inspectFstab reads the tree's /etc/fstab (following symlinks inside
// the tree) and tells whether it has an entry for "/".
func inspectFstab(root string) (*fstabFile, error) {
	host, err := securejoin.SecureJoin(root, "/etc/fstab")
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(root, host)
	if err != nil {
		return nil, err
	}
	p := "/" + filepath.ToSlash(rel)
	f := &fstabFile{path: p, mode: 0o644}
	fi, err := os.Lstat(host)
	switch {
	case err == nil:
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s in the tree is a %s, not a file", p, kind(fi.Mode()))
		}
		if f.old, err = os.ReadFile(host); err != nil {
			return nil, err
		}
		st := fi.Sys().(*syscall.Stat_t)
		f.exists, f.mode, f.uid, f.gid = true, uint32(fi.Mode().Perm())|st.Mode&0o7000, st.Uid, st.Gid
	case errors.Is(err, fs.ErrNotExist):
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			fi, err := os.Lstat(filepath.Join(root, d))
			if err == nil {
				if !fi.IsDir() {
					return nil, fmt.Errorf("%s in the tree is a %s, not a folder", d, kind(fi.Mode()))
				}
				break
			}
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			f.missingDirs = append([]string{d}, f.missingDirs...)
		}
	default:
		return nil, err
	}
	entries, err := diskimage.ParseFstab(bytes.NewReader(f.old))
	if err != nil && !errors.Is(err, diskimage.ErrBadFstabLine) {
		return nil, fmt.Errorf("%s in the tree: %w", p, err)
	}
	for _, e := range entries {
		if path.Clean(e.File) == "/" {
			f.hasRoot = true
		}
	}
	return f, nil
}

// content is the fstab with the root entry appended.
func (f *fstabFile) content(fsType, uuid string) []byte {
	b := append([]byte(nil), f.old...)
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return append(b, fmt.Sprintf("UUID=%s / %s defaults 0 1\n", uuid, fsType)...)
}

// writeInto writes content as the fstab of the tree mounted at root.
func (f *fstabFile) writeInto(root string, content []byte) error {
	for _, d := range f.missingDirs {
		h := filepath.Join(root, d)
		if err := os.Mkdir(h, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(h, 0o755); err != nil {
			return err
		}
		if err := os.Lchown(h, 0, 0); err != nil {
			return err
		}
	}
	h := filepath.Join(root, f.path)
	tmp := h + ".kmodctl-new"
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		return err
	}
	if err := os.Lchown(tmp, int(f.uid), int(f.gid)); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, fileMode(f.mode)); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, h); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

func fileMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&syscall.S_ISUID != 0 {
		fm |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		fm |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		fm |= fs.ModeSticky
	}
	return fm
}
