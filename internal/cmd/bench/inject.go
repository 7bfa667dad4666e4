package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
)

// benchInject: `kmodctl initramfs inject` of one module (kmodtest_marker,
// --load) into a fresh copy of each fixture image. Append against its
// floor, a durable atomic append on ext4 without reflinks: the C tool
// decoding the image, then a whole new copy written (cp) and fsync'd
// (goal: within 1.3x), best of 3, in turns. Rewrite (default and --best) of
// the zstd image against the distribution's way, `update-initramfs -u` in
// the rootfs fixture that built it (goal: default at least 10x faster, its
// size within 20% of update-initramfs's image, --best's within 5%), and the
// peak memory of rewrite against the image's uncompressed size.
func benchInject(kmodctl, fixtures string) {
	rootfs := filepath.Join(fixtures, "rootfs")
	module := filepath.Join(fixtures, "testmods", "kmodtest_marker.ko")
	tmp, err := os.MkdirTemp("", "kmodctl-bench-inject-")
	must(err)
	defer os.RemoveAll(tmp)
	// fresh copies image to the folder, on disk before the clock starts.
	fresh := func(image string) string {
		p := filepath.Join(tmp, "initrd.img")
		f, err := os.Create(p)
		must(err)
		src, err := os.Open(image)
		must(err)
		_, err = io.Copy(f, src)
		src.Close()
		must(err)
		must(f.Sync())
		must(f.Close())
		return p
	}
	inject := func(image string, args ...string) func() time.Duration {
		return func() time.Duration {
			p := fresh(image)
			return run(kmodctl, append([]string{"initramfs", "inject", p, "--module", module, "--load"}, args...)...)
		}
	}
	sizeAfter := func(image string, args ...string) int64 {
		p := fresh(image)
		run(kmodctl, append([]string{"initramfs", "inject", p, "--module", module, "--load"}, args...)...)
		st, err := os.Stat(p)
		must(err)
		return st.Size()
	}
	var zstdAppend time.Duration
	for _, c := range initramfsCompressions {
		image := fixtureImage(fixtures, c)
		tool, script := decodeScript(image)
		copyPath := filepath.Join(tmp, "floor-copy.img")
		floor := func() time.Duration {
			os.Remove(copyPath)
			return run("sh", "-c", script+` && cp "$1" "$2" && sync "$2"`, "sh", image, copyPath)
		}
		runs := interleave(3, inject(image, "--mode", "append"), floor)
		os.Remove(copyPath)
		if c == "zstd" {
			zstdAppend = minDur(runs[0])
		}
		b, m := bestMedian(runs[0])
		report("inject append "+c+": kmodctl", b, m)
		b, m = bestMedian(runs[1])
		report("inject append "+c+": floor "+tool+" -dc + cp + fsync", b, m)
		ratio := minDur(runs[0]).Seconds() / minDur(runs[1]).Seconds()
		report("inject append "+c+" / floor", fmt.Sprintf("%.2fx", ratio), "goal <= 1.3x: "+passMiss(ratio <= 1.3))
	}

	image := fixtureImage(fixtures, "zstd")
	im, err := initramfs.Open(image)
	must(err)
	var uncompressed int64
	for _, s := range im.Segments {
		uncompressed += s.Size
	}
	im.Close()
	st, err := os.Stat(image)
	must(err)
	rewriteT := best(3, inject(image, "--mode", "rewrite"))
	rewriteBestT := best(1, inject(image, "--mode", "rewrite", "--best"))
	rewriteSize := sizeAfter(image, "--mode", "rewrite")
	rewriteBestSize := sizeAfter(image, "--mode", "rewrite", "--best")
	rss := peakRSS(kmodctl, "initramfs", "inject", fresh(image), "--module", module, "--load", "--mode", "rewrite")
	theirs := updateInitramfsTime(rootfs)

	report("inject: update-initramfs -u (rootfs fixture, zstd; anchor)", secs(theirs), "")
	report("inject append speed-up vs update-initramfs (zstd)", fmt.Sprintf("%.1fx", theirs.Seconds()/zstdAppend.Seconds()), "")
	report("inject rewrite zstd: kmodctl", secs(rewriteT), "best of 3")
	up := theirs.Seconds() / rewriteT.Seconds()
	report("inject rewrite speed-up vs update-initramfs", fmt.Sprintf("%.1fx", up), "goal >= 10x: "+passMiss(up >= 10))
	ratio := func(n int64) float64 { return float64(n)/float64(st.Size()) - 1 }
	r := ratio(rewriteSize)
	report("inject rewrite size vs update-initramfs", fmt.Sprintf("%+.1f%%", 100*r),
		fmt.Sprintf("%d vs %d bytes, goal within 20%%: %s", rewriteSize, st.Size(), passMiss(r <= 0.20)))
	report("inject rewrite --best zstd: kmodctl", secs(rewriteBestT), "one run")
	report("inject rewrite --best speed-up vs update-initramfs", fmt.Sprintf("%.1fx", theirs.Seconds()/rewriteBestT.Seconds()), "")
	r = ratio(rewriteBestSize)
	report("inject rewrite --best size vs update-initramfs", fmt.Sprintf("%+.1f%%", 100*r),
		fmt.Sprintf("%d bytes, goal within 5%%: %s", rewriteBestSize, passMiss(r <= 0.05)))
	report("inject rewrite peak memory", fmt.Sprintf("%.1f MB", float64(rss)/1e6),
		fmt.Sprintf("goal <= uncompressed %.1f MB + 64 MB = %.1f MB", float64(uncompressed)/1e6, float64(uncompressed+64<<20)/1e6))
}
