package bootcheck

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// writeTree creates files (content "x" unless given; a value starting
// with "->" makes a symbolic link) below root.
func writeTree(t testing.TB, root string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		h := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(h), 0o755); err != nil {
			t.Fatal(err)
		}
		if tgt, ok := strings.CutPrefix(c, "->"); ok {
			if err := os.Symlink(tgt, h); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if c == "" {
			c = "x"
		}
		if c == "<empty>" {
			c = ""
		}
		if err := os.WriteFile(h, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindKernelsSynthetic(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		// Debian, in the order a string sort gets wrong.
		"boot/vmlinuz-6.1.0-9-amd64":     "",
		"boot/initrd.img-6.1.0-9-amd64":  "",
		"boot/vmlinuz-6.1.0-10-amd64":    "",
		"boot/initrd.img-6.1.0-10-amd64": "",
		// No initrd.
		"boot/vmlinuz-6.1.0-2-amd64": "",
		// dracut naming.
		"boot/vmlinuz-5.14.0-362.el9.x86_64":       "",
		"boot/initramfs-5.14.0-362.el9.x86_64.img": "",
		// Skipped: empty, .old, dpkg leftovers, an absolute link leaving
		// the tree (it resolves inside root, where there is nothing).
		"boot/vmlinuz-7.0.0-empty":             "<empty>",
		"boot/vmlinuz-6.1.0-10-amd64.old":      "",
		"boot/vmlinuz-6.1.0-11-amd64.dpkg-tmp": "",
		"boot/vmlinuz-9.9.9-escape":            "->/../../../../../../etc/hostname",
		"boot/config-6.1.0-10-amd64":           "",
		// An absolute link inside the image.
		"boot/vmlinuz-6.2.0-1-link":    "->/boot/real-6.2",
		"boot/real-6.2":                "",
		"boot/initrd.img-6.2.0-1-link": "->../boot/real-initrd-6.2",
		"boot/real-initrd-6.2":         "",
		// kernel-install layout through the merged-usr /lib link; the
		// initrd beside it; one with its initrd in /boot (dracut name).
		"lib":                                        "->usr/lib",
		"usr/lib/modules/6.8.0-1/vmlinuz":            "",
		"usr/lib/modules/6.8.0-1/initrd":             "",
		"usr/lib/modules/6.7.0-3/vmlinuz":            "",
		"boot/initramfs-6.7.0-3.img":                 "",
		"usr/lib/modules/6.1.0-10-amd64/vmlinuz":     "", // /boot's copy wins
		"usr/lib/modules/6.6.0-nokernel/modules.dep": "",
	})
	ks, err := FindKernels(root)
	if err != nil {
		t.Fatal(err)
	}
	type k struct{ rel, vmlinuz, initrd string }
	want := []k{
		{"6.8.0-1", "usr/lib/modules/6.8.0-1/vmlinuz", "usr/lib/modules/6.8.0-1/initrd"},
		{"6.7.0-3", "usr/lib/modules/6.7.0-3/vmlinuz", "boot/initramfs-6.7.0-3.img"},
		{"6.2.0-1-link", "boot/real-6.2", "boot/real-initrd-6.2"},
		{"6.1.0-10-amd64", "boot/vmlinuz-6.1.0-10-amd64", "boot/initrd.img-6.1.0-10-amd64"},
		{"6.1.0-9-amd64", "boot/vmlinuz-6.1.0-9-amd64", "boot/initrd.img-6.1.0-9-amd64"},
		{"6.1.0-2-amd64", "boot/vmlinuz-6.1.0-2-amd64", ""},
		{"5.14.0-362.el9.x86_64", "boot/vmlinuz-5.14.0-362.el9.x86_64", "boot/initramfs-5.14.0-362.el9.x86_64.img"},
	}
	var got []k
	for _, x := range ks {
		rel := func(p string) string {
			if p == "" {
				return ""
			}
			r, err := filepath.Rel(root, p)
			if err != nil || strings.HasPrefix(r, "..") {
				t.Errorf("%s: path %s outside the root", x.Release, p)
			}
			return r
		}
		got = append(got, k{x.Release, rel(x.Vmlinuz), rel(x.Initrd)})
	}
	if len(got) != len(want) {
		t.Fatalf("FindKernels:\n got %v\nwant %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("kernel %d: got %+v, want %+v", i, got[i], want[i])
		}
	}

	// Nothing to find is not an error; a missing root is.
	if ks, err := FindKernels(t.TempDir()); err != nil || len(ks) != 0 {
		t.Errorf("empty tree: %v, %v", ks, err)
	}
	if _, err := FindKernels(filepath.Join(root, "nonexistent")); err == nil {
		t.Error("missing root: no error")
	}
}

