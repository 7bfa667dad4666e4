package initramfs

import (
	"bytes"
	"errors"
	"io/fs"
	"testing"
	"testing/fstest"

	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

type trec struct {
	name  string
	mode  uint32
	ino   uint32
	nlink uint32
	body  string
}

func applyAll(t *testing.T, vt *vtree, recs []trec) error {
	t.Helper()
	for _, r := range recs {
		if r.name == cpio.TrailerName {
			tr := cpio.Trailer(cpio.Newc)
			vt.archive++
			if err := vt.apply(&tr, nil); err != nil {
				return err
			}
			continue
		}
		nl := r.nlink
		if nl == 0 {
			nl = 1
		}
		rec := cpio.Record{Name: r.name, Mode: r.mode, Ino: r.ino, Nlink: nl, FileSize: uint32(len(r.body))}
		if err := vt.apply(&rec, []byte(r.body)); err != nil {
			return err
		}
	}
	return nil
}

const (
	tDir = cpio.TypeDir | 0o755
	tReg = cpio.TypeReg | 0o644
	tExe = cpio.TypeReg | 0o755
	tLnk = cpio.TypeSymlink | 0o777
)

var busyboxArchive = []trec{
	{name: ".", mode: tDir},
	{name: "usr", mode: tDir, ino: 1},
	{name: "usr/bin", mode: tDir, ino: 2},
	{name: "bin", mode: tLnk, ino: 3, body: "usr/bin"},
	{name: "usr/bin/busybox", mode: tExe, ino: 9, nlink: 3},
	{name: "usr/bin/sh", mode: tExe, ino: 9, nlink: 3},
	{name: "usr/bin/ls", mode: tExe, ino: 9, nlink: 3, body: "BUSYBOX"},
	{name: cpio.TrailerName},
}

func TestVtreeHardLinkTrap(t *testing.T) {
	vt := newVtree()
	if err := applyAll(t, vt, busyboxArchive); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/bin/busybox", "bin/sh", "usr/bin/ls"} {
		if b, ok := vt.readFile(p); !ok || string(b) != "BUSYBOX" {
			t.Fatalf("%s = %q %v", p, b, ok)
		}
	}
	// A plain regular file over one link rewrites the shared inode.
	trap := newVtree()
	applyAll(t, trap, busyboxArchive)
	applyAll(t, trap, []trec{{name: "bin/sh", mode: tExe, body: "DASH"}})
	if b, _ := trap.readFile("usr/bin/busybox"); string(b) != "DASH" {
		t.Fatalf("the model misses the trap: busybox = %q", b)
	}
	// A symlink first unlinks the name; the others keep busybox.
	vt.archive++
	applyAll(t, vt, []trec{{name: "usr/bin/sh", mode: tLnk, body: "busybox"}, {name: "usr/bin/sh", mode: tExe, body: "DASH"}})
	if b, _ := vt.readFile("usr/bin/busybox"); string(b) != "BUSYBOX" {
		t.Fatalf("busybox = %q", b)
	}
	if b, _ := vt.readFile("bin/sh"); string(b) != "DASH" {
		t.Fatalf("sh = %q", b)
	}
	bb, _ := vt.lookup("usr/bin/busybox", false)
	if len(bb.ino.nodes) != 2 || !bb.ino.lost {
		t.Fatalf("busybox links: %d", len(bb.ino.nodes))
	}
}

func TestVtreeDirsAndFS(t *testing.T) {
	vt := newVtree()
	err := applyAll(t, vt, []trec{
		{name: ".", mode: tDir},
		{name: "usr", mode: tDir},
		{name: "usr/lib", mode: tDir},
		{name: "lib", mode: tLnk, body: "usr/lib"},
		{name: "usr/lib/modules", mode: tDir},
		{name: "usr/lib/modules/6.1.0", mode: tDir},
		{name: "usr/lib/modules/6.1.0/modules.order", mode: tReg, body: "kernel/a.ko\n"},
		{name: "orphan/x", mode: tReg, body: "x"},
		{name: cpio.TrailerName},
		{name: "lib/modules", mode: cpio.TypeDir | 0o700},
		{name: "lib/modules/6.1.0/updates", mode: tDir},
	})
	if err != nil {
		t.Fatal(err)
	}
	if vt.dropped != 1 {
		t.Errorf("dropped %d, want 1 (orphan/x)", vt.dropped)
	}
	m, _ := vt.lookup("usr/lib/modules", false)
	if m.rec.Mode != cpio.TypeDir|0o700 || m.archive != 1 {
		t.Errorf("repeated dir: mode %o archive %d", m.rec.Mode, m.archive)
	}
	if p, _ := vt.resolve("lib/modules/6.1.0/updates/x.ko"); p != "usr/lib/modules/6.1.0/updates/x.ko" {
		t.Errorf("resolve: %q", p)
	}
	fsys := treeFS{vt}
	if err := fstest.TestFS(fsys, "usr/lib/modules/6.1.0/modules.order", "usr/lib/modules/6.1.0/updates"); err != nil {
		t.Fatal(err)
	}
	b, err := fs.ReadFile(fsys, "lib/modules/6.1.0/modules.order")
	if err != nil || !bytes.Equal(b, []byte("kernel/a.ko\n")) {
		t.Fatalf("read through the lib symlink: %q %v", b, err)
	}
}

func TestVtreeHostile(t *testing.T) {
	for _, recs := range [][]trec{
		{{name: "../etc/passwd", mode: tReg, body: "x"}},
		{{name: "a/../../b", mode: tReg, body: "x"}},
		{{name: "usr", mode: tDir}, {name: "usr/evil", mode: tLnk, body: "../../etc"}},
		{{name: "evil", mode: tLnk, body: ".."}},
	} {
		err := applyAll(t, newVtree(), recs)
		if !errors.Is(err, ErrHostile) {
			t.Errorf("%+v: %v", recs, err)
		}
	}
	// Absolute targets stay inside the image.
	if err := applyAll(t, newVtree(), []trec{{name: "etc", mode: tDir}, {name: "etc/mtab", mode: tLnk, body: "/proc/self/mounts"}}); err != nil {
		t.Error(err)
	}
}
