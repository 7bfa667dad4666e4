package qemu

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Accelerators QEMU is run with.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// AccelEnv overrides the accelerator choice (kvm or tcg) for every boot of
// the process.
const AccelEnv = "KMODCTL_QEMU_ACCEL"

var accel struct {
	sync.Mutex
	done   bool
	choice string
	reason string
}

// Accelerator returns the accelerator boots use and why it was chosen. The
// decision is made once per process: KVM only when the host advertises
// hardware virtualisation (vmx/svm in /proc/cpuinfo), /dev/kvm creates a VM,
// and — when probeKernel is not empty — that kernel, booted under KVM, prints
// its banner on the serial console within a few seconds. Otherwise TCG. A
// host whose KVM is a paravirtual flavour (no vmx/svm, guests hang without
// output) therefore gets TCG even though /dev/kvm exists.
func Accelerator(ctx context.Context, probeKernel string) (string, string) {
	accel.Lock()
	defer accel.Unlock()
	if accel.done {
		return accel.choice, accel.reason
	}
	accel.choice, accel.reason = chooseAccel(ctx, probeKernel)
	// A cancelled probe decides nothing: the next boot probes again.
	accel.done = ctx.Err() == nil
	return accel.choice, accel.reason
}

func chooseAccel(ctx context.Context, probeKernel string) (string, string) {
	switch v := os.Getenv(AccelEnv); v {
	case AccelKVM, AccelTCG:
		return v, AccelEnv + "=" + v
	case "":
	default:
		return AccelTCG, fmt.Sprintf("%s=%q is neither kvm nor tcg", AccelEnv, v)
	}
	if ok, why := kvmUsable(); !ok {
		return AccelTCG, why
	}
	if probeKernel == "" {
		return AccelKVM, "vmx/svm advertised and KVM_CREATE_VM works (no kernel to probe with)"
	}
	if err := probeKVM(ctx, probeKernel); err != nil {
		return AccelTCG, "KVM probe boot failed: " + err.Error()
	}
	return AccelKVM, "vmx/svm advertised, KVM_CREATE_VM works and a probe kernel printed its banner"
}

// kvmUsable checks the CPU flags and creates (and closes) a VM on /dev/kvm.
func kvmUsable() (bool, string) {
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false, "cannot read /proc/cpuinfo: " + err.Error()
	}
	if !cpuHasVirt(info) {
		return false, "no vmx/svm flag in /proc/cpuinfo (nested or paravirtual KVM is not trusted)"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false, "cannot open /dev/kvm: " + err.Error()
	}
	defer f.Close()
	const kvmGetAPIVersion, kvmCreateVM = 0xAE00, 0xAE01
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 || v != 12 {
		return false, fmt.Sprintf("KVM_GET_API_VERSION: %d (%v)", v, errno)
	}
	vm, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmCreateVM, 0)
	if errno != 0 {
		return false, "KVM_CREATE_VM: " + errno.Error()
	}
	syscall.Close(int(vm))
	return true, ""
}

func cpuHasVirt(cpuinfo []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}

// probeKVM boots kernel under KVM with an early console and waits for its
// "Linux version" banner.
func probeKVM(ctx context.Context, kernel string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuBinary(""), "-accel", "kvm", "-cpu", "host", "-m", "256M",
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nodefaults",
		"-kernel", kernel, "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Linux version") {
			return nil
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("no kernel banner within 10s")
	}
	return fmt.Errorf("qemu exited without a kernel banner")
}
