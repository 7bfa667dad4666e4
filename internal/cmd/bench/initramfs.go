package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs"
)

// lsinitramfsScript runs the rootfs fixture's lsinitramfs chrooted, the image
// bind-mounted over the rootfs's own /boot/initrd.img-KVER and tmpfs on its
// temporary folders, all in a private mount namespace: the fixture is never
// written and the mounts vanish with the namespace. It prints the listing to
// $out and the chrooted command's wall time in nanoseconds.
const lsinitramfsScript = `set -eu
root=$1 image=$2 kver=$3 out=$4
mount --bind "$image" "$root/boot/initrd.img-$kver"
mount -t tmpfs tmpfs "$root/tmp"
mount -t tmpfs tmpfs "$root/var/tmp"
s=$(date +%s%N)
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin lsinitramfs "/boot/initrd.img-$kver" >"$out"
e=$(date +%s%N)
echo $((e - s))
`

// lsinitramfs lists image with the host's lsinitramfs, or else with the one
// of the rootfs fixture, chrooted; it returns the wall time and the paths.
func lsinitramfs(fixtures, image string) (time.Duration, []string) {
	out, err := os.CreateTemp("", "kmodctl-bench-ls-")
	must(err)
	out.Close()
	defer os.Remove(out.Name())
	var d time.Duration
	if host, err := exec.LookPath("lsinitramfs"); err == nil {
		d = run("sh", "-c", `"$0" "$1" >"$2"`, host, image, out.Name())
	} else {
		kver := strings.TrimSpace(string(mustRead(filepath.Join(fixtures, "KVER"))))
		root := filepath.Join(fixtures, "rootfs")
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", lsinitramfsScript, "sh", root, image, kver, out.Name())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			must(fmt.Errorf("lsinitramfs in %s: %v: %s", root, err, stderr.String()))
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		must(err)
		d = time.Duration(ns)
	}
	return d, strings.Split(strings.TrimSuffix(string(mustRead(out.Name())), "\n"), "\n")
}

func pathSet(paths []string) string {
	m := map[string]bool{}
	for _, p := range paths {
		m[p] = true
	}
	s := make([]string, 0, len(m))
	for p := range m {
		s = append(s, p)
	}
	sort.Strings(s)
	return strings.Join(s, "\n")
}

// initramfsCompressions are the compressions of the fixture images
// initramfs-tools-C.img (update-initramfs with COMPRESS=C) the ls and inject
// benches go through.
var initramfsCompressions = []string{"zstd", "gzip", "xz"}

// fixtureImage is the initramfs-tools fixture image in compression c.
func fixtureImage(fixtures, c string) string {
	return filepath.Join(fixtures, "initrd", "initramfs-tools-"+c+".img")
}

// decodeScript is a shell command decoding image ($1) to /dev/null with the
// C tool of its first compressed segment, from that segment on (an early
// uncompressed cpio before it is not decoded): the floor of any lister.
func decodeScript(image string) (tool, script string) {
	im, err := initramfs.Open(image)
	must(err)
	defer im.Close()
	for _, s := range im.Segments {
		tool = map[compress.Format]string{compress.Zstd: "zstd", compress.Gzip: "gzip", compress.XZ: "xz"}[s.Compression]
		if tool == "" {
			continue
		}
		if s.Offset == 0 {
			return tool, tool + ` -dcq "$1" >/dev/null`
		}
		return tool, fmt.Sprintf(`tail -c +%d "$1" | %s -dcq >/dev/null`, s.Offset+1, tool)
	}
	must(fmt.Errorf("%s: no zstd, gzip or xz segment", image))
	return "", ""
}

// interleave runs each f n times, in turns, so that all see the same
// disturbance on a shared machine, and returns each one's durations.
func interleave(n int, fs ...func() time.Duration) [][]time.Duration {
	out := make([][]time.Duration, len(fs))
	for i := 0; i < n; i++ {
		for k, f := range fs {
			out[k] = append(out[k], f())
		}
	}
	return out
}

func minDur(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
}

// bestMedian prints a figure as its best, with the median beside it.
func bestMedian(ds []time.Duration) (string, string) {
	return secs(minDur(ds)), fmt.Sprintf("median %s of %d", secs(median(ds)), len(ds))
}

// benchLs: kmodctl initramfs ls of each fixture image against its floor,
// the C tool decoding the same file (goal: within 1.3x), best of 5, in
// turns; lsinitramfs (the distribution's lister) on the zstd image as the
// anchor, its listing compared with ours as sets.
func benchLs(kmodctl, fixtures string) {
	for _, c := range initramfsCompressions {
		image := fixtureImage(fixtures, c)
		tool, script := decodeScript(image)
		runs := interleave(5, func() time.Duration {
			return run("sh", "-c", `"$0" initramfs ls "$1" >/dev/null`, kmodctl, image)
		}, func() time.Duration {
			return run("sh", "-c", script, "sh", image)
		})
		ours, floor := minDur(runs[0]), minDur(runs[1])
		st, err := os.Stat(image)
		must(err)
		name := fmt.Sprintf("initramfs ls %s (%.1f MB)", c, float64(st.Size())/1e6)
		b, m := bestMedian(runs[0])
		report(name+": kmodctl", b, m)
		b, m = bestMedian(runs[1])
		report(name+": floor "+tool+" -dc", b, m)
		ratio := ours.Seconds() / floor.Seconds()
		report(fmt.Sprintf("initramfs ls %s / floor", c), fmt.Sprintf("%.2fx", ratio), "goal <= 1.3x: "+passMiss(ratio <= 1.3))
	}
	image := fixtureImage(fixtures, "zstd")
	ours := best(3, func() time.Duration {
		return run("sh", "-c", `"$0" initramfs ls "$1" >/dev/null`, kmodctl, image)
	})
	var listing []string
	theirs := best(3, func() time.Duration {
		d, l := lsinitramfs(fixtures, image)
		listing = l
		return d
	})
	out, err := exec.Command(kmodctl, "initramfs", "ls", image).Output()
	must(err)
	ourList := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	same := "same paths"
	if pathSet(ourList) != pathSet(listing) {
		same = "PATHS DIFFER"
	}
	rss := peakRSS(kmodctl, "initramfs", "ls", image)
	report(fmt.Sprintf("initramfs ls zstd: lsinitramfs (anchor, %d paths)", len(ourList)), secs(theirs), same)
	report("initramfs ls speed-up vs lsinitramfs", fmt.Sprintf("%.2fx", theirs.Seconds()/ours.Seconds()), "")
	report("initramfs ls peak memory (kmodctl)", fmt.Sprintf("%.1f MB", float64(rss)/1e6), "")
}
