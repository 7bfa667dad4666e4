package bootcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// Kernel is a bootable kernel found in a mounted image tree.
type Kernel struct {
	// Release is the kernel release (uname -r), e.g. 6.1.0-56-amd64.
	Release string
	// Vmlinuz and Initrd are host paths inside the tree (symbolic links
	// resolved within it); Initrd is "" when the release has none.
	Vmlinuz, Initrd string
}

// FindKernels lists the kernels of the image mounted at root (with its
// /boot mounted below it), newest first in version order (kmod.CompareReleases):
//
//   - /boot/vmlinuz-KVER, whose initrd is /boot/initrd.img-KVER (Debian,
//     Ubuntu), /boot/initramfs-KVER.img (Fedora, RHEL, Arch: dracut,
//     mkinitcpio), /boot/initrd-KVER.img or /boot/initrd-KVER (SUSE);
//   - /lib/modules/KVER/vmlinuz and /usr/lib/modules/KVER/vmlinuz (the
//     kernel-install layout) for releases without a /boot/vmlinuz-KVER, with
//     the same /boot initrd names or /lib/modules/KVER/initrd.
//
// A release with a vmlinuz but no initrd is listed with Initrd "". Empty
// files, names ending .old, .bak or .sig and dpkg leftovers (.dpkg-*) are
// skipped. Paths are resolved inside root: an absolute symbolic link in the
// image (/boot/vmlinuz-x -> /boot/real) points into root, never at the
// host. No kernel at all is not an error: the list is empty.
func FindKernels(root string) ([]Kernel, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("find kernels: %w", err)
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("find kernels: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("find kernels: %s is not a directory", root)
	}
	byRelease := map[string]Kernel{}
	var order []string
	add := func(k Kernel) {
		if _, ok := byRelease[k.Release]; ok {
			return
		}
		byRelease[k.Release] = k
		order = append(order, k.Release)
	}
	initrdFor := func(rel string, extra ...string) string {
		cands := []string{
			"/boot/initrd.img-" + rel,
			"/boot/initramfs-" + rel + ".img",
			"/boot/initrd-" + rel + ".img",
			"/boot/initrd-" + rel,
		}
		for _, c := range append(cands, extra...) {
			if p, ok := regularIn(root, c); ok {
				return p
			}
		}
		return ""
	}

	names, err := listDirIn(root, "/boot")
	if err != nil {
		return nil, fmt.Errorf("find kernels: %w", err)
	}
	for _, n := range names {
		rel, ok := strings.CutPrefix(n, "vmlinuz-")
		if !ok || skipRelease(rel) {
			continue
		}
		if p, ok := regularIn(root, "/boot/"+n); ok {
			add(Kernel{Release: rel, Vmlinuz: p, Initrd: initrdFor(rel)})
		}
	}
	for _, dir := range []string{"/lib/modules", "/usr/lib/modules"} {
		names, err := listDirIn(root, dir)
		if err != nil {
			return nil, fmt.Errorf("find kernels: %w", err)
		}
		for _, rel := range names {
			if skipRelease(rel) {
				continue
			}
			if p, ok := regularIn(root, dir+"/"+rel+"/vmlinuz"); ok {
				add(Kernel{Release: rel, Vmlinuz: p, Initrd: initrdFor(rel, dir+"/"+rel+"/initrd")})
			}
		}
	}

	ks := make([]Kernel, 0, len(order))
	for _, r := range order {
		ks = append(ks, byRelease[r])
	}
	sort.SliceStable(ks, func(i, j int) bool { return kmod.CompareReleases(ks[i].Release, ks[j].Release) > 0 })
	return ks, nil
}

func skipRelease(rel string) bool {
	if rel == "" || strings.Contains(rel, ".dpkg-") || strings.ContainsAny(rel, "/ \t\n") {
		return true
	}
	for _, s := range []string{".old", ".bak", ".sig"} {
		if strings.HasSuffix(rel, s) {
			return true
		}
	}
	return false
}

// listDirIn lists the names in the image directory p (symbolic links
// resolved inside root); a missing p (or one that is not a directory) lists
// nothing.
func listDirIn(root, p string) ([]string, error) {
	h, err := securejoin.SecureJoin(root, p)
	if err == nil {
		var es []os.DirEntry
		if es, err = os.ReadDir(h); err == nil {
			names := make([]string, 0, len(es))
			for _, e := range es {
				names = append(names, e.Name())
			}
			return names, nil
		}
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, nil
	}
	return nil, err
}

// regularIn resolves p inside root (symbolic links followed, absolute
// targets and ".." never leaving root) and reports whether it is a
// non-empty regular file.
func regularIn(root, p string) (string, bool) {
	h, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return "", false
	}
	st, err := os.Stat(h)
	if err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
		return "", false
	}
	return h, true
}

