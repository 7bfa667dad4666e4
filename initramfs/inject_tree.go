package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// vtree models the root file system the kernel builds while it unpacks an
// initramfs (init/initramfs.c, Linux 6.1), record by record, so that Inject
// knows what a path holds after all archives, which paths share an inode, and
// what to write for the result to be unpacked as intended:
//
//   - Every record first runs clean_path: an existing path of another file
//     type is unlinked (a directory only when empty).
//   - A regular file with nlink >= 2 whose (dev, ino, type) was seen earlier
//     in the same archive becomes a hard link to that first path (whatever
//     existed at its name is unlinked first); its body, when not empty, is
//     written into the shared inode. The link groups are forgotten at each
//     trailer.
//   - Any other regular file is opened O_CREAT|O_TRUNC: an existing regular
//     file is truncated and rewritten in place, so every hard link of that
//     inode sees the new content (the busybox trap).
//   - A directory that exists is re-chowned and re-chmodded.
//   - A symlink always replaces what was at its name.
//   - Names resolve from the root, following symlinks in their parent
//     components; a record whose parent does not exist is dropped.
//
// Paths in the model are clean, relative to the root and never hold "..":
// names with ".." components and symlinks that climb above the root make the
// image hostile and are refused with an error.
type vtree struct {
	root  *vnode
	seq   int
	links map[cpio.LinkKey]*vnode
	// archive is the index of the archive records are applied from.
	archive int
	maxIno  uint32
	// dropped counts records the kernel would fail to create.
	dropped int
}

type vnode struct {
	name   string
	parent *vnode
	kids   map[string]*vnode // directories
	// rec is the last record applied to this name: for regular files and
	// nodes its Mode, UID, GID and Mtime are superseded by ino.meta.
	rec    cpio.Record
	ino    *vinode // regular files and device/fifo/socket nodes
	target string  // symlinks
	seq    int     // creation order
	// archive is the index of the archive whose record last touched the
	// node (newArchive for Inject's own records).
	archive int
}

type vinode struct {
	meta cpio.Record // Mode, UID, GID, Mtime as last applied
	data []byte
	// nodes are the names linking the inode, in creation order.
	nodes []*vnode
	// grown counts every name that ever joined; lost is set once one left.
	lost bool
	// carrier is the node whose record wrote the body last.
	carrier *vnode
}

func newVtree() *vtree {
	t := &vtree{}
	t.root = &vnode{kids: map[string]*vnode{}, rec: cpio.Record{Name: ".", Mode: cpio.TypeDir | 0o755, Nlink: 2}, seq: -1, archive: -1}
	return t
}

func (n *vnode) isDir() bool     { return n.kids != nil }
func (n *vnode) isSymlink() bool { return n.rec.Type() == cpio.TypeSymlink }
func (n *vnode) isRegular() bool { return n.rec.Type() == cpio.TypeReg }

// path is the node's clean path from the root ("." for the root).
func (n *vnode) path() string {
	if n.parent == nil {
		return "."
	}
	var parts []string
	for m := n; m.parent != nil; m = m.parent {
		parts = append(parts, m.name)
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return strings.Join(parts, "/")
}

// ErrHostile is wrapped by the errors for images whose names or symlinks
// reach outside the image's root.
var ErrHostile = errors.New("hostile initramfs")

// cleanName turns a stored name into a clean relative path ("." for the
// root), refusing ".." components.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty name", ErrHostile)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%w: name %q holds a NUL byte", ErrHostile, name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: name %q climbs out of the root", ErrHostile, name)
		}
	}
	p := strings.TrimLeft(path.Clean("/"+name), "/")
	if p == "" {
		p = "."
	}
	return p, nil
}

const maxSymlinkDepth = 40

// lookup resolves p (clean, relative) following every symlink when follow
// is set, else all but the last component. It returns the node, or nil when
// a component is missing.
func (t *vtree) lookup(p string, follow bool) (*vnode, error) {
	depth := 0
	return t.walk(t.root, p, follow, &depth)
}

