// Package diskimage reads partition tables and filesystem superblocks of raw
// disk images without kernel help, and attaches partitions with offset loop
// devices (the build machines' kernels do not scan partition tables).
package diskimage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sort"
	"strings"
	"unicode/utf16"
)

// Limits applied to on-disk values before anything is allocated.
const (
	maxGPTEntries       = 4096
	maxGPTEntryArray    = 1 << 20 // bytes
	maxLogicalPartition = 256
)

// Table is a parsed partition table.
type Table struct {
	Kind       string // "gpt" or "mbr"
	SectorSize int64
	// DiskGUID is the GPT disk GUID (lower case) or the MBR disk signature
	// formatted like sfdisk: "0x1234abcd".
	DiskGUID string
	// UsedBackupGPT is true when the primary GPT header or its entry array
	// was invalid and the backup copy at the end of the disk was used.
	UsedBackupGPT bool
	// PrimaryError tells why the primary GPT was rejected (UsedBackupGPT).
	PrimaryError string
	Partitions   []Partition
}

// Partition is one table entry. Start and Size are in bytes.
type Partition struct {
	Number     int    // 1-based; MBR logical partitions start at 5
	Start      int64  // byte offset into the disk
	Size       int64  // bytes
	FirstLBA   uint64 // in Table.SectorSize units
	LastLBA    uint64 // inclusive
	Type       string // GPT: lower-case type GUID; MBR: two hex digits, e.g. "83"
	MBRType    byte   // MBR only
	Name       string // GPT partition name (UTF-16LE decoded)
	UUID       string // GPT unique partition GUID (lower case); MBR: "<diskid>-NN"
	Attributes uint64 // GPT attribute bits
	Bootable   bool   // MBR active flag, or GPT legacy BIOS bootable attribute (bit 2)
	Extended   bool   // MBR extended container (holds the logical partitions)
}

// TypeName returns a human name of the partition type, or "" if unknown.
func (p Partition) TypeName() string {
	if p.MBRType != 0 {
		return mbrTypeNames[p.MBRType]
	}
	return gptTypeNames[p.Type]
}

func (p Partition) String() string {
	n := p.TypeName()
	if n == "" {
		n = p.Type
	}
	return fmt.Sprintf("partition %d (%s, start %d, size %d)", p.Number, n, p.Start, p.Size)
}

// Well known GPT partition type GUIDs.
const (
	GPTTypeLinuxFS     = "0fc63daf-8483-4772-8e79-3d69d8477de4"
	GPTTypeRootX86_64  = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
	GPTTypeRootARM64   = "b921b045-1df0-41c3-af44-4c6f280d3fae"
	GPTTypeRootX86     = "44479540-f297-41b2-9af7-d131d5f0458a"
	GPTTypeRootARM     = "69dad710-2ce4-4e3c-b16c-21a1d49abed3"
	GPTTypeRootRISCV64 = "72ec70a6-cf74-40e6-bd49-4bda08e8f224"
	GPTTypeEFISystem   = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
	GPTTypeBIOSBoot    = "21686148-6449-6e6f-744e-656564454649"
	GPTTypeLinuxSwap   = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
	GPTTypeXBOOTLDR    = "bc13c2ff-59e6-4262-a352-b275fd6f7172"
	GPTTypeLinuxLVM    = "e6d6d379-f507-44c2-a23c-238f2a3df928"
	GPTTypeLinuxRAID   = "a19d880f-05fc-4d3b-a006-743f0f84911e"
	GPTTypeLinuxHome   = "933ac7e1-2eb4-4f13-b844-0e14e2aef915"
	GPTTypeMSBasicData = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"
)

