package initramfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Devices creates block and character device nodes (root only);
	// otherwise they are skipped and counted.
	Devices bool
	// Owners sets each file's UID and GID (root only).
	Owners bool
	// MaxBytes bounds the bytes written (0: the image's MaxTotal limit).
	MaxBytes int64
}

// ExtractStats counts what Extract did.
type ExtractStats struct {
	Files, Dirs, Symlinks, HardLinks, Nodes int
	Skipped                                 []string // device nodes and sockets not created
	Bytes                                   int64
}

// ErrUnsafePath is wrapped by Extract's errors for names that would leave the
// target folder (absolute, "..") or write through a symlink.
var ErrUnsafePath = errors.New("unsafe path")

// Extract unpacks all segments of im into dir (created if missing) the way
// the kernel does (later records override earlier ones; a record of another
// type replaces what is there; hard link groups per archive), refusing
// absolute names, ".." components and any write through a symlink, symlinks
// created earlier by the same image included.
//
// Regular files, folders, symlinks, hard links and FIFOs are created; device
// nodes only as root with Devices; sockets never. Folder modes and times are
// applied at the end so read-only folders can be filled.
func Extract(im *Image, dir string, opts ExtractOptions) (*ExtractStats, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	x := &extractor{im: im, root: root, dir: dir, opts: opts, stats: &ExtractStats{},
		isRoot: os.Geteuid() == 0, dirs: map[string]dirMeta{}}
	x.max = opts.MaxBytes
	if x.max <= 0 {
		x.max = im.limits.MaxTotal
	}
	err = im.Walk(func(seg int, r *cpio.Record, body io.Reader) error {
		if err := x.entry(r, body); err != nil {
			return im.segErr(seg, r.Name, err)
		}
		return nil
	})
	if err != nil {
		return x.stats, err
	}
	return x.stats, x.finishDirs()
}

type dirMeta struct {
	mode     uint32
	mtime    uint32
	uid, gid uint32
	order    int
}

type extractor struct {
	im     *Image
	root   *os.Root
	dir    string
	opts   ExtractOptions
	stats  *ExtractStats
	isRoot bool
	max    int64
	links  cpio.Links
	dirs   map[string]dirMeta
	buf    []byte
}

// safeName cleans a record name to a path relative to the target folder.
func safeName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute name", ErrUnsafePath)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: \"..\" component", ErrUnsafePath)
		}
	}
	p := path.Clean(name)
	if p == "." || p == "" {
		return ".", nil
	}
	return p, nil
}

// checkParents makes sure every parent of p inside the root is a real
// folder, creating missing ones, and never a symlink.
func (x *extractor) checkParents(p string) error {
	parts := strings.Split(p, "/")
	for i := 1; i < len(parts); i++ {
		q := strings.Join(parts[:i], "/")
		st, err := x.root.Lstat(q)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := x.root.Mkdir(q, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case st.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("%w: parent %q is a symlink", ErrUnsafePath, q)
		case !st.IsDir():
			return fmt.Errorf("parent %q is not a folder", q)
		}
	}
	return nil
}

// clean removes what exists at p when its type differs from typ (0: always),
// as the kernel's clean_path does.
func (x *extractor) clean(p string, typ uint32) error {
	st, err := x.root.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if typ != 0 && fileType(st.Mode()) == typ {
		return nil
	}
	if st.IsDir() {
		delete(x.dirs, p)
	}
	if err := x.root.Remove(p); err != nil {
		return fmt.Errorf("replace %q: %w", p, err)
	}
	return nil
}

func fileType(m fs.FileMode) uint32 {
	switch {
	case m.IsDir():
		return cpio.TypeDir
	case m&fs.ModeSymlink != 0:
		return cpio.TypeSymlink
	case m&fs.ModeNamedPipe != 0:
		return cpio.TypeFIFO
	case m&fs.ModeSocket != 0:
		return cpio.TypeSocket
	case m&fs.ModeCharDevice != 0:
		return cpio.TypeChar
	case m&fs.ModeDevice != 0:
		return cpio.TypeBlock
	case m.IsRegular():
		return cpio.TypeReg
	}
	return 0
}

func (x *extractor) entry(r *cpio.Record, body io.Reader) error {
	if r.IsTrailer() {
		x.links.Add(r)
		return nil
	}
	p, err := safeName(r.Name)
	if err != nil {
		return err
	}
	if p == "." {
		return nil // the target folder itself
	}
	if err := x.checkParents(p); err != nil {
		return err
	}
	first, link := x.links.Add(r)
	if link {
		if first, err = safeName(first); err != nil {
			return err
		}
	}
	switch r.Type() {
	case cpio.TypeDir:
		return x.mkdir(p, r)
	case cpio.TypeSymlink:
		target, err := io.ReadAll(body)
		if err != nil {
			return err
		}
		if err := x.clean(p, 0); err != nil {
			return err
		}
		if err := x.root.Symlink(string(target), p); err != nil {
			return err
		}
		x.stats.Symlinks++
		return x.owner(p, r, true)
	case cpio.TypeReg:
		return x.file(p, r, body, link, first)
	case cpio.TypeBlock, cpio.TypeChar, cpio.TypeFIFO, cpio.TypeSocket:
		return x.node(p, r, link, first)
	}
	x.stats.Skipped = append(x.stats.Skipped, r.Name)
	return nil
}

func (x *extractor) mkdir(p string, r *cpio.Record) error {
	if err := x.clean(p, cpio.TypeDir); err != nil {
		return err
	}
	err := x.root.Mkdir(p, 0o700)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err == nil {
		x.stats.Dirs++
	}
	// Owner-writable until the end, so the folder can be filled.
	if err := x.root.Chmod(p, fs.FileMode(r.Mode&0o777|0o700)); err != nil {
		return err
	}
	x.dirs[p] = dirMeta{mode: r.Mode, mtime: r.Mtime, uid: r.UID, gid: r.GID, order: len(x.dirs)}
	return nil
}