func (t *vtree) walk(dir *vnode, p string, follow bool, depth *int) (*vnode, error) {
	if p == "." || p == "" {
		return dir, nil
	}
	comps := strings.Split(p, "/")
	n := dir
	for i, c := range comps {
		last := i == len(comps)-1
		switch c {
		case "", ".":
			continue
		case "..":
			if n.parent == nil {
				return nil, fmt.Errorf("%w: %q climbs above the root", ErrHostile, p)
			}
			n = n.parent
			continue
		}
		if !n.isDir() {
			return nil, nil
		}
		next, ok := n.kids[c]
		if !ok {
			return nil, nil
		}
		if next.isSymlink() && (!last || follow) {
			*depth++
			if *depth > maxSymlinkDepth {
				return nil, fmt.Errorf("%w: too many levels of symlinks resolving %q", ErrHostile, p)
			}
			start := n
			target := next.target
			if strings.HasPrefix(target, "/") {
				start = t.root
			}
			r, err := t.walk(start, strings.TrimLeft(target, "/"), true, depth)
			if err != nil {
				return nil, fmt.Errorf("symlink %s -> %s: %w", next.path(), next.target, err)
			}
			if r == nil {
				return nil, nil
			}
			next = r
		}
		n = next
	}
	return n, nil
}

// parentOf resolves the parent directory of a clean path: the node and the
// last component, or a nil node when the parent does not exist.
func (t *vtree) parentOf(p string) (*vnode, string, error) {
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	d, err := t.lookup(dir, true)
	if err != nil || d == nil || !d.isDir() {
		return nil, base, err
	}
	return d, base, nil
}

// Resolve returns the clean path a name ends up at after its parents'
// symlinks, or "" when its parent does not exist.
func (t *vtree) resolve(p string) (string, error) {
	d, base, err := t.parentOf(p)
	if err != nil || d == nil {
		return "", err
	}
	if d.parent == nil {
		return base, nil
	}
	return d.path() + "/" + base, nil
}

func (t *vtree) unlink(n *vnode) {
	delete(n.parent.kids, n.name)
	if n.ino != nil {
		for i, m := range n.ino.nodes {
			if m == n {
				n.ino.nodes = append(n.ino.nodes[:i], n.ino.nodes[i+1:]...)
				break
			}
		}
		n.ino.lost = true
	}
}

// cleanPath is the kernel's clean_path: unlink what is at base in d when its
// type differs from typ (0: any type differs). It reports whether something
// of another type stays (a non-empty directory).
func (t *vtree) cleanPath(d *vnode, base string, typ uint32) bool {
	n, ok := d.kids[base]
	if !ok || n.rec.Type() == typ {
		return false
	}
	if n.isDir() {
		if len(n.kids) > 0 {
			return true
		}
	}
	t.unlink(n)
	return false
}

func (t *vtree) newNode(d *vnode, base string, rec *cpio.Record) *vnode {
	n := &vnode{name: base, parent: d, rec: *rec, seq: t.seq, archive: t.archive}
	t.seq++
	d.kids[base] = n
	return n
}

// apply runs one record as the kernel does; body is its data (FileSize
// bytes), which the model keeps a reference to.
func (t *vtree) apply(rec *cpio.Record, body []byte) error {
	if int64(len(body)) != int64(rec.FileSize) {
		return fmt.Errorf("%s: body of %d bytes, header says %d", rec.Name, len(body), rec.FileSize)
	}
	if rec.IsTrailer() {
		t.links = nil
		return nil
	}
	if rec.Ino > t.maxIno {
		t.maxIno = rec.Ino
	}
	p, err := cleanName(rec.Name)
	if err != nil {
		return err
	}
	typ := rec.Type()
	if typ == cpio.TypeSymlink {
		if rec.FileSize > cpio.MaxSymlinkSize {
			return fmt.Errorf("symlink %q: target of %d bytes", rec.Name, rec.FileSize)
		}
		target := string(body)
		if err := t.checkTarget(p, target); err != nil {
			return err
		}
		if p == "." {
			t.dropped++
			return nil
		}
		d, base, err := t.parentOf(p)
		if err != nil {
			return err
		}
		if d == nil {
			t.dropped++
			return nil
		}
		if t.cleanPath(d, base, 0) {
			t.dropped++
			return nil
		}
		n := t.newNode(d, base, rec)
		n.target = target
		return nil
	}
	if p == "." {
		// mkdir fails, chown/chmod apply to the root.
		if typ == cpio.TypeDir {
			t.root.rec = *rec
			t.root.archive = t.archive
		} else {
			t.dropped++
		}
		return nil
	}
	d, base, err := t.parentOf(p)
	if err != nil {
		return err
	}
	if d == nil {
		t.dropped++
		return nil
	}
	if t.cleanPath(d, base, typ) {
		t.dropped++
		return nil
	}
	switch typ {
	case cpio.TypeDir:
		if n, ok := d.kids[base]; ok {
			// mkdir fails with EEXIST; chown and chmod still apply.
			n.rec = *rec
			n.archive = t.archive
			return nil
		}
		n := t.newNode(d, base, rec)
		n.kids = map[string]*vnode{}
		return nil
	case cpio.TypeReg, cpio.TypeBlock, cpio.TypeChar, cpio.TypeFIFO, cpio.TypeSocket:
	default:
		// The kernel ignores other types.
		t.dropped++
		return nil
	}
	// maybe_link: the first record of a group is registered even when its
	// creation fails (then later links fail too).
	var linkKey *cpio.LinkKey
	if rec.IsHardLink() {
		k := rec.Key()
		if first, ok := t.links[k]; ok {
			if old, ok := d.kids[base]; ok {
				if old.isDir() && len(old.kids) > 0 {
					t.dropped++
					return nil
				}
				t.unlink(old)
			}
			if first == nil || first.parent.kids[first.name] != first {
				// link(2) to a name that is gone fails.
				t.dropped++
				return nil
			}
			n := t.newNode(d, base, rec)
			n.ino = first.ino
			n.ino.nodes = append(n.ino.nodes, n)
			if typ == cpio.TypeReg {
				return t.write(n, rec, body, rec.FileSize > 0)
			}
			n.ino.meta = *rec
			return nil
		}
		if t.links == nil {
			t.links = map[cpio.LinkKey]*vnode{}
		}
		t.links[k] = nil
		linkKey = &k
	}
	n, err := t.create(d, base, rec, body)
	if linkKey != nil {
		t.links[*linkKey] = n
	}
	return err
}

