package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// stateDir holds one record per running build (on tmpfs: loop devices and
// mounts do not survive a reboot either).
const stateDir = "/run/packer-kmod-image"

// buildRecord is what a build holds, written so that a later build can tell
// what a killed one left behind.
type buildRecord struct {
	PID       int       `json:"pid"`
	Started   time.Time `json:"started"`
	Build     string    `json:"build"`
	WorkDir   string    `json:"work_dir"`
	WorkImage string    `json:"work_image"`
	MountPath string    `json:"mount_path,omitempty"`
}

// stepPreflight checks that the builder can run here (root, loop devices,
// host tools), reports what killed builds left behind, and creates the
// output and work directories.
//
// Consumes: config. Produces: build.workDir, build.workImage, build.mountPath,
// build.stateFile.
type stepPreflight struct {
	created      []string // removed with everything in them
	createdMount string   // removed only when empty: never RemoveAll a mount point
}

func (s *stepPreflight) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b := get(state)
	if os.Geteuid() != 0 {
		return halt(state, "kmod-image needs root: it attaches loop devices and mounts filesystems (run packer as root, e.g. sudo -E packer build)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return halt(state, "kmod-image needs loop devices: /dev/loop-control: %v (modprobe loop; in a container, run privileged)", err)
	}
	for _, tool := range []string{"losetup", "mount", "umount", "chroot", "tar", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			return halt(state, "kmod-image needs %s on PATH: %v (Debian: apt-get install util-linux coreutils tar qemu-utils)", tool, err)
		}
	}
	for _, msg := range staleBuilds() {
		ui(state).Error(msg)
	}

	// Checked here, not in Prepare: `packer validate` has no -force.
	if !b.cfg.PackerForce {
		if ents, err := os.ReadDir(b.cfg.OutputDir); err == nil && len(ents) > 0 {
			return halt(state, "output_directory: %s exists and is not empty (use -force to overwrite)", b.cfg.OutputDir)
		}
	}
	if err := os.MkdirAll(b.cfg.OutputDir, 0o755); err != nil {
		return halt(state, "output_directory: %v", err)
	}
	out, err := filepath.Abs(b.cfg.OutputDir)
	if err != nil {
		return halt(state, "output_directory: %v", err)
	}
	// The working copy lives next to the outputs: same filesystem, so a raw
	// output is a rename, and the user chose that disk for the space.
	wd, err := os.MkdirTemp(out, ".work-")
	if err != nil {
		return halt(state, "create work directory in %s: %v", out, err)
	}
	s.created = append(s.created, wd)
	b.workDir = wd
	b.workImage = filepath.Join(wd, "disk.raw")

	// The mount path is known before anything is attached, so that
	// pre_mount_commands can use {{.MountPath}}.
	mp := b.cfg.MountPath
	if mp == "" {
		if err := os.MkdirAll(defaultMountParent, 0o755); err != nil {
			return halt(state, "mount path: %v", err)
		}
		d, err := os.MkdirTemp(defaultMountParent, b.cfg.PackerBuildName+"-")
		if err != nil {
			return halt(state, "mount path: %v", err)
		}
		mp, s.createdMount = d, d
	} else {
		ents, err := os.ReadDir(mp)
		switch {
		case os.IsNotExist(err):
			if err := os.MkdirAll(mp, 0o755); err != nil {
				return halt(state, "mount_path: %v", err)
			}
			s.createdMount = mp
		case err != nil:
			return halt(state, "mount_path: %v", err)
		case len(ents) > 0:
			return halt(state, "mount_path: %s is not empty (another build, or something mounted there?)", mp)
		}
	}
	b.mountPath = mp

	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return halt(state, "create %s: %v", stateDir, err)
	}
	b.stateFile = filepath.Join(stateDir, strconv.Itoa(os.Getpid())+"-"+filepath.Base(wd)+".json")
	if err := b.saveRecord(); err != nil {
		return halt(state, "%v", err)
	}
	return multistep.ActionContinue
}

func (s *stepPreflight) Cleanup(state multistep.StateBag) {
	b := get(state)
	// Leave the work directory alone while something still holds it: the
	// stale-state report of the next build then names it.
	if b.workImage != "" {
		if loops, _ := diskimage.ListLoopsFor(b.workImage); len(loops) > 0 {
			ui(state).Error(fmt.Sprintf("loop devices still attached to %s; left %s in place:\n%s", b.workImage, b.workDir, diskimage.CleanupCommands(loops)))
			return
		}
	}
	if b.mountPath != "" && len(diskimage.MountsUnder(b.mountPath)) > 0 {
		ui(state).Error(fmt.Sprintf("mounts remain under %s; left %s in place (umount -R %s)", b.mountPath, b.workDir, b.mountPath))
		return
	}
	for _, d := range s.created {
		if err := os.RemoveAll(d); err != nil {
			ui(state).Error(fmt.Sprintf("remove %s: %v", d, err))
		}
	}
	s.created = nil
	if s.createdMount != "" && os.Remove(s.createdMount) == nil {
		s.createdMount = ""
	}
	if b.stateFile != "" {
		os.Remove(b.stateFile)
	}
}

// saveRecord writes the build record (again, once the mount path is known).
func (b *build) saveRecord() error {
	rec := buildRecord{
		PID: os.Getpid(), Started: time.Now().UTC(), Build: b.cfg.PackerBuildName,
		WorkDir: b.workDir, WorkImage: b.workImage, MountPath: b.mountPath,
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(b.stateFile, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write build record %s: %w", b.stateFile, err)
	}
	return nil
}

// staleBuilds looks for records of builds whose process is gone, and for
// each one that still holds loop devices or mounts returns a report with the
// exact commands that release them. Records with nothing left are removed.
func staleBuilds() []string {
	ents, err := os.ReadDir(stateDir)
	if err != nil {
		return nil
	}
	var msgs []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		p := filepath.Join(stateDir, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var rec buildRecord
		if json.Unmarshal(data, &rec) != nil || rec.PID <= 0 {
			continue
		}
		if processAlive(rec.PID) {
			continue
		}
		var cmds []string
		if rec.MountPath != "" && len(diskimage.MountsUnder(rec.MountPath)) > 0 {
			// Processes left in the chroot keep it busy: kill them first.
			cmds = append(cmds, "fuser -k -m "+shquote.Quote(rec.MountPath), "umount -R "+shquote.Quote(rec.MountPath))
		}
		loops, _ := diskimage.ListLoopsFor(rec.WorkImage)
		for _, l := range loops {
			// A mounted loop is autocleared by the umount above; then this
			// says "No such device", which is fine.
			cmds = append(cmds, "losetup -d "+l.Device)
		}
		if len(cmds) == 0 {
			os.Remove(p)
			continue
		}
		cmds = append(cmds, "rm -rf "+shquote.Quote(rec.WorkDir), "rm -f "+shquote.Quote(p))
		msgs = append(msgs, fmt.Sprintf("stale state: build %q (pid %d, started %s) was killed and still holds mounts or loop devices. Release them with:\n  %s",
			rec.Build, rec.PID, rec.Started.Format(time.RFC3339), strings.Join(cmds, "\n  ")))
	}
	return msgs
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
