package kmod

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// These tests run kmod's own depmod (kmod 30 on the build machine) and
// GenerateDepmod/Depmod over the same trees and require every output file
// to be byte-identical.

// depmodOutputNames are the files kmod 30's depmod writes, in its order.
var depmodOutputNames = []string{
	"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
	"modules.softdep", "modules.symbols", "modules.symbols.bin",
	"modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname",
}

// linkTree makes dst a copy of the folder src whose files are hard links:
// depmod replaces its outputs by rename, so the originals stay untouched.
func linkTree(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-al", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -al %s %s: %v\n%s", src, dst, err, out)
	}
}

// realDepmod runs kmod's depmod -b base on kver with the configuration
// paths given (an empty folder when none: the host's must not leak in) and
// returns its standard error.
func realDepmod(t testing.TB, base, kver string, cfg []string, extra ...string) string {
	t.Helper()
	tool := fixture.Tool(t, "/usr/sbin/depmod")
	if len(cfg) == 0 {
		empty := filepath.Join(t.TempDir(), "empty-depmod.d")
		if err := os.Mkdir(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		cfg = []string{empty}
	}
	args := []string{"-b", base}
	for _, c := range cfg {
		args = append(args, "-C", c)
	}
	args = append(append(args, extra...), kver)
	var stderr bytes.Buffer
	cmd := exec.Command(tool, args...)
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("depmod %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return stderr.String()
}

// depmodSupportsGzip reports whether the installed depmod reads .ko.gz
// (Debian's kmod 30 is built without zlib).
func depmodSupportsGzip(t testing.TB) bool {
	out, err := exec.Command(fixture.Tool(t, "/usr/sbin/depmod"), "-V").Output()
	if err != nil {
		t.Fatal(err)
	}
	return !strings.Contains(string(out), "-ZLIB")
}

// hostDepmodExtensions is the module file endings of the installed depmod.
func hostDepmodExtensions(t testing.TB) DepmodOption {
	if depmodSupportsGzip(t) {
		return WithDepmodExtensions(defaultDepmodExtensions...)
	}
	return WithDepmodExtensions(".ko", ".ko.xz", ".ko.zst")
}

// compareDepmod checks that out holds exactly the files kmod wrote into
// moddir, byte for byte.
func compareDepmod(t testing.TB, moddir string, out *DepmodOutput) {
	t.Helper()
	var names []string
	for _, f := range out.Files {
		names = append(names, f.Name)
	}
	if !slices.Equal(names, depmodOutputNames) {
		t.Errorf("files %v, want %v", names, depmodOutputNames)
	}
	total := 0
	defer func() { t.Logf("compared %d files, %d bytes", len(out.Files), total) }()
	for _, f := range out.Files {
		total += len(f.Data)
		want, err := os.ReadFile(filepath.Join(moddir, f.Name))
		if err != nil {
			t.Errorf("%s: kmod wrote no such file: %v", f.Name, err)
			continue
		}
		if msg := diffBytes(f.Name, f.Data, want); msg != "" {
			t.Error(msg)
		}
	}
	// Nothing kmod writes is missing from ours.
	ents, err := os.ReadDir(moddir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "modules.") && !slices.Contains(names, n) &&
			n != "modules.order" && n != "modules.builtin" && n != "modules.builtin.modinfo" {
			t.Errorf("kmod wrote %s, GenerateDepmod did not", n)
		}
	}
}

// diffBytes describes the first difference of got and want: the line of a
// text file, the offset of a binary one; "" when they are equal.
func diffBytes(name string, got, want []byte) string {
	if bytes.Equal(got, want) {
		return ""
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	if !strings.HasSuffix(name, ".bin") {
		line := bytes.Count(want[:i], []byte("\n")) + 1
		start := bytes.LastIndexByte(want[:i], '\n') + 1
		return fmt.Sprintf("%s differs at line %d (byte %d; %d bytes, want %d):\n got: %q\nwant: %q",
			name, line, i, len(got), len(want), lineAt(got, start), lineAt(want, start))
	}
	return fmt.Sprintf("%s differs at offset %#x (%d bytes, want %d):\n got: % x\nwant: % x",
		name, i, len(got), len(want), window(got, i), window(want, i))
}

func lineAt(b []byte, start int) string {
	if start >= len(b) {
		return "<end of file>"
	}
	b = b[start:]
	if j := bytes.IndexByte(b, '\n'); j >= 0 {
		b = b[:j]
	}
	return string(b)
}

func window(b []byte, i int) []byte {
	lo := max(0, i-8)
	if lo >= len(b) {
		return nil
	}
	return b[lo:min(len(b), i+24)]
}

// TestDepmodFullTree: the whole fixture kernel (about 4000 modules with
// modules.order, modules.builtin and modules.builtin.modinfo).
func TestDepmodFullTree(t *testing.T) {
	kver := fixture.KVER(t)
	src := fixture.KernelRoot(t)
	ref := filepath.Join(t.TempDir(), "ref")
	linkTree(t, src, ref)
	realDepmod(t, ref, kver, nil)
	var warnings []string
	out, err := GenerateDepmod(os.DirFS(src), kver, hostDepmodExtensions(t), WithDepmodErrors(func(m string) { warnings = append(warnings, m) }))
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, filepath.Join(ref, "lib/modules", kver), out)
	if len(warnings) > 0 {
		t.Errorf("warnings: %q", warnings)
	}
}
