package main

import (
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// run executes a command with output discarded and returns its wall time.
func run(name string, args ...string) time.Duration {
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
	return d
}

// peakRSS runs a command under /usr/bin/time and returns its peak resident
// memory. The child's own rusage from Go would count the pages it shared
// with this process before exec.
func peakRSS(name string, args ...string) int64 {
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", name}, args...)...)
	var stderr bytes.Buffer
	cmd.Stdout = io.Discard
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		must(fmt.Errorf("%s: %v: %s", name, err, stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	kb, err := strconv.ParseInt(lines[len(lines)-1], 10, 64)
	must(err)
	return kb * 1024
}

// benchInspect: the whole fixture tree through kmodctl inspect --json vs
// modinfo, both one process over all files, output discarded.
func benchInspect(kmodctl string, mods []string) {
	ours := best(3, func() time.Duration {
		return run("sh", append([]string{"-c", `"$0" module inspect --json "$@" >/dev/null`, kmodctl}, mods...)...)
	})
	rss := peakRSS(kmodctl, append([]string{"module", "inspect", "--json"}, mods...)...)
	theirs := best(3, func() time.Duration {
		return run("sh", append([]string{"-c", `modinfo "$@" >/dev/null`, "modinfo"}, mods...)...)
	})
	n := len(mods)
	report(fmt.Sprintf("inspect %d modules: kmodctl --json", n), secs(ours), "")
	report(fmt.Sprintf("inspect %d modules: modinfo", n), secs(theirs), "")
	report("inspect speed-up vs modinfo", fmt.Sprintf("%.2fx", theirs.Seconds()/ours.Seconds()), "goal >= 2x")
	report("inspect peak memory (kmodctl)", fmt.Sprintf("%.1f MB", float64(rss)/1e6), "goal <= 200 MB")
}
