// Package cpio reads and writes the "new ASCII" cpio formats the Linux kernel
// unpacks as initramfs: newc (magic 070701) and crc (070702), byte-exactly.
//
// The layout (kernel Documentation/driver-api/early-userspace/buffer-format.rst):
// a 110-byte header of a 6-byte magic and thirteen 8-digit hex fields, the
// NUL-terminated name padded so the body starts 4-byte aligned, the body
// padded to 4 bytes. An archive ends with a record named TRAILER!!!; the
// kernel skips NUL bytes between records and archives.
//
// github.com/cavaliergopher/cpio (the project's general cpio library) is not
// used for initramfs work: v1.0.1 flips a global magic when a checksum is set,
// drops device major/minor numbers, ignores Linkname on write, has no hard
// link support and stops at the first trailer. The tests read what this
// package writes with it as an independent check.
package cpio

import (
	"io/fs"
)

// Format is the magic of a record: newc or crc.
type Format string

const (
	// Newc is the "new ASCII" format, magic 070701, check field 0.
	Newc Format = "070701"
	// CRC is newc with a checksum (sum of the body bytes) in the check
	// field, magic 070702. The kernel verifies it for regular files.
	CRC Format = "070702"
	// ODC is the old portable format the kernel refuses
	// ("incorrect cpio method used: use -H newc option"); never produced.
	ODC Format = "070707"
)

const (
	// HeaderSize is the size of a record header before the name.
	HeaderSize = 110
	// MaxNameSize is the kernel's limit on c_namesize (PATH_MAX, with the NUL).
	MaxNameSize = 4096
	// MaxSymlinkSize is the kernel's limit on a symlink target (PATH_MAX).
	MaxSymlinkSize = 4096
	// TrailerName names the record that ends an archive.
	TrailerName = "TRAILER!!!"
)

// File type bits of Record.Mode (st_mode).
const (
	TypeMask    = 0o170000
	TypeSocket  = 0o140000
	TypeSymlink = 0o120000
	TypeReg     = 0o100000
	TypeBlock   = 0o060000
	TypeDir     = 0o040000
	TypeChar    = 0o020000
	TypeFIFO    = 0o010000
)

// Record is one cpio header: every field as stored, so that writing a record
// read from an archive reproduces its bytes.
type Record struct {
	Name      string // as stored: "." , "bin/sh", "./x" or "/x" alike
	Ino       uint32
	Mode      uint32 // raw st_mode, type bits included
	UID       uint32
	GID       uint32
	Nlink     uint32
	Mtime     uint32 // seconds since the epoch
	FileSize  uint32 // body size: the data, or the target of a symlink
	DevMajor  uint32 // device of the file's file system (hard link groups)
	DevMinor  uint32
	RdevMajor uint32 // device number of a block or character device node
	RdevMinor uint32
	Check     uint32 // crc format: sum of the body bytes; newc: 0
	Format    Format // Newc or CRC; "" writes Newc
	// HexLower records that the header's hex digits are lower case, as
	// libarchive (bsdcpio, mkinitcpio) writes them; GNU cpio, the kernel's
	// gen_init_cpio and dracut write upper case.
	HexLower bool
}

// Type is the file type bits of the mode (TypeReg, TypeDir, ...).
func (r *Record) Type() uint32 { return r.Mode & TypeMask }

// IsTrailer reports whether r ends an archive.
func (r *Record) IsTrailer() bool { return r.Name == TrailerName }

// IsRegular reports a regular file.
func (r *Record) IsRegular() bool { return r.Type() == TypeReg }

// IsDir reports a directory.
func (r *Record) IsDir() bool { return r.Type() == TypeDir }

// IsSymlink reports a symbolic link; its body is the target.
func (r *Record) IsSymlink() bool { return r.Type() == TypeSymlink }

// IsDevice reports a block or character device node.
func (r *Record) IsDevice() bool { return r.Type() == TypeBlock || r.Type() == TypeChar }

// IsHardLink reports a record the kernel may link to an earlier record of
// the same inode: Nlink >= 2 and a type it links (regular files and nodes).
func (r *Record) IsHardLink() bool {
	if r.Nlink < 2 {
		return false
	}
	switch r.Type() {
	case TypeReg, TypeBlock, TypeChar, TypeFIFO, TypeSocket:
		return true
	}
	return false
}

// FileMode converts Mode to an fs.FileMode (type, permission and special bits).
func (r *Record) FileMode() fs.FileMode {
	m := fs.FileMode(r.Mode & 0o777)
	if r.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if r.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if r.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	switch r.Type() {
	case TypeDir:
		m |= fs.ModeDir
	case TypeSymlink:
		m |= fs.ModeSymlink
	case TypeBlock:
		m |= fs.ModeDevice
	case TypeChar:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case TypeFIFO:
		m |= fs.ModeNamedPipe
	case TypeSocket:
		m |= fs.ModeSocket
	case TypeReg:
	default:
		m |= fs.ModeIrregular
	}
	return m
}

// Trailer returns the trailer record GNU cpio writes: Nlink 1, all else 0.
func Trailer(f Format) Record {
	return Record{Name: TrailerName, Nlink: 1, Format: f}
}

// Checksum is the crc format's check value of body: the sum of its bytes.
func Checksum(body []byte) uint32 { return addSum(0, body) }

func addSum(s uint32, b []byte) uint32 {
	for _, c := range b {
		s += uint32(c)
	}
	return s
}

// pad4 is the number of bytes that align n to 4.
func pad4(n int64) int64 { return (4 - n&3) & 3 }

// LinkKey identifies the inode of a hard link group within one archive:
// the file system device, the inode number and the file type, as the kernel's
// find_link compares them.
type LinkKey struct {
	DevMajor, DevMinor, Ino, Type uint32
}

// Key returns r's hard link group key.
func (r *Record) Key() LinkKey {
	return LinkKey{r.DevMajor, r.DevMinor, r.Ino, r.Type()}
}

// Links follows hard link groups the way the kernel does while unpacking:
// the first record of a group with Nlink >= 2 is created, later ones are
// linked to it, and the groups are forgotten at each trailer. The zero value
// is ready to use.
type Links struct {
	first map[LinkKey]string
}

// Add registers rec and returns the name of the group's first record when rec
// is to be a hard link to it. A trailer resets the groups.
func (l *Links) Add(rec *Record) (first string, link bool) {
	if rec.IsTrailer() {
		l.first = nil
		return "", false
	}
	if !rec.IsHardLink() {
		return "", false
	}
	k := rec.Key()
	if f, ok := l.first[k]; ok {
		return f, true
	}
	if l.first == nil {
		l.first = make(map[LinkKey]string)
	}
	l.first[k] = rec.Name
	return "", false
}
