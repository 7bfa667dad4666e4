package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// benchBuilder: a real `packer build` (the pinned bin/packer, the plugin as
// built by make plugin, installed into a private PACKER_PLUGIN_PATH) of a
// trivial customization of the 2 GiB raw cloud image fixture: one shell
// provisioner writing one file, boot check disabled, qcow2 output. It reports
// each phase of the builder's "kmod-image timings:" line, their total, and
// the wall time of packer build (plugin start-up, preflight and the
// SHA256SUMS included), median of runs each. The anchor is the copying no
// builder can avoid, done by hand in the same folder: cp --sparse=always of
// the raw image, then qemu-img convert -O qcow2 of the copy; also shown with
// an fsync of both files (the builder syncs what it writes). Goal: packer
// build within 1.5x of the fsync'd anchor.
//
// Then virt-customize, what users pick today for the same job (see
// virtCustomize), end to end on the same image in the same run, warm: one
// untimed run first builds libguestfs's appliance cache. Goal: kmod-image
// at least 15x faster. Without virt-customize (make bench-deps) that part
// is reported as skipped.
func benchBuilder(packer, plugin, fixtures, source string, runs, virtRuns int) {
	if os.Geteuid() != 0 {
		report("builder", "skipped", "needs root (loop devices)")
		return
	}
	for _, f := range []string{packer, plugin, source} {
		if _, err := os.Stat(f); err != nil {
			report("builder", "skipped", fmt.Sprintf("%v (make packer plugin fixtures)", err))
			return
		}
	}
	work, err := os.MkdirTemp("", "kmodctl-bench-builder-")
	must(err)
	keep := false
	defer func() {
		if keep {
			fmt.Fprintf(os.Stderr, "bench: builder: left %s for inspection\n", work)
			return
		}
		os.RemoveAll(work)
	}()

	env := append(os.Environ(),
		"CHECKPOINT_DISABLE=1", "PACKER_NO_COLOR=1",
		"PACKER_PLUGIN_PATH="+filepath.Join(work, "plugins"),
		"PACKER_CONFIG_DIR="+filepath.Join(work, "config"))
	install := exec.Command(packer, "plugins", "install", "--path", plugin, "github.com/kmodctl/kmod")
	install.Env = env
	if out, err := install.CombinedOutput(); err != nil {
		must(fmt.Errorf("packer plugins install --path %s: %v\n%s", plugin, err, out))
	}

	st := warmFile(source)

	interrupted, stop := watchInterrupt()
	defer stop()

	var ours []builderRun
	var anchors, anchorsSync []time.Duration
	for i := 0; i < runs; i++ {
		run("sync") // the previous round's dirty pages, off the clock
		r, out, err := packerBuild(packer, env, work, source, i)
		if err != nil || interrupted() {
			keep = true
			tail := out
			if len(tail) > 4000 {
				tail = tail[len(tail)-4000:]
			}
			must(fmt.Errorf("packer build: %v (interrupted: %v)\n%s", err, err == nil, tail))
		}
		ours = append(ours, r)
		a, as := anchorRun(work, source)
		anchors, anchorsSync = append(anchors, a.total()), append(anchorsSync, as.total())
		if interrupted() {
			keep = true
			must(fmt.Errorf("interrupted"))
		}
		var ph []string
		for _, p := range r.order {
			ph = append(ph, fmt.Sprintf("%s=%.2fs", p, r.phases[p].Seconds()))
		}
		fmt.Printf("  builder run %d: packer build %.2fs (%s); anchor %.2fs (cp %.2fs, qemu-img %.2fs), with fsync %.2fs (+%.2fs)\n",
			i+1, r.wall.Seconds(), strings.Join(ph, " "), a.total().Seconds(), a.cp.Seconds(), a.convert.Seconds(),
			as.total().Seconds(), as.sync.Seconds())
	}

	what := fmt.Sprintf("%s, %.1f GiB raw, %.0f MiB allocated", filepath.Base(source),
		float64(st.Size())/(1<<30), float64(st.Sys().(*syscall.Stat_t).Blocks*512)/(1<<20))
	wall := median(collect(ours, func(r builderRun) time.Duration { return r.wall }))
	sum := median(collect(ours, func(r builderRun) time.Duration { return r.total }))
	anchor, anchorSync := median(anchors), median(anchorsSync)
	fmt.Printf("\n")
	report("builder: packer build, shell provisioner -> qcow2", secs(wall),
		fmt.Sprintf("median of %d; %s; boot check off; goal <= 10 s: %s", runs, what, passMiss(wall <= 10*time.Second)))
	labels := map[string]string{
		"source":    "working copy (sparse copy of the raw source)",
		"attach":    "partition table, loop devices, root and fstab mounts",
		"provision": "the shell provisioner, Packer's hand-offs included",
		"finalize":  "inspect, restore, unmount, detach",
		"convert":   "qemu-img convert to qcow2, SHA256SUMS",
	}
	for _, p := range []string{"source", "attach", "provision", "finalize", "convert"} {
		report("builder phase "+p, secs(median(collect(ours, func(r builderRun) time.Duration { return r.phases[p] }))), labels[p])
	}
	for _, p := range ours[0].order { // phases this list does not know yet
		if _, ok := labels[p]; !ok {
			report("builder phase "+p, secs(median(collect(ours, func(r builderRun) time.Duration { return r.phases[p] }))), "")
		}
	}
	report("builder phases total (no boot check)", secs(sum),
		fmt.Sprintf("packer build takes %.2f s more: Packer and plugin start-up, preflight, chroot mounts, resolv.conf, policy-rc.d (in no phase)", (wall-sum).Seconds()))
	report("builder anchor: cp --sparse=always + qemu-img convert", secs(anchor), "the unavoidable copies, by hand")
	report("builder anchor with fsync of both files", secs(anchorSync), "")
	report("builder packer build / anchor", fmt.Sprintf("%.2fx", wall.Seconds()/anchor.Seconds()),
		fmt.Sprintf("phases only: %.2fx", sum.Seconds()/anchor.Seconds()))
	report("builder packer build / fsync'd anchor", fmt.Sprintf("%.2fx", wall.Seconds()/anchorSync.Seconds()),
		fmt.Sprintf("goal <= 1.5x: %s", passMiss(wall.Seconds() <= 1.5*anchorSync.Seconds())))

	if virtRuns < 1 {
		report("builder vs virt-customize", "skipped", "-virt-customize-runs 0")
		return
	}
	v, err := findVirtCustomize(fixtures)
	if err != nil {
		report("builder vs virt-customize", "skipped", err.Error())
		return
	}
	// Warm: libguestfs builds its appliance (supermin) on the first run and
	// caches it; the figure for virt-customize is the warm one.
	if _, err := v.run(filepath.Join(work, "virt-warm"), source); err != nil {
		report("builder vs virt-customize", "failed", err.Error())
		return
	}
	var vs []virtRun
	for i := 0; i < virtRuns; i++ {
		r, err := v.run(filepath.Join(work, fmt.Sprintf("virt%d", i)), source)
		if err != nil || interrupted() {
			report("builder vs virt-customize", "failed", fmt.Sprint(err))
			return
		}
		vs = append(vs, r)
		fmt.Printf("  virt-customize run %d: %.2fs (cp %.2fs, virt-customize %.2fs, qemu-img %.2fs, fsync %.2fs)\n",
			i+1, r.total().Seconds(), r.cp.Seconds(), r.customize.Seconds(), r.convert.Seconds(), r.sync.Seconds())
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].total() < vs[j].total() })
	vm := vs[len(vs)/2]
	report("virt-customize: cp, --run-command, qemu-img, fsync", secs(vm.total()),
		fmt.Sprintf("median of %d, warm (one untimed run first built its appliance cache); LIBGUESTFS_BACKEND=direct, %s; virt-customize alone %.2f s",
			len(vs), v.note, vm.customize.Seconds()))
	report("builder speed-up over virt-customize", fmt.Sprintf("%.1fx", vm.total().Seconds()/wall.Seconds()),
		fmt.Sprintf("packer build %.2f s; goal >= 15x: %s", wall.Seconds(), passMiss(vm.total().Seconds() >= 15*wall.Seconds())))
}

