package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/hashicorp/packer-plugin-sdk/template/interpolate"

	"github.com/kmodctl/packer-plugin-kmod/internal/linewriter"
)

// mountCommandData is what pre_mount_commands and post_mount_commands can
// interpolate.
type mountCommandData struct {
	Device    string
	MountPath string
	Image     string
}

// stepMountCommands runs pre_mount_commands or post_mount_commands on the
// build host, each through command_wrapper; a non-zero exit fails the build.
//
// Consumes: build.rootDevice, build.mountPath, build.workImage. Produces:
// nothing (the commands' effects).
type stepMountCommands struct {
	name     string // the setting's name, for messages
	commands func(*Config) []string
}

func (s *stepMountCommands) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	cmds := s.commands(b.cfg)
	if len(cmds) == 0 {
		return multistep.ActionContinue
	}
	ictx := b.cfg.ctx
	ictx.Data = &mountCommandData{Device: b.rootDevice, MountPath: b.mountPath, Image: b.workImage}
	for i, raw := range cmds {
		line, err := interpolate.Render(raw, &ictx)
		if err != nil {
			return halt(state, "%s[%d]: %v", s.name, i, err)
		}
		line, err = b.wrap(line)
		if err != nil {
			return halt(state, "%s[%d]: %v", s.name, i, err)
		}
		u.Say(fmt.Sprintf("%s: %s", s.name, line))
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", line)
		stdout, stderr := linewriter.New(u.Message), linewriter.New(u.Error)
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.Env = append(os.Environ(), "PACKER_KMOD_DEVICE="+b.rootDevice, "PACKER_KMOD_MOUNT_PATH="+b.mountPath)
		err = cmd.Run()
		stdout.Flush()
		stderr.Flush()
		if err != nil {
			return halt(state, "%s[%d] %q: %v", s.name, i, line, err)
		}
	}
	return multistep.ActionContinue
}

func (s *stepMountCommands) Cleanup(multistep.StateBag) {}

// wrap applies command_wrapper.
func (b *build) wrap(command string) (string, error) {
	ictx := b.cfg.ctx
	ictx.Data = &struct{ Command string }{command}
	return interpolate.Render(b.cfg.CommandWrapper, &ictx)
}
