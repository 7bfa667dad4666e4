package kmod

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/kmodctl/packer-plugin-kmod/internal/linewriter"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// target runs commands and moves files on the image through the Packer
// communicator (the kmod-image chroot, SSH, ...). It implements dkms.Runner.
type target struct {
	comm packersdk.Communicator
	ui   packersdk.Ui
}

// Run runs a /bin/sh command line on the target.
func (t *target) Run(ctx context.Context, command string, stdout, stderr io.Writer) (int, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	rc := &packersdk.RemoteCmd{Command: command, Stdout: stdout, Stderr: stderr}
	if err := t.comm.Start(ctx, rc); err != nil {
		return -1, fmt.Errorf("start %q: %w", command, err)
	}
	done := make(chan int, 1)
	go func() { done <- rc.Wait() }()
	select {
	case st := <-done:
		return st, nil
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

// output runs command and returns its stdout; a non-zero exit is an error
// carrying stderr.
func (t *target) output(ctx context.Context, command string) (string, error) {
	var out, errb bytes.Buffer
	st, err := t.Run(ctx, command, &out, &errb)
	if err != nil {
		return "", err
	}
	if st != 0 {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return out.String(), fmt.Errorf("%s: exit status %d: %s", firstLine(command), st, msg)
	}
	return out.String(), nil
}

// runUI runs command showing its output in the Packer UI.
func (t *target) runUI(ctx context.Context, command string) error {
	w := linewriter.New(t.ui.Message)
	st, err := t.Run(ctx, command, w, w)
	w.Flush()
	if err != nil {
		return err
	}
	if st != 0 {
		return fmt.Errorf("%s: exit status %d", firstLine(command), st)
	}
	return nil
}

// readFile downloads a file of the target.
func (t *target) readFile(p string) ([]byte, error) {
	var buf bytes.Buffer
	if err := t.comm.Download(p, &buf); err != nil {
		return nil, fmt.Errorf("download %s: %w", p, err)
	}
	return buf.Bytes(), nil
}

// download copies a target file to a host file.
func (t *target) download(p, host string) error {
	f, err := os.Create(host)
	if err != nil {
		return err
	}
	if err := t.comm.Download(p, f); err != nil {
		f.Close()
		return fmt.Errorf("download %s: %w", p, err)
	}
	return f.Close()
}

// exists tells whether a path exists on the target.
func (t *target) exists(ctx context.Context, p string) bool {
	st, err := t.Run(ctx, "test -e "+shquote.Quote(p), nil, nil)
	return err == nil && st == 0
}

// writeFile writes data to p on the target with mode, atomically: upload to
// a temporary name in the same folder, then rename (creating the folder).
func (t *target) writeFile(ctx context.Context, p string, data []byte, mode os.FileMode) error {
	dir := path.Dir(p)
	tmp := path.Join(dir, ".kmodctl-upload-"+path.Base(p))
	if _, err := t.output(ctx, "mkdir -p "+shquote.Quote(dir)); err != nil {
		return err
	}
	var fi os.FileInfo = fileInfo{mode: mode, size: int64(len(data))}
	if err := t.comm.Upload(tmp, bytes.NewReader(data), &fi); err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	cmd := fmt.Sprintf("chmod %o %s && sync -f %s 2>/dev/null; mv -f %s %s", mode.Perm(), shquote.Quote(tmp), shquote.Quote(tmp), shquote.Quote(tmp), shquote.Quote(p))
	if _, err := t.output(ctx, cmd); err != nil {
		t.Run(ctx, "rm -f "+shquote.Quote(tmp), nil, nil)
		return fmt.Errorf("install %s: %w", p, err)
	}
	return nil
}

// writeHostFile uploads a host file to p (same rules as writeFile).
func (t *target) writeHostFile(ctx context.Context, host, p string, mode os.FileMode) error {
	data, err := os.ReadFile(host)
	if err != nil {
		return err
	}
	return t.writeFile(ctx, p, data, mode)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

type fileInfo struct {
	os.FileInfo
	mode os.FileMode
	size int64
}

func (f fileInfo) Mode() os.FileMode  { return f.mode }
func (f fileInfo) Size() int64        { return f.size }
func (f fileInfo) Name() string       { return "" }
func (f fileInfo) IsDir() bool        { return false }
func (f fileInfo) ModTime() time.Time { return time.Now() }
func (f fileInfo) Sys() any           { return nil }
