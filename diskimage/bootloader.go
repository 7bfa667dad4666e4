package diskimage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// EFIFallbackPath is the removable-media boot path of x86-64 UEFI firmware:
// the program a fresh VM's firmware (no boot entries in its variables)
// starts from an EFI System Partition.
const EFIFallbackPath = "EFI/BOOT/BOOTX64.EFI"

// Bootloader is what DetectBootloader found in a raw disk image.
type Bootloader struct {
	BIOS bool   // boot code in the MBR, with the 55 AA signature
	UEFI bool   // an EFI System Partition holding a non-empty EFIFallbackPath
	Why  string // what was found and what was not, for people
}

// Bootable reports whether firmware can boot the image: by BIOS or by UEFI.
func (b Bootloader) Bootable() bool { return b.BIOS || b.UEFI }

// DetectBootloader reports whether the raw disk image at imagePath (a qcow2
// image is refused) looks bootable by firmware, and says why (or why not):
//
//   - BIOS: the MBR's boot code (its first 440 bytes) is not all zero and the
//     sector ends with the 55 AA signature. Whether that code finds a second
//     stage (GRUB's core.img in a BIOS boot partition or the post-MBR gap) is
//     not checked: installed boot code is taken as an installed bootloader.
//   - UEFI: an EFI System Partition (GPT type or MBR type EF) whose FAT
//     file system holds a non-empty EFI/BOOT/BOOTX64.EFI, found by reading
//     the FAT12/16/32 directories in Go (8.3 names, case-insensitive). Only
//     this removable-media path counts, because a new VM's firmware has no
//     boot entries pointing elsewhere (grub-install without
//     --removable/--force-extra-removable leaves only EFI/debian/...).
//
// A damaged ESP is reported in Why, not as an error; errors are for an
// unreadable image or a damaged partition table.
func DetectBootloader(imagePath string) (Bootloader, error) {
	var bi Bootloader
	f, err := os.Open(imagePath)
	if err != nil {
		return bi, fmt.Errorf("bootloader check: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return bi, fmt.Errorf("bootloader check: %w", err)
	}
	if !st.Mode().IsRegular() {
		return bi, fmt.Errorf("bootloader check: %s is not a regular file", imagePath)
	}
	mbr := make([]byte, 512)
	if _, err := f.ReadAt(mbr, 0); err != nil {
		return bi, fmt.Errorf("bootloader check: read the MBR of %s: %w", imagePath, err)
	}
	if string(mbr[:4]) == "QFI\xfb" {
		return bi, fmt.Errorf("bootloader check: %s is a qcow2 image; convert it to raw first", imagePath)
	}
	var reasons []string
	code := !allZero(mbr[:440])
	sig := mbr[510] == 0x55 && mbr[511] == 0xaa
	switch {
	case code && sig:
		bi.BIOS = true
		reasons = append(reasons, "BIOS: boot code in the MBR")
	case code:
		reasons = append(reasons, "MBR boot code present but no 55 AA signature (not BIOS-bootable)")
	default:
		reasons = append(reasons, "no BIOS boot code (the MBR's first 440 bytes are zero)")
	}

	tab, err := ReadTable(f, st.Size())
	if err != nil && !errors.Is(err, ErrNoTable) {
		return bi, fmt.Errorf("bootloader check: %s: %w", imagePath, err)
	}
	nESP := 0
	if tab != nil {
		for _, p := range tab.Partitions {
			if p.Type != GPTTypeEFISystem && p.MBRType != 0xef {
				continue
			}
			nESP++
			size, err := fatFileSize(io.NewSectionReader(f, p.Start, p.Size), EFIFallbackPath)
			switch {
			case err != nil:
				reasons = append(reasons, fmt.Sprintf("EFI System Partition %d: %v", p.Number, err))
			case size == 0:
				reasons = append(reasons, fmt.Sprintf("EFI System Partition %d: %s is empty", p.Number, EFIFallbackPath))
			default:
				if !bi.UEFI {
					bi.UEFI = true
					reasons = append(reasons, fmt.Sprintf("UEFI: EFI System Partition %d holds %s (%d bytes)", p.Number, EFIFallbackPath, size))
				}
			}
		}
	}
	if nESP == 0 {
		reasons = append(reasons, "no EFI System Partition")
	}
	bi.Why = strings.Join(reasons, "; ")
	return bi, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
