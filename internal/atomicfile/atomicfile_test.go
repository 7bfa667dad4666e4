package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileReplacesKeepingMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.ko")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, opts := range [][]Option{nil, {NoDirSync()}} {
		if err := WriteFile(p, []byte("new content"), 0o644, opts...); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != "new content" {
			t.Fatalf("content %q, %v", b, err)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm() != 0o600 {
			t.Errorf("mode %v, want the old file's 0600", st.Mode().Perm())
		}
	}
	if err := SyncDir(dir); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestWriteFileNewFileAndErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "new")
	if err := WriteFile(p, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	err := WriteFile(filepath.Join(dir, "missing", "f"), []byte("x"), 0o644)
	if err == nil {
		t.Fatal("no error for a missing folder")
	}
	if err := SyncDir(filepath.Join(dir, "missing")); err == nil {
		t.Error("SyncDir of a missing folder succeeded")
	}
}

func TestWriteFuncBeforeRenameAndErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "img")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A failing write leaves the old file and no temporary file.
	boom := os.ErrInvalid
	if err := WriteFunc(p, 0o644, func(f *os.File) error { f.Write([]byte("partial")); return boom }); err != boom {
		t.Fatalf("write error %v, want it returned as is", err)
	}
	// A failing BeforeRename too.
	err := WriteFunc(p, 0o644, func(f *os.File) error { _, err := f.Write([]byte("new")); return err },
		BeforeRename(func() error { return os.ErrExist }))
	if err != os.ErrExist {
		t.Fatalf("BeforeRename error %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("old file changed to %q", b)
	}
	// BeforeRename sees the old file still in place.
	var seen string
	err = WriteFunc(p, 0o644, func(f *os.File) error { _, err := f.Write([]byte("new")); return err },
		BeforeRename(func() error { b, _ := os.ReadFile(p); seen = string(b); return nil }))
	if err != nil || seen != "old" {
		t.Fatalf("err %v, BeforeRename saw %q", err, seen)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Fatalf("content %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}
