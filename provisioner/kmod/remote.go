package kmod

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
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

	mu    sync.Mutex
	stats remoteStats
}

// remoteStats counts the communicator's round trips and the time spent in
// them, for the "kmod: remote" line: each costs a process start on the
// target and, through Packer, an RPC or SSH exchange.
type remoteStats struct {
	commands, uploads, downloads int
	cmdTime, upTime, downTime    time.Duration
}

func (t *target) count(n *int, d *time.Duration, start time.Time) {
	t.mu.Lock()
	*n++
	*d += time.Since(start)
	t.mu.Unlock()
}

// summary is the "kmod: remote" line's text.
func (t *target) summary() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	return fmt.Sprintf("%d commands %.2fs, %d uploads %.2fs, %d downloads %.2fs",
		s.commands, s.cmdTime.Seconds(), s.uploads, s.upTime.Seconds(), s.downloads, s.downTime.Seconds())
}

// Run runs a /bin/sh command line on the target.
func (t *target) Run(ctx context.Context, command string, stdout, stderr io.Writer) (int, error) {
	return t.runStdin(ctx, command, nil, stdout, stderr)
}

// runStdin is Run with stdin fed to the command.
func (t *target) runStdin(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	defer t.count(&t.stats.commands, &t.stats.cmdTime, time.Now())
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	rc := &packersdk.RemoteCmd{Command: command, Stdin: stdin, Stdout: stdout, Stderr: stderr}
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
	defer t.count(&t.stats.downloads, &t.stats.downTime, time.Now())
	var buf bytes.Buffer
	if err := t.comm.Download(p, &buf); err != nil {
		return nil, fmt.Errorf("download %s: %w", p, err)
	}
	return buf.Bytes(), nil
}

// download copies a target file to a host file.
func (t *target) download(p, host string) error {
	defer t.count(&t.stats.downloads, &t.stats.downTime, time.Now())
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

// downloadFiles copies target files (absolute paths) to host files in one
// round trip: one tar stream (symlinks followed, as cat would) read as it
// arrives. Each communicator round trip costs a process start on the
// target plus Packer's RPC (or an SSH exchange). An image without tar gets
// them one by one.
func (t *target) downloadFiles(ctx context.Context, files map[string]string) error {
	if len(files) == 0 {
		return nil
	}
	defer t.count(&t.stats.downloads, &t.stats.downTime, time.Now())
	var rels []string
	byName := map[string]string{}
	for remote, host := range files {
		rel := strings.TrimPrefix(path.Clean(remote), "/")
		rels = append(rels, rel)
		byName[rel] = host
	}
	pr, pw := io.Pipe()
	var errb bytes.Buffer
	type result struct {
		st  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := t.runStdin(ctx, fmt.Sprintf("command -v tar >/dev/null 2>&1 || exit %d\ncd / && exec tar -chf - -- %s", noTar, shquote.Join(rels...)), nil, pw, &errb)
		pw.Close()
		done <- result{st, err}
	}()
	got := map[string]bool{}
	tr := tar.NewReader(pr)
	var rerr error
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			rerr = fmt.Errorf("download %s: %w", strings.Join(rels, ", "), err)
			break
		}
		host, ok := byName[hdr.Name]
		if !ok {
			continue
		}
		var src io.Reader = tr
		switch hdr.Typeflag {
		case tar.TypeReg:
		case tar.TypeLink: // a second name of a file sent before
			prev, ok := byName[hdr.Linkname]
			if !ok || !got[hdr.Linkname] {
				continue
			}
			f, err := os.Open(prev)
			if err != nil {
				rerr = err
				break
			}
			defer f.Close()
			src = f
		default:
			continue
		}
		if rerr != nil {
			break
		}
		if err := writeHost(host, src); err != nil {
			rerr = err
			break
		}
		got[hdr.Name] = true
	}
	io.Copy(io.Discard, pr) // let the command finish
	res := <-done
	if res.err != nil {
		return res.err
	}
	if res.st == noTar {
		for remote, host := range files {
			if err := t.download(remote, host); err != nil {
				return err
			}
		}
		return nil
	}
	if rerr != nil {
		return rerr
	}
	if res.st != 0 {
		return fmt.Errorf("download %s: tar: exit status %d: %s", strings.Join(rels, ", "), res.st, strings.TrimSpace(errb.String()))
	}
	for _, rel := range rels {
		if !got[rel] {
			return fmt.Errorf("download /%s: not a regular file", rel)
		}
	}
	return nil
}