// TestResolveInside: image paths resolve inside the tree (securejoin), as
// if it were "/".
func TestResolveInside(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"etc/real/file": "x",
		"etc/abs":       "->/etc/real",
		"etc/rel":       "->real",
		"etc/up":        "->../../../../etc/real",
		"loop1":         "->loop2",
		"loop2":         "->loop1",
	})
	for p, want := range map[string]string{
		"/etc/abs/file":         "etc/real/file",
		"/etc/rel/file":         "etc/real/file",
		"/etc/up/file":          "etc/real/file",
		"/../../etc/abs/file":   "etc/real/file",
		"etc/./rel/../abs/file": "etc/real/file",
	} {
		if h, ok := regularIn(root, p); !ok || h != filepath.Join(root, want) {
			t.Errorf("regularIn(%s) = %s, %v; want %s", p, h, ok, want)
		}
	}
	for _, p := range []string{"/loop1/x", "/etc/missing", "/etc/real/file/x", "/etc/abs"} {
		if h, ok := regularIn(root, p); ok {
			t.Errorf("regularIn(%s) = %s", p, h)
		}
	}
	if names, err := listDirIn(root, "/etc/up"); err != nil || len(names) != 1 || names[0] != "file" {
		t.Errorf("listDirIn(/etc/up) = %v, %v", names, err)
	}
	for _, p := range []string{"/etc/missing", "/etc/real/file"} {
		if names, err := listDirIn(root, p); err != nil || names != nil {
			t.Errorf("listDirIn(%s) = %v, %v; want nothing", p, names, err)
		}
	}
	if _, err := listDirIn(root, "/loop1"); err == nil || !strings.Contains(err.Error(), "too many levels of symbolic links") {
		t.Errorf("listDirIn(/loop1): %v", err)
	}
}

