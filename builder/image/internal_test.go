package image

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

func TestPrepareErrors(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.raw")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	dir := t.TempDir()
	cases := []struct {
		name string
		raw  map[string]interface{}
		want string
	}{
		{"no source", map[string]interface{}{}, "one of source_image and source_rootfs is required"},
		{"both", map[string]interface{}{"source_image": img, "source_rootfs": dir}, "mutually exclusive"},
		{"missing image", map[string]interface{}{"source_image": "/nonexistent/disk.qcow2"}, "source_image: stat /nonexistent/disk.qcow2"},
		{"dir as image", map[string]interface{}{"source_image": dir}, "is a directory"},
		{"bad checksum", map[string]interface{}{"source_image": img, "source_checksum": "md5:abc"}, "source_checksum"},
		{"bad format", map[string]interface{}{"source_image": img, "output_formats": []string{"qcow2", "ova"}}, `output_formats: "ova" is not one of qcow2, raw, vhd, vmdk`},
		{"twice", map[string]interface{}{"source_image": img, "output_formats": []string{"raw", "raw"}}, `"raw" listed twice`},
		{"bad size", map[string]interface{}{"source_rootfs": dir, "disk_size": "4X"}, "disk_size"},
		{"bad fs", map[string]interface{}{"source_rootfs": dir, "filesystem": "btrfs"}, `filesystem: "btrfs"`},
		{"size with image", map[string]interface{}{"source_image": img, "disk_size": "4G"}, "apply to source_rootfs only"},
		{"bad mount", map[string]interface{}{"source_image": img, "chroot_mounts": [][]string{{"proc", "/proc"}}}, "chroot_mounts[0]"},
		{"bad resolv", map[string]interface{}{"source_image": img, "resolv_conf": "bind"}, "resolv_conf"},
		{"bad mode", map[string]interface{}{"source_image": img, "boot_check": map[string]interface{}{"mode": "uefi"}}, "boot_check.mode"},
		{"bad module", map[string]interface{}{"source_image": img, "boot_check": map[string]interface{}{"expect_modules": []string{"ext4", "a b"}}}, `"a b" is not a module name`},
		{"expect without check", map[string]interface{}{"source_image": img, "boot_check": map[string]interface{}{"enabled": false, "expect_modules": []string{"ext4"}}}, "needs the boot check enabled"},
		{"relative required", map[string]interface{}{"source_image": img, "required_mounts": []string{"boot/efi"}}, "required_mounts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cfg Config
			c.raw["output_directory"] = filepath.Join(t.TempDir(), "out")
			_, err := cfg.Prepare(c.raw)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Prepare(%v) = %v, want an error containing %q", c.raw, err, c.want)
			}
		})
	}
}

