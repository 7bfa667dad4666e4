package main

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// run executes a command with output discarded and returns its wall time and
// peak resident memory (from the kernel's rusage of the child).
func run(name string, args ...string) (time.Duration, int64) {
	cmd := exec.Command(name, args...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		msg := string(out)
		if len(msg) > 2000 {
			msg = msg[:2000]
		}
		must(fmt.Errorf("%s: %v\n%s", name, err, msg))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return d, ru.Maxrss * 1024
}

// benchInspect: the whole fixture tree through kmodctl inspect --json vs
// modinfo, both one process over all files, output discarded.
func benchInspect(kmodctl string, mods []string) {
	var rss int64
	ours := best(3, func() time.Duration {
		d, r := run("sh", append([]string{"-c", `"$0" module inspect --json "$@" >/dev/null`, kmodctl}, mods...)...)
		_ = r
		return d
	})
	// Peak memory of kmodctl itself, not of the shell around it.
	_, rss = run(kmodctl, append([]string{"module", "inspect", "--json"}, mods...)...)
	theirs := best(3, func() time.Duration {
		d, _ := run("sh", append([]string{"-c", `modinfo "$@" >/dev/null`, "modinfo"}, mods...)...)
		return d
	})
	n := len(mods)
	report(fmt.Sprintf("inspect %d modules: kmodctl --json", n), secs(ours), "")
	report(fmt.Sprintf("inspect %d modules: modinfo", n), secs(theirs), "")
	report("inspect speed-up vs modinfo", fmt.Sprintf("%.2fx", theirs.Seconds()/ours.Seconds()), "goal >= 2x")
	report("inspect peak memory (kmodctl)", fmt.Sprintf("%.1f MB", float64(rss)/1e6), "goal <= 200 MB")
}