var gptTypeNames = map[string]string{
	GPTTypeLinuxFS:     "Linux filesystem",
	GPTTypeRootX86_64:  "Linux root (x86-64)",
	GPTTypeRootARM64:   "Linux root (ARM-64)",
	GPTTypeRootX86:     "Linux root (x86)",
	GPTTypeRootARM:     "Linux root (ARM)",
	GPTTypeRootRISCV64: "Linux root (RISC-V-64)",
	GPTTypeEFISystem:   "EFI System",
	GPTTypeBIOSBoot:    "BIOS boot",
	GPTTypeLinuxSwap:   "Linux swap",
	GPTTypeXBOOTLDR:    "Linux extended boot (/boot, XBOOTLDR)",
	GPTTypeLinuxLVM:    "Linux LVM",
	GPTTypeLinuxRAID:   "Linux RAID",
	GPTTypeLinuxHome:   "Linux home",
	GPTTypeMSBasicData: "Microsoft basic data",
}

var mbrTypeNames = map[byte]string{
	0x01: "FAT12", 0x04: "FAT16 <32M", 0x05: "Extended", 0x06: "FAT16",
	0x07: "HPFS/NTFS/exFAT", 0x0b: "W95 FAT32", 0x0c: "W95 FAT32 (LBA)",
	0x0e: "W95 FAT16 (LBA)", 0x0f: "W95 Ext'd (LBA)", 0x82: "Linux swap",
	0x83: "Linux", 0x85: "Linux extended", 0x8e: "Linux LVM", 0xee: "GPT",
	0xef: "EFI (FAT-12/16/32)", 0xfd: "Linux raid autodetect",
}

func isExtendedType(t byte) bool { return t == 0x05 || t == 0x0f || t == 0x85 }

// ErrNoTable is returned when neither an MBR nor a GPT is found.
var ErrNoTable = errors.New("no partition table (no MBR signature and no GPT header)")

// ReadTableFile reads the partition table of the raw disk image file at
// path (ReadTable on the whole file).
func ReadTableFile(path string) (*Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	tab, err := ReadTable(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tab, nil
}

// ReadTable parses the partition table of a disk of the given size. A
// protective MBR (type 0xEE) or a GPT header without MBR selects GPT, with
// 512 and 4096-byte sectors tried; otherwise the MBR with its chain of
// logical partitions is read.
func ReadTable(r io.ReaderAt, size int64) (*Table, error) {
	if size < 512 {
		return nil, fmt.Errorf("disk too small for a partition table: %d bytes", size)
	}
	mbr := make([]byte, 512)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return nil, fmt.Errorf("read MBR: %w", err)
	}
	hasMBR := mbr[510] == 0x55 && mbr[511] == 0xaa
	protective := false
	if hasMBR {
		for i := 0; i < 4; i++ {
			if mbr[446+16*i+4] == 0xee {
				protective = true
			}
		}
	}
	if protective || !hasMBR {
		var errs []error
		for _, ss := range []int64{512, 4096} {
			t, err := readGPT(r, size, ss)
			if err == nil {
				return t, nil
			}
			if errors.Is(err, errNoGPTHeader) {
				continue
			}
			errs = append(errs, fmt.Errorf("sector size %d: %w", ss, err))
		}
		if len(errs) > 0 {
			return nil, fmt.Errorf("gpt: %w", errors.Join(errs...))
		}
		if protective {
			return nil, errors.New("gpt: protective MBR (type 0xee) but no valid GPT header at LBA 1 or at the end of the disk")
		}
		return nil, ErrNoTable
	}
	return readMBR(r, size, mbr)
}

// ---- GPT ----

var errNoGPTHeader = errors.New("no GPT header")

type gptHeader struct {
	myLBA, altLBA, firstUsable, lastUsable uint64
	diskGUID                               string
	entryLBA                               uint64
	numEntries, entrySize, entryCRC        uint32
}

