package diskimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// FS describes a filesystem found by Probe.
type FS struct {
	Type  string // "ext2", "ext3", "ext4", "xfs", "vfat", "swap", "btrfs"
	UUID  string // as blkid prints it (lower case; vfat: "ABCD-1234")
	Label string
}

// ErrUnknownFS is returned by Probe when no known superblock is found.
var ErrUnknownFS = errors.New("no known filesystem signature")

// Probe detects the filesystem in the size bytes at off of r by reading its
// superblock (nothing is mounted).
func Probe(r io.ReaderAt, off, size int64) (FS, error) {
	read := func(at int64, n int) ([]byte, bool) {
		if at < 0 || at+int64(n) > size {
			return nil, false
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off+at); err != nil {
			return nil, false
		}
		return b, true
	}
	// ext2/3/4: superblock at 1024, magic 0xEF53 at 56.
	if sb, ok := read(1024, 1024); ok && binary.LittleEndian.Uint16(sb[56:58]) == 0xef53 {
		compat := binary.LittleEndian.Uint32(sb[92:96])
		incompat := binary.LittleEndian.Uint32(sb[96:100])
		rocompat := binary.LittleEndian.Uint32(sb[100:104])
		typ := "ext2"
		switch {
		case incompat&^(0x2|0x4|0x10) != 0 || rocompat&^0x7 != 0:
			typ = "ext4"
		case compat&0x4 != 0:
			typ = "ext3"
		}
		if incompat&0x8 != 0 { // journal device
			typ = "jbd"
		}
		return FS{Type: typ, UUID: uuidString(sb[104:120]), Label: cstr(sb[120:136])}, nil
	}
	if sb, ok := read(0, 512); ok && string(sb[0:4]) == "XFSB" {
		return FS{Type: "xfs", UUID: uuidString(sb[32:48]), Label: cstr(sb[108:120])}, nil
	}
	if sb, ok := read(0x10000, 0x1000); ok && string(sb[0x40:0x48]) == "_BHRfS_M" {
		return FS{Type: "btrfs", UUID: uuidString(sb[0x20:0x30]), Label: cstr(sb[0x12b:0x22b])}, nil
	}
	for _, ps := range []int64{4096, 8192, 16384, 65536} {
		if m, ok := read(ps-10, 10); ok && (string(m) == "SWAPSPACE2" || string(m) == "SWAP-SPACE") {
			fs := FS{Type: "swap"}
			if string(m) == "SWAPSPACE2" {
				if h, ok := read(1024, 64); ok {
					fs.UUID = uuidString(h[12:28])
					fs.Label = cstr(h[28:44])
				}
			}
			return fs, nil
		}
	}
	if bs, ok := read(0, 512); ok && bs[510] == 0x55 && bs[511] == 0xaa {
		var id []byte
		var label string
		switch {
		case string(bs[82:87]) == "FAT32" && (bs[66] == 0x29 || bs[66] == 0x28):
			id, label = bs[67:71], string(bs[71:82])
		case string(bs[54:57]) == "FAT" && (bs[38] == 0x29 || bs[38] == 0x28):
			id, label = bs[39:43], string(bs[43:54])
		}
		if id != nil {
			label = strings.TrimRight(label, " \x00")
			if label == "NO NAME" {
				label = ""
			}
			v := binary.LittleEndian.Uint32(id)
			return FS{Type: "vfat", UUID: fmt.Sprintf("%04X-%04X", v>>16, v&0xffff), Label: label}, nil
		}
	}
	return FS{}, ErrUnknownFS
}

// ProbePartition probes the filesystem inside p.
func ProbePartition(r io.ReaderAt, p Partition) (FS, error) {
	fs, err := Probe(r, p.Start, p.Size)
	if err != nil {
		return fs, fmt.Errorf("partition %d: %w", p.Number, err)
	}
	return fs, nil
}

func uuidString(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// ProbeAll probes every partition of t (MBR extended containers excluded)
// and returns the filesystems found, by partition number; partitions with
// no known filesystem are left out.
func ProbeAll(r io.ReaderAt, t *Table) map[int]FS {
	res := map[int]FS{}
	for _, p := range t.Partitions {
		if p.Extended {
			continue
		}
		if fs, err := ProbePartition(r, p); err == nil {
			res[p.Number] = fs
		}
	}
	return res
}
