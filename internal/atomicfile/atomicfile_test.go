package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
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

func TestReserveCommitDiscard(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.ko")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Reserve(p, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(r.Temp); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("temporary file: %v, %v (want the old file's mode 0600)", st, err)
	}
	f, err := r.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("new")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("replaced before Commit: %q", b)
	}
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Fatalf("content %q", b)
	}
	r2, err := Reserve(p, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	r2.Discard()
	if b, _ := os.ReadFile(p); string(b) != "new" {
		t.Fatalf("Discard changed the file: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
	if _, err := Reserve(filepath.Join(dir, "missing", "f"), 0o644); err == nil {
		t.Error("no error for a missing folder")
	}
	// Commit of a reservation whose temporary file is gone fails and names the file.
	r3, _ := Reserve(p, 0o644)
	r3.Discard()
	if err := r3.Commit(); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("Commit without the temporary file: %v", err)
	}
}
