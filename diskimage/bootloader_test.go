package diskimage

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// espImage makes a GPT disk with a 64 MiB EFI System Partition formatted as
// FAT<bits> by mkfs.vfat and filled by mtools (no mount: the build
// machine's kernel has no vfat): files maps paths to contents.
func espImage(t *testing.T, bits int, files map[string]string) string {
	t.Helper()
	fixture.NeedTools(t, "sgdisk", "mkfs.vfat")
	fixture.WantTools(t, "mmd", "mcopy") // mtools
	dir := t.TempDir()
	img := filepath.Join(dir, "esp.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 80<<20); err != nil {
		t.Fatal(err)
	}
	fixture.Run(t, "sgdisk", "-n", "1:2048:+64M", "-t", "1:ef00", img)
	spc := map[int]string{12: "64", 16: "4", 32: "1"}[bits] // FAT32 with 1-sector clusters: long chains
	fixture.Run(t, "mkfs.vfat", "-F", strconv.Itoa(bits), "-s", spc, "--offset", "2048", img, "65536")
	at := img + "@@1M"
	made := map[string]bool{}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	src := filepath.Join(dir, "src")
	for _, p := range paths {
		parts := strings.Split(p, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/")
			if !made[strings.ToUpper(d)] {
				made[strings.ToUpper(d)] = true
				fixture.Run(t, "mmd", "-i", at, "::/"+d)
			}
		}
		c := files[p]
		if c == "" {
			c = "x"
		}
		if c == "<empty>" {
			c = ""
		}
		if err := os.WriteFile(src, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
		fixture.Run(t, "mcopy", "-i", at, src, "::/"+p)
	}
	return img
}

func TestDetectBootloader(t *testing.T) {
	// Many files in EFI/BOOT (long names) so that the directory takes
	// several clusters before BOOTX64.EFI's entry.
	crowded := map[string]string{}
	for i := range 150 {
		crowded[filepath.Join("EFI/BOOT", "a-rather-long-file-name-for-lfn-entries-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+strings.Repeat("y", i/26))] = ""
	}
	crowded["EFI/BOOT/BOOTX64.EFI"] = "MZ fake loader"
	for _, c := range []struct {
		name  string
		bits  int
		files map[string]string
		want  bool
		why   string
	}{
		{"fat12", 12, map[string]string{"EFI/BOOT/BOOTX64.EFI": "MZ"}, true, "EFI System Partition 1 holds EFI/BOOT/BOOTX64.EFI (2 bytes)"},
		{"fat16 lower case", 16, map[string]string{"efi/boot/bootx64.efi": "MZ..."}, true, "holds EFI/BOOT/BOOTX64.EFI (5 bytes)"},
		{"fat32 crowded", 32, crowded, true, "holds EFI/BOOT/BOOTX64.EFI (14 bytes)"},
		{"fat32 distro path only", 32, map[string]string{"EFI/debian/grubx64.efi": "MZ"}, false, "no EFI/BOOT in its FAT32"},
		{"fat16 empty loader", 16, map[string]string{"EFI/BOOT/BOOTX64.EFI": "<empty>"}, false, "BOOTX64.EFI is empty"},
		{"fat12 BOOT is a file", 12, map[string]string{"EFI/BOOT": "x"}, false, "EFI/BOOT is not a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			img := espImage(t, c.bits, c.files)
			bl, err := DetectBootloader(img)
			ok, why := bl.Bootable(), bl.Why
			if err != nil {
				t.Fatal(err)
			}
			if ok != c.want || !strings.Contains(why, c.why) {
				t.Errorf("DetectBootloader = %v, %q; want %v with %q", ok, why, c.want, c.why)
			}
		})
	}

	t.Run("bios", func(t *testing.T) {
		img := filepath.Join(t.TempDir(), "bios.img")
		mbr := make([]byte, 4096)
		rand.New(rand.NewSource(1)).Read(mbr[:440])
		mbr[510], mbr[511] = 0x55, 0xaa
		if err := os.WriteFile(img, mbr, 0o644); err != nil {
			t.Fatal(err)
		}
		bl, err := DetectBootloader(img)
		ok, why := bl.Bootable(), bl.Why
		if err != nil || !ok || !strings.HasPrefix(why, "BIOS: boot code in the MBR") {
			t.Errorf("DetectBootloader = %v, %q, %v", ok, why, err)
		}
		mbr[511] = 0
		if err := os.WriteFile(img, mbr, 0o644); err != nil {
			t.Fatal(err)
		}
		bl, err = DetectBootloader(img)
		ok, why = bl.Bootable(), bl.Why
		if err != nil || ok || !strings.Contains(why, "no 55 AA signature") {
			t.Errorf("no signature: DetectBootloader = %v, %q, %v", ok, why, err)
		}
	})

	t.Run("garbage ESP", func(t *testing.T) {
		fixture.NeedTools(t, "sgdisk")
		img := filepath.Join(t.TempDir(), "g.img")
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 8<<20); err != nil {
			t.Fatal(err)
		}
		fixture.Run(t, "sgdisk", "-n", "1:2048:+4M", "-t", "1:ef00", img)
		bl, err := DetectBootloader(img)
		ok, why := bl.Bootable(), bl.Why
		if err != nil || ok || !strings.Contains(why, "EFI System Partition 1: no FAT file system") {
			t.Errorf("DetectBootloader = %v, %q, %v", ok, why, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		if _, err := DetectBootloader(filepath.Join(t.TempDir(), "missing")); err == nil {
			t.Error("missing image: no error")
		}
		small := filepath.Join(t.TempDir(), "small")
		if err := os.WriteFile(small, bytes.Repeat([]byte{1}, 100), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := DetectBootloader(small); err == nil {
			t.Error("100-byte image: no error")
		}
		if _, err := DetectBootloader(fixture.CloudImageQcow2(t)); err == nil || !strings.Contains(err.Error(), "qcow2") {
			t.Errorf("qcow2 image: %v", err)
		}
	})
}

// TestDetectBootloaderFixture: the cloud image fixture boots only directly
// (no boot code, no ESP).
func TestDetectBootloaderFixture(t *testing.T) {
	bl, err := DetectBootloader(fixture.CloudImageRaw(t))
	if err != nil {
		t.Fatal(err)
	}
	if bl.Bootable() || !strings.Contains(bl.Why, "no BIOS boot code") || !strings.Contains(bl.Why, "no EFI System Partition") {
		t.Errorf("DetectBootloader(fixture) = %+v; want not bootable, no boot code, no ESP", bl)
	}
}
