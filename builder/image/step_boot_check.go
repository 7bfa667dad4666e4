package image

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/bootcheck"
	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// stepBootCheck boots the finished working copy in QEMU through a throwaway
// overlay (the disk is never written) and waits for the probe; the build
// fails on a panic, a timeout, or an expected module that is not loaded.
// The console log is kept in the output directory.
//
// Consumes: build.workImage, build.bootKernel, build.rootArg,
// config.boot_check. Produces: build.bootResult, <output_name>-boot.log.
type stepBootCheck struct{}

func (s *stepBootCheck) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	bc := b.cfg.BootCheck
	if !*bc.Enabled {
		u.Say("Boot check disabled")
		return multistep.ActionContinue
	}
	start := time.Now()
	mode := bc.Mode
	if mode == bootModeAuto {
		mode = bootModeDirect
		if bl, err := diskimage.DetectBootloader(b.workImage); err == nil && bl.Bootable() {
			mode = bootModeFirmware
			u.Message("The image has a bootloader (" + bl.Why + "): booting through the firmware")
		}
	}
	if mode == bootModeDirect && b.bootKernel == nil {
		return halt(state, "boot_check: the image has no bootloader and no kernel with an initrd to boot directly; set boot_check { enabled = false } to skip")
	}
	accel := bc.Accelerator
	if accel == accelAuto {
		accel = ""
	}
	logPath := filepath.Join(b.cfg.OutputDir, b.cfg.OutputName+"-boot.log")
	opts := bootcheck.Options{
		Image: b.workImage, Format: "raw", Mode: mode,
		Root: b.rootArg, ExtraCmdline: bc.KernelArgs,
		ExpectModules: bc.ExpectModules, Timeout: bc.Timeout, Memory: bc.Memory,
		Accel: accel, ConsoleLog: logPath,
	}
	if b.bootKernel != nil {
		opts.Kernel = *b.bootKernel
	}
	what := "firmware boot"
	if mode == bootModeDirect {
		what = "kernel " + opts.Kernel.Release
	}
	u.Say(fmt.Sprintf("Boot check: booting the image in QEMU (%s, timeout %v)...", what, bc.Timeout))
	res, err := bootcheck.Run(ctx, opts)
	b.bootResult = res
	if err != nil {
		msg := fmt.Sprintf("boot check failed: %v", err)
		if res != nil && res.Tail != "" && res.Outcome != "missing-modules" && !strings.Contains(msg, res.Tail) {
			msg += "\nlast console lines:\n" + res.Tail
		}
		return halt(state, "%s\nconsole log: %s", msg, logPath)
	}
	u.Message(fmt.Sprintf("Boot check passed in %v (%s); %d modules loaded; console log: %s",
		res.Elapsed.Round(100*time.Millisecond), res.Accel, len(res.Modules), logPath))
	if len(bc.ExpectModules) > 0 {
		u.Message("Expected modules loaded: " + strings.Join(bc.ExpectModules, ", "))
	}
	b.since("boot_check", start)
	return multistep.ActionContinue
}

func (s *stepBootCheck) Cleanup(multistep.StateBag) {}