func readGPT(r io.ReaderAt, size, ss int64) (*Table, error) {
	if size < 3*ss {
		return nil, errNoGPTHeader
	}
	lastLBA := uint64(size/ss) - 1
	h, entries, perr := readGPTAt(r, size, ss, 1)
	t := &Table{Kind: "gpt", SectorSize: ss}
	if perr != nil {
		if errors.Is(perr, errNoGPTHeader) {
			// Without a primary signature, only accept a backup at the end.
			var berr error
			h, entries, berr = readGPTAt(r, size, ss, lastLBA)
			if berr != nil {
				return nil, errNoGPTHeader
			}
		} else {
			var berr error
			h, entries, berr = readGPTAt(r, size, ss, lastLBA)
			if berr != nil {
				return nil, fmt.Errorf("primary header: %v; backup header at LBA %d: %v", perr, lastLBA, berr)
			}
		}
		t.UsedBackupGPT = true
		t.PrimaryError = perr.Error()
	}
	t.DiskGUID = h.diskGUID
	for i := uint32(0); i < h.numEntries; i++ {
		e := entries[int(i)*int(h.entrySize):]
		typ := guidString(e[0:16])
		if typ == "00000000-0000-0000-0000-000000000000" {
			continue
		}
		p := Partition{
			Number:     int(i) + 1,
			Type:       typ,
			UUID:       guidString(e[16:32]),
			FirstLBA:   binary.LittleEndian.Uint64(e[32:40]),
			LastLBA:    binary.LittleEndian.Uint64(e[40:48]),
			Attributes: binary.LittleEndian.Uint64(e[48:56]),
			Name:       utf16Name(e[56:128]),
		}
		p.Bootable = p.Attributes&4 != 0
		if p.LastLBA < p.FirstLBA {
			return nil, fmt.Errorf("partition %d: last LBA %d before first LBA %d", p.Number, p.LastLBA, p.FirstLBA)
		}
		if p.FirstLBA < h.firstUsable || p.LastLBA > h.lastUsable {
			return nil, fmt.Errorf("partition %d: LBAs %d-%d outside the usable area %d-%d", p.Number, p.FirstLBA, p.LastLBA, h.firstUsable, h.lastUsable)
		}
		if p.LastLBA > lastLBA {
			return nil, fmt.Errorf("partition %d: ends at LBA %d beyond the end of the disk (LBA %d)", p.Number, p.LastLBA, lastLBA)
		}
		p.Start = int64(p.FirstLBA) * ss
		p.Size = int64(p.LastLBA-p.FirstLBA+1) * ss
		t.Partitions = append(t.Partitions, p)
	}
	if err := checkOverlap(t.Partitions); err != nil {
		return nil, err
	}
	return t, nil
}