func (x *extractor) file(p string, r *cpio.Record, body io.Reader, link bool, first string) error {
	flags := os.O_WRONLY | os.O_CREATE | syscall.O_NOFOLLOW
	if link {
		if err := x.clean(p, 0); err != nil {
			return err
		}
		if err := x.root.Link(first, p); err != nil {
			return fmt.Errorf("hard link to %q: %w", first, err)
		}
		x.stats.HardLinks++
	} else {
		if err := x.clean(p, cpio.TypeReg); err != nil {
			return err
		}
		// An existing regular file is rewritten in place (O_TRUNC), as by
		// the kernel: every hard link of it sees the new content.
		flags |= os.O_TRUNC
		x.stats.Files++
	}
	if x.stats.Bytes+int64(r.FileSize) > x.max {
		return fmt.Errorf("%w: extracting more than %d bytes", ErrTooLarge, x.max)
	}
	f, err := x.root.OpenFile(p, flags, 0o600)
	if errors.Is(err, fs.ErrPermission) && !x.isRoot {
		// A read-only file from an earlier record.
		if x.root.Chmod(p, 0o600) == nil {
			f, err = x.root.OpenFile(p, flags, 0o600)
		}
	}
	if err != nil {
		return err
	}
	if r.FileSize > 0 {
		if err := f.Truncate(int64(r.FileSize)); err != nil {
			f.Close()
			return err
		}
	}
	if x.buf == nil {
		x.buf = make([]byte, 256<<10)
	}
	n, err := io.CopyBuffer(f, io.LimitReader(body, int64(r.FileSize)), x.buf)
	x.stats.Bytes += n
	if err == nil && n < int64(r.FileSize) {
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		err = f.Chmod(fs.FileMode(r.Mode & 0o777))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := x.setSpecial(p, r); err != nil {
		return err
	}
	if err := x.owner(p, r, false); err != nil {
		return err
	}
	t := time.Unix(int64(r.Mtime), 0)
	return x.root.Chtimes(p, t, t)
}

// setSpecial applies setuid, setgid and sticky bits (after chown, which
// clears them).
func (x *extractor) setSpecial(p string, r *cpio.Record) error {
	if r.Mode&0o7000 == 0 {
		return nil
	}
	return x.root.Chmod(p, (&cpio.Record{Mode: r.Mode &^ cpio.TypeMask}).FileMode())
}

func (x *extractor) owner(p string, r *cpio.Record, symlink bool) error {
	if !x.opts.Owners || !x.isRoot {
		return nil
	}
	if symlink {
		return x.root.Lchown(p, int(r.UID), int(r.GID))
	}
	if err := x.root.Lchown(p, int(r.UID), int(r.GID)); err != nil {
		return err
	}
	return x.setSpecial(p, r)
}

func (x *extractor) node(p string, r *cpio.Record, link bool, first string) error {
	typ := r.Type()
	if typ == cpio.TypeSocket || ((typ == cpio.TypeBlock || typ == cpio.TypeChar) && !(x.opts.Devices && x.isRoot)) {
		x.stats.Skipped = append(x.stats.Skipped, r.Name)
		return nil
	}
	if err := x.clean(p, 0); err != nil {
		return err
	}
	if link {
		if _, err := x.root.Lstat(first); err == nil {
			x.stats.HardLinks++
			return x.root.Link(first, p)
		}
	}
	// The parents were checked: no symlink on the way, and p itself was
	// removed, so mknod creates inside the folder.
	full := filepath.Join(x.dir, filepath.FromSlash(p))
	if err := syscall.Mknod(full, typ|r.Mode&0o777, int(mkdev(r.RdevMajor, r.RdevMinor))); err != nil {
		return &fs.PathError{Op: "mknod", Path: p, Err: err}
	}
	x.stats.Nodes++
	if err := x.root.Chmod(p, fs.FileMode(r.Mode&0o777)); err != nil {
		return err
	}
	if err := x.owner(p, r, false); err != nil {
		return err
	}
	t := time.Unix(int64(r.Mtime), 0)
	return x.root.Chtimes(p, t, t)
}

// mkdev encodes a device number like the kernel's new_encode_dev (glibc
// makedev).
func mkdev(major, minor uint32) uint64 {
	ma, mi := uint64(major), uint64(minor)
	return mi&0xff | (ma&0xfff)<<8 | (mi&^0xff)<<12 | (ma&^0xfff)<<32
}

// finishDirs applies the folders' modes, owners and times, deepest first.
func (x *extractor) finishDirs() error {
	type kv struct {
		p string
		m dirMeta
	}
	list := make([]kv, 0, len(x.dirs))
	for p, m := range x.dirs {
		list = append(list, kv{p, m})
	}
	// Deepest first so that a parent's time is set after its children.
	sort.SliceStable(list, func(i, j int) bool {
		di, dj := strings.Count(list[i].p, "/"), strings.Count(list[j].p, "/")
		if di != dj {
			return di > dj
		}
		return list[i].m.order < list[j].m.order
	})
	for _, d := range list {
		r := &cpio.Record{Mode: d.m.mode, UID: d.m.uid, GID: d.m.gid}
		if err := x.owner(d.p, r, false); err != nil {
			return err
		}
		if err := x.root.Chmod(d.p, (&cpio.Record{Mode: d.m.mode &^ cpio.TypeMask}).FileMode()); err != nil {
			return err
		}
		t := time.Unix(int64(d.m.mtime), 0)
		if err := x.root.Chtimes(d.p, t, t); err != nil {
			return err
		}
	}
	return nil
}