type builderRun struct {
	wall   time.Duration
	total  time.Duration // sum of the phases
	phases map[string]time.Duration
	order  []string
}

var timingsLine = regexp.MustCompile(`kmod-image timings: (.*)`)
var timingPart = regexp.MustCompile(`^([a-z_]+)=([0-9.]+)s$`)

// packerBuild runs one build into a fresh output folder under work and
// returns its timings. The output folder is removed after a success.
func packerBuild(packer string, env []string, work, source string, i int) (builderRun, string, error) {
	dir := filepath.Join(work, fmt.Sprintf("run%d", i))
	must(os.MkdirAll(dir, 0o755))
	out := filepath.Join(dir, "out")
	tpl := filepath.Join(dir, "bench.pkr.hcl")
	must(os.WriteFile(tpl, []byte(fmt.Sprintf(`
source "kmod-image" "bench" {
  source_image     = %q
  output_directory = %q
  mount_path       = %q
  output_formats   = ["qcow2"]
  boot_check {
    enabled = false
  }
}
build {
  sources = ["source.kmod-image.bench"]
  provisioner "shell" {
    inline = ["echo kmodctl-bench > /etc/kmodctl-bench"]
  }
}
`, source, out, filepath.Join(dir, "mnt"))), 0o644))
	cmd := exec.Command(packer, "build", tpl)
	cmd.Dir = dir
	cmd.Env = env
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	text := buf.String()
	if err != nil {
		return builderRun{}, text, err
	}
	m := timingsLine.FindAllStringSubmatch(text, -1)
	if m == nil {
		return builderRun{}, text, fmt.Errorf("no 'kmod-image timings:' line in the output")
	}
	r := builderRun{wall: wall, phases: map[string]time.Duration{}}
	for _, f := range strings.Fields(m[len(m)-1][1]) {
		p := timingPart.FindStringSubmatch(f)
		if p == nil {
			return builderRun{}, text, fmt.Errorf("cannot read %q in the timings line", f)
		}
		v, err := strconv.ParseFloat(p[2], 64)
		must(err)
		d := time.Duration(v * float64(time.Second))
		r.phases[p[1]] = d
		r.order = append(r.order, p[1])
		r.total += d
	}
	if _, ok := r.phases["boot_check"]; ok {
		return builderRun{}, text, fmt.Errorf("the boot check ran though it is disabled")
	}
	must(os.RemoveAll(dir))
	return r, text, nil
}