// readGPTAt reads and verifies the header at lba and its entry array.
func readGPTAt(r io.ReaderAt, size, ss int64, lba uint64) (*gptHeader, []byte, error) {
	buf := make([]byte, ss)
	if _, err := r.ReadAt(buf, int64(lba)*ss); err != nil {
		return nil, nil, fmt.Errorf("read header at LBA %d: %w", lba, err)
	}
	if string(buf[0:8]) != "EFI PART" {
		return nil, nil, errNoGPTHeader
	}
	hsize := binary.LittleEndian.Uint32(buf[12:16])
	if hsize < 92 || int64(hsize) > ss {
		return nil, nil, fmt.Errorf("header size %d out of range 92..%d", hsize, ss)
	}
	want := binary.LittleEndian.Uint32(buf[16:20])
	hdr := append([]byte(nil), buf[:hsize]...)
	clear(hdr[16:20])
	if got := crc32.ChecksumIEEE(hdr); got != want {
		return nil, nil, fmt.Errorf("header CRC32 mismatch: stored %#08x, computed %#08x", want, got)
	}
	h := &gptHeader{
		myLBA:       binary.LittleEndian.Uint64(buf[24:32]),
		altLBA:      binary.LittleEndian.Uint64(buf[32:40]),
		firstUsable: binary.LittleEndian.Uint64(buf[40:48]),
		lastUsable:  binary.LittleEndian.Uint64(buf[48:56]),
		diskGUID:    guidString(buf[56:72]),
		entryLBA:    binary.LittleEndian.Uint64(buf[72:80]),
		numEntries:  binary.LittleEndian.Uint32(buf[80:84]),
		entrySize:   binary.LittleEndian.Uint32(buf[84:88]),
		entryCRC:    binary.LittleEndian.Uint32(buf[88:92]),
	}
	sectors := uint64(size / ss)
	if h.myLBA != lba {
		return nil, nil, fmt.Errorf("header at LBA %d claims to be at LBA %d", lba, h.myLBA)
	}
	if h.firstUsable > h.lastUsable || h.lastUsable >= sectors {
		return nil, nil, fmt.Errorf("usable LBAs %d-%d invalid for a disk of %d sectors", h.firstUsable, h.lastUsable, sectors)
	}
	if h.entrySize < 128 || h.entrySize > 4096 || h.entrySize%8 != 0 {
		return nil, nil, fmt.Errorf("entry size %d invalid (want a multiple of 8 in 128..4096)", h.entrySize)
	}
	if h.numEntries == 0 || h.numEntries > maxGPTEntries {
		return nil, nil, fmt.Errorf("entry count %d out of range 1..%d", h.numEntries, maxGPTEntries)
	}
	arr := int64(h.numEntries) * int64(h.entrySize)
	if arr > maxGPTEntryArray {
		return nil, nil, fmt.Errorf("entry array of %d bytes exceeds %d", arr, maxGPTEntryArray)
	}
	if h.entryLBA >= sectors || int64(h.entryLBA)*ss+arr > size {
		return nil, nil, fmt.Errorf("entry array at LBA %d (%d bytes) beyond the end of the disk", h.entryLBA, arr)
	}
	entries := make([]byte, arr)
	if _, err := r.ReadAt(entries, int64(h.entryLBA)*ss); err != nil {
		return nil, nil, fmt.Errorf("read entry array at LBA %d: %w", h.entryLBA, err)
	}
	if got := crc32.ChecksumIEEE(entries); got != h.entryCRC {
		return nil, nil, fmt.Errorf("entry array CRC32 mismatch: stored %#08x, computed %#08x", h.entryCRC, got)
	}
	return h, entries, nil
}

// guidString formats a mixed-endian on-disk GUID in lower case.
func guidString(b []byte) string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(b[0:4]), binary.LittleEndian.Uint16(b[4:6]),
		binary.LittleEndian.Uint16(b[6:8]), b[8:10], b[10:16])
}

func utf16Name(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// ---- MBR ----

func readMBR(r io.ReaderAt, size int64, mbr []byte) (*Table, error) {
	const ss = 512
	t := &Table{Kind: "mbr", SectorSize: ss,
		DiskGUID: fmt.Sprintf("0x%08x", binary.LittleEndian.Uint32(mbr[440:444]))}
	sectors := uint64(size / ss)
	var ext *Partition
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*i+16]
		typ := e[4]
		if typ == 0 {
			continue
		}
		p, err := mbrEntry(e, 0, i+1, sectors)
		if err != nil {
			return nil, err
		}
		if isExtendedType(typ) {
			if ext != nil {
				return nil, fmt.Errorf("mbr: partition %d: second extended partition (first is %d)", p.Number, ext.Number)
			}
			p.Extended = true
			pp := p
			ext = &pp
		}
		t.Partitions = append(t.Partitions, p)
	}
	if ext != nil {
		logical, err := readEBRChain(r, *ext, sectors)
		if err != nil {
			return nil, err
		}
		t.Partitions = append(t.Partitions, logical...)
	}
	for i := range t.Partitions {
		t.Partitions[i].UUID = fmt.Sprintf("%s-%02d", strings.TrimPrefix(t.DiskGUID, "0x"), t.Partitions[i].Number)
	}
	var plain []Partition
	for _, p := range t.Partitions {
		if !p.Extended {
			plain = append(plain, p)
		}
	}
	if err := checkOverlap(plain); err != nil {
		return nil, fmt.Errorf("mbr: %w", err)
	}
	return t, nil
}