// RootArg returns the root= value that boots the image mounted at root: the
// source of the "/" entry of root/etc/fstab (the last one if there are
// several). UUID=, LABEL=, PARTUUID= and PARTLABEL= sources are returned as
// they are (quotes around the value removed), /dev/disk/by-uuid/X,
// by-label/X, by-partuuid/X and by-partlabel/X are turned into those tags,
// and any other /dev/... name is refused: the guest sees virtio disks
// (/dev/vda...), so device names of the build machine or of another
// hypervisor cannot be trusted. Without an fstab or a "/" entry the result
// is "UUID=<fallbackUUID>" (fallbackUUID may also be given as UUID=...); an
// empty fallback is then an error.
//
// The tags need an initrd (udev or blkid) to be resolved, except PARTUUID=,
// which the kernel resolves itself.
func RootArg(root, fallbackUUID string) (string, error) {
	fallback := func(why string) (string, error) {
		u := strings.TrimPrefix(strings.TrimSpace(fallbackUUID), "UUID=")
		if u == "" {
			return "", fmt.Errorf("root=: %s and no filesystem UUID to fall back on", why)
		}
		if err := checkCmdlineValue(u); err != nil {
			return "", fmt.Errorf("root=: fallback UUID: %w", err)
		}
		return "UUID=" + u, nil
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("root=: %w", err)
	}
	fstab, err := securejoin.SecureJoin(root, "/etc/fstab")
	if err != nil {
		return "", fmt.Errorf("root=: %w", err)
	}
	f, err := os.Open(fstab)
	if errors.Is(err, os.ErrNotExist) {
		return fallback("no /etc/fstab in the image")
	}
	if err != nil {
		return "", fmt.Errorf("root=: %w", err)
	}
	entries, err := diskimage.ParseFstab(f)
	f.Close()
	if err != nil && !errors.Is(err, diskimage.ErrBadFstabLine) {
		return "", fmt.Errorf("root=: read %s: %w", fstab, err)
	}
	spec, line := "", 0
	for _, e := range entries {
		if path.Clean(e.File) == "/" {
			spec, line = e.Spec, e.Line
		}
	}
	if spec == "" {
		return fallback("/etc/fstab has no entry for /")
	}
	where := fmt.Sprintf("/etc/fstab line %d", line)
	if tag, val, ok := strings.Cut(spec, "="); ok {
		switch tag {
		case "UUID", "LABEL", "PARTUUID", "PARTLABEL":
			val = unquote(val)
			if val == "" {
				return "", fmt.Errorf("root=: %s: empty %s for /", where, tag)
			}
			if err := checkCmdlineValue(val); err != nil {
				return "", fmt.Errorf("root=: %s: %s for /: %w", where, tag, err)
			}
			return tag + "=" + val, nil
		}
	}
	if strings.HasPrefix(spec, "/dev/") {
		for dir, tag := range map[string]string{
			"/dev/disk/by-uuid/":      "UUID",
			"/dev/disk/by-label/":     "LABEL",
			"/dev/disk/by-partuuid/":  "PARTUUID",
			"/dev/disk/by-partlabel/": "PARTLABEL",
		} {
			if val, ok := strings.CutPrefix(spec, dir); ok && val != "" && !strings.Contains(val, "/") {
				if err := checkCmdlineValue(val); err != nil {
					return "", fmt.Errorf("root=: %s: %s for /: %w", where, spec, err)
				}
				return tag + "=" + val, nil
			}
		}
		return "", fmt.Errorf("root=: %s names the root filesystem by device name %s, which cannot be trusted in the check's VM (its disk is a virtio /dev/vda); name it by UUID=, LABEL=, PARTUUID= or PARTLABEL= in fstab, or pass the root= value explicitly", where, spec)
	}
	return "", fmt.Errorf("root=: %s: unsupported source %q for / (want UUID=, LABEL=, PARTUUID=, PARTLABEL= or /dev/disk/by-*/...)", where, spec)
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		return s[1 : len(s)-1]
	}
	return s
}

// checkCmdlineValue refuses what cannot be one kernel command line word.
func checkCmdlineValue(v string) error {
	if strings.ContainsAny(v, " \t\n\"'\\") {
		return fmt.Errorf("%q holds blanks, quotes or backslashes, which the kernel command line cannot carry", v)
	}
	return nil
}

// Bootloader detection.

// EFIFallbackPath is the removable-media boot path of x86-64 UEFI firmware:
// the program a fresh VM's firmware (no boot entries in its variables)
// starts from an EFI System Partition.
const EFIFallbackPath = "EFI/BOOT/BOOTX64.EFI"

// bootInfo is what detectBoot found.
type bootInfo struct {
	bios bool   // MBR boot code and signature
	efi  bool   // an ESP holding EFIFallbackPath
	why  string // human summary
}

