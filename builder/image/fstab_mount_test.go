package image

// Integration tests of stepAttach, stepMountRoot and stepMountFstab (and
// their Cleanups) on small disk images built here with sfdisk, mkfs.ext4 -d
// (-E offset=) and mkfs.vfat --offset. They need root and loop devices; the
// build host's kernel may lack vfat and does not scan partition tables,
// which is what the builder is written for.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// fmPart is one partition of a test image.
type fmPart struct {
	typ     string // sfdisk type: a GPT type GUID or an MBR hex type
	name    string // GPT partition name
	sizeMiB int64
	fs      string // "ext4", "vfat" or "" (left empty)
	label   string
	uuid    string // ext4: -U; vfat: volume id as 8 hex digits
	// files maps a path inside the filesystem to its content; content
	// starting with "->" makes a symlink to the rest.
	files map[string]string
}

// fmImage writes a disk image with a label ("gpt" or "dos") partition
// table and the given partitions, 1 MiB aligned and contiguous, and returns
// its path and the byte offset of each partition.
func fmImage(t *testing.T, label string, parts []fmPart) (string, []int64) {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	const mib = 1 << 20
	total := int64(2) // 1 MiB before the first partition, 1 MiB for the backup GPT
	for _, p := range parts {
		total += p.sizeMiB
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(total * mib); err != nil {
		t.Fatal(err)
	}
	f.Close()

	var script strings.Builder
	fmt.Fprintf(&script, "label: %s\nunit: sectors\n", label)
	starts := make([]int64, len(parts))
	at := int64(mib)
	for i, p := range parts {
		starts[i] = at
		fmt.Fprintf(&script, "start=%d, size=%d, type=%s", at/512, p.sizeMiB*mib/512, p.typ)
		if label == "gpt" && p.name != "" {
			fmt.Fprintf(&script, ", name=%q", p.name)
		}
		script.WriteString("\n")
		at += p.sizeMiB * mib
	}
	fmRunStdin(t, script.String(), "sfdisk", "-q", "--no-reread", "--no-tell-kernel", img)

	for i, p := range parts {
		switch p.fs {
		case "ext4":
			tree := t.TempDir()
			fmWriteTree(t, tree, p.files)
			args := []string{"-q", "-F", "-t", "ext4", "-L", p.label}
			if p.uuid != "" {
				args = append(args, "-U", p.uuid)
			}
			args = append(args, "-d", tree, "-E", fmt.Sprintf("offset=%d,nodiscard", starts[i]), img, fmt.Sprintf("%dk", p.sizeMiB*1024))
			fmRun(t, "mkfs.ext4", args...)
		case "vfat":
			args := []string{"--offset", fmt.Sprint(starts[i] / 512), "-n", p.label}
			if p.uuid != "" {
				args = append(args, "-i", p.uuid)
			}
			args = append(args, img, fmt.Sprint(p.sizeMiB*1024))
			fmRun(t, "mkfs.vfat", args...)
			// mtools writes into the FAT at its offset (the kernel cannot).
			at := fmt.Sprintf("%s@@%d", img, starts[i])
			for name, content := range p.files {
				dirs := strings.Split(strings.Trim(filepath.Dir(name), "/"), "/")
				for k := range dirs {
					if dirs[0] == "." || dirs[0] == "" {
						break
					}
					fmRun(t, "mmd", "-D", "s", "-i", at, "::/"+strings.Join(dirs[:k+1], "/"))
				}
				src := filepath.Join(t.TempDir(), "f")
				if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				fmRun(t, "mcopy", "-o", "-i", at, src, "::"+name)
			}
		}
	}
	if out, _ := exec.Command("sfdisk", "-d", img).CombinedOutput(); len(out) > 0 {
		t.Logf("test image %s:\n%s", img, out)
	}
	return img, starts
}

// fmWriteTree creates files (and symlinks, "->target") under root.
func fmWriteTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func fmRun(t *testing.T, name string, args ...string) {
	t.Helper()
	fmRunStdin(t, "", name, args...)
}

func fmRunStdin(t *testing.T, stdin, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// fmUI records everything the steps show, in order.
type fmUI struct {
	packersdk.Ui
	t     *testing.T
	mu    sync.Mutex
	lines []fmLine
}

type fmLine struct{ kind, text string }

func (u *fmUI) add(kind, s string) {
	u.mu.Lock()
	u.lines = append(u.lines, fmLine{kind, s})
	u.mu.Unlock()
	u.t.Logf("ui %s: %s", kind, s)
}

func (u *fmUI) Say(s string)                        { u.add("say", s) }
func (u *fmUI) Sayf(f string, a ...any)             { u.add("say", fmt.Sprintf(f, a...)) }
func (u *fmUI) Message(s string)                    { u.add("message", s) }
func (u *fmUI) Error(s string)                      { u.add("error", s) }
func (u *fmUI) Errorf(f string, a ...any)           { u.add("error", fmt.Sprintf(f, a...)) }
func (u *fmUI) Machine(string, ...string)           {}
func (u *fmUI) Ask(string) (string, error)          { return "", nil }
func (u *fmUI) Askf(string, ...any) (string, error) { return "", nil }

// find returns the index of the first line of kind ("" for any) holding
// every one of subs, or -1.
func (u *fmUI) find(kind string, subs ...string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
next:
	for i, l := range u.lines {
		if kind != "" && l.kind != kind {
			continue
		}
		for _, s := range subs {
			if !strings.Contains(l.text, s) {
				continue next
			}
		}
		return i
	}
	return -1
}

func (u *fmUI) errors() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var r []string
	for _, l := range u.lines {
		if l.kind == "error" {
			r = append(r, l.text)
		}
	}
	return r
}

// fmBuild runs the attach and mount steps on an image like a multistep
// runner: in order, up to the first halt; cleanup runs the Cleanups of the
// steps that ran, the halted one included, in reverse.
type fmBuild struct {
	t         *testing.T
	img       string
	mountPath string
	state     *multistep.BasicStateBag
	b         *build
	ui        *fmUI
	ran       []multistep.Step
	cleaned   bool
}

func fmNeedRoot(t *testing.T) {
	t.Helper()
	fixture.NeedRoot(t)
	fixture.NeedTools(t, "losetup", "mount", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mmd", "mcopy")
}

// fmNewBuild prepares a Config from raw (plus source_image, mount_path and
// boot_check { enabled = false }) and the state bag for img. hostDirs are
// unmounted last thing if anything is still mounted there (a safety net for
// a failing test; the assertions are made before).
func fmNewBuild(t *testing.T, img string, raw map[string]interface{}, hostDirs ...string) *fmBuild {
	t.Helper()
	work := t.TempDir()
	// stepPreflight (not run here: it wants the work directory under the
	// output directory and a build record in /run) creates the mount path
	// and sets build.mountPath; do the same.
	mp := filepath.Join(work, "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	// Safety net, registered first so that it runs last: nothing of this
	// test stays mounted or attached even if a step misbehaves.
	t.Cleanup(func() {
		for _, d := range append([]string{mp}, hostDirs...) {
			if ms := diskimage.MountsUnder(d); len(ms) > 0 {
				t.Errorf("safety net: unmounting leftovers %v", ms)
				diskimage.UnmountTree(d)
			}
		}
		if loops, _ := diskimage.ListLoopsFor(img); len(loops) > 0 {
			t.Errorf("safety net: detaching leftover loops %v", loops)
			for _, l := range loops {
				exec.Command("losetup", "-d", l.Device).Run()
			}
		}
	})
	if raw == nil {
		raw = map[string]interface{}{}
	}
	raw["source_image"] = img
	raw["mount_path"] = mp
	raw["output_directory"] = filepath.Join(work, "out")
	raw["boot_check"] = map[string]interface{}{"enabled": false}
	var cfg Config
	if _, err := cfg.Prepare(raw); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	ui := &fmUI{Ui: packersdk.TestUi(t), t: t}
	b := &build{cfg: &cfg, workDir: work, workImage: img, mountPath: mp, stateFile: filepath.Join(work, "build.json")}
	state := new(multistep.BasicStateBag)
	state.Put("ui", packersdk.Ui(ui))
	state.Put(stateKey, b)
	fb := &fmBuild{t: t, img: img, mountPath: mp, state: state, b: b, ui: ui}
	t.Cleanup(func() { fb.cleanup() })
	return fb
}

// run runs the steps and returns the name of the step that halted ("" if
// none did).
func (fb *fmBuild) run() string {
	steps := []struct {
		name string
		s    multistep.Step
	}{
		{"attach", &stepAttach{}},
		{"mount_root", &stepMountRoot{}},
		{"mount_fstab", &stepMountFstab{}},
	}
	for _, st := range steps {
		fb.ran = append(fb.ran, st.s)
		if st.s.Run(context.Background(), fb.state) != multistep.ActionContinue {
			if _, ok := fb.state.GetOk("error"); !ok {
				fb.t.Errorf("step %s halted without an error in the state", st.name)
			}
			return st.name
		}
	}
	if err, ok := fb.state.GetOk("error"); ok {
		fb.t.Errorf("steps continued but left an error: %v", err)
	}
	return ""
}

// cleanup runs the Cleanups in reverse (once) and checks that nothing is
// mounted or attached afterwards and the mount path is gone.
func (fb *fmBuild) cleanup() {
	t := fb.t
	if fb.cleaned {
		return
	}
	fb.cleaned = true
	for i := len(fb.ran) - 1; i >= 0; i-- {
		fb.ran[i].Cleanup(fb.state)
	}
	if err := diskimage.CheckNoLeftovers(fb.img); err != nil {
		t.Errorf("after the Cleanups: %v", err)
	}
	if ms := diskimage.MountsUnder(fb.mountPath); len(ms) > 0 {
		t.Errorf("after the Cleanups: still mounted under %s: %v", fb.mountPath, ms)
	}
	// Empty again (nothing of the image left behind), then removed as
	// stepPreflight's Cleanup would.
	if ents, err := os.ReadDir(fb.mountPath); err != nil || len(ents) > 0 {
		t.Errorf("after the Cleanups: mount path %s not an empty directory: %v %v", fb.mountPath, ents, err)
	} else if err := os.Remove(fb.mountPath); err != nil {
		t.Errorf("after the Cleanups: %v", err)
	}
	if fb.b.tracker != nil {
		if ms := fb.b.tracker.Mounts(); len(ms) > 0 {
			t.Errorf("after the Cleanups: tracker still holds mounts %v", ms)
		}
	}
}

func (fb *fmBuild) errorText() string {
	if err, ok := fb.state.GetOk("error"); ok {
		return err.(error).Error()
	}
	return ""
}

// mountsRel returns the mounts under the mount path, relative to it ("/"
// for the root), sorted as MountsUnder sorts them.
func (fb *fmBuild) mountsRel() []string {
	var r []string
	for _, m := range diskimage.MountsUnder(fb.mountPath) {
		rel, err := filepath.Rel(fb.mountPath, m)
		if err != nil {
			fb.t.Fatal(err)
		}
		r = append(r, filepath.Join("/", rel))
	}
	return r
}

func fmReadFile(t *testing.T, p, want string) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("read %s: %v", p, err)
		return
	}
	if string(data) != want {
		t.Errorf("%s = %q, want %q", p, data, want)
	}
}

const (
	fmBootUUID = "6b1a0b5e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
	fmRootUUID = "0c9d8e7f-6a5b-4c3d-9e2f-1a0b9c8d7e6f"
	fmESPID    = "1234ABCD"
)

// fmGPTImage is the usual UEFI layout: p1 ESP (vfat), p2 /boot (ext4),
// p3 root (ext4, the root type of the build host's architecture). The fstab
// lists /boot/efi before /boot so that the sorting is exercised.
func fmGPTImage(t *testing.T) string {
	rootType, ok := diskimage.RootGPTTypes[runtime.GOARCH]
	if !ok {
		t.Skipf("no GPT root type for %s", runtime.GOARCH)
	}
	fstab := "# test image\n" +
		"UUID=" + fmRootUUID + " / ext4 errors=remount-ro 0 1\n" +
		"LABEL=ESP /boot/efi vfat umask=0077 0 1\n" +
		"UUID=" + fmBootUUID + " /boot ext4 defaults 0 2\n" +
		"tmpfs /tmp tmpfs defaults 0 0\n"
	img, _ := fmImage(t, "gpt", []fmPart{
		{typ: diskimage.GPTTypeEFISystem, name: "EFI System", sizeMiB: 8, fs: "vfat", label: "ESP", uuid: fmESPID,
			files: map[string]string{"/EFI/BOOT/BOOTX64.EFI": "not really an EFI binary\n"}},
		{typ: diskimage.GPTTypeLinuxFS, name: "boot", sizeMiB: 8, fs: "ext4", label: "boot", uuid: fmBootUUID,
			files: map[string]string{"vmlinuz-6.1.0-test": "boot partition kernel\n", "efi/.keep": ""}},
		{typ: rootType, name: "root", sizeMiB: 16, fs: "ext4", label: "root", uuid: fmRootUUID,
			files: map[string]string{
				"etc/fstab":      fstab,
				"etc/os-release": "ID=debian\nVERSION_ID=\"12\"\n",
				"boot/.keep":     "on the root filesystem\n",
			}},
	})
	return img
}

func TestFstabMountGPT(t *testing.T) {
	fmNeedRoot(t)
	img := fmGPTImage(t)

	t.Run("ESPSkippedWithWarning", func(t *testing.T) {
		fb := fmNewBuild(t, img, nil)
		if halted := fb.run(); halted != "" {
			t.Fatalf("step %s halted: %s", halted, fb.errorText())
		}
		if fb.ui.find("message", "partition 1:", "EFI System", "vfat", "ESP") < 0 {
			t.Errorf("no partition listing line for the ESP")
		}
		if fb.ui.find("say", "Root is partition 3", "ext4", fmRootUUID, "GPT root partition type for "+runtime.GOARCH) < 0 {
			t.Errorf("no line telling the root is partition 3 by its GPT type")
		}
		// Mounted: the root and /boot (by UUID), nothing on /boot/efi.
		if got, want := strings.Join(fb.mountsRel(), " "), "/boot /"; got != want {
			t.Errorf("mounts under the mount path: %s, want %s", got, want)
		}
		fmReadFile(t, filepath.Join(fb.mountPath, "boot", "vmlinuz-6.1.0-test"), "boot partition kernel\n")
		fmReadFile(t, filepath.Join(fb.mountPath, "etc", "os-release"), "ID=debian\nVERSION_ID=\"12\"\n")
		if _, err := os.Stat(filepath.Join(fb.mountPath, "boot", ".keep")); !os.IsNotExist(err) {
			t.Errorf("the root filesystem's /boot/.keep is visible: /boot is not the boot partition (%v)", err)
		}
		bootMsg := fb.ui.find("message", "Mounted partition 2 (ext4) on /boot")
		warn := fb.ui.find("error", "warning", "/boot/efi", "partition 1", "vfat")
		switch {
		case bootMsg < 0:
			t.Errorf("no \"Mounted partition 2 (ext4) on /boot\" message")
		case warn < 0:
			t.Errorf("no warning naming /boot/efi, partition 1 and vfat; errors: %q", fb.ui.errors())
		case bootMsg > warn:
			t.Errorf("/boot (line %d) handled after /boot/efi (line %d): parents must come first", bootMsg, warn)
		}
		if warn >= 0 && fb.ui.find("error", "required_mounts") != warn {
			t.Errorf("the /boot/efi warning does not point to required_mounts: %q", fb.ui.errors())
		}
		if n := len(fb.ui.errors()); n != 1 {
			t.Errorf("%d error lines, want the one warning: %q", n, fb.ui.errors())
		}
		if fb.ui.find("", "tmpfs") >= 0 || fb.ui.find("message", "Mounted partition", "on /tmp") >= 0 {
			t.Errorf("the tmpfs /tmp entry was mentioned; it is no partition of the image")
		}
		if n := len(fb.b.tracker.Loops()); n != 2 {
			t.Errorf("%d loop devices attached, want 2 (root, /boot)", n)
		}
		fb.cleanup()
	})

	t.Run("RequiredESPFails", func(t *testing.T) {
		fb := fmNewBuild(t, img, map[string]interface{}{"required_mounts": []string{"/boot/efi"}})
		if halted := fb.run(); halted != "mount_fstab" {
			t.Fatalf("halted at %q, want mount_fstab (error %q)", halted, fb.errorText())
		}
		msg := fb.errorText()
		for _, s := range []string{"required_mounts", "/boot/efi", "vfat"} {
			if !strings.Contains(msg, s) {
				t.Errorf("error %q does not name %s", msg, s)
			}
		}
		if fb.ui.find("error", msg) < 0 {
			t.Errorf("the error was not shown on the UI")
		}
		if fb.ui.find("error", "warning") >= 0 {
			t.Errorf("a required mount was also reported as a skipped warning: %q", fb.ui.errors())
		}
		fb.cleanup()
	})

	t.Run("RequiredNotInFstab", func(t *testing.T) {
		fb := fmNewBuild(t, img, map[string]interface{}{"required_mounts": []string{"/var"}})
		if halted := fb.run(); halted != "mount_fstab" {
			t.Fatalf("halted at %q, want mount_fstab (error %q)", halted, fb.errorText())
		}
		msg := fb.errorText()
		if !strings.Contains(msg, "required_mounts") || !strings.Contains(msg, "/var") {
			t.Errorf("error %q does not name required_mounts and /var", msg)
		}
		fb.cleanup()
	})

	t.Run("RequiredBootTrailingSlash", func(t *testing.T) {
		fb := fmNewBuild(t, img, map[string]interface{}{"required_mounts": []string{"/boot/"}})
		if halted := fb.run(); halted != "" {
			t.Fatalf("step %s halted: %s", halted, fb.errorText())
		}
		if got, want := strings.Join(fb.mountsRel(), " "), "/boot /"; got != want {
			t.Errorf("mounts under the mount path: %s, want %s", got, want)
		}
		fb.cleanup()
	})

	t.Run("RootPartitionMissing", func(t *testing.T) {
		fb := fmNewBuild(t, img, map[string]interface{}{"root_partition": 7})
		if halted := fb.run(); halted != "attach" {
			t.Fatalf("halted at %q, want attach (error %q)", halted, fb.errorText())
		}
		msg := fb.errorText()
		for _, s := range []string{"root partition 7", "partitions: 1, 2, 3", "root_partition"} {
			if !strings.Contains(msg, s) {
				t.Errorf("error %q does not contain %q", msg, s)
			}
		}
		if fb.b.tracker != nil && len(fb.b.tracker.Loops()) > 0 {
			t.Errorf("loops attached although no root was chosen: %v", fb.b.tracker.Loops())
		}
		fb.cleanup()
	})

	t.Run("RootPartitionExplicit", func(t *testing.T) {
		fb := fmNewBuild(t, img, map[string]interface{}{"root_partition": 3})
		if halted := fb.run(); halted != "" {
			t.Fatalf("step %s halted: %s", halted, fb.errorText())
		}
		if fb.ui.find("say", "Root is partition 3", "explicit partition number") < 0 {
			t.Errorf("no line telling the root was chosen explicitly")
		}
		fb.cleanup()
	})
}

func TestFstabMountMBR(t *testing.T) {
	fmNeedRoot(t)
	cases := []struct {
		name      string
		rootLabel string
		bootType  string // fstab type of /boot
		how       string
	}{
		// No root label: ChooseRoot mounts each Linux filesystem read-only
		// and takes the one holding os-release.
		{"OSRelease", "system", "ext4", "filesystem holding os-release"},
		{"Label", "cloudimg-rootfs", "auto", "filesystem label cloudimg-rootfs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fstab := "/dev/sda2 / ext4 defaults 0 1\n" +
				"/dev/sda1 /boot " + c.bootType + " defaults 0 2\n" +
				"/dev/sda3 none swap sw 0 0\n" +
				"UUID=8d1f2a3b-0000-4000-8000-000000000001 /srv ext4 defaults,nofail 0 2\n"
			img, _ := fmImage(t, "dos", []fmPart{
				{typ: "83", sizeMiB: 8, fs: "ext4", label: "bootfs",
					files: map[string]string{"grub/grub.cfg": "# boot partition\n"}},
				{typ: "83", sizeMiB: 16, fs: "ext4", label: c.rootLabel,
					files: map[string]string{"etc/fstab": fstab, "etc/os-release": "ID=debian\n", "boot/.keep": ""}},
			})
			fb := fmNewBuild(t, img, nil)
			if halted := fb.run(); halted != "" {
				t.Fatalf("step %s halted: %s", halted, fb.errorText())
			}
			if fb.ui.find("say", "Root is partition 2", c.how) < 0 {
				t.Errorf("no line telling the root is partition 2 by %q", c.how)
			}
			if fb.ui.find("message", "Mounted partition 1 (ext4) on /boot") < 0 {
				t.Errorf("no \"Mounted partition 1 (ext4) on /boot\" message")
			}
			if got, want := strings.Join(fb.mountsRel(), " "), "/boot /"; got != want {
				t.Errorf("mounts under the mount path: %s, want %s", got, want)
			}
			fmReadFile(t, filepath.Join(fb.mountPath, "boot", "grub", "grub.cfg"), "# boot partition\n")
			if errs := fb.ui.errors(); len(errs) > 0 {
				t.Errorf("unexpected errors/warnings: %q", errs)
			}
			if n := len(fb.b.tracker.Loops()); n != 2 {
				t.Errorf("%d loop devices attached, want 2 (root, /boot)", n)
			}
			fb.cleanup()
		})
	}
}

