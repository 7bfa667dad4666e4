//go:build linux

package diskimage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// Loop is a loop device attached to a byte range of an image file.
type Loop struct {
	Device    string // /dev/loopN
	Image     string // absolute path of the backing file
	Offset    int64
	SizeLimit int64
	ReadOnly  bool

	mu       sync.Mutex
	detached bool
}

// AttachPartition attaches part of imagePath to a free loop device with
// losetup --offset/--sizelimit (no kernel partition scanning needed).
func AttachPartition(ctx context.Context, imagePath string, part Partition, readOnly bool) (*Loop, error) {
	return AttachRange(ctx, imagePath, part.Start, part.Size, readOnly)
}

// AttachRange attaches size bytes at offset of imagePath to a loop device.
func AttachRange(ctx context.Context, imagePath string, offset, size int64, readOnly bool) (*Loop, error) {
	abs, err := canonical(imagePath)
	if err != nil {
		return nil, err
	}
	args := []string{"--find", "--show", "--offset", strconv.FormatInt(offset, 10), "--sizelimit", strconv.FormatInt(size, 10)}
	if readOnly {
		args = append(args, "--read-only")
	}
	args = append(args, abs)
	out, err := runCmd(ctx, "losetup", args...)
	if err != nil {
		return nil, fmt.Errorf("attach %s at offset %d (%d bytes): %w", abs, offset, size, err)
	}
	dev := strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/loop") {
		return nil, fmt.Errorf("attach %s: losetup printed %q, want a /dev/loopN", abs, dev)
	}
	return &Loop{Device: dev, Image: abs, Offset: offset, SizeLimit: size, ReadOnly: readOnly}, nil
}

// AttachSpare attaches the whole of imagePath, read-write, to a loop device
// that is meant to be moved later, with Repoint, to a partition: a spare.
// Why: since the fix for a lockdep report in 2025 (Linux 6.15, backported
// to the stable kernels), attaching a loop device fsyncs its backing file,
// so attaching after writing a scratch image pays a full write of it to
// disk; moving an attached device (LOOP_SET_STATUS64) does not. A build
// attaches its spares to the empty working copy, then fills it.
// The device is also made write-through (below), best effort.
func AttachSpare(ctx context.Context, imagePath string) (*Loop, error) {
	abs, err := canonical(imagePath)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", abs, err)
	}
	l, err := AttachRange(ctx, abs, 0, st.Size(), false)
	if err != nil {
		return nil, err
	}
	l.writeThrough()
	return l, nil
}

// writeThrough tells the block layer that the loop device has no volatile
// cache, so that the flushes of the filesystem mounted on it (a journal
// commit, the unmount) are dropped instead of becoming an fsync of the
// whole backing file: a working copy is made durable once, at the end, by
// whoever keeps it. Best effort: where /sys is read-only the flushes stay,
// which costs time, not correctness.
func (l *Loop) writeThrough() {
	name := filepath.Base(l.Device)
	os.WriteFile(filepath.Join("/sys/block", name, "queue/write_cache"), []byte("write through"), 0)
}

// Repoint moves the loop device to size bytes at offset of its image
// (LOOP_SET_STATUS64; unlike attaching, this does not fsync the image) and
// drops what the device had cached of its old range (BLKFLSBUF), so that
// readers see the image as it is now, written after the attach.
func (l *Loop) Repoint(offset, size int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.detached {
		return fmt.Errorf("repoint %s: detached", l.Device)
	}
	f, err := os.OpenFile(l.Device, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("repoint %s: %w", l.Device, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return fmt.Errorf("repoint %s: LOOP_GET_STATUS64: %w", l.Device, err)
	}
	info.Offset, info.Sizelimit = uint64(offset), uint64(size)
	if err := unix.IoctlLoopSetStatus64(fd, info); err != nil {
		return fmt.Errorf("repoint %s to %d bytes at offset %d of %s: LOOP_SET_STATUS64: %w", l.Device, size, offset, l.Image, err)
	}
	l.Offset, l.SizeLimit = offset, size
	if err := unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("repoint %s: BLKFLSBUF: %w", l.Device, err)
	}
	return nil
}