func mbrEntry(e []byte, base uint64, num int, sectors uint64) (Partition, error) {
	start := base + uint64(binary.LittleEndian.Uint32(e[8:12]))
	n := uint64(binary.LittleEndian.Uint32(e[12:16]))
	p := Partition{Number: num, MBRType: e[4], Type: fmt.Sprintf("%02x", e[4]), Bootable: e[0] == 0x80}
	if n == 0 {
		return p, fmt.Errorf("mbr: partition %d: zero length", num)
	}
	if start == 0 {
		return p, fmt.Errorf("mbr: partition %d: starts at sector 0 (the MBR)", num)
	}
	if start+n > sectors {
		return p, fmt.Errorf("mbr: partition %d: sectors %d-%d beyond the end of the disk (%d sectors)", num, start, start+n-1, sectors)
	}
	p.FirstLBA, p.LastLBA = start, start+n-1
	p.Start, p.Size = int64(start)*512, int64(n)*512
	return p, nil
}

func readEBRChain(r io.ReaderAt, ext Partition, sectors uint64) ([]Partition, error) {
	var out []Partition
	seen := map[uint64]bool{}
	next := uint64(0) // relative to the extended partition start
	buf := make([]byte, 512)
	for num, hops := 5, 0; ; num, hops = num+1, hops+1 {
		ebr := ext.FirstLBA + next
		if hops >= maxLogicalPartition {
			return nil, fmt.Errorf("mbr: more than %d logical partitions", maxLogicalPartition)
		}
		if seen[ebr] {
			return nil, fmt.Errorf("mbr: EBR chain loops back to sector %d (partition %d)", ebr, num)
		}
		seen[ebr] = true
		if ebr > ext.LastLBA {
			return nil, fmt.Errorf("mbr: EBR of partition %d at sector %d outside the extended partition %d", num, ebr, ext.Number)
		}
		if _, err := r.ReadAt(buf, int64(ebr)*512); err != nil {
			return nil, fmt.Errorf("mbr: read EBR of partition %d at sector %d: %w", num, ebr, err)
		}
		if buf[510] != 0x55 || buf[511] != 0xaa {
			return nil, fmt.Errorf("mbr: EBR of partition %d at sector %d has no 0x55aa signature", num, ebr)
		}
		e1, e2 := buf[446:462], buf[462:478]
		if e1[4] != 0 {
			p, err := mbrEntry(e1, ebr, num, sectors)
			if err != nil {
				return nil, err
			}
			if p.FirstLBA <= ebr || p.LastLBA > ext.LastLBA {
				return nil, fmt.Errorf("mbr: partition %d: sectors %d-%d outside its extended partition %d (%d-%d)", num, p.FirstLBA, p.LastLBA, ext.Number, ext.FirstLBA, ext.LastLBA)
			}
			out = append(out, p)
		} else {
			num-- // an empty EBR entry gets no number
		}
		if e2[4] == 0 {
			return out, nil
		}
		if !isExtendedType(e2[4]) {
			return nil, fmt.Errorf("mbr: EBR at sector %d links with type %#02x, want an extended type", ebr, e2[4])
		}
		next = uint64(binary.LittleEndian.Uint32(e2[8:12]))
	}
}

func checkOverlap(ps []Partition) error {
	s := append([]Partition(nil), ps...)
	sort.Slice(s, func(i, j int) bool { return s[i].Start < s[j].Start })
	for i := 1; i < len(s); i++ {
		if s[i].Start < s[i-1].Start+s[i-1].Size {
			return fmt.Errorf("partition %d (bytes %d-%d) overlaps partition %d (bytes %d-%d)",
				s[i].Number, s[i].Start, s[i].Start+s[i].Size-1, s[i-1].Number, s[i-1].Start, s[i-1].Start+s[i-1].Size-1)
		}
	}
	return nil
}

// Partition returns the partition with the given number.
func (t *Table) Partition(n int) (Partition, bool) {
	for _, p := range t.Partitions {
		if p.Number == n {
			return p, true
		}
	}
	return Partition{}, false
}
