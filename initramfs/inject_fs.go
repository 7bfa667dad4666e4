package initramfs

import (
	"bytes"
	"io"
	"io/fs"
	"sort"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// treeFS is a read-only fs.FS view of a vtree: what the kernel's rootfs
// holds after unpacking. Open follows symlinks inside the tree; ReadDir
// reports them as symlinks (fs.WalkDir does not descend into them). Regular
// files are read from the model's memory.
type treeFS struct{ t *vtree }

func (f treeFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	n, err := f.t.lookup(name, true)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	if n == nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	switch {
	case n.isDir():
		return &treeDir{n: n, name: name}, nil
	case n.isRegular():
		return &treeFile{n: n, name: name, Reader: bytes.NewReader(n.ino.data)}, nil
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
}

type treeInfo struct {
	n    *vnode
	name string
}

func (i treeInfo) Name() string { return i.name }
func (i treeInfo) Size() int64 {
	switch {
	case i.n.isRegular():
		return int64(len(i.n.ino.data))
	case i.n.isSymlink():
		return int64(len(i.n.target))
	}
	return 0
}
func (i treeInfo) Mode() fs.FileMode { r := i.n.meta(); return r.FileMode() }
func (i treeInfo) ModTime() time.Time {
	return time.Unix(int64(i.n.meta().Mtime), 0)
}
func (i treeInfo) IsDir() bool { return i.n.isDir() }
func (i treeInfo) Sys() any    { return nil }

// Type and Info make treeInfo an fs.DirEntry too.
func (i treeInfo) Type() fs.FileMode          { return i.Mode().Type() }
func (i treeInfo) Info() (fs.FileInfo, error) { return i, nil }

// meta is the node's current metadata: its inode's for files and nodes.
func (n *vnode) meta() cpio.Record {
	if n.ino != nil {
		return n.ino.meta
	}
	return n.rec
}

func baseName(name string) string {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '/' {
			return name[i+1:]
		}
	}
	return name
}

type treeFile struct {
	n    *vnode
	name string
	*bytes.Reader
}

func (f *treeFile) Stat() (fs.FileInfo, error) { return treeInfo{f.n, baseName(f.name)}, nil }
func (f *treeFile) Close() error               { return nil }

type treeDir struct {
	n       *vnode
	name    string
	entries []fs.DirEntry
	read    bool
}

func (d *treeDir) Stat() (fs.FileInfo, error) { return treeInfo{d.n, baseName(d.name)}, nil }
func (d *treeDir) Close() error               { return nil }
func (d *treeDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: fs.ErrInvalid}
}

func (d *treeDir) ReadDir(count int) ([]fs.DirEntry, error) {
	if !d.read {
		d.read = true
		for name, k := range d.n.kids {
			d.entries = append(d.entries, treeInfo{k, name})
		}
		sort.Slice(d.entries, func(i, j int) bool { return d.entries[i].Name() < d.entries[j].Name() })
	}
	if count <= 0 {
		e := d.entries
		d.entries = nil
		return e, nil
	}
	if len(d.entries) == 0 {
		return nil, io.EOF
	}
	n := min(count, len(d.entries))
	e := d.entries[:n]
	d.entries = d.entries[n:]
	return e, nil
}
