package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Reserved is the temporary file that is to replace Path, created empty by
// Reserve: fill it (Open), make it durable (fsync the *os.File), then Commit
// renames it over Path, or Discard removes it.
//
// WriteFile does all of it in one call. The steps are apart for a caller
// that replaces many files and wants every temporary file created before
// the first old file is unlinked: on ext4 without a journal a new inode is
// allocated past each inode of its group freed in the last minutes
// (recently_deleted() in fs/ext4/ialloc.c), so creating while replacing
// costs time quadratic in the number of files.
type Reserved struct {
	Path, Temp string
}

// Reserve creates the temporary file for replacing path, in path's folder,
// with path's mode and owner (perm when path does not exist yet).
func Reserve(path string, perm os.FileMode) (r Reserved, err error) {
	mode, uid, gid := modeOwner(path, perm)
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return r, fmt.Errorf("replace %s: %w", path, err)
	}
	r = Reserved{Path: path, Temp: f.Name()}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("replace %s: %w", path, cerr)
		}
		if err != nil {
			os.Remove(r.Temp)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return r, fmt.Errorf("replace %s: %w", path, err)
	}
	if uid >= 0 && (uid != os.Getuid() || gid != os.Getgid()) {
		if err = f.Chown(uid, gid); err != nil {
			return r, fmt.Errorf("replace %s: keep owner: %w", path, err)
		}
	}
	return r, nil
}

// Open opens the temporary file for writing, truncated.
func (r Reserved) Open() (*os.File, error) {
	f, err := os.OpenFile(r.Temp, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return nil, fmt.Errorf("replace %s: %w", r.Path, err)
	}
	return f, nil
}

// Commit renames the temporary file over Path. The caller has fsynced its
// content, and fsyncs the folder afterwards (SyncDir) to make the rename
// durable.
func (r Reserved) Commit() error {
	if err := os.Rename(r.Temp, r.Path); err != nil {
		os.Remove(r.Temp)
		return fmt.Errorf("replace %s: %w", r.Path, err)
	}
	return nil
}

// Discard removes the temporary file, leaving Path as it was.
func (r Reserved) Discard() { os.Remove(r.Temp) }

// modeOwner returns the mode and owner to give path's replacement: the
// existing file's, or perm and -1 (the caller's) for a new file.
func modeOwner(path string, perm os.FileMode) (mode os.FileMode, uid, gid int) {
	mode, uid, gid = perm, -1, -1
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm()
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(sys.Uid), int(sys.Gid)
		}
	}
	return mode, uid, gid
}
