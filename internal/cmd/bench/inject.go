package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
)

// benchInject: `kmodctl initramfs inject` of one module (kmodtest_marker,
// --load) into a fresh copy of image, in append and rewrite mode, against
// the distribution's way, `update-initramfs -u` in the rootfs fixture that
// built image; the size of the rewritten image against image's (what
// update-initramfs wrote), and the peak memory of rewrite against the
// image's uncompressed size.
func benchInject(kmodctl, fixtures string) {
	rootfs := filepath.Join(fixtures, "rootfs")
	image := filepath.Join(fixtures, "initrd/initramfs-tools-zstd.img")
	module := filepath.Join(filepath.Dir(rootfs), "testmods", "kmodtest_marker.ko")
	im, err := initramfs.Open(image)
	must(err)
	var uncompressed int64
	for _, s := range im.Segments {
		uncompressed += s.Size
	}
	im.Close()
	st, err := os.Stat(image)
	must(err)
	tmp, err := os.MkdirTemp("", "kmodctl-bench-inject-")
	must(err)
	defer os.RemoveAll(tmp)
	fresh := func() string {
		p := filepath.Join(tmp, "initrd.img")
		must(os.WriteFile(p, mustRead(image), 0o644))
		return p
	}
	inject := func(args ...string) func() time.Duration {
		return func() time.Duration {
			p := fresh()
			return run(kmodctl, append([]string{"initramfs", "inject", p, "--module", module, "--load"}, args...)...)
		}
	}
	sizeAfter := func(args ...string) int64 {
		p := fresh()
		run(kmodctl, append([]string{"initramfs", "inject", p, "--module", module, "--load"}, args...)...)
		st, err := os.Stat(p)
		must(err)
		return st.Size()
	}
	appendT := best(3, inject("--mode", "append"))
	rewriteT := best(3, inject("--mode", "rewrite"))
	rewriteBestT := best(1, inject("--mode", "rewrite", "--best"))
	rewriteSize := sizeAfter("--mode", "rewrite")
	rewriteBestSize := sizeAfter("--mode", "rewrite", "--best")
	p := fresh()
	rss := peakRSS(kmodctl, "initramfs", "inject", p, "--module", module, "--load", "--mode", "rewrite")
	theirs := updateInitramfsTime(rootfs)

	name := filepath.Base(image)
	report("inject append: kmodctl ("+name+")", secs(appendT), "")
	report("inject rewrite: kmodctl", secs(rewriteT), "")
	report("inject rewrite --best: kmodctl", secs(rewriteBestT), "")
	report("inject: update-initramfs -u (rootfs fixture)", secs(theirs), "")
	report("inject append speed-up vs update-initramfs", fmt.Sprintf("%.1fx", theirs.Seconds()/appendT.Seconds()), "goal >= 100x")
	report("inject rewrite speed-up vs update-initramfs", fmt.Sprintf("%.1fx", theirs.Seconds()/rewriteT.Seconds()), "goal >= 10x")
	report("inject rewrite --best speed-up", fmt.Sprintf("%.1fx", theirs.Seconds()/rewriteBestT.Seconds()), "")
	pct := func(n int64) string { return fmt.Sprintf("%+.1f%%", 100*(float64(n)/float64(st.Size())-1)) }
	report("inject rewrite size vs update-initramfs", pct(rewriteSize),
		fmt.Sprintf("%d vs %d bytes, goal within 5%%", rewriteSize, st.Size()))
	report("inject rewrite --best size vs update-initramfs", pct(rewriteBestSize), fmt.Sprintf("%d bytes", rewriteBestSize))
	report("inject rewrite peak memory", fmt.Sprintf("%.1f MB", float64(rss)/1e6),
		fmt.Sprintf("goal <= uncompressed %.1f MB + 64 MB = %.1f MB", float64(uncompressed)/1e6, float64(uncompressed+64<<20)/1e6))
}
