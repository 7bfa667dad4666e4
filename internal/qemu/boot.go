package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Outcome is how a boot ended.
type Outcome string

const (
	// Success: a success marker appeared first.
	Success Outcome = "success"
	// Failure: a failure marker appeared first.
	Failure Outcome = "failure"
	// Timeout: no marker within Config.Timeout.
	Timeout Outcome = "timeout"
	// Exited: QEMU ended (guest power-off or reboot) before any marker.
	Exited Outcome = "exited"
	// Canceled: the context ended first; Boot also returns ctx.Err().
	Canceled Outcome = "canceled"
)

// Marker is a console substring that concludes a boot with Outcome (Success
// or Failure).
type Marker struct {
	Text    string
	Outcome Outcome
}

// SuccessOn and FailureOn build markers.
func SuccessOn(text string) Marker { return Marker{text, Success} }
func FailureOn(text string) Marker { return Marker{text, Failure} }

// KernelFailures are failure markers for any Linux boot: panics and a dying
// init (oopses and BUGs are left to the caller).
var KernelFailures = []Marker{
	FailureOn("Kernel panic - not syncing"),
	FailureOn("end Kernel panic"),
	FailureOn("Attempted to kill init"),
}

// Disk is a drive given to the guest.
type Disk struct {
	Path string
	// Format is the image format (raw, qcow2, ...); default raw.
	Format string
	// Snapshot sends writes to a temporary overlay that QEMU discards.
	Snapshot bool
	// ReadOnly exposes a read-only drive.
	ReadOnly bool
	// Interface is QEMU's if= (default virtio).
	Interface string
}

// Config describes one boot.
type Config struct {
	// Kernel, Initrd and Append are QEMU's -kernel, -initrd and -append.
	// Without Kernel the guest boots from its disks through the firmware.
	Kernel, Initrd, Append string
	Disks                  []Disk
	// Memory is QEMU's -m (default 1024M); CPUs its -smp (default 1).
	Memory string
	CPUs   int
	// Timeout caps the boot (default DefaultTimeout).
	Timeout time.Duration
	// Markers are checked against every console line, and against the
	// incomplete last line (prompts end without a newline), in the order the
	// console prints them; the first match concludes the boot. When several
	// markers match one line the first in this list wins.
	Markers []Marker
	// ConsoleLog, when set, receives the serial console as it streams.
	ConsoleLog string
	// Accel forces kvm or tcg; empty chooses with Accelerator.
	Accel string
	// Binary is the QEMU program (default qemu-system-x86_64).
	Binary string
	// Args are appended to the QEMU command line. The guest has no network
	// unless Args set up one (-nic, -netdev, -net).
	Args []string
}

// DefaultTimeout caps a boot whose Config has no Timeout.
const DefaultTimeout = 120 * time.Second

// Result is what a boot produced.
type Result struct {
	Outcome Outcome
	// Marker and Line are the marker that concluded the boot and the console
	// line it was found in (for Success and Failure).
	Marker Marker
	Line   string
	// Elapsed runs from QEMU's start to the conclusion.
	Elapsed time.Duration
	// Console is the serial console text, carriage returns removed; Stderr
	// is what QEMU itself printed.
	Console string
	Stderr  string
	Accel   string
	// Args is the QEMU command line, program first; PID was QEMU's process.
	Args []string
	PID  int
}

