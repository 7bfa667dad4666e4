package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/hashicorp/packer-plugin-sdk/multistep"

	"github.com/kmodctl/packer-plugin-kmod/bootcheck"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// stepInspect reads what the artifact reports from the provisioned image —
// os-release, kernel releases, the kmodctl manifest — and copies out the
// kernel and initrd the boot check boots, while the image is still mounted.
//
// Consumes: build.mountPath. Produces: build.osRelease, build.kernels,
// build.manifest, build.bootKernel, build.rootArg.
type stepInspect struct{}

func (s *stepInspect) Run(ctx context.Context, state multistep.StateBag) multistep.StepAction {
	b, u := get(state), ui(state)
	b.since("provision", b.provisionStart)
	start := time.Now()
	defer b.since("finalize", start)
	root := b.mountPath
	b.osRelease = readOSRelease(root)
	kernels, err := bootcheck.FindKernels(root)
	if err != nil {
		return halt(state, "find kernels in the image: %v", err)
	}
	b.kernels = kernels
	var rels []string
	for _, k := range kernels {
		rels = append(rels, k.Release)
	}
	u.Say(fmt.Sprintf("Image: %s %s, kernels: %s", b.osRelease["ID"], b.osRelease["VERSION_ID"], strings.Join(rels, ", ")))

	dst := filepath.Join(b.workDir, "manifest.json")
	switch err := copyOut(root, manifest.Path, dst); {
	case err == nil:
		b.manifest = dst
	case !errors.Is(err, fs.ErrNotExist):
		return halt(state, "copy %s out of the image: %v", manifest.Path, err)
	}

	bc := b.cfg.BootCheck
	if !*bc.Enabled {
		return multistep.ActionContinue
	}
	var chosen *bootcheck.Kernel
	for i := range kernels {
		k := kernels[i]
		if bc.Kernel != "" && k.Release != bc.Kernel {
			continue
		}
		if k.Initrd == "" && bc.Kernel == "" {
			continue // the newest kernel with an initrd
		}
		chosen = &k
		break
	}
	if bc.Mode != bootModeFirmware {
		switch {
		case chosen == nil && bc.Kernel != "":
			return halt(state, "boot_check.kernel: %s is not in the image (kernels: %s)", bc.Kernel, strings.Join(rels, ", "))
		case chosen == nil && bc.Mode == bootModeDirect:
			return halt(state, "boot_check: no kernel with an initrd in the image's /boot to boot directly (kernels: %s)", strings.Join(rels, ", "))
		}
	}
	if chosen != nil {
		dir := filepath.Join(b.workDir, "boot")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return halt(state, "%v", err)
		}
		k := bootcheck.Kernel{Release: chosen.Release}
		k.Vmlinuz = filepath.Join(dir, "vmlinuz-"+chosen.Release)
		if err := copyInside(root, chosen.Vmlinuz, k.Vmlinuz); err != nil {
			return halt(state, "copy the kernel out of the image: %v", err)
		}
		if chosen.Initrd != "" {
			k.Initrd = filepath.Join(dir, "initrd.img-"+chosen.Release)
			if err := copyInside(root, chosen.Initrd, k.Initrd); err != nil {
				return halt(state, "copy the initrd out of the image: %v", err)
			}
		}
		b.bootKernel = &k
		arg, err := bootcheck.RootArg(root, b.rootFS.UUID)
		if err != nil {
			return halt(state, "boot_check: root device: %v", err)
		}
		b.rootArg = arg
	}
	return multistep.ActionContinue
}

func (s *stepInspect) Cleanup(multistep.StateBag) {}

// readOSRelease parses the image's os-release (missing: empty map).
func readOSRelease(root string) map[string]string {
	res := map[string]string{}
	for _, rel := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		p, err := securejoin.SecureJoin(root, rel)
		if err != nil {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
			if !ok || strings.HasPrefix(k, "#") {
				continue
			}
			res[k] = strings.Trim(v, `"'`)
		}
		f.Close()
		return res
	}
	return res
}

// copyInside copies a file found by a host path under root, resolving its
// symlinks inside root.
func copyInside(root, hostPath, dst string) error {
	rel, err := filepath.Rel(root, hostPath)
	if err != nil || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("%s is outside the image", hostPath)
	}
	return copyOut(root, rel, dst)
}

// copyOut copies the image file p (symlinks resolved inside root) to the
// host file dst; a missing p is an error wrapping fs.ErrNotExist.
func copyOut(root, p, dst string) error {
	src, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