func TestRootArg(t *testing.T) {
	for _, c := range []struct {
		name, fstab, fallback, want, err string
	}{
		{"uuid", "# comment\nUUID=abcd-1 / ext4 defaults 0 1\nUUID=b /boot ext4 defaults 0 2\n", "", "UUID=abcd-1", ""},
		{"label", "LABEL=cloudimg-rootfs\t/\text4\tdiscard,errors=remount-ro\t0 1\n", "", "LABEL=cloudimg-rootfs", ""},
		{"partuuid", "PARTUUID=6b6d6f64-03 / xfs defaults 0 0\n", "", "PARTUUID=6b6d6f64-03", ""},
		{"partlabel", "PARTLABEL=root / ext4 defaults 0 0\n", "", "PARTLABEL=root", ""},
		{"quoted", `UUID="1234" / ext4 defaults 0 0` + "\n", "", "UUID=1234", ""},
		{"by-uuid", "/dev/disk/by-uuid/feed / ext4 defaults 0 0\n", "", "UUID=feed", ""},
		{"by-label", "/dev/disk/by-label/root / ext4 defaults 0 0\n", "", "LABEL=root", ""},
		{"trailing slash", "UUID=x //  ext4 defaults 0 0\n", "", "UUID=x", ""},
		{"last wins", "UUID=old / ext4 defaults 0 0\nUUID=new / ext4 defaults 0 0\n", "", "UUID=new", ""},
		{"line that is no entry skipped", "lonely\nUUID=x / ext4 defaults 0 0\n", "", "UUID=x", ""},
		{"device", "/dev/sda1 / ext4 defaults 0 1\n", "f", "", "device name /dev/sda1"},
		{"mapper", "/dev/mapper/vg-root / ext4 defaults 0 1\n", "", "", "device name /dev/mapper/vg-root"},
		{"space", `LABEL=my\040root / ext4 defaults 0 1` + "\n", "", "", "blanks"},
		{"odd", "rootfs / ext4 defaults 0 1\n", "", "", "unsupported source"},
		{"no root entry", "UUID=b /boot ext4 defaults 0 2\n", "f00d", "UUID=f00d", ""},
		{"no root entry, prefixed fallback", "UUID=b /boot ext4 defaults 0 2\n", "UUID=f00d", "UUID=f00d", ""},
		{"no root entry, no fallback", "UUID=b /boot ext4 defaults 0 2\n", "", "", "no entry for /"},
		{"no fstab", "", "f00d", "UUID=f00d", ""},
		{"no fstab, no fallback", "", "", "", "no /etc/fstab"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			if c.fstab != "" {
				writeTree(t, root, map[string]string{"etc/fstab": c.fstab})
			}
			got, err := RootArg(root, c.fallback)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %q, %v; want an error with %q", got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

// mountFixture attaches the cloud image fixture read-only and mounts its
// root (p3) at a folder and /boot (p2) below it; the returned tracker
// releases both (also at the test's end).
func mountFixture(t testing.TB) (string, *diskimage.Tracker) {
	t.Helper()
	fixture.NeedRoot(t)
	raw := fixture.CloudImageRaw(t)
	tab, err := diskimage.ReadTableFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	bootP, ok2 := tab.Partition(2)
	rootP, ok3 := tab.Partition(3)
	if !ok2 || !ok3 {
		t.Fatalf("fixture partitions: %v", tab.Partitions)
	}
	tr := &diskimage.Tracker{}
	t.Cleanup(func() {
		if _, err := tr.Release(); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "root")
	for _, m := range []struct {
		p      diskimage.Partition
		target string
	}{{rootP, dir}, {bootP, filepath.Join(dir, "boot")}} {
		l, err := tr.AttachPartition(ctx, raw, m.p, true)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Mount(ctx, l.Device, m.target, "ext4", "ro", "noload"); err != nil {
			t.Fatal(err)
		}
	}
	return dir, tr
}

// fixtureKernel finds the fixture image's kernel and root= the way the
// builder does (mounted image, FindKernels, RootArg), checks them, copies
// the kernel and initrd out and unmounts.
func fixtureKernel(t testing.TB) (Kernel, string) {
	t.Helper()
	dir, tr := mountFixture(t)
	kver := fixture.KVER(t)
	ks, err := FindKernels(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks) != 1 || ks[0].Release != kver ||
		ks[0].Vmlinuz != filepath.Join(dir, "boot", "vmlinuz-"+kver) ||
		ks[0].Initrd != filepath.Join(dir, "boot", "initrd.img-"+kver) {
		t.Fatalf("FindKernels = %+v, want %s with /boot/vmlinuz and /boot/initrd.img", ks, kver)
	}
	rootArg, err := RootArg(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if rootArg != "UUID=6b6d6f64-4007-4000-8000-000000000003" {
		t.Errorf("RootArg = %q, want the fixture root's UUID", rootArg)
	}
	out := t.TempDir()
	k := Kernel{Release: kver, Vmlinuz: filepath.Join(out, "vmlinuz"), Initrd: filepath.Join(out, "initrd.img")}
	fixture.CopyFile(t, ks[0].Vmlinuz, k.Vmlinuz)
	fixture.CopyFile(t, ks[0].Initrd, k.Initrd)
	if _, err := tr.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "boot", "vmlinuz-"+kver)); err == nil {
		t.Fatal("fixture still mounted after Release")
	}
	return k, rootArg
}

func TestFixtureKernels(t *testing.T) {
	k, root := fixtureKernel(t)
	t.Logf("kernel %s, root=%s", k.Release, root)
}
