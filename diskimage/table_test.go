package diskimage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

type sfdiskJSON struct {
	PT struct {
		Label      string `json:"label"`
		ID         string `json:"id"`
		SectorSize int64  `json:"sectorsize"`
		Partitions []struct {
			Node     string `json:"node"`
			Start    int64  `json:"start"`
			Size     int64  `json:"size"`
			Type     string `json:"type"`
			UUID     string `json:"uuid"`
			Name     string `json:"name"`
			Bootable bool   `json:"bootable"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

func readTableFile(t testing.TB, path string) *Table {
	t.Helper()
	tab, err := ReadTableFile(path)
	if err != nil {
		t.Fatalf("ReadTableFile: %v", err)
	}
	return tab
}

// compareSfdisk checks our parse against sfdisk --json.
func compareSfdisk(t *testing.T, path string, tab *Table) {
	t.Helper()
	var sj sfdiskJSON
	if err := json.Unmarshal([]byte(fixture.Run(t, "sfdisk", "--json", path)), &sj); err != nil {
		t.Fatal(err)
	}
	wantKind := map[string]string{"gpt": "gpt", "dos": "mbr"}[sj.PT.Label]
	if tab.Kind != wantKind || tab.SectorSize != sj.PT.SectorSize || !strings.EqualFold(tab.DiskGUID, sj.PT.ID) {
		t.Errorf("table: got %s/%d/%s, sfdisk %s/%d/%s", tab.Kind, tab.SectorSize, tab.DiskGUID, sj.PT.Label, sj.PT.SectorSize, sj.PT.ID)
	}
	if len(tab.Partitions) != len(sj.PT.Partitions) {
		t.Fatalf("%d partitions, sfdisk %d: %+v", len(tab.Partitions), len(sj.PT.Partitions), tab.Partitions)
	}
	for i, sp := range sj.PT.Partitions {
		p := tab.Partitions[i]
		num, _ := strconv.Atoi(sp.Node[len(path):])
		if p.Number != num || int64(p.FirstLBA) != sp.Start || p.Size != sp.Size*tab.SectorSize ||
			p.Start != sp.Start*tab.SectorSize || !sameType(p.Type, sp.Type) ||
			p.Name != sp.Name || (tab.Kind == "mbr" && p.Bootable != sp.Bootable) || (tab.Kind == "gpt" && !strings.EqualFold(p.UUID, sp.UUID)) {
			t.Errorf("partition %d: got %+v\nsfdisk %+v", i, p, sp)
		}
	}
}

func TestGPTMatchesSfdisk(t *testing.T) {
	fixture.NeedTools(t, "sgdisk", "sfdisk")
	img := tempImage(t, 64<<20)
	fixture.Run(t, "sgdisk", "-n1:2048:+8M", "-t1:ef00", "-c1:ESP", "-n2:0:+16M", "-t2:ea00", "-c2:boot",
		"-n3:0:0", "-t3:8304", "-c3:root fs ✓", "-A3:set:2", img)
	tab := readTableFile(t, img)
	compareSfdisk(t, img, tab)
	if tab.UsedBackupGPT {
		t.Errorf("backup used: %s", tab.PrimaryError)
	}
	want := []string{GPTTypeEFISystem, GPTTypeXBOOTLDR, GPTTypeRootX86_64}
	for i, p := range tab.Partitions {
		if p.Type != want[i] {
			t.Errorf("partition %d type %s (%s), want %s", p.Number, p.Type, p.TypeName(), want[i])
		}
	}
	if p := tab.Partitions[2]; p.Name != "root fs ✓" || !p.Bootable || p.Attributes != 4 {
		t.Errorf("partition 3: %+v", p)
	}
	root, how, err := ChooseRoot(tab, RootOptions{Arch: "amd64"})
	if err != nil || root.Number != 3 {
		t.Errorf("ChooseRoot: %v %q %v", root, how, err)
	}
	if _, _, err := ChooseRoot(tab, RootOptions{Arch: "arm64"}); err == nil {
		t.Error("ChooseRoot arm64 on an x86-64 disk: no error")
	}
}

func TestMBRMatchesSfdisk(t *testing.T) {
	fixture.NeedTools(t, "sfdisk")
	img := tempImage(t, 64<<20)
	script := "label: dos\nlabel-id: 0x1234abcd\n" +
		"start=2048, size=16384, type=ef, bootable\n" +
		"start=18432, size=32768, type=83\n" +
		"start=51200, type=5\n" +
		"size=8192, type=82\n" +
		"size=16384, type=83\n" +
		"type=83\n"
	cmd := cmdStdin(t, script, "sfdisk", "-q", img)
	_ = cmd
	tab := readTableFile(t, img)
	compareSfdisk(t, img, tab)
	if len(tab.Partitions) != 6 || !tab.Partitions[2].Extended || tab.Partitions[5].Number != 7 || !tab.Partitions[0].Bootable {
		t.Errorf("partitions: %+v", tab.Partitions)
	}
	if _, how, err := ChooseRoot(tab, RootOptions{Number: 6}); err != nil || how != "explicit partition number" {
		t.Error(how, err)
	}
	if _, _, err := ChooseRoot(tab, RootOptions{Number: 3}); err == nil {
		t.Error("extended container accepted as root")
	}
}

func TestGPTBackupFallback(t *testing.T) {
	fixture.NeedTools(t, "sgdisk")
	img := tempImage(t, 32<<20)
	fixture.Run(t, "sgdisk", "-n1:2048:+8M", "-t1:8304", "-n2:0:0", img)
	want := readTableFile(t, img)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Corrupt a byte of the primary header (its disk GUID): CRC mismatch.
	if _, err := f.WriteAt([]byte{0xff, 0xee}, 512+60); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got := readTableFile(t, img)
	if !got.UsedBackupGPT || !strings.Contains(got.PrimaryError, "CRC32") {
		t.Fatalf("backup not used: %+v", got)
	}
	if len(got.Partitions) != 2 || got.Partitions[0] != want.Partitions[0] || got.Partitions[1] != want.Partitions[1] || got.DiskGUID != want.DiskGUID {
		t.Errorf("backup parse differs:\n%+v\n%+v", got, want)
	}
	// Also corrupt the entry array only (header intact): backup again.
	img2 := tempImage(t, 32<<20)
	fixture.Run(t, "sgdisk", "-n1:2048:+8M", "-t1:8304", img2)
	f, _ = os.OpenFile(img2, os.O_RDWR, 0)
	f.WriteAt([]byte{0x42}, 1024+56)
	f.Close()
	got = readTableFile(t, img2)
	if !got.UsedBackupGPT || !strings.Contains(got.PrimaryError, "entry array") || got.Partitions[0].Name != "" {
		t.Errorf("entry array corruption: %+v", got)
	}
}

func TestGPT4KSectors(t *testing.T) {
	disk := synthGPT(4096, 4096, []synthPart{
		{typ: guidBytes(GPTTypeEFISystem), uuid: guidBytes("11111111-2222-3333-4444-555555555555"), first: 256, last: 511, name: "esp"},
		{typ: guidBytes(GPTTypeRootARM64), uuid: guidBytes("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"), first: 512, last: 4000, name: "root"},
	})
	tab, err := ReadTable(bytes.NewReader(disk), int64(len(disk)))
	if err != nil {
		t.Fatal(err)
	}
	if tab.SectorSize != 4096 || len(tab.Partitions) != 2 {
		t.Fatalf("%+v", tab)
	}
	p := tab.Partitions[1]
	if p.Start != 512*4096 || p.Size != 3489*4096 || p.UUID != "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee" || p.Name != "root" || p.TypeName() != "Linux root (ARM-64)" {
		t.Errorf("%+v", p)
	}
	if r, _, err := ChooseRoot(tab, RootOptions{Arch: "arm64"}); err != nil || r.Number != 2 {
		t.Error(r, err)
	}
	// Backup fallback with 4K sectors.
	clear(disk[4096+20 : 4096+24])
	disk[4096+30] ^= 1
	tab, err = ReadTable(bytes.NewReader(disk), int64(len(disk)))
	if err != nil || !tab.UsedBackupGPT || len(tab.Partitions) != 2 {
		t.Errorf("4K backup: %v %+v", err, tab)
	}
}

func TestHostileTables(t *testing.T) {
	ok := synthPart{typ: guidBytes(GPTTypeLinuxFS), first: 40, last: 100}
	cases := []struct {
		name  string
		parts []synthPart
		want  string
	}{
		{"overlap", []synthPart{ok, {typ: guidBytes(GPTTypeLinuxFS), first: 90, last: 200}}, "partition 2 (bytes"},
		{"outside", []synthPart{ok, {typ: guidBytes(GPTTypeLinuxFS), first: 200, last: 100000}}, "partition 2: LBAs 200-100000 outside"},
		{"reversed", []synthPart{{typ: guidBytes(GPTTypeLinuxFS), first: 300, last: 200}}, "partition 1: last LBA 200 before"},
	}
	for _, c := range cases {
		disk := synthGPT(512, 2048, c.parts)
		_, err := ReadTable(bytes.NewReader(disk), int64(len(disk)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// Absurd entry count: header rewritten with a valid CRC.
	disk := synthGPT(512, 2048, []synthPart{ok})
	for _, lba := range []int{1, 2047} {
		h := disk[lba*512 : lba*512+92]
		binary.LittleEndian.PutUint32(h[80:], 0xffffffff)
		fixHeaderCRC(h)
	}
	_, err := ReadTable(bytes.NewReader(disk), int64(len(disk)))
	if err == nil || !strings.Contains(err.Error(), "entry count 4294967295") {
		t.Errorf("absurd count: %v", err)
	}
	// MBR: partition beyond the disk, EBR loop.
	mbr := make([]byte, 1<<20)
	mbr[510], mbr[511] = 0x55, 0xaa
	mbr[446+4] = 0x83
	binary.LittleEndian.PutUint32(mbr[446+8:], 2048)
	binary.LittleEndian.PutUint32(mbr[446+12:], 1<<30)
	if _, err := ReadTable(bytes.NewReader(mbr), int64(len(mbr))); err == nil || !strings.Contains(err.Error(), "partition 1: sectors 2048") {
		t.Errorf("mbr beyond: %v", err)
	}
	binary.LittleEndian.PutUint32(mbr[446+8:], 100)
	binary.LittleEndian.PutUint32(mbr[446+12:], 50)
	mbr[462+4] = 0x05
	binary.LittleEndian.PutUint32(mbr[462+8:], 200)
	binary.LittleEndian.PutUint32(mbr[462+12:], 1000)
	ebr := mbr[200*512:]
	ebr[510], ebr[511] = 0x55, 0xaa
	ebr[446+4] = 0x83
	binary.LittleEndian.PutUint32(ebr[446+8:], 2)
	binary.LittleEndian.PutUint32(ebr[446+12:], 10)
	ebr[462+4] = 0x05 // links to itself
	binary.LittleEndian.PutUint32(ebr[462+12:], 1)
	if _, err := ReadTable(bytes.NewReader(mbr), int64(len(mbr))); err == nil || !strings.Contains(err.Error(), "EBR") {
		t.Errorf("ebr loop: %v", err)
	}
}

func fixHeaderCRC(h []byte) {
	clear(h[16:20])
	binary.LittleEndian.PutUint32(h[16:], crc32IEEE(h))
}

func sameType(ours, sfdisk string) bool {
	if len(sfdisk) <= 2 {
		a, _ := strconv.ParseUint(ours, 16, 8)
		b, _ := strconv.ParseUint(sfdisk, 16, 8)
		return a == b
	}
	return strings.EqualFold(ours, sfdisk)
}
