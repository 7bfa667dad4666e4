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

// benchLs: kmodctl initramfs ls vs lsinitramfs on one image, best of 3 each,
// the two listings compared as sets.
func benchLs(kmodctl, fixtures string) {
	image := filepath.Join(fixtures, "initrd/initramfs-tools-zstd.img")
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
	st, err := os.Stat(image)
	must(err)
	name := fmt.Sprintf("initramfs ls %s (%.1f MB, %d paths)", filepath.Base(image), float64(st.Size())/1e6, len(ourList))
	report(name+": kmodctl", secs(ours), same)
	report(name+": lsinitramfs", secs(theirs), "")
	report("initramfs ls speed-up vs lsinitramfs", fmt.Sprintf("%.2fx", theirs.Seconds()/ours.Seconds()), "goal >= 5x")
	report("initramfs ls peak memory (kmodctl)", fmt.Sprintf("%.1f MB", float64(rss)/1e6), "")
	// The floor for any lister: the headers sit inside the compressed
	// stream, so all of it must be decoded. The system's own decompressor
	// (C, one process) shows what decoding alone costs.
	raw, err := os.ReadFile(image)
	must(err)
	tool := map[compress.Format]string{compress.Zstd: "zstd", compress.Gzip: "gzip", compress.XZ: "xz"}[compress.Detect(raw)]
	if tool != "" {
		floor := best(3, func() time.Duration {
			return run("sh", "-c", `"$0" -dcq "$1" >/dev/null`, tool, image)
		})
		report(fmt.Sprintf("initramfs ls floor: %s -d alone", tool), secs(floor),
			fmt.Sprintf("lsinitramfs / floor = %.2fx: the most any lister can gain", theirs.Seconds()/floor.Seconds()))
	}
}
