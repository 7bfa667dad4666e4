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

// checkInitramfs compares the initramfs copy of every module whose
// manifest entry records one (initramfs_sha256) with it. The copy is the
// record at the module's path (merged /usr folded); failing that, a
// module file of the same name under lib/modules/KVER.
func (c *checker) checkInitramfs(ctx context.Context) {
	var want []int
	for i, mod := range c.kern.Modules {
		if mod.InitramfsSHA256 != "" {
			want = append(want, i)
		}
	}
	if len(want) == 0 {
		return
	}
	image, host := "", ""
	for _, p := range initramfs.Paths(c.o.Kernel) {
		h, err := securejoin.SecureJoin(c.o.Root, p)
		if err != nil {
			continue
		}
		if st, err := os.Stat(h); err == nil && st.Mode().IsRegular() {
			image, host = p, h
			break
		}
	}
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		for _, i := range want {
			r := &c.res.Modules[i]
			r.Initramfs = &InitramfsCheck{Image: image, ExpectedSHA256: c.kern.Modules[i].InitramfsSHA256}
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
		chk := &InitramfsCheck{Image: image, ExpectedSHA256: mod.InitramfsSHA256}
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