// TestFstabMountSymlinkEscape: mount points that resolve, through symlinks
// in the image, to directories of the build host must land inside the
// image (resolved within the root), never on the host.
func TestFstabMountSymlinkEscape(t *testing.T) {
	fmNeedRoot(t)
	rootType, ok := diskimage.RootGPTTypes[runtime.GOARCH]
	if !ok {
		t.Skipf("no GPT root type for %s", runtime.GOARCH)
	}
	var host []string // host directories the image's symlinks point at
	for i := 0; i < 3; i++ {
		d, err := os.MkdirTemp("/tmp", "kmod-fstab-escape-")
		if err != nil {
			t.Fatal(err)
		}
		host = append(host, d)
	}
	t.Cleanup(func() {
		for _, d := range host {
			if len(diskimage.MountsUnder(d)) == 0 {
				os.RemoveAll(d)
			}
		}
	})
	depth := strings.Repeat("../", 12)
	// Listed deepest first, so the sorting has to put /data first; the
	// symlink of /data/escape lives on the data partition, which is mounted
	// only once /data is.
	fstab := "LABEL=root / ext4 defaults 0 1\n" +
		"LABEL=data2 /data/escape ext4 defaults 0 2\n" +
		"LABEL=data1 /data ext4 defaults 0 2\n" +
		"LABEL=data3 /mnt/evil ext4 defaults 0 2\n" +
		"LABEL=data4 /mnt/up/sub ext4 defaults 0 2\n"
	img, _ := fmImage(t, "gpt", []fmPart{
		{typ: diskimage.GPTTypeLinuxFS, sizeMiB: 8, fs: "ext4", label: "data1",
			files: map[string]string{"data1.txt": "1\n", "escape": "->" + host[0]}},
		{typ: diskimage.GPTTypeLinuxFS, sizeMiB: 8, fs: "ext4", label: "data2", files: map[string]string{"data2.txt": "2\n"}},
		{typ: diskimage.GPTTypeLinuxFS, sizeMiB: 8, fs: "ext4", label: "data3", files: map[string]string{"data3.txt": "3\n"}},
		{typ: diskimage.GPTTypeLinuxFS, sizeMiB: 8, fs: "ext4", label: "data4", files: map[string]string{"data4.txt": "4\n"}},
		{typ: rootType, sizeMiB: 16, fs: "ext4", label: "root",
			files: map[string]string{
				"etc/fstab":      fstab,
				"etc/os-release": "ID=debian\n",
				"data/.keep":     "",
				"mnt/evil":       "->" + host[1],                                  // absolute
				"mnt/up":         "->" + depth + strings.TrimPrefix(host[2], "/"), // relative, climbing out
			}},
	})
	fb := fmNewBuild(t, img, nil, host...)
	if halted := fb.run(); halted != "" {
		t.Fatalf("step %s halted: %s", halted, fb.errorText())
	}
	for i, d := range host {
		if ms := diskimage.MountsUnder(d); len(ms) > 0 {
			t.Errorf("host directory %s (symlink %d) was mounted on: %v", d, i, ms)
		}
		if ents, err := os.ReadDir(d); err != nil || len(ents) > 0 {
			t.Errorf("host directory %s (symlink %d) changed: %v %v", d, i, ents, err)
		}
	}
	in := func(p string) string { return filepath.Join(fb.mountPath, p) }
	fmReadFile(t, in("data/data1.txt"), "1\n")
	// /data/escape is an absolute symlink on the data partition: it means
	// <root>/<host0>, as in the booted system.
	fmReadFile(t, filepath.Join(fb.mountPath, host[0], "data2.txt"), "2\n")
	fmReadFile(t, filepath.Join(fb.mountPath, host[1], "data3.txt"), "3\n")
	fmReadFile(t, filepath.Join(fb.mountPath, host[2], "sub", "data4.txt"), "4\n")
	got := fb.mountsRel()
	want := []string{
		host[0],
		filepath.Join(host[2], "sub"),
		host[1],
		"/data",
		"/",
	}
	if len(got) != len(want) {
		t.Errorf("mounts under the mount path: %q, want %q (in some order)", got, want)
	} else {
		for _, w := range want {
			found := false
			for _, g := range got {
				found = found || g == w
			}
			if !found {
				t.Errorf("mounts under the mount path: %q, want %q (in some order)", got, want)
				break
			}
		}
	}
	d1 := fb.ui.find("message", "Mounted partition 1 (ext4) on /data")
	d2 := fb.ui.find("message", "Mounted partition 2 (ext4) on /data/escape")
	if d1 < 0 || d2 < 0 || d1 > d2 {
		t.Errorf("/data (line %d) must be mounted before /data/escape (line %d)", d1, d2)
	}
	fb.cleanup()
	for _, d := range host {
		if ms := diskimage.MountsUnder(d); len(ms) > 0 {
			t.Errorf("after the Cleanups: host directory %s mounted on: %v", d, ms)
		}
	}
}