// Detach detaches the loop device. It is idempotent, and it detaches only
// if the device is still backed by our image at our offset (a detached
// device number may have been reused by someone else). A mounted loop is
// marked autoclear by the kernel and goes away at its last unmount.
func (l *Loop) Detach() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.detached {
		return nil
	}
	loops, err := ListLoopsFor(l.Image)
	if err != nil {
		return err
	}
	ours := false
	for _, li := range loops {
		if li.Device == l.Device && li.Offset == l.Offset {
			ours = true
		}
	}
	if !ours {
		l.detached = true
		return nil
	}
	if _, err := runCmd(context.Background(), "losetup", "--detach", l.Device); err != nil {
		return fmt.Errorf("detach %s (%s): %w", l.Device, l.Image, err)
	}
	// While another opener (udev probing after the unmount, blkid) holds
	// the device, the kernel only marks it autoclear and clears it at the
	// last close; wait for that so callers can rely on "nothing attached".
	deadline := time.Now().Add(10 * time.Second)
	for {
		still := false
		loops, _ := ListLoopsFor(l.Image)
		for _, li := range loops {
			if li.Device == l.Device && li.Offset == l.Offset {
				still = true
			}
		}
		if !still {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s (%s): still attached 10 s after losetup --detach; held by: %s", l.Device, l.Image, Holders(l.Device))
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.detached = true
	return nil
}

// LoopInfo is one loop device as listed by losetup.
type LoopInfo struct {
	Device   string
	BackFile string
	Offset   int64
}

// ListLoopsFor lists the loop devices backed by imagePath (leftovers of a
// killed build, for example). It never touches other loop devices.
func ListLoopsFor(imagePath string) ([]LoopInfo, error) {
	abs, err := canonical(imagePath)
	if err != nil {
		return nil, err
	}
	out, err := runCmd(context.Background(), "losetup", "--list", "--json", "-O", "NAME,BACK-FILE,OFFSET")
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	if strings.TrimSpace(out) == "" { // no loop devices at all
		return nil, nil
	}
	var j struct {
		Loops []struct {
			Name     string          `json:"name"`
			BackFile string          `json:"back-file"`
			Offset   json.RawMessage `json:"offset"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		return nil, fmt.Errorf("parse losetup --json: %w", err)
	}
	var res []LoopInfo
	for _, l := range j.Loops {
		bf := strings.TrimSuffix(l.BackFile, " (deleted)")
		if bf != abs {
			continue
		}
		off, _ := strconv.ParseInt(strings.Trim(string(l.Offset), `"`), 10, 64)
		res = append(res, LoopInfo{Device: l.Name, BackFile: bf, Offset: off})
	}
	return res, nil
}

// CleanupCommands returns shell commands that release loops (and the
// mounts of those loops, deepest first), for an error message.
func CleanupCommands(loops []LoopInfo) string {
	var b strings.Builder
	mounts, _ := readMountInfo()
	for _, l := range loops {
		var ms []string
		for _, m := range mounts {
			if m.source == l.Device {
				ms = append(ms, m.target)
			}
		}
		sortDeepestFirst(ms)
		for _, m := range ms {
			fmt.Fprintf(&b, "umount -R %s\n", shquote.Quote(m))
		}
	}
	for _, l := range loops {
		fmt.Fprintf(&b, "losetup -d %s\n", l.Device)
	}
	return b.String()
}

// CheckNoLeftovers returns an error with the cleanup commands if loop
// devices backed by imagePath exist.
func CheckNoLeftovers(imagePath string) error {
	loops, err := ListLoopsFor(imagePath)
	if err != nil {
		return err
	}
	if len(loops) == 0 {
		return nil
	}
	var devs []string
	for _, l := range loops {
		devs = append(devs, l.Device)
	}
	return fmt.Errorf("%s is still attached to %s (left by an earlier build?); release with:\n%s",
		imagePath, strings.Join(devs, ", "), CleanupCommands(loops))
}

func canonical(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	return abs, nil
}

func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	c := exec.CommandContext(ctx, name, args...)
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.String(), nil
}

// Holders says who keeps a block device busy: processes with it open and
// mount namespaces other than ours that still have it mounted (a namespace
// created while it was mounted keeps a private copy of that mount).
func Holders(dev string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		return fmt.Sprintf("unknown (%v)", err)
	}
	majMin := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	self, _ := os.Readlink("/proc/self/ns/mnt")
	seenNS := map[string]bool{self: true}
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		base := "/proc/" + e.Name()
		comm, _ := os.ReadFile(base + "/comm")
		who := fmt.Sprintf("pid %d (%s)", pid, strings.TrimSpace(string(comm)))
		fds, _ := os.ReadDir(base + "/fd")
		for _, fd := range fds {
			if t, err := os.Readlink(base + "/fd/" + fd.Name()); err == nil && t == dev {
				out = append(out, who+" has it open")
				break
			}
		}
		ns, err := os.Readlink(base + "/ns/mnt")
		if err != nil || seenNS[ns] {
			continue
		}
		seenNS[ns] = true
		mi, _ := os.ReadFile(base + "/mountinfo")
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[2] == majMin {
				out = append(out, fmt.Sprintf("%s has it mounted at %s in %s", who, unescapeOctal(f[4]), ns))
				break
			}
		}
	}
	if len(out) == 0 {
		return "nobody visible (try fuser -v " + dev + ")"
	}
	return strings.Join(out, "; ")
}