// writeHost writes r to the host file p.
func writeHost(p string, r io.Reader) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
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
	start := time.Now()
	err := t.comm.Upload(tmp, bytes.NewReader(data), &fi)
	t.count(&t.stats.uploads, &t.stats.upTime, start)
	if err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	cmd := fmt.Sprintf("chmod %o %s && sync -f %s 2>/dev/null; mv -f %s %s", mode.Perm(), shquote.Quote(tmp), shquote.Quote(tmp), shquote.Quote(tmp), shquote.Quote(p))
	if _, err := t.output(ctx, cmd); err != nil {
		t.Run(ctx, "rm -f "+shquote.Quote(tmp), nil, nil)
		return fmt.Errorf("install %s: %w", p, err)
	}
	return nil
}

// upload is one file for writeFiles: Data, or the content of the host file
// Host.
type upload struct {
	Path string
	Data []byte
	Host string
	Mode os.FileMode
}

// noTar is writeFiles' exit status when the image has no tar.
const noTar = 97

// writeFiles writes files on the target with writeFile's rules (each
// uploaded to a temporary name in its own folder, made durable, renamed
// over its path) in one round trip: one tar stream on the command's stdin,
// unpacked at the temporary names, then the renames. Each communicator
// round trip costs a process start on the target plus Packer's RPC (or an
// SSH exchange); writeFile needs three per file. An image without tar gets
// the files one by one.
func (t *target) writeFiles(ctx context.Context, files []upload) error {
	if len(files) == 0 {
		return nil
	}
	for i := range files {
		if files[i].Data == nil && files[i].Host != "" {
			data, err := os.ReadFile(files[i].Host)
			if err != nil {
				return err
			}
			files[i].Data = data
		}
	}
	var stream bytes.Buffer
	tw := tar.NewWriter(&stream)
	var tmps, moves []string
	now := time.Now()
	for _, f := range files {
		tmp := path.Join(path.Dir(f.Path), ".kmodctl-upload-"+path.Base(f.Path))
		hdr := &tar.Header{Name: strings.TrimPrefix(tmp, "/"), Mode: int64(f.Mode.Perm()), Size: int64(len(f.Data)), ModTime: now, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("upload %s: %w", f.Path, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return fmt.Errorf("upload %s: %w", f.Path, err)
		}
		q := shquote.Quote(tmp)
		tmps = append(tmps, q)
		moves = append(moves, fmt.Sprintf("chmod %o %s\nmv -f %s %s", f.Mode.Perm(), q, q, shquote.Quote(f.Path)))
	}
	if err := tw.Close(); err != nil {
		return err
	}
	all := strings.Join(tmps, " ")
	// tar creates the missing folders; sync -f (not in busybox) makes the
	// contents durable before the renames publish them.
	script := fmt.Sprintf("command -v tar >/dev/null 2>&1 || exit %d\ntrap %s EXIT\nset -e\ntar -C / -xf - --no-same-owner\nsync -f %s 2>/dev/null || true\n%s\ntrap - EXIT\n",
		noTar, shquote.Quote("rm -f -- "+all), all, strings.Join(moves, "\n"))
	var errb bytes.Buffer
	st, err := t.runStdin(ctx, script, &stream, nil, &errb)
	t.mu.Lock()
	t.stats.uploads += len(files)
	t.mu.Unlock()
	if err != nil {
		return err
	}
	switch st {
	case 0:
		return nil
	case noTar:
		for _, f := range files {
			if err := t.writeFile(ctx, f.Path, f.Data, f.Mode); err != nil {
				return err
			}
		}
		return nil
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, f.Path)
	}
	return fmt.Errorf("install %s: exit status %d: %s", strings.Join(paths, ", "), st, strings.TrimSpace(errb.String()))
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
