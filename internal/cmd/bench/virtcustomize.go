package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"
)

// virtCustomize is what users pick today for offline customization, run on
// the builder bench's image: virt-customize (guestfs-tools, `make
// bench-deps`) with LIBGUESTFS_BACKEND=direct, its appliance under TCG when
// the host has no KVM, running the same shell command on a sparse copy of
// the source, then the same qcow2 conversion, fsynced like the builder's
// output.
type virtCustomize struct {
	bin string
	env []string
	// note says where the appliance's kernel came from and whether KVM
	// was there.
	note string
}

// findVirtCustomize returns the tool ready to run, or why it cannot.
// libguestfs's appliance (supermin) boots a host kernel from /boot; a
// container has none, so the fixture's Debian kernel and its modules are
// given instead (SUPERMIN_KERNEL, SUPERMIN_MODULES).
func findVirtCustomize(fixtures string) (virtCustomize, error) {
	bin, err := exec.LookPath("virt-customize")
	if err != nil {
		return virtCustomize{}, fmt.Errorf("virt-customize not found (make bench-deps installs guestfs-tools)")
	}
	v := virtCustomize{bin: bin, env: append(os.Environ(), "LIBGUESTFS_BACKEND=direct")}
	accel := "KVM"
	if _, err := os.Stat("/dev/kvm"); err != nil {
		accel = "TCG (no /dev/kvm)"
	}
	if ks, _ := filepath.Glob("/boot/vmlinuz-*"); len(ks) > 0 {
		v.note = "appliance: host kernel, " + accel
		return v, nil
	}
	ks, _ := filepath.Glob(filepath.Join(fixtures, "rootfs/boot/vmlinuz-*"))
	if len(ks) == 0 {
		return virtCustomize{}, fmt.Errorf("no kernel in /boot nor in %s for libguestfs's appliance", filepath.Join(fixtures, "rootfs/boot"))
	}
	sort.Strings(ks)
	k := ks[len(ks)-1]
	rel := filepath.Base(k)[len("vmlinuz-"):]
	mods := filepath.Join(fixtures, "rootfs/lib/modules", rel)
	if _, err := os.Stat(mods); err != nil {
		return virtCustomize{}, fmt.Errorf("appliance kernel modules: %v", err)
	}
	v.env = append(v.env, "SUPERMIN_KERNEL="+k, "SUPERMIN_MODULES="+mods)
	v.note = "appliance: fixture kernel " + rel + ", " + accel
	return v, nil
}

// virtRun is one end-to-end virt-customize run and its parts.
type virtRun struct {
	cp, customize, convert, sync time.Duration
}

func (r virtRun) total() time.Duration { return r.cp + r.customize + r.convert + r.sync }

// run copies source into dir, customizes the copy, converts it to qcow2
// and fsyncs the qcow2 (the builder's output is durable too).
func (v virtCustomize) run(dir, source string) (virtRun, error) {
	must(os.MkdirAll(dir, 0o755))
	defer os.RemoveAll(dir)
	raw, qcow := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "disk.qcow2")
	run("sync") // earlier dirty pages off the clock
	var r virtRun
	r.cp = run("cp", "--sparse=always", source, raw)
	cmd := exec.Command(v.bin, "--format", "raw", "-a", raw, "--no-network",
		"--run-command", "echo kmodctl-bench > /etc/kmodctl-bench")
	cmd.Env = v.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		tail := out.String()
		if len(tail) > 3000 {
			tail = tail[len(tail)-3000:]
		}
		return virtRun{}, fmt.Errorf("virt-customize: %v\n%s", err, tail)
	}
	r.customize = time.Since(start)
	r.convert = run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw, qcow)
	r.sync = run("sync", qcow)
	return r, nil
}