// create makes (or, for an existing name of the same type, rewrites) a
// regular file or node that is not a hard link to an earlier record.
func (t *vtree) create(d *vnode, base string, rec *cpio.Record, body []byte) (*vnode, error) {
	typ := rec.Type()
	if typ != cpio.TypeReg {
		if n, ok := d.kids[base]; ok {
			// mknod fails with EEXIST; chown and chmod apply.
			n.rec = *rec
			n.ino.meta = *rec
			n.archive = t.archive
			return n, nil
		}
		n := t.newNode(d, base, rec)
		n.ino = &vinode{meta: *rec, nodes: []*vnode{n}}
		return n, nil
	}
	if n, ok := d.kids[base]; ok {
		// O_TRUNC on the existing inode, shared with its hard links.
		n.rec = *rec
		n.archive = t.archive
		return n, t.write(n, rec, body, true)
	}
	n := t.newNode(d, base, rec)
	n.ino = &vinode{nodes: []*vnode{n}}
	return n, t.write(n, rec, body, true)
}

// write stores a regular file record's body into n's inode (replace: the
// inode's content becomes the body; else it is kept) and its metadata.
func (t *vtree) write(n *vnode, rec *cpio.Record, body []byte, replace bool) error {
	ino := n.ino
	ino.meta = *rec
	if replace {
		ino.carrier = n
		ino.data = body
	}
	return nil
}

// checkTarget refuses symlinks whose target climbs above the root from
// where the link is.
func (t *vtree) checkTarget(p, target string) error {
	if target == "" {
		return fmt.Errorf("%w: symlink %q has an empty target", ErrHostile, p)
	}
	if strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("%w: symlink %q target holds a NUL byte", ErrHostile, p)
	}
	depth := 0
	if !strings.HasPrefix(target, "/") {
		dir := path.Dir(p)
		if dir != "." {
			depth = strings.Count(dir, "/") + 1
		}
	}
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return fmt.Errorf("%w: symlink %s -> %s escapes the image root", ErrHostile, p, target)
			}
		default:
			depth++
		}
	}
	return nil
}

// gap reads the bytes between two records of a segment: padding and
// trailers, each of which ends the current hard link groups.
func (t *vtree) gap(b []byte) error {
	cr := cpio.NewReader(bytes.NewReader(b))
	for {
		rec, err := cr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("between records: %w", err)
		}
		if !rec.IsTrailer() {
			return fmt.Errorf("unexpected record %q between indexed records", rec.Name)
		}
		t.links = nil
	}
}

// nodes returns every node but the root in creation order.
func (t *vtree) nodes() []*vnode {
	var out []*vnode
	var rec func(n *vnode)
	rec = func(n *vnode) {
		for _, k := range n.kids {
			out = append(out, k)
			if k.isDir() {
				rec(k)
			}
		}
	}
	rec(t.root)
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// readFile returns the content of the regular file at p (following
// symlinks), ok=false when there is none or its body was not kept.
func (t *vtree) readFile(p string) ([]byte, bool) {
	n, err := t.lookup(p, true)
	if err != nil || n == nil || !n.isRegular() {
		return nil, false
	}
	return n.ino.data, true
}