// HasBootloader reports whether the raw disk image at imagePath (a qcow2
// image is refused) looks
// bootable by firmware, and says why (or why not):
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
// A damaged ESP is reported in the string, not as an error; errors are for
// an unreadable image or a damaged partition table.
func HasBootloader(imagePath string) (bool, string, error) {
	bi, err := detectBoot(imagePath)
	if err != nil {
		return false, "", err
	}
	return bi.bios || bi.efi, bi.why, nil
}

func detectBoot(imagePath string) (bootInfo, error) {
	var bi bootInfo
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
		bi.bios = true
		reasons = append(reasons, "BIOS: boot code in the MBR")
	case code:
		reasons = append(reasons, "MBR boot code present but no 55 AA signature (not BIOS-bootable)")
	default:
		reasons = append(reasons, "no BIOS boot code (the MBR's first 440 bytes are zero)")
	}

	tab, err := diskimage.ReadTable(f, st.Size())
	if err != nil && !errors.Is(err, diskimage.ErrNoTable) {
		return bi, fmt.Errorf("bootloader check: %s: %w", imagePath, err)
	}
	nESP := 0
	if tab != nil {
		for _, p := range tab.Partitions {
			if p.Type != diskimage.GPTTypeEFISystem && p.MBRType != 0xef {
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
				if !bi.efi {
					bi.efi = true
					reasons = append(reasons, fmt.Sprintf("UEFI: EFI System Partition %d holds %s (%d bytes)", p.Number, EFIFallbackPath, size))
				}
			}
		}
	}
	if nESP == 0 {
		reasons = append(reasons, "no EFI System Partition")
	}
	bi.why = strings.Join(reasons, "; ")
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

// FAT reading: just enough to find one file by path.

type fatFS struct {
	r        io.ReaderAt
	size     int64
	bps, spc int64 // bytes per sector, sectors per cluster
	fatStart int64 // byte offset of the first FAT
	fatBytes int64
	kind     int   // 12, 16 or 32
	rootOff  int64 // FAT12/16: byte offset and size of the fixed root directory
	rootLen  int64
	rootClus uint32 // FAT32
	dataOff  int64  // byte offset of cluster 2
	clusters uint32 // count of data clusters
}

// maxDirBytes bounds a directory read (a FAT directory holds at most 65536
// entries of 32 bytes).
const maxDirBytes = 65536 * 32

func openFAT(r io.ReaderAt, size int64) (*fatFS, error) {
	bs := make([]byte, 512)
	if _, err := r.ReadAt(bs, 0); err != nil {
		return nil, fmt.Errorf("read the FAT boot sector: %w", err)
	}
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(bs[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(bs[o:])) }
	fs := &fatFS{r: r, size: size, bps: le16(11), spc: int64(bs[13])}
	if fs.bps < 512 || fs.bps > 4096 || fs.bps&(fs.bps-1) != 0 || fs.spc == 0 || fs.spc&(fs.spc-1) != 0 {
		return nil, errors.New("no FAT file system (bad BIOS parameter block)")
	}
	reserved, nfats, rootEnt := le16(14), int64(bs[16]), le16(17)
	tot, fatSz := le16(19), le16(22)
	if tot == 0 {
		tot = le32(32)
	}
	if fatSz == 0 {
		fatSz = le32(36)
	}
	if reserved == 0 || nfats == 0 || fatSz == 0 || tot == 0 {
		return nil, errors.New("no FAT file system (bad BIOS parameter block)")
	}
	rootSecs := (rootEnt*32 + fs.bps - 1) / fs.bps
	meta := reserved + nfats*fatSz + rootSecs
	if tot <= meta || tot*fs.bps > size {
		return nil, fmt.Errorf("FAT file system of %d sectors does not fit its %d-byte partition", tot, size)
	}
	fs.clusters = uint32((tot - meta) / fs.spc)
	switch {
	case fs.clusters < 4085:
		fs.kind = 12
	case fs.clusters < 65525:
		fs.kind = 16
	default:
		fs.kind = 32
	}
	fs.fatStart = reserved * fs.bps
	fs.fatBytes = fatSz * fs.bps
	fs.dataOff = meta * fs.bps
	if fs.kind == 32 {
		fs.rootClus = uint32(le32(44))
	} else {
		fs.rootOff = (reserved + nfats*fatSz) * fs.bps
		fs.rootLen = rootSecs * fs.bps
	}
	return fs, nil
}

