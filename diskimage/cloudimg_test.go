package diskimage

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// TestCloudImageFixture reads the cloud image fixture (scripts/fixtures.sh
// cloudimg) as the kmod-image builder will: the GPT, the filesystems, the
// root chosen by its GPT type, and the fstab naming the filesystems' UUIDs.
func TestCloudImageFixture(t *testing.T) {
	raw := fixture.CloudImageRaw(t)
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 2<<30 {
		t.Errorf("image size %d, want 2 GiB", st.Size())
	}
	tab, err := ReadTable(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	if tab.Kind != "gpt" || tab.UsedBackupGPT {
		t.Fatalf("table kind %q (backup used: %v), want the primary GPT", tab.Kind, tab.UsedBackupGPT)
	}
	if len(tab.Partitions) != 3 {
		t.Fatalf("%d partitions, want 3: %v", len(tab.Partitions), tab.Partitions)
	}
	want := []struct {
		typ, name string
		fs        string // "" for no filesystem
	}{
		{GPTTypeBIOSBoot, "bios", ""},
		{GPTTypeXBOOTLDR, "boot", "boot"},
		{GPTTypeRootX86_64, "root", "root"},
	}
	probes := map[int]FS{}
	for i, w := range want {
		p := tab.Partitions[i]
		if p.Number != i+1 || p.Type != w.typ || p.Name != w.name {
			t.Errorf("partition %d: number %d type %s name %q, want %d %s %q", i+1, p.Number, p.Type, p.Name, i+1, w.typ, w.name)
		}
		fs, err := ProbePartition(f, p)
		if w.fs == "" {
			if err == nil {
				t.Errorf("%v: unexpected filesystem %+v", p, fs)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", p, err)
		}
		if fs.Type != "ext4" || fs.Label != w.fs || fs.UUID == "" {
			t.Errorf("%v: %+v, want ext4 labelled %q", p, fs, w.fs)
		}
		probes[p.Number] = fs
	}
	if boot := tab.Partitions[1]; boot.Size != 256<<20 {
		t.Errorf("boot partition size %d, want 256 MiB", boot.Size)
	}

	root, how, err := ChooseRoot(tab, RootOptions{Arch: "amd64", Probes: probes})
	if err != nil {
		t.Fatal(err)
	}
	if root.Number != 3 || !strings.Contains(how, "type") {
		t.Errorf("ChooseRoot: partition %d (%s), want 3 by GPT type", root.Number, how)
	}

	// The fstab in the root filesystem, read with debugfs at the
	// partition's offset (read-only; nothing is mounted).
	fixture.NeedTools(t, "debugfs")
	cmd := exec.Command("debugfs", "-R", "cat /etc/fstab", raw+"?offset="+strconv.FormatInt(root.Start, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, stderr.String())
	}
	mounts := map[string]string{} // mount point -> UUID
	for _, l := range strings.Split(string(out), "\n") {
		fields := strings.Fields(l)
		if len(fields) >= 3 && strings.HasPrefix(fields[0], "UUID=") {
			if fields[2] != "ext4" {
				t.Errorf("fstab line %q: type %s, want ext4", l, fields[2])
			}
			mounts[fields[1]] = strings.TrimPrefix(fields[0], "UUID=")
		}
	}
	if len(mounts) != 2 || mounts["/"] != probes[3].UUID || mounts["/boot"] != probes[2].UUID {
		t.Errorf("fstab mounts %v, want / = %s and /boot = %s\n%s", mounts, probes[3].UUID, probes[2].UUID, out)
	}
}

// TestCloudImageQcow2Fixture checks that the qcow2 fixture is a qcow2 image
// of the raw one's size.
func TestCloudImageQcow2Fixture(t *testing.T) {
	q := fixture.CloudImageQcow2(t)
	b := make([]byte, 32)
	f, err := os.Open(q)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if string(b[:4]) != "QFI\xfb" {
		t.Fatalf("%s: magic %q, want QFI\\xfb", q, b[:4])
	}
	// Virtual size: big-endian uint64 at offset 24 of the header.
	var size uint64
	for _, c := range b[24:32] {
		size = size<<8 | uint64(c)
	}
	if size != 2<<30 {
		t.Errorf("virtual size %d, want 2 GiB", size)
	}
}