// anchorTimes is one round of the anchor: the copy, the conversion, and a
// second round's fsync of both files.
type anchorTimes struct {
	cp, convert, sync time.Duration
}

// anchorRun copies source by hand the way the builder must (a sparse copy,
// then a qcow2 of it), twice: the first round is the anchor, the second adds
// an fsync of both files.
func anchorRun(work, source string) (plain, synced anchorTimes) {
	dir := filepath.Join(work, "anchor")
	must(os.MkdirAll(dir, 0o755))
	defer os.RemoveAll(dir)
	raw, qcow := filepath.Join(dir, "disk.raw"), filepath.Join(dir, "disk.qcow2")
	copyBoth := func() anchorTimes {
		os.Remove(raw)
		os.Remove(qcow)
		// Dirty pages of the previous round must not be flushed on this
		// one's clock.
		run("sync")
		return anchorTimes{
			cp:      run("cp", "--sparse=always", source, raw),
			convert: run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow),
		}
	}
	plain = copyBoth()
	synced = copyBoth()
	synced.sync = run("sync", raw, qcow)
	return plain, synced
}

func (a anchorTimes) total() time.Duration { return a.cp + a.convert + a.sync }

func collect(rs []builderRun, f func(builderRun) time.Duration) []time.Duration {
	var ds []time.Duration
	for _, r := range rs {
		ds = append(ds, f(r))
	}
	return ds
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}
