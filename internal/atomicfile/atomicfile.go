// Package atomicfile replaces files so that readers see either the old or the
// new content, never a mix, and a crash leaves the old file in place.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Option changes how WriteFile replaces a file.
type Option func(*options)

type options struct {
	noDirSync    bool
	beforeRename func() error
}

// BeforeRename runs f once the new content is durable and just before it
// replaces the old file (to keep a backup of the old one, say); an error
// from f leaves the old file in place.
func BeforeRename(f func() error) Option { return func(o *options) { o.beforeRename = f } }

// NoDirSync leaves the folder's fsync to the caller, who replaces many files
// of a folder and makes all the renames durable with one SyncDir at the end
// (each fsync of a folder is a journal commit of its own).
func NoDirSync() Option { return func(o *options) { o.noDirSync = true } }

// SyncDir fsyncs a folder, making the renames done in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// WriteFile replaces path with data: a temporary file in the same folder is
// written, fsynced, given the old file's mode and owner (or perm for a new
// file), renamed over path, and the folder is fsynced.
func WriteFile(path string, data []byte, perm os.FileMode, opts ...Option) error {
	return WriteFunc(path, perm, func(f *os.File) error {
		if _, err := f.Write(data); err != nil {
			return fmt.Errorf("replace %s: %w", path, err)
		}
		return nil
	}, opts...)
}

// WriteFunc is WriteFile for content that is streamed: write fills the
// temporary file (its error is returned as it is). The rest — mode and owner
// kept, fsync, rename, folder fsync — is the same.
func WriteFunc(path string, perm os.FileMode, write func(f *os.File) error, opts ...Option) (err error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir := filepath.Dir(path)
	mode, uid, gid := modeOwner(path, perm)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = write(f); err != nil {
		return err
	}
	if err = f.Chmod(mode); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if uid >= 0 && (uid != os.Getuid() || gid != os.Getgid()) {
		if err = f.Chown(uid, gid); err != nil {
			return fmt.Errorf("replace %s: keep owner: %w", path, err)
		}
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if o.beforeRename != nil {
		if err = o.beforeRename(); err != nil {
			return err
		}
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if o.noDirSync {
		return nil
	}
	// Makes the rename itself durable.
	return SyncDir(dir)
}
