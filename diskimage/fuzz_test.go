package diskimage

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// FuzzReadTable feeds hostile tables to ReadTable: it must not panic, must
// stay bounded, and what it accepts must be consistent.
func FuzzReadTable(f *testing.F) {
	f.Add(synthGPT(512, 256, []synthPart{
		{typ: guidBytes(GPTTypeEFISystem), first: 40, last: 99, name: "esp"},
		{typ: guidBytes(GPTTypeRootX86_64), first: 100, last: 200, name: "root"},
	}))
	f.Add(synthGPT(4096, 16, []synthPart{{typ: guidBytes(GPTTypeLinuxFS), first: 6, last: 9}}))
	// Real tables from sgdisk and sfdisk, cut to the table area (plus the
	// backup GPT, placed at the end of a small disk).
	if _, err := exec.LookPath("sgdisk"); err == nil {
		dir := f.TempDir()
		img := filepath.Join(dir, "g.img")
		if exec.Command("truncate", "-s", "48K", img).Run() == nil &&
			exec.Command("sgdisk", "-a1", "-n1:34:+10K", "-t1:ef00", "-n2:0:0", "-t2:8304", "-c2:root", img).Run() == nil {
			f.Add(readHead(img, 48<<10))
		}
	}
	if _, err := exec.LookPath("sfdisk"); err == nil {
		dir := f.TempDir()
		img := filepath.Join(dir, "m.img")
		c := exec.Command("sfdisk", "-q", img)
		c.Stdin = bytes.NewReader([]byte("label: dos\nstart=1,size=20,type=83,bootable\nstart=21,type=5\nsize=10,type=82\ntype=83\n"))
		if exec.Command("truncate", "-s", "32K", img).Run() == nil && c.Run() == nil {
			f.Add(readHead(img, 32<<10))
		}
	}
	f.Fuzz(func(t *testing.T, disk []byte) {
		tab, err := ReadTable(bytes.NewReader(disk), int64(len(disk)))
		if err != nil {
			return
		}
		for _, p := range tab.Partitions {
			if p.Start < 0 || p.Size <= 0 || p.Start+p.Size > int64(len(disk)) {
				t.Fatalf("accepted partition outside the disk: %+v", p)
			}
			_, _ = Probe(bytes.NewReader(disk), p.Start, p.Size)
		}
	})
}

func readHead(path string, n int) []byte {
	b, _ := os.ReadFile(path)
	return b[:min(n, len(b))]
}
