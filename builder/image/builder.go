// Package image is the kmod-image Packer builder: it customizes a disk image
// offline — attach its partitions at their offsets, mount its filesystems,
// run provisioners in a chroot — then proves the result boots in QEMU and
// writes it in cloud import formats. Each step lives in its own file; the
// work itself is done by the diskimage and bootcheck packages.
package image

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/packer-plugin-sdk/multistep"
	"github.com/hashicorp/packer-plugin-sdk/multistep/commonsteps"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// Builder is the kmod-image builder.
type Builder struct {
	config Config
	runner multistep.Runner
}

var _ packersdk.Builder = (*Builder)(nil)

func (b *Builder) ConfigSpec() hcldec.ObjectSpec { return b.config.FlatMapstructure().HCL2Spec() }

func (b *Builder) Prepare(raws ...interface{}) ([]string, []string, error) {
	warns, err := b.config.Prepare(raws...)
	if err != nil {
		return nil, warns, err
	}
	return nil, warns, nil
}

func (b *Builder) Run(ctx context.Context, u packersdk.Ui, hook packersdk.Hook) (packersdk.Artifact, error) {
	bs := &build{cfg: &b.config}
	state := new(multistep.BasicStateBag)
	state.Put("ui", u)
	state.Put("hook", hook)
	state.Put(stateKey, bs)

	wrapper := func(command string) (string, error) { return bs.wrap(command) }
	comm := &Communicator{Wrapper: wrapper}
	steps := []multistep.Step{
		&stepPreflight{},
		&stepSource{},
		&stepAttach{},
		&stepMountCommands{name: "pre_mount_commands", commands: func(c *Config) []string { return c.PreMountCommands }},
		&stepMountRoot{},
		&stepMountFstab{},
		&stepMountCommands{name: "post_mount_commands", commands: func(c *Config) []string { return c.PostMountCommands }},
		&stepChrootMounts{},
		&stepResolvConf{},
		&stepPolicyRCD{},
		&stepChrootProcesses{},
		&stepCommunicator{comm: comm},
		&commonsteps.StepProvision{},
		&stepInspect{},
		&stepUnmount{},
		&stepBootCheck{},
		&stepOutputs{},
	}
	b.runner = commonsteps.NewRunner(steps, b.config.PackerConfig, u)
	b.runner.Run(ctx, state)

	if err, ok := state.GetOk("error"); ok {
		return nil, err.(error)
	}
	if _, ok := state.GetOk(multistep.StateCancelled); ok {
		return nil, errors.New("build was cancelled")
	}
	if _, ok := state.GetOk(multistep.StateHalted); ok {
		return nil, errors.New("build was halted")
	}
	var parts []string
	for _, t := range bs.timings {
		parts = append(parts, fmt.Sprintf("%s=%.2fs", t.phase, t.d.Seconds()))
	}
	u.Say("kmod-image timings: " + strings.Join(parts, " "))
	return newArtifact(bs), nil
}
