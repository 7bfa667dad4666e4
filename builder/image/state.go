package image

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/kmodctl/packer-plugin-kmod/bootcheck"
	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// build is everything the steps share, kept in the state bag under one key
// so that steps use typed fields instead of string keys and assertions.
type build struct {
	cfg *Config

	// workDir is this build's private directory (next to the outputs);
	// workImage the raw working copy inside it.
	workDir   string
	workImage string
	// stateFile records what this build holds, for stale-state detection.
	stateFile string

	table      *diskimage.Table
	probes     map[int]diskimage.FS
	root       diskimage.Partition
	rootDevice string // loop device of the root partition
	rootFS     diskimage.FS
	mountPath  string
	tracker    *diskimage.Tracker

	// Read from the image after provisioning.
	kernels   []bootcheck.Kernel
	osRelease map[string]string
	manifest  string // host copy of the image's kmodctl manifest, if any
	// bootKernel holds host copies of the kernel and initrd to boot.
	bootKernel *bootcheck.Kernel
	rootArg    string
	bootResult *bootcheck.Result

	outputs   []string          // output files, in output_formats order
	checksums map[string]string // base name → sha256

	// undo holds the restore actions of steps that change the image while
	// it is mounted (resolv.conf, policy-rc.d, chroot mounts), so the
	// unmount step can run them before releasing the filesystems; each
	// step's Cleanup runs its own again (they run once).
	undo []*undoer
	// timings records how long each phase took, for the UI and make bench.
	timings []timing
	// provisionStart is when the provisioners were handed the chroot.
	provisionStart time.Time
}

type timing struct {
	phase string
	d     time.Duration
}

// since adds the time spent since start to a phase (source, attach,
// provision, finalize, boot_check, convert).
func (b *build) since(phase string, start time.Time) {
	for i := range b.timings {
		if b.timings[i].phase == phase {
			b.timings[i].d += time.Since(start)
			return
		}
	}
	b.timings = append(b.timings, timing{phase, time.Since(start)})
}

// undoer runs a restore action at most once.
type undoer struct {
	name string
	once sync.Once
	fn   func() error
	err  error
}

func (u *undoer) run() error {
	u.once.Do(func() { u.err = u.fn() })
	return u.err
}

// pushUndo registers a restore action and returns it for the step's Cleanup.
func (b *build) pushUndo(name string, fn func() error) *undoer {
	u := &undoer{name: name, fn: fn}
	b.undo = append(b.undo, u)
	return u
}

// unwind runs every registered restore action, last first.
func (b *build) unwind() error {
	var errs []error
	for i := len(b.undo) - 1; i >= 0; i-- {
		if err := b.undo[i].run(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", b.undo[i].name, err))
		}
	}
	return errors.Join(errs...)
}

const stateKey = "kmod-image"

// get returns the build shared by the steps.
func get(state multistep.StateBag) *build { return state.Get(stateKey).(*build) }

// ui returns Packer's UI.
func ui(state multistep.StateBag) packersdk.Ui { return state.Get("ui").(packersdk.Ui) }

// halt records err for Packer, shows it, and halts the build.
func halt(state multistep.StateBag, format string, a ...interface{}) multistep.StepAction {
	err := fmt.Errorf(format, a...)
	state.Put("error", err)
	ui(state).Error(err.Error())
	return multistep.ActionHalt
}
