package bundle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
)

// WriteDir writes the bundle's files (modules and certificates, under
// their file names) into dir all at once: they are written and synced in
// a new sibling directory, which then takes dir's place in one rename
// (an atomic exchange when dir exists, whose old content is then
// removed). A failure leaves dir as it was. dir's parent must exist; dir,
// when it exists, must be a directory that holds only regular files (a
// bundle's directory, not a tree).
func (b *Bundle) WriteDir(dir string, mode os.FileMode) error {
	return b.writeDir(dir, mode, b.FileNames())
}

// WriteModules is WriteDir with the module files only (no certificates):
// for a directory of a kernel's module tree.
func (b *Bundle) WriteModules(dir string, mode os.FileMode) error {
	var names []string
	for _, m := range b.Config.Modules {
		names = append(names, m.File)
	}
	return b.writeDir(dir, mode, names)
}

func (b *Bundle) writeDir(dir string, mode os.FileMode, names []string) error {
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	old, err := os.Lstat(dir)
	switch {
	case err == nil && !old.IsDir():
		return fmt.Errorf("write %s: not a directory", dir)
	case err == nil:
		if err := onlyFiles(dir); err != nil {
			return fmt.Errorf("write %s: %w", dir, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("write %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".new-")
	if err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	for _, name := range names {
		if err := writeSynced(filepath.Join(tmp, name), b.files[name], mode); err != nil {
			return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
		}
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	if old == nil {
		if err := os.Rename(tmp, dir); err != nil {
			return fmt.Errorf("write %s: %w", dir, err)
		}
	} else {
		if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_EXCHANGE); err != nil {
			return fmt.Errorf("write %s: exchange: %w", dir, err)
		}
		// tmp now holds the old content.
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("write %s: remove the old content: %w", dir, err)
		}
	}
	done = true
	return atomicfile.SyncDir(parent)
}

// onlyFiles refuses a directory holding anything but regular files.
func onlyFiles(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file: the directory is not a bundle's", filepath.Join(dir, e.Name()))
		}
	}
	return nil
}

func writeSynced(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
