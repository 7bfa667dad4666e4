package qemu

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestCPUHasVirt(t *testing.T) {
	for _, c := range []struct {
		info string
		want bool
	}{
		{"processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae mce vmx ssse3\n", true},
		{"flags\t: fpu svm lm\n", true},
		{"flags\t: fpu vme de hypervisor lm\n", false},
		{"model name\t: vmx svm\nflags\t: fpu\n", false},
		{"", false},
	} {
		if got := cpuHasVirt([]byte(c.info)); got != c.want {
			t.Errorf("cpuHasVirt(%q) = %v, want %v", c.info, got, c.want)
		}
	}
}

// TestAcceleratorHere: without vmx/svm (this build machine's paravirtual KVM
// hangs guests) the choice must be TCG even when /dev/kvm exists.
func TestAcceleratorHere(t *testing.T) {
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip(err)
	}
	acc, why := Accelerator(context.Background(), "")
	t.Logf("accelerator %s: %s", acc, why)
	if os.Getenv(AccelEnv) == "" && !cpuHasVirt(info) && acc != AccelTCG {
		t.Fatalf("accelerator %s without vmx/svm", acc)
	}
	if acc2, _ := Accelerator(context.Background(), "/nonexistent"); acc2 != acc {
		t.Fatalf("decision not cached: %s then %s", acc, acc2)
	}
}

func TestCommand(t *testing.T) {
	args, err := Command(Config{
		Kernel: "/k", Initrd: "/i", Append: "console=ttyS0 panic=1",
		Disks: []Disk{{Path: "/d.qcow2", Format: "qcow2", Snapshot: true}, {Path: "/r.img", ReadOnly: true, Interface: "ide"}},
	}, AccelTCG)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(args, " ")
	want := "qemu-system-x86_64 -accel tcg -m 1024M -smp 1 -nographic -monitor none -serial stdio -no-reboot" +
		" -kernel /k -initrd /i -append console=ttyS0 panic=1" +
		" -drive file=/d.qcow2,format=qcow2,if=virtio,snapshot=on -drive file=/r.img,format=raw,if=ide,readonly=on -nic none"
	if got != want {
		t.Errorf("command\n got %s\nwant %s", got, want)
	}
	args, _ = Command(Config{Kernel: "/k", Memory: "2G", CPUs: 2, Args: []string{"-nic", "user"}}, AccelKVM)
	if got := strings.Join(args, " "); !strings.Contains(got, "-accel kvm -cpu host -m 2G -smp 2") || strings.Contains(got, "-nic none") {
		t.Errorf("command %s", got)
	}
	for _, bad := range []Config{{}, {Initrd: "/i", Disks: []Disk{{Path: "/d"}}}, {Kernel: "/k", Disks: []Disk{{Path: "/a,b"}}}} {
		if _, err := Command(bad, AccelTCG); err == nil {
			t.Errorf("Command(%+v) accepted", bad)
		}
	}
}

func scan(t *testing.T, r io.Reader, markers []Marker) (conclusion, string) {
	t.Helper()
	var buf bytes.Buffer
	ch := make(chan conclusion, 1)
	scanConsole(r, &buf, nil, markers, ch)
	select {
	case c := <-ch:
		return c, buf.String()
	default:
		t.Fatal("no conclusion")
		return conclusion{}, ""
	}
}

func TestScanConsole(t *testing.T) {
	markers := []Marker{FailureOn("Kernel panic"), SuccessOn("KMODTEST-MARKER:"), FailureOn("ALERT!")}
	console := "Loading, please wait...\r\n[    5.1] KMODTEST-MARKER: kmodtest_marker loaded\r\nALERT!  /dev/x does not exist\r\n"
	// One byte per read: markers split across reads still match.
	c, text := scan(t, iotest.OneByteReader(strings.NewReader(console)), markers)
	if c.outcome != Success || c.line != "[    5.1] KMODTEST-MARKER: kmodtest_marker loaded" || c.marker.Text != "KMODTEST-MARKER:" {
		t.Errorf("conclusion %+v", c)
	}
	if strings.Contains(text, "\r") || !strings.Contains(text, "ALERT!") {
		t.Errorf("console %q: want CR removed and read to EOF", text)
	}
	// Two markers on one line: the first listed wins.
	c, _ = scan(t, strings.NewReader("ALERT! Kernel panic\n"), markers)
	if c.outcome != Failure || c.marker.Text != "Kernel panic" {
		t.Errorf("conclusion %+v", c)
	}
	// A prompt without a newline concludes.
	c, _ = scan(t, strings.NewReader("boot\n(initramfs) "), []Marker{FailureOn("(initramfs)")})
	if c.outcome != Failure || c.line != "(initramfs)" {
		t.Errorf("conclusion %+v", c)
	}
	// A prompt that stays without a newline concludes while QEMU still runs.
	pr, pw := io.Pipe()
	ch := make(chan conclusion, 1)
	go scanConsole(pr, new(bytes.Buffer), nil, []Marker{FailureOn("(initramfs)")}, ch)
	go pw.Write([]byte("Dropping to a shell!\n(initramfs) "))
	select {
	case c := <-ch:
		if c.outcome != Failure || c.line != "(initramfs)" {
			t.Errorf("conclusion %+v", c)
		}
	case <-time.After(5 * time.Second):
		t.Error("an idle prompt did not conclude")
	}
	pw.Close()
	// No marker: Exited at EOF, also after a read error.
	if c, _ = scan(t, strings.NewReader("a\nb"), markers); c.outcome != Exited {
		t.Errorf("conclusion %+v", c)
	}
	if c, _ = scan(t, iotest.TimeoutReader(strings.NewReader("abc")), markers); c.outcome != Exited {
		t.Errorf("conclusion %+v", c)
	}
}

func TestAcquire(t *testing.T) {
	t.Setenv(SlotDirEnv, t.TempDir())
	t.Setenv(SlotsEnv, "2")
	ctx := context.Background()
	r1, err := Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := Acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third Acquire with 2 slots: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		r3, err := Acquire(ctx)
		if err == nil {
			r3()
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond)
	r1()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a released slot was not taken")
	}
	r2()
	locks, _ := filepath.Glob(filepath.Join(os.Getenv(SlotDirEnv), "kmodctl-qemu-slot-*.lock"))
	if !slices.Equal(locks, []string{filepath.Join(os.Getenv(SlotDirEnv), "kmodctl-qemu-slot-0.lock"), filepath.Join(os.Getenv(SlotDirEnv), "kmodctl-qemu-slot-1.lock")}) {
		t.Errorf("lock files %v", locks)
	}
}