func TestPrepareDefaults(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.raw")
	os.WriteFile(img, make([]byte, 4096), 0o644)
	var cfg Config
	_, err := cfg.Prepare(map[string]interface{}{"source_image": img, "packer_build_name": "web", "boot_check": map[string]interface{}{"timeout": "90s"}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OutputDir != "output-web" || cfg.OutputName != "web" || strings.Join(cfg.OutputFormats, ",") != "qcow2" {
		t.Errorf("output defaults: %q %q %v", cfg.OutputDir, cfg.OutputName, cfg.OutputFormats)
	}
	if len(cfg.ChrootMounts) != 5 || cfg.ResolvConf != "copy" || cfg.BootCheck.Mode != "auto" || cfg.BootCheck.Timeout != 90*time.Second {
		t.Errorf("defaults: %+v", cfg)
	}
	_, qemuErr := exec.LookPath(qemuSystemBinary)
	if *cfg.BootCheck.Enabled != (qemuErr == nil) {
		t.Errorf("boot_check.enabled = %v, qemu present: %v", *cfg.BootCheck.Enabled, qemuErr == nil)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4G": 4 << 30, "2048M": 2 << 30, "1T": 1 << 40, "512": 512, "10GiB": 10 << 30, "64k": 64 << 10} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "4X", "0"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}

func TestFstab(t *testing.T) {
	text := `# /etc/fstab
UUID=1111-aaaa / ext4 errors=remount-ro 0 1
LABEL=boot /boot ext4 defaults 0 2
PARTUUID=abcd-0001	/boot/efi	vfat	umask=0077	0	1
/dev/vda4 /var\040data xfs defaults,nofail 0 2
tmpfs /tmp tmpfs defaults 0 0
/swapfile none swap sw 0 0
`
	es, err := diskimage.ParseFstab(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 6 || es[3].File != "/var data" || !es[3].HasOption("nofail") || es[2].Type != "vfat" {
		t.Fatalf("parsed %+v", es)
	}
	tbl := &diskimage.Table{Kind: "gpt", Partitions: []diskimage.Partition{
		{Number: 1, UUID: "abcd-0001"}, {Number: 2}, {Number: 3}, {Number: 4},
	}}
	probes := map[int]diskimage.FS{2: {Type: "ext4", Label: "boot", UUID: "2222"}, 3: {Type: "ext4", UUID: "1111-aaaa"}, 4: {Type: "xfs"}}
	for spec, want := range map[string]int{"UUID=1111-AAAA": 3, "LABEL=boot": 2, "PARTUUID=abcd-0001": 1, "/dev/vda4": 4, "/dev/disk/by-label/boot": 2, "/dev/nvme0n1p2": 2} {
		p, ok := matchPartition(spec, tbl, probes)
		if !ok || p.Number != want {
			t.Errorf("matchPartition(%q) = %d, %v; want %d", spec, p.Number, ok, want)
		}
	}
	if _, ok := matchPartition("tmpfs", tbl, probes); ok {
		t.Error("tmpfs matched a partition")
	}
	sortByMountPoint(es)
	var order []string
	for _, e := range es {
		order = append(order, e.File)
	}
	if i, j := indexOf(order, "/boot"), indexOf(order, "/boot/efi"); i > j {
		t.Errorf("mount order %v: /boot after /boot/efi", order)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// TestResolvConf checks that every kind of original comes back exactly.
func TestResolvConf(t *testing.T) {
	host := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(host, []byte("nameserver 192.0.2.53\n"), 0o644)
	setups := map[string]func(etc string){
		"file": func(etc string) {
			os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 10.0.0.1\n"), 0o600)
		},
		"symlink": func(etc string) {
			os.WriteFile(filepath.Join(etc, "real"), []byte("nameserver 10.0.0.2\n"), 0o644)
			os.Symlink("real", filepath.Join(etc, "resolv.conf"))
		},
		"dangling symlink": func(etc string) {
			os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(etc, "resolv.conf"))
		},
		"absolute symlink to host": func(etc string) {
			// Must be resolved inside the image, never written through.
			os.Symlink("/etc/hostname", filepath.Join(etc, "resolv.conf"))
		},
		"missing": func(etc string) {},
	}
	for name, setup := range setups {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			etc := filepath.Join(root, "etc")
			os.Mkdir(etc, 0o755)
			setup(etc)
			before := snapshot(t, filepath.Join(etc, "resolv.conf"))
			hostBefore, _ := os.ReadFile("/etc/hostname")
			restore, err := swapResolvConf(root, host)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(etc, "resolv.conf"))
			if err != nil || string(got) != "nameserver 192.0.2.53\n" {
				t.Fatalf("during: %q, %v", got, err)
			}
			if err := restore(); err != nil {
				t.Fatal(err)
			}
			if after := snapshot(t, filepath.Join(etc, "resolv.conf")); after != before {
				t.Errorf("not restored: before %q after %q", before, after)
			}
			if hostAfter, _ := os.ReadFile("/etc/hostname"); !bytes.Equal(hostBefore, hostAfter) {
				t.Errorf("the build host's /etc/hostname changed")
			}
			ents, _ := os.ReadDir(etc)
			for _, e := range ents {
				if strings.Contains(e.Name(), "packer") {
					t.Errorf("left %s", e.Name())
				}
			}
		})
	}
	t.Run("replaced by provisioning", func(t *testing.T) {
		root := t.TempDir()
		etc := filepath.Join(root, "etc")
		os.Mkdir(etc, 0o755)
		os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("orig\n"), 0o644)
		restore, err := swapResolvConf(root, host)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(filepath.Join(etc, "resolv.conf"))
		os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(etc, "resolv.conf"))
		if err := restore(); err != nil {
			t.Fatal(err)
		}
		if l, _ := os.Readlink(filepath.Join(etc, "resolv.conf")); l != "../run/systemd/resolve/stub-resolv.conf" {
			t.Errorf("provisioned resolv.conf not kept: %q", l)
		}
	})
}

// snapshot describes a path without following a final symlink.
func snapshot(t *testing.T, p string) string {
	st, err := os.Lstat(p)
	if err != nil {
		return "absent"
	}
	if st.Mode()&os.ModeSymlink != 0 {
		l, _ := os.Readlink(p)
		return "symlink " + l
	}
	b, _ := os.ReadFile(p)
	return st.Mode().String() + " " + string(b)
}

func TestPolicyRCD(t *testing.T) {
	for _, had := range []bool{false, true} {
		root := t.TempDir()
		sbin := filepath.Join(root, "usr/sbin")
		os.MkdirAll(sbin, 0o755)
		p := filepath.Join(sbin, "policy-rc.d")
		if had {
			os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o700)
		}
		before := snapshot(t, p)
		restore, err := installPolicyRCD(root)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(p).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 101 {
			t.Errorf("policy-rc.d exit: %v %s", err, out)
		}
		if err := restore(); err != nil {
			t.Fatal(err)
		}
		if after := snapshot(t, p); after != before {
			t.Errorf("had=%v: before %q after %q", had, before, after)
		}
	}
}

