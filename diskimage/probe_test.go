package diskimage

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// blkidExport runs blkid -p -o export on path at offset and parses it.
func blkidExport(t testing.TB, path string, offset int64) map[string]string {
	t.Helper()
	args := []string{"-p", "-o", "export"}
	if offset > 0 {
		args = append(args, "-O", itoa(offset))
	}
	out := fixture.Run(t, "blkid", append(args, path)...)
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func probeFile(t testing.TB, path string, off, size int64) FS {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := Probe(f, off, size)
	if err != nil {
		t.Fatalf("Probe %s@%d: %v", path, off, err)
	}
	return fs
}

func checkAgainstBlkid(t *testing.T, path string, off, size int64) FS {
	t.Helper()
	fs := probeFile(t, path, off, size)
	b := blkidExport(t, path, off)
	if fs.Type != b["TYPE"] || fs.UUID != b["UUID"] || fs.Label != b["LABEL"] {
		t.Errorf("%s@%d: probe %+v, blkid %v", filepath.Base(path), off, fs, b)
	}
	return fs
}

func TestProbeMatchesBlkid(t *testing.T) {
	fixture.NeedTools(t, "blkid")
	dir := t.TempDir()
	mk := func(name string, size int64, tool string, args ...string) string {
		if _, err := lookPath(tool); err != nil {
			t.Logf("skip %s: %s not installed", name, tool)
			return ""
		}
		p := filepath.Join(dir, name)
		f, _ := os.Create(p)
		f.Truncate(size)
		f.Close()
		fixture.Run(t, tool, append(args, p)...)
		return p
	}
	cases := map[string]string{
		"ext4":   mk("ext4.img", 8<<20, "mkfs.ext4", "-q", "-F", "-L", "root", "-U", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"),
		"ext3":   mk("ext3.img", 8<<20, "mkfs.ext3", "-q", "-F", "-L", "boot"),
		"ext2":   mk("ext2.img", 4<<20, "mkfs.ext2", "-q", "-F", "-L", "cloudimg-rootfs"),
		"vfat":   mk("vfat.img", 33<<20, "mkfs.vfat", "-n", "ESP", "-i", "1234ABCD"),
		"vfat16": mk("fat16.img", 20<<20, "mkfs.vfat", "-F", "16", "-n", "EFI"),
		"swap":   mk("swap.img", 4<<20, "mkswap", "-L", "swp"),
		"xfs":    mk("xfs.img", 300<<20, "mkfs.xfs", "-q", "-L", "xroot"),
		"btrfs":  mk("btrfs.img", 128<<20, "mkfs.btrfs", "-q", "-L", "broot"),
	}
	for want, p := range cases {
		if p == "" {
			continue
		}
		st, _ := os.Stat(p)
		fs := checkAgainstBlkid(t, p, 0, st.Size())
		if !strings.HasPrefix(want, fs.Type) {
			t.Errorf("%s: type %s", want, fs.Type)
		}
	}
	// Unknown content.
	p := filepath.Join(dir, "zero.img")
	os.WriteFile(p, make([]byte, 1<<20), 0o644)
	f, _ := os.Open(p)
	defer f.Close()
	if _, err := Probe(f, 0, 1<<20); err != ErrUnknownFS {
		t.Errorf("zeros: %v", err)
	}
	// A tiny range must not read outside itself.
	if _, err := Probe(f, 0, 100); err != ErrUnknownFS {
		t.Errorf("tiny: %v", err)
	}
}
