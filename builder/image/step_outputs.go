package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
)

// checksumsName is the sha256sum-format file listing every output.
const checksumsName = "SHA256SUMS"

// stepOutputs writes each output format from the working copy (the raw
// output, when asked for, is the working copy itself, renamed last), a
// SHA256SUMS file, and the image's kmodctl manifest next to them.
//
// Consumes: build.workImage, build.manifest, config.output_*. Produces:
// build.outputs, build.checksums and the files in output_directory.
type stepOutputs struct{}

func (s *stepOutputs) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	cfg := b.cfg
	start := time.Now()
	dst := func(format string) string {
		return filepath.Join(cfg.OutputDir, cfg.OutputName+diskimage.OutputFormats[format])
	}
	wantRaw := false
	// Each output's sha256 is computed while the output is fsynced.
	sums := map[string]string{}
	for _, f := range cfg.OutputFormats {
		if f == "raw" {
			wantRaw = true
			continue
		}
		out := dst(f)
		u.Say(fmt.Sprintf("Writing %s...", out))
		var sum string
		opts := []diskimage.ConvertOption{diskimage.WithSourceFormat("raw"), diskimage.WithProgress(progress(u, f)),
			diskimage.WithSHA256(&sum)}
		if f == "qcow2" && cfg.QcowCompress {
			opts = append(opts, diskimage.WithCompression(true))
		}
		if err := diskimage.Convert(ctx, b.workImage, out, f, opts...); err != nil {
			return halt(state, "output %s: %v", out, err)
		}
		sums[f] = sum
	}
	if wantRaw {
		out := dst("raw")
		u.Say(fmt.Sprintf("Writing %s...", out))
		type hashed struct {
			sum string
			err error
		}
		hc := make(chan hashed, 1)
		go func() {
			sum, err := diskimage.SHA256File(ctx, b.workImage, nil)
			hc <- hashed{sum, err}
		}()
		err := syncFile(b.workImage)
		h := <-hc
		if err == nil {
			err = h.err
		}
		if err != nil {
			return halt(state, "output %s: %v", out, err)
		}
		sums["raw"] = h.sum
		if err := os.Rename(b.workImage, out); err != nil {
			return halt(state, "output %s: %v", out, err)
		}
		if err := atomicfile.SyncDir(cfg.OutputDir); err != nil {
			return halt(state, "output %s: %v", out, err)
		}
		b.workImage = ""
	}
	b.checksums = map[string]string{}
	for _, f := range cfg.OutputFormats {
		out := dst(f)
		b.outputs = append(b.outputs, out)
		b.checksums[filepath.Base(out)] = sums[f]
	}
	if b.manifest != "" {
		out := filepath.Join(cfg.OutputDir, cfg.OutputName+"-manifest.json")
		data, err := os.ReadFile(b.manifest)
		if err == nil {
			err = atomicfile.WriteFile(out, data, 0o644)
		}
		if err != nil {
			return halt(state, "export the kmodctl manifest: %v", err)
		}
		b.manifest = out
		sum, err := diskimage.SHA256File(ctx, out, nil)
		if err != nil {
			return halt(state, "%v", err)
		}
		b.checksums[filepath.Base(out)] = sum
	}
	if err := diskimage.WriteChecksums(filepath.Join(cfg.OutputDir, checksumsName), b.checksums); err != nil {
		return halt(state, "%v", err)
	}
	b.since("convert", start)
	return multistep.ActionContinue
}

// Cleanup removes the image outputs of a build that failed or was cancelled
// after writing them (a half-finished set must not look like a result); the
// boot log stays for diagnosis.
func (s *stepOutputs) Cleanup(state multistep.StateBag) {
	_, cancelled := state.GetOk(multistep.StateCancelled)
	_, halted := state.GetOk(multistep.StateHalted)
	if !cancelled && !halted {
		return
	}
	b := get(state)
	for _, f := range b.cfg.OutputFormats {
		os.Remove(filepath.Join(b.cfg.OutputDir, b.cfg.OutputName+diskimage.OutputFormats[f]))
	}
	os.Remove(filepath.Join(b.cfg.OutputDir, checksumsName))
	os.Remove(filepath.Join(b.cfg.OutputDir, b.cfg.OutputName+"-manifest.json"))
}

func syncFile(p string) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
