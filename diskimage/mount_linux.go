//go:build linux

package diskimage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Mount mounts source on target (created if missing) with mount(8), so
// that fstype may be "" (auto) and opts may include "bind", "ro", etc.
func Mount(ctx context.Context, source, target, fstype string, opts ...string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", target, err)
	}
	args := []string{}
	if fstype != "" {
		args = append(args, "-t", fstype)
	}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	args = append(args, source, target)
	if _, err := runCmd(ctx, "mount", args...); err != nil {
		return fmt.Errorf("mount %s on %s: %w", source, target, err)
	}
	return nil
}

// UnmountReport tells what Unmount did.
type UnmountReport struct {
	Target     string
	NotMounted bool  // nothing was mounted there
	Attempts   int   // umount calls made
	Killed     []int // PIDs killed because their root, cwd or an open file was under Target
	Lazy       bool  // last resort MNT_DETACH was used
}

func (r UnmountReport) String() string {
	switch {
	case r.NotMounted:
		return r.Target + ": not mounted"
	case r.Lazy:
		return fmt.Sprintf("%s: lazily unmounted after %d busy attempts (killed %v)", r.Target, r.Attempts, r.Killed)
	case len(r.Killed) > 0:
		return fmt.Sprintf("%s: unmounted after killing %v (%d attempts)", r.Target, r.Killed, r.Attempts)
	}
	return r.Target + ": unmounted"
}

// Unmount timing knobs.
var (
	UnmountRetries = 3
	UnmountWait    = 200 * time.Millisecond
)

// Unmount unmounts target. On EBUSY it kills (SIGKILL) the processes whose
// root, cwd or open files are under target, waits briefly and retries up to
// UnmountRetries times; a lazy unmount (MNT_DETACH) is the last resort and
// is reported. Unmounting something not mounted is not an error.
func Unmount(target string) (UnmountReport, error) {
	rep := UnmountReport{Target: target}
	if !filepath.IsAbs(target) || filepath.Clean(target) == "/" {
		return rep, fmt.Errorf("umount %q: refusing a relative path or / (busy handling kills processes under it)", target)
	}
	target = filepath.Clean(target)
	rep.Target = target
	for i := 0; ; i++ {
		rep.Attempts++
		err := syscall.Unmount(target, 0)
		if err == nil {
			return rep, nil
		}
		if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
			if rep.Attempts == 1 {
				rep.NotMounted = true
			}
			return rep, nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return rep, fmt.Errorf("umount %s: %w", target, err)
		}
		if i >= UnmountRetries {
			break
		}
		killed := KillUsers(target)
		rep.Killed = append(rep.Killed, killed...)
		time.Sleep(UnmountWait)
	}
	if err := syscall.Unmount(target, syscall.MNT_DETACH); err != nil {
		return rep, fmt.Errorf("umount %s: busy after %d attempts (killed %v), lazy unmount failed: %w", target, rep.Attempts, rep.Killed, err)
	}
	rep.Lazy = true
	return rep, nil
}

// KillUsers sends SIGKILL to every process whose root, cwd or an open file
// lies under dir, and waits (up to 2 s) for them to go. It returns the PIDs.
func KillUsers(dir string) []int {
	dir = filepath.Clean(dir)
	if !filepath.IsAbs(dir) || dir == "/" {
		return nil
	}
	self := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		if procUses(pid, dir) {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				pids = append(pids, pid)
			}
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			if !procUses(pid, dir) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return pids
}

func procUses(pid int, dir string) bool {
	base := "/proc/" + strconv.Itoa(pid)
	// A zombie has released root, cwd and files.
	if state, _, err := ProcState(pid); err == nil && state == "Z" {
		return false
	}
	for _, l := range []string{"root", "cwd", "exe"} {
		if t, err := os.Readlink(base + "/" + l); err == nil && under(t, dir) {
			return true
		}
	}
	fds, _ := os.ReadDir(base + "/fd")
	for _, fd := range fds {
		if t, err := os.Readlink(base + "/fd/" + fd.Name()); err == nil && under(t, dir) {
			return true
		}
	}
	return false
}

// ProcState reads a process's state letter (R, S, D, Z, ...) and process
// group from /proc/PID/stat.
func ProcState(pid int) (state string, pgrp int, err error) {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, err
	}
	// The command name in parentheses may hold anything; the fields after
	// its last ')' are: state ppid pgrp ...
	i := strings.LastIndexByte(string(st), ')')
	if i < 0 {
		return "", 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(st[i+1:]))
	if len(f) < 3 {
		return "", 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	pgrp, err = strconv.Atoi(f[2])
	return f[0], pgrp, err
}

func under(p, dir string) bool {
	p = strings.TrimSuffix(p, " (deleted)")
	dir = strings.TrimSuffix(dir, "/")
	return p == dir || strings.HasPrefix(p, dir+"/")
}

type mountEntry struct{ source, target, fstype string }

func readMountInfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var res []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		res = append(res, mountEntry{source: unescapeOctal(fields[sep+2]), target: unescapeOctal(fields[4]), fstype: fields[sep+1]})
	}
	return res, sc.Err()
}

// MountsUnder lists the mount points at or below dir, deepest first (also
// the ones created by someone else, e.g. during provisioning).
func MountsUnder(dir string) []string {
	ms, _ := readMountInfo()
	var res []string
	seen := map[string]bool{}
	for i := len(ms) - 1; i >= 0; i-- { // later mounts first among equals
		if under(ms[i].target, dir) && !seen[ms[i].target] {
			seen[ms[i].target] = true
			res = append(res, ms[i].target)
		}
	}
	sortDeepestFirst(res)
	return res
}

func sortDeepestFirst(ps []string) {
	sort.SliceStable(ps, func(i, j int) bool {
		return strings.Count(filepath.Clean(ps[i]), "/") > strings.Count(filepath.Clean(ps[j]), "/")
	})
}

// UnmountTree unmounts every mount at or below dir, deepest first (stacked
// mounts on one point are unmounted until none is left).
func UnmountTree(dir string) ([]UnmountReport, error) {
	var reps []UnmountReport
	var errs []error
	for round := 0; round < 64; round++ {
		ms := MountsUnder(dir)
		if len(ms) == 0 {
			break
		}
		progress := false
		for _, m := range ms {
			rep, err := Unmount(m)
			reps = append(reps, rep)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			progress = true
		}
		if !progress {
			break
		}
	}
	return reps, errors.Join(errs...)
}