// TestFstabMountOtherDisk: fstab entries naming a partition of another disk
// by device name (/dev/sdb1, /dev/vdb1, /dev/nvme1n1p1, /dev/mmcblk1p1)
// must be skipped like other disks' UUIDs: mapping them to the image's
// partition 1 would mount one ext4 read-write several times through
// different loop devices, which corrupts it. A second entry for a partition
// already mounted (here LABEL= after /dev/sda1) is skipped too.
func TestFstabMountOtherDisk(t *testing.T) {
	fmNeedRoot(t)
	fstab := "/dev/sda2 / ext4 defaults 0 1\n" +
		"/dev/sda1 /boot ext4 defaults 0 2\n" +
		"/dev/sdb1 /srv ext4 defaults,nofail 0 2\n" +
		"/dev/vdb1 /opt ext4 defaults,nofail 0 2\n" +
		"/dev/nvme1n1p1 /home ext4 defaults,nofail 0 2\n" +
		"/dev/mmcblk1p1 /media/card ext4 defaults,nofail 0 2\n" +
		"LABEL=bootfs /boot2 ext4 defaults 0 2\n"
	img, _ := fmImage(t, "dos", []fmPart{
		{typ: "83", sizeMiB: 8, fs: "ext4", label: "bootfs", files: map[string]string{"grub/grub.cfg": "# boot partition\n"}},
		{typ: "83", sizeMiB: 16, fs: "ext4", label: "root", files: map[string]string{"etc/fstab": fstab, "etc/os-release": "ID=debian\n"}},
	})
	fb := fmNewBuild(t, img, nil)
	if halted := fb.run(); halted != "" {
		t.Fatalf("step %s halted: %s", halted, fb.errorText())
	}
	if got, want := strings.Join(fb.mountsRel(), " "), "/boot /"; got != want {
		t.Errorf("mounts under the mount path: %s, want %s (other disks' partitions mounted from the image's partition 1)", got, want)
	}
	if n := len(fb.b.tracker.Loops()); n != 2 {
		t.Errorf("%d loop devices attached, want 2 (root, /boot)", n)
	}
	if fb.ui.find("error", "/boot2", "partition 1 is already mounted on /boot") < 0 {
		t.Errorf("no warning for the second entry of partition 1:\n%s", strings.Join(fb.ui.errors(), "\n"))
	}
	fb.cleanup()
}
