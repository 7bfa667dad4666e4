//go:build linux

package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/tail"
)

// command is exec.CommandContext in its own process group, all of which
// is killed when ctx ends (tar's decompressors included).
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	c.WaitDelay = 10 * time.Second
	return c
}

// run runs a tool and returns its stdout and (the tail of) its
// stderr; the error names the command and quotes stderr.
func run(ctx context.Context, stdin io.Reader, name string, args ...string) (string, string, error) {
	if err := ctx.Err(); err != nil {
		return "", "", err
	}
	c := command(ctx, name, args...)
	var out bytes.Buffer
	errb := &tail.Buffer{Max: 16 << 10}
	c.Stdin, c.Stdout, c.Stderr = stdin, &out, errb
	err := c.Run()
	if ctx.Err() != nil {
		return out.String(), errb.String(), fmt.Errorf("%s: %w", name, ctx.Err())
	}
	if err != nil {
		return out.String(), errb.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), errb.String(), nil
}