// miniRoot builds a tiny chroot from the build host's own binaries and the
// libraries ldd names, enough for the communicator's shell snippets.
func miniRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	root := t.TempDir()
	copyHost := func(p string) {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(real)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, bin := range []string{"/bin/sh", "/bin/cat", "/bin/chmod", "/bin/mv", "/bin/rm", "/bin/mkdir", "/usr/bin/dirname", "/bin/tar", "/bin/sleep", "/usr/bin/env", "/bin/ls"} {
		copyHost(bin)
		out, err := exec.Command("ldd", bin).Output()
		if err != nil {
			continue // static
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, f := range strings.Fields(line) {
				if strings.HasPrefix(f, "/") {
					copyHost(f)
				}
			}
		}
	}
	os.MkdirAll(filepath.Join(root, "tmp"), 0o1777)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	return root
}

func TestCommunicator(t *testing.T) {
	root := miniRoot(t)
	c := &Communicator{Root: root}
	ctx := context.Background()

	// Start: clean environment, exit status.
	var out bytes.Buffer
	rc := &packersdk.RemoteCmd{Command: "env; exit 7", Stdout: &out}
	t.Setenv("KMOD_IMAGE_LEAK", "host-secret")
	if err := c.Start(ctx, rc); err != nil {
		t.Fatal(err)
	}
	if st := rc.Wait(); st != 7 {
		t.Errorf("exit status %d, want 7", st)
	}
	if strings.Contains(out.String(), "KMOD_IMAGE_LEAK") || !strings.Contains(out.String(), "PATH=/usr/local/sbin:") {
		t.Errorf("environment in the chroot:\n%s", out.String())
	}

	// Upload keeps the mode, lands inside the root, and a symlink in the
	// image cannot redirect it onto the host.
	fi := fakeInfo{mode: 0o750}
	var info os.FileInfo = fi
	if err := c.Upload("/tmp/script.sh", strings.NewReader("#!/bin/sh\necho hi\n"), &info); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(root, "tmp/script.sh"))
	if err != nil || st.Mode().Perm() != 0o750 {
		t.Errorf("uploaded mode: %v, %v", st, err)
	}
	hostTarget := filepath.Join(t.TempDir(), "host-file")
	os.Symlink(hostTarget, filepath.Join(root, "etc/evil"))
	if err := c.Upload("/etc/evil", strings.NewReader("x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(hostTarget); err == nil {
		t.Errorf("upload through an absolute symlink wrote the host file %s", hostTarget)
	}
	if err := c.Upload("/missing/dir/f", strings.NewReader("x"), nil); err == nil || !strings.Contains(err.Error(), "/missing/dir/f") {
		t.Errorf("upload into a missing dir: %v", err)
	}

	// Download and the directory round trip.
	var dl bytes.Buffer
	if err := c.Download("/tmp/script.sh", &dl); err != nil || dl.String() != "#!/bin/sh\necho hi\n" {
		t.Errorf("download: %q, %v", dl.String(), err)
	}
	if err := c.Download("/tmp/nope", &dl); err == nil {
		t.Error("download of a missing file succeeded")
	}
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "a/b"), 0o755)
	os.WriteFile(filepath.Join(src, "a/b/f.txt"), []byte("deep"), 0o640)
	os.WriteFile(filepath.Join(src, "skip.log"), []byte("no"), 0o644)
	if err := c.UploadDir("/tmp/up", src, []string{"*.log"}); err != nil {
		t.Fatal(err)
	}
	base := filepath.Base(src)
	if b, err := os.ReadFile(filepath.Join(root, "tmp/up", base, "a/b/f.txt")); err != nil || string(b) != "deep" {
		t.Errorf("UploadDir without trailing slash: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(root, "tmp/up", base, "skip.log")); err == nil {
		t.Error("excluded file uploaded")
	}
	if err := c.UploadDir("/tmp/flat", src+"/", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "tmp/flat/a/b/f.txt")); err != nil {
		t.Errorf("UploadDir with trailing slash: %v", err)
	}
	back := t.TempDir()
	if err := c.DownloadDir("/tmp/flat", back, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(back, "a/b/f.txt")); err != nil || string(b) != "deep" {
		t.Errorf("DownloadDir: %q, %v", b, err)
	}

	// Cancelling the context kills the command and its children.
	cctx, cancel := context.WithCancel(ctx)
	rc = &packersdk.RemoteCmd{Command: "sleep 300 & sleep 300"}
	if err := c.Start(cctx, rc); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	cancel()
	done := make(chan int)
	go func() { done <- rc.Wait() }()
	select {
	case st := <-done:
		if st == 0 {
			t.Error("cancelled command exited 0")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled command still running")
	}
	if pids := diskimage.KillUsers(root); len(pids) > 0 {
		t.Errorf("processes survived the cancel: %v", pids)
	}
}

type fakeInfo struct {
	os.FileInfo
	mode os.FileMode
}

func (f fakeInfo) Mode() os.FileMode { return f.mode }