// next returns the FAT entry of cluster c and whether it ends the chain.
func (fs *fatFS) next(c uint32) (uint32, bool, error) {
	var off int64
	switch fs.kind {
	case 12:
		off = int64(c) + int64(c)/2
	case 16:
		off = int64(c) * 2
	default:
		off = int64(c) * 4
	}
	w := int64(2)
	if fs.kind == 32 {
		w = 4
	}
	if off+w > fs.fatBytes {
		return 0, false, fmt.Errorf("cluster %d beyond the FAT", c)
	}
	b := make([]byte, 4)
	if _, err := fs.r.ReadAt(b[:w], fs.fatStart+off); err != nil {
		return 0, false, fmt.Errorf("read the FAT: %w", err)
	}
	var v, eoc uint32
	switch fs.kind {
	case 12:
		v = uint32(binary.LittleEndian.Uint16(b))
		if c&1 == 1 {
			v >>= 4
		}
		v &= 0xfff
		eoc = 0xff8
	case 16:
		v, eoc = uint32(binary.LittleEndian.Uint16(b)), 0xfff8
	default:
		v, eoc = binary.LittleEndian.Uint32(b)&0x0fffffff, 0x0ffffff8
	}
	if v >= eoc {
		return 0, true, nil
	}
	if v < 2 || v-2 >= fs.clusters {
		return 0, false, fmt.Errorf("bad FAT entry %#x for cluster %d", v, c)
	}
	return v, false, nil
}

// readChain reads up to limit bytes of the cluster chain starting at c.
func (fs *fatFS) readChain(c uint32, limit int64) ([]byte, error) {
	csize := fs.bps * fs.spc
	var out []byte
	for n := uint32(0); ; n++ {
		if c < 2 || c-2 >= fs.clusters {
			return nil, fmt.Errorf("bad cluster number %d", c)
		}
		if n > fs.clusters {
			return nil, errors.New("cluster chain loops")
		}
		buf := make([]byte, csize)
		if _, err := fs.r.ReadAt(buf, fs.dataOff+int64(c-2)*csize); err != nil {
			return nil, fmt.Errorf("read cluster %d: %w", c, err)
		}
		out = append(out, buf...)
		if int64(len(out)) >= limit {
			return out[:limit], nil
		}
		nx, end, err := fs.next(c)
		if err != nil {
			return nil, err
		}
		if end {
			return out, nil
		}
		c = nx
	}
}

type fatEntry struct {
	name    string
	dir     bool
	cluster uint32
	size    int64
}

// lookup finds name (an 8.3 name, case-insensitive) in a directory's bytes.
func (fs *fatFS) lookup(dir []byte, name string) (fatEntry, bool) {
	for o := 0; o+32 <= len(dir); o += 32 {
		e := dir[o : o+32]
		if e[0] == 0 {
			break
		}
		attr := e[11]
		if e[0] == 0xe5 || attr&0x0f == 0x0f || attr&0x08 != 0 {
			continue // deleted, long-name part, volume label
		}
		base := []byte(strings.TrimRight(string(e[0:8]), " "))
		if len(base) > 0 && base[0] == 0x05 {
			base[0] = 0xe5
		}
		n := string(base)
		if ext := strings.TrimRight(string(e[8:11]), " "); ext != "" {
			n += "." + ext
		}
		if !strings.EqualFold(n, name) {
			continue
		}
		cl := uint32(binary.LittleEndian.Uint16(e[26:]))
		if fs.kind == 32 {
			cl |= uint32(binary.LittleEndian.Uint16(e[20:])) << 16
		}
		return fatEntry{name: n, dir: attr&0x10 != 0, cluster: cl, size: int64(binary.LittleEndian.Uint32(e[28:]))}, true
	}
	return fatEntry{}, false
}

// fatFileSize returns the size of the regular file at p ("A/B/C") in the FAT
// file system read from r.
func fatFileSize(r *io.SectionReader, p string) (int64, error) {
	fs, err := openFAT(r, r.Size())
	if err != nil {
		return 0, err
	}
	var dir []byte
	if fs.kind == 32 {
		dir, err = fs.readChain(fs.rootClus, maxDirBytes)
	} else {
		dir = make([]byte, fs.rootLen)
		_, err = r.ReadAt(dir, fs.rootOff)
	}
	if err != nil {
		return 0, fmt.Errorf("FAT%d root directory: %w", fs.kind, err)
	}
	parts := strings.Split(p, "/")
	for i, part := range parts {
		e, ok := fs.lookup(dir, part)
		if !ok {
			return 0, fmt.Errorf("no %s in its FAT%d file system", strings.Join(parts[:i+1], "/"), fs.kind)
		}
		if i == len(parts)-1 {
			if e.dir {
				return 0, fmt.Errorf("%s is a directory", p)
			}
			return e.size, nil
		}
		if !e.dir {
			return 0, fmt.Errorf("%s is not a directory", strings.Join(parts[:i+1], "/"))
		}
		if dir, err = fs.readChain(e.cluster, maxDirBytes); err != nil {
			return 0, fmt.Errorf("FAT%d directory %s: %w", fs.kind, strings.Join(parts[:i+1], "/"), err)
		}
	}
	return 0, errors.New("empty path")
}