// Tail returns the last n lines of the console, for failure messages.
func (r *Result) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(r.Console, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (r *Result) String() string {
	s := fmt.Sprintf("%s after %v (%s)", r.Outcome, r.Elapsed.Round(10*time.Millisecond), r.Accel)
	if r.Line != "" {
		s += fmt.Sprintf(": %q", r.Line)
	}
	return s
}

func qemuBinary(b string) string {
	if b != "" {
		return b
	}
	return "qemu-system-x86_64"
}

// Command returns the QEMU command line Boot runs for cfg with accelerator
// accel, program first.
func Command(cfg Config, accel string) ([]string, error) {
	if cfg.Kernel == "" && len(cfg.Disks) == 0 {
		return nil, errors.New("qemu: nothing to boot (no Kernel and no Disks)")
	}
	if cfg.Kernel == "" && (cfg.Initrd != "" || cfg.Append != "") {
		return nil, errors.New("qemu: Initrd and Append need a Kernel")
	}
	mem := cfg.Memory
	if mem == "" {
		mem = "1024M"
	}
	cpus := cfg.CPUs
	if cpus <= 0 {
		cpus = 1
	}
	args := []string{qemuBinary(cfg.Binary), "-accel", accel}
	if accel == AccelKVM {
		args = append(args, "-cpu", "host")
	}
	args = append(args, "-m", mem, "-smp", strconv.Itoa(cpus),
		"-nographic", "-monitor", "none", "-serial", "stdio", "-no-reboot")
	if cfg.Kernel != "" {
		args = append(args, "-kernel", cfg.Kernel)
		if cfg.Initrd != "" {
			args = append(args, "-initrd", cfg.Initrd)
		}
		if cfg.Append != "" {
			args = append(args, "-append", cfg.Append)
		}
	}
	for _, d := range cfg.Disks {
		if d.Path == "" || strings.Contains(d.Path, ",") {
			return nil, fmt.Errorf("qemu: bad disk path %q", d.Path)
		}
		format, iface := d.Format, d.Interface
		if format == "" {
			format = "raw"
		}
		if iface == "" {
			iface = "virtio"
		}
		opt := "file=" + d.Path + ",format=" + format + ",if=" + iface
		if d.Snapshot {
			opt += ",snapshot=on"
		}
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		args = append(args, "-drive", opt)
	}
	network := false
	for _, a := range cfg.Args {
		switch a {
		case "-nic", "-netdev", "-net":
			network = true
		}
	}
	if !network {
		args = append(args, "-nic", "none")
	}
	return append(args, cfg.Args...), nil
}

type conclusion struct {
	outcome Outcome
	marker  Marker
	line    string
	at      time.Time
}

// Boot runs QEMU on cfg, streams the serial console and stops at the first
// conclusive line: a marker, QEMU's exit, the timeout or the end of ctx. QEMU
// is killed on every path before Boot returns. The error reports a QEMU that
// could not run or failed (non-zero exit without a marker), or ctx's end;
// the guest's fate is in Result.Outcome. Boot does not take a slot: callers
// hold one (Acquire or Slot) around it.
func Boot(ctx context.Context, cfg Config) (*Result, error) {
	acc := cfg.Accel
	if acc == "" {
		acc, _ = Accelerator(ctx, cfg.Kernel)
	}
	args, err := Command(cfg, acc)
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	res := &Result{Accel: acc, Args: args}

	var logf *os.File
	if cfg.ConsoleLog != "" {
		if logf, err = os.Create(cfg.ConsoleLog); err != nil {
			return nil, err
		}
		defer logf.Close()
	}

	// Pdeathsig kills QEMU if this process dies; it fires when the thread that
	// started QEMU exits, so that thread stays locked until QEMU is reaped.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	res.PID = cmd.Process.Pid
	var console bytes.Buffer
	concluded := make(chan conclusion, 1)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		scanConsole(out, &console, logf, cfg.Markers, concluded)
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var c conclusion
	var waitErr error
	exited := false
	select {
	case c = <-concluded:
	case <-timer.C:
		c = conclusion{outcome: Timeout, at: time.Now()}
	case <-ctx.Done():
		c = conclusion{outcome: Canceled, at: time.Now()}
	}
	if c.outcome == Exited {
		// The console hit EOF: QEMU is exiting by itself.
		waitErr = waitTimeout(cmd, 5*time.Second)
		exited = waitErr == nil || isExitError(waitErr)
	}
	if !exited {
		// QEMU leads its own process group; its death closes the console,
		// which ends the reader before Wait closes the pipe.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-readDone
		_ = cmd.Wait()
	}
	<-readDone

	res.Outcome, res.Marker, res.Line = c.outcome, c.marker, c.line
	res.Elapsed = c.at.Sub(start)
	res.Console = console.String()
	res.Stderr = stderr.String()
	switch {
	case c.outcome == Canceled:
		return res, ctx.Err()
	case c.outcome == Exited && waitErr != nil:
		return res, fmt.Errorf("qemu: %v: %s", waitErr, strings.TrimSpace(res.Stderr))
	}
	return res, nil
}

func isExitError(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee)
}

// waitTimeout waits for cmd, giving up (with an error) after d.
func waitTimeout(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("did not exit within %v of closing its console", d)
	}
}

// partialDelay is how long an incomplete last line (a prompt) must stay
// unchanged before markers are checked against it.
const partialDelay = 200 * time.Millisecond

// scanConsole copies the console into buf (and logf), checks markers line by
// line and sends the first conclusion; it reads until EOF. An incomplete line
// is checked once no more output has come for partialDelay, so a marker is
// reported with its whole line when the line does end.
func scanConsole(r io.Reader, buf *bytes.Buffer, logf *os.File, markers []Marker, concluded chan<- conclusion) {
	chunks := make(chan []byte, 16)
	go func() {
		defer close(chunks)
		for {
			b := make([]byte, 32<<10)
			n, err := r.Read(b)
			if n > 0 {
				chunks <- b[:n]
			}
			if err != nil {
				return
			}
		}
	}()
	var line []byte
	done := false
	check := func(l []byte) {
		if done {
			return
		}
		for _, m := range markers {
			if m.Text != "" && bytes.Contains(l, []byte(m.Text)) {
				done = true
				concluded <- conclusion{outcome: m.Outcome, marker: m, line: strings.TrimSpace(string(l)), at: time.Now()}
				return
			}
		}
	}
	idle := time.NewTimer(partialDelay)
	idle.Stop()
	defer idle.Stop()
	for {
		select {
		case <-idle.C:
			check(line)
			continue
		case data, ok := <-chunks:
			if !ok {
				check(line)
				if !done {
					done = true
					concluded <- conclusion{outcome: Exited, at: time.Now()}
				}
				return
			}
			data = bytes.ReplaceAll(data, []byte("\r"), nil)
			buf.Write(data)
			if logf != nil {
				_, _ = logf.Write(data)
			}
			for len(data) > 0 {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					line = append(line, data...)
					break
				}
				line = append(line, data[:i]...)
				check(line)
				line = line[:0]
				data = data[i+1:]
			}
			idle.Stop()
			if len(line) > 0 && !done {
				idle.Reset(partialDelay)
			}
		}
	}
}
