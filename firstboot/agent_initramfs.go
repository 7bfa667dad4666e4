package firstboot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// initrdKey is the path of an initramfs record or image file relative to
// the root, with a merged /usr folded (usr/lib/modules → lib/modules), so
// that the manifest's path and the image's record compare equal.
func initrdKey(name string) string {
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	if strings.HasPrefix(p, "usr/lib/modules/") {
		p = strings.TrimPrefix(p, "usr/")
	}
	return p
}

// isModuleFile says whether an initramfs path looks like a module file.
func isModuleFile(p string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(p, ext) {
			return true
		}
	}
	return false
}

// InitramfsCopy is the copy of a module inside an initramfs image: its
// path there and, for a regular file, the sha256 of its bytes.
type InitramfsCopy struct {
	Path, SHA256 string
}

// initrdCheck is the initramfs part of a check, started before the
// modules are checked so that the file is hashed meanwhile.
type initrdCheck struct {
	// want are the indexes of the modules whose manifest entry records an
	// initramfs copy; image and host the kernel's initramfs ("" when it
	// has none).
	want        []int
	image, host string
	// digest delivers the SHA-256 of the image file when the manifest
	// records the file the build left and the image has its path and size;
	// nil otherwise (a file of another size differs: no need to hash it).
	digest <-chan digestResult
}

type digestResult struct {
	sum string
	err error
}

// startInitramfs finds the kernel's initramfs and, when the manifest
// records the file the build left, starts hashing it.
func (c *checker) startInitramfs() *initrdCheck {
	ic := &initrdCheck{}
	for i, mod := range c.kern.Modules {
		if mod.InitramfsSHA256 != "" {
			ic.want = append(ic.want, i)
		}
	}
	if len(ic.want) == 0 {
		return ic
	}
	for _, p := range initramfs.Paths(c.o.Kernel) {
		h, err := securejoin.SecureJoin(c.o.Root, p)
		if err != nil {
			continue
		}
		if st, err := os.Stat(h); err == nil && st.Mode().IsRegular() {
			ic.image, ic.host = p, h
			break
		}
	}
	rec := c.kern.Initramfs
	if ic.image == "" || rec == nil || rec.Path != ic.image {
		return ic
	}
	f, err := os.Open(ic.host)
	if err != nil {
		return ic // the walk reports it
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() || st.Size() != rec.Size {
		f.Close()
		return ic
	}
	ch := make(chan digestResult, 1)
	ic.digest = ch
	go func() {
		defer f.Close()
		h := sha256.New()
		_, err := io.Copy(h, f)
		ch <- digestResult{hex.EncodeToString(h.Sum(nil)), err}
	}()
	return ic
}

// checkInitramfs compares the initramfs copy of every module whose
// manifest entry records one (initramfs_sha256) with it. When the manifest
// also records the initramfs file the build left (its kernel's initramfs)
// and the file is that one, byte for byte, it holds the copies the build
// recorded: nothing to decode. Otherwise the image is walked: the copy is
// the record at the module's path (merged /usr folded); failing that, a
// module file of the same name under lib/modules/KVER.
func (c *checker) checkInitramfs(ctx context.Context, ic *initrdCheck) {
	want, image, host := ic.want, ic.image, ic.host
	if len(want) == 0 {
		return
	}
	imageSum := ""
	if ic.digest != nil {
		d := <-ic.digest
		if d.err == nil {
			imageSum = d.sum
		}
		if d.err == nil && d.sum == c.kern.Initramfs.SHA256 {
			for _, i := range want {
				exp := c.kern.Modules[i].InitramfsSHA256
				c.res.Modules[i].Initramfs = &InitramfsCheck{Image: image, ExpectedSHA256: exp, ActualSHA256: exp, ImageSHA256: d.sum, OK: true}
			}
			return
		}
	}
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		for _, i := range want {
			r := &c.res.Modules[i]
			r.Initramfs = &InitramfsCheck{Image: image, ExpectedSHA256: c.kern.Modules[i].InitramfsSHA256, ImageSHA256: imageSum, Walked: image != ""}
			r.Errors = append(r.Errors, msg)
		}
	}
	if image == "" {
		fail("initramfs copy: no initramfs for %s (%s)", c.o.Kernel, strings.Join(initramfs.Paths(c.o.Kernel), " or "))
		return
	}
	im, err := initramfs.Open(host)
	if err != nil {
		fail("initramfs copy: %s: %v", image, err)
		return
	}
	defer im.Close()
	mods := make([]manifest.Module, len(want))
	for j, i := range want {
		mods[j] = c.kern.Modules[i]
	}
	copies, err := InitramfsCopies(ctx, im, c.o.Kernel, mods)
	if err != nil {
		fail("initramfs copy: %s: %v", image, err)
		return
	}
	for j, i := range want {
		mod := &c.kern.Modules[i]
		r := &c.res.Modules[i]
		chk := &InitramfsCheck{Image: image, ExpectedSHA256: mod.InitramfsSHA256, ImageSHA256: imageSum, Walked: true}
		r.Initramfs = chk
		cp := copies[j]
		switch {
		case cp == nil:
			r.errorf("initramfs copy: %s holds no %s (%s)", image, mod.Name, mod.Path)
		case cp.SHA256 == "":
			chk.Path = cp.Path
			r.errorf("initramfs copy: %s in %s is not a regular file", cp.Path, image)
		default:
			chk.Path, chk.ActualSHA256 = cp.Path, cp.SHA256
			if cp.SHA256 != mod.InitramfsSHA256 {
				r.errorf("drift: the initramfs copy %s in %s has sha256 %s, the manifest says %s", cp.Path, image, cp.SHA256, mod.InitramfsSHA256)
			} else {
				chk.OK = true
			}
		}
	}
}

// InitramfsCopies finds each module's copy in an initramfs: the record at
// the module's path (merged /usr folded) or, failing that, a module file of
// the same name under lib/modules/KERNEL; nil where there is none. Later
// records override earlier ones, as the kernel unpacks them.
func InitramfsCopies(ctx context.Context, im *initramfs.Image, kernel string, mods []manifest.Module) ([]*InitramfsCopy, error) {
	byPath := map[string]int{} // initrdKey → index in mods
	byName := map[string]int{}
	for j, mod := range mods {
		byPath[initrdKey(mod.Path)] = j
		byName[modName(mod.Name)] = j
	}
	exact := make([]*InitramfsCopy, len(mods))
	other := make([]*InitramfsCopy, len(mods))
	moddir := "lib/modules/" + kernel + "/"
	err := im.Walk(func(_ int, rec *cpio.Record, body io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := initrdKey(rec.Name)
		j, isExact := byPath[key]
		if !isExact {
			if !strings.HasPrefix(key, moddir) || !isModuleFile(key) {
				return nil
			}
			var ok bool
			if j, ok = byName[kmod.ModuleNameFromPath(key)]; !ok {
				return nil
			}
		}
		cp := &InitramfsCopy{Path: "/" + strings.TrimPrefix(path.Clean("/"+rec.Name), "/")}
		if rec.IsRegular() {
			h := sha256.New()
			if _, err := io.Copy(h, body); err != nil {
				return err
			}
			cp.SHA256 = hex.EncodeToString(h.Sum(nil))
		}
		if isExact {
			exact[j] = cp
		} else {
			other[j] = cp
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.SkipAll) {
		return nil, err
	}
	for j := range mods {
		if exact[j] == nil {
			exact[j] = other[j]
		}
	}
	return exact, nil
}
