package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Helpers timing initramfs-tools itself in the rootfs fixture (make
// fixtures: $KMODCTL_FIXTURES/rootfs), the anchor for initramfs injection.
// The tools run chrooted in a throwaway overlay of the rootfs inside a
// private mount namespace, so the fixture is never written and every mount
// disappears with the namespace, whatever happens to this process; the
// overlay's upper layer is removed on return and on SIGINT/SIGTERM.

// inRootfsScript mounts the overlay, /proc, /sys, /dev (and binds a host
// file when asked), then times the chrooted command alone and prints its
// nanoseconds.
const inRootfsScript = `set -eu
t=$1 lower=$2 bind=$3; shift 3
m=$t/merged
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$t/upper,workdir=$t/work" "$m"
mount -t proc proc "$m/proc"
mount --bind /sys "$m/sys"
mount --bind /dev "$m/dev"
if [ -n "$bind" ]; then : >"$m/tmp/bench-image"; mount --bind "$bind" "$m/tmp/bench-image"; fi
s=$(date +%s%N)
chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@" >/dev/null 2>"$t/stderr" || { cat "$t/stderr" >&2; exit 1; }
e=$(date +%s%N)
echo $((e - s))
`

// inRootfs runs argv chrooted in an overlay of rootfs and returns the
// command's wall time. image, when set, is a host file visible inside as
// /tmp/bench-image.
func inRootfs(rootfs, image string, argv ...string) (time.Duration, error) {
	t, err := os.MkdirTemp("", "kmodctl-bench-rootfs-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(t)
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(t, d), 0o755); err != nil {
			return 0, err
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", inRootfsScript, "sh", t, rootfs, image}, argv...)...)
	// The namespace's processes die with us (their mounts with them).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case s := <-sig:
		_ = cmd.Process.Kill()
		<-done
		os.RemoveAll(t)
		fmt.Fprintf(os.Stderr, "bench: %v\n", s)
		os.Exit(130)
	}
	if err != nil {
		msg := stderr.String()
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return 0, fmt.Errorf("%s in %s: %v\n%s", strings.Join(argv, " "), rootfs, err, msg)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(stdout.String()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: timing %q: %v", argv[0], stdout.String(), err)
	}
	return time.Duration(ns), nil
}

// rootfsKVER is the release of the only kernel installed in rootfs.
func rootfsKVER(rootfs string) (string, error) {
	m, err := filepath.Glob(filepath.Join(rootfs, "lib/modules/*/modules.dep"))
	if err != nil || len(m) != 1 {
		return "", fmt.Errorf("%s: want one kernel under lib/modules, found %d", rootfs, len(m))
	}
	return filepath.Base(filepath.Dir(m[0])), nil
}

// updateInitramfsTime is the wall time of `update-initramfs -u -k KVER` (the
// distro's way to get a new module into the initrd: regenerate all of it)
// in a throwaway overlay of rootfs.
func updateInitramfsTime(rootfs string) time.Duration {
	kver, err := rootfsKVER(rootfs)
	must(err)
	d, err := inRootfs(rootfs, "", "update-initramfs", "-u", "-k", kver)
	must(err)
	return d
}

// lsinitramfsTime is the wall time of the rootfs's own `lsinitramfs` over
// image (a host path), output discarded.
func lsinitramfsTime(rootfs, image string) time.Duration {
	abs, err := filepath.Abs(image)
	must(err)
	d, err := inRootfs(rootfs, abs, "lsinitramfs", "/tmp/bench-image")
	must(err)
	return d
}
