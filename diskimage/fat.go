package diskimage

// FAT reading: just enough to find one file by path (DetectBootloader looks
// for the UEFI removable-media loader in an EFI System Partition).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

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
