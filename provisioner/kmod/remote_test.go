package kmod

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/kmodctl/packer-plugin-kmod/builder/image"
)

// TestBatchedTransfers runs writeFiles and downloadFiles through the
// kmod-image builder's real chroot communicator (rooted at /, the files in
// a temporary folder): modes, new folders, a path that needs quoting, an
// existing file replaced, no temporary file left; and back.
func TestBatchedTransfers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chroot)")
	}
	dir := t.TempDir()
	tg := &target{comm: &image.Communicator{Root: "/"}, ui: &packersdk.BasicUi{}}
	ctx := context.Background()
	old := filepath.Join(dir, "a", "old.conf")
	os.MkdirAll(filepath.Dir(old), 0o755)
	os.WriteFile(old, []byte("old"), 0o600)
	host := filepath.Join(dir, "host.bin")
	os.WriteFile(host, []byte("from the host"), 0o600)
	files := []upload{
		{Path: old, Data: []byte("new"), Mode: 0o644},
		{Path: filepath.Join(dir, "b", "c d's", "x.ko"), Host: host, Mode: 0o600},
		{Path: filepath.Join(dir, "a", "run"), Data: []byte("#!/bin/sh\n"), Mode: 0o755},
	}
	if err := tg.writeFiles(ctx, files); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		want := string(f.Data)
		got, err := os.ReadFile(f.Path)
		if err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", f.Path, got, err, want)
		}
		st, _ := os.Stat(f.Path)
		if st == nil || st.Mode().Perm() != f.Mode {
			t.Errorf("%s: mode %v, want %v", f.Path, st.Mode(), f.Mode)
		}
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*", ".kmodctl-upload-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	back := t.TempDir()
	want := map[string]string{old: filepath.Join(back, "1"), files[1].Path: filepath.Join(back, "2")}
	if err := tg.downloadFiles(ctx, want); err != nil {
		t.Fatal(err)
	}
	for remote, h := range want {
		a, _ := os.ReadFile(remote)
		b, err := os.ReadFile(h)
		if err != nil || string(a) != string(b) {
			t.Errorf("%s -> %s: %q, %v; want %q", remote, h, b, err, a)
		}
	}
	if err := tg.downloadFiles(ctx, map[string]string{filepath.Join(dir, "missing"): filepath.Join(back, "3")}); err == nil {
		t.Error("downloadFiles of a missing file: no error")
	}
	if err := tg.writeFiles(ctx, []upload{{Path: filepath.Join(old, "under-a-file"), Data: []byte("x"), Mode: 0o644}}); err == nil {
		t.Error("writeFiles under a regular file: no error")
	}
}
