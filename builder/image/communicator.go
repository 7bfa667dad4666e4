package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/common"
	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// chrootEnv is the whole environment of commands run in the chroot: the
// build host's environment must not leak in (PATH from another distro,
// proxies, Packer's own variables).
var chrootEnv = []string{
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
	"TERM=dumb",
	"SHELL=/bin/sh",
	"USER=root",
	"LOGNAME=root",
}

// Communicator runs commands and copies files inside the mounted image with
// chroot(8). Unlike the SDK's chroot communicator it keeps upload modes,
// resolves every path inside the chroot (so a symlink in the image cannot
// redirect a write onto the build host), implements DownloadDir, and kills
// the whole process group when the build is cancelled.
type Communicator struct {
	// Root is the mounted image root.
	Root string
	// Wrapper wraps each host command line (command_wrapper).
	Wrapper common.CommandWrapper
}

var _ packersdk.Communicator = (*Communicator)(nil)

// command builds the host command running script in the chroot with args
// as $1, $2, ...
func (c *Communicator) command(script string, args ...string) (*exec.Cmd, error) {
	line := shquote.Join(append([]string{"chroot", c.Root, "/bin/sh", "-c", script, "sh"}, args...)...)
	if c.Wrapper != nil {
		w, err := c.Wrapper(line)
		if err != nil {
			return nil, fmt.Errorf("command_wrapper: %w", err)
		}
		line = w
	}
	cmd := exec.Command("/bin/sh", "-c", line)
	cmd.Env = chrootEnv
	// Own process group: cancelling kills everything the command started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// Start runs rc.Command with /bin/sh inside the chroot and returns at once.
func (c *Communicator) Start(ctx context.Context, rc *packersdk.RemoteCmd) error {
	cmd, err := c.command(rc.Command)
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = rc.Stdin, rc.Stdout, rc.Stderr
	log.Printf("kmod-image: chroot %s: %s", c.Root, rc.Command)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("chroot %s: %w", c.Root, err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	go func() {
		err := cmd.Wait()
		close(done)
		if ctx.Err() != nil {
			// The shell is reaped but its background children may still be
			// dying; Wait must mean the whole group is gone.
			waitGroupGone(cmd.Process.Pid, 5*time.Second)
		}
		status := 0
		if err != nil {
			status = 1
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
					status = ws.ExitStatus()
					if ws.Signaled() {
						status = 128 + int(ws.Signal())
					}
				}
			}
		}
		rc.SetExited(status)
	}()
	return nil
}

// run runs script to completion, feeding stdin and collecting stdout.
func (c *Communicator) run(script string, stdin io.Reader, stdout io.Writer, args ...string) error {
	cmd, err := c.command(script, args...)
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return errors.New(msg)
	}
	return nil
}

// Upload writes r to dst inside the image, with fi's permission bits (0644
// without fi), replacing dst atomically.
func (c *Communicator) Upload(dst string, r io.Reader, fi *os.FileInfo) error {
	mode := os.FileMode(0o644)
	if fi != nil && *fi != nil {
		mode = (*fi).Mode().Perm()
	}
	// The temp name lives next to dst so the rename stays on one filesystem.
	const script = `set -e
tmp="$(dirname -- "$1")/.packer-upload.$$"
trap 'rm -f -- "$tmp"' EXIT
umask 077
cat > "$tmp"
chmod "$2" "$tmp"
mv -f -- "$tmp" "$1"
trap - EXIT`
	if err := c.run(script, r, io.Discard, dst, fmt.Sprintf("%o", mode)); err != nil {
		return fmt.Errorf("upload %s: %w", dst, err)
	}
	return nil
}

// UploadDir copies src into dst inside the image with rsync's rule: without
// a trailing slash src's own folder is created in dst.
func (c *Communicator) UploadDir(dst, src string, exclude []string) error {
	base := src
	target := dst
	if !strings.HasSuffix(src, "/") {
		target = path.Join(dst, filepath.Base(src))
	}
	args := []string{"-C", base, "-cf", "-", "--owner=0", "--group=0", "--numeric-owner"}
	for _, e := range exclude {
		args = append(args, "--exclude="+e)
	}
	args = append(args, ".")
	pack := exec.Command("tar", args...)
	out, err := pack.StdoutPipe()
	if err != nil {
		return err
	}
	var packErr bytes.Buffer
	pack.Stderr = &packErr
	if err := pack.Start(); err != nil {
		return fmt.Errorf("upload dir %s: %w", src, err)
	}
	err = c.run(`set -e; mkdir -p -- "$1"; tar -C "$1" -xf - --no-same-owner`, out, io.Discard, target)
	if werr := pack.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("tar: %v: %s", werr, strings.TrimSpace(packErr.String()))
	}
	if err != nil {
		return fmt.Errorf("upload dir %s to %s: %w", src, target, err)
	}
	return nil
}

// Download writes the content of src inside the image to w.
func (c *Communicator) Download(src string, w io.Writer) error {
	if err := c.run(`exec cat -- "$1"`, nil, w, src); err != nil {
		return fmt.Errorf("download %s: %w", src, err)
	}
	return nil
}

// DownloadDir copies the folder src inside the image into dst on the build
// host (tar on both ends; members are extracted as the build user).
func (c *Communicator) DownloadDir(src, dst string, exclude []string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("download dir %s: %w", src, err)
	}
	unpack := exec.Command("tar", "-C", dst, "-xf", "-", "--no-same-owner", "--no-same-permissions")
	in, err := unpack.StdinPipe()
	if err != nil {
		return err
	}
	var unpackErr bytes.Buffer
	unpack.Stderr = &unpackErr
	if err := unpack.Start(); err != nil {
		return fmt.Errorf("download dir %s: %w", src, err)
	}
	script := `set -e; cd -- "$1"; shift; exec tar -cf - "$@" .`
	args := []string{src}
	for _, e := range exclude {
		args = append(args, "--exclude="+e)
	}
	err = c.run(script, nil, in, args...)
	in.Close()
	if werr := unpack.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("tar: %v: %s", werr, strings.TrimSpace(unpackErr.String()))
	}
	if err != nil {
		return fmt.Errorf("download dir %s to %s: %w", src, dst, err)
	}
	return nil
}

// waitGroupGone polls /proc until no live process is left in process group
// pgid (zombies have released everything and are not counted) or timeout.
func waitGroupGone(pgid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for groupAlive(pgid) && time.Now().Before(deadline) {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		time.Sleep(10 * time.Millisecond)
	}
}

func groupAlive(pgid int) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, g, err := diskimage.ProcState(pid); err == nil && g == pgid && state != "Z" {
			return true
		}
	}
	return false
}
