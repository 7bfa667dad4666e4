package kmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
)

// This file is a minimal, bounds-checked reader of the parts of an ELF
// relocatable object that a kernel module parser needs. It works on a
// source that hands out byte ranges, so a plain file is read piecewise
// (header, section headers, a handful of sections) instead of whole, and
// every offset and size taken from the file is checked against the content
// length before anything is read or allocated: hostile input yields an
// error, never a panic or a huge allocation. debug/elf supplies the
// constants and types.

// source hands out byte ranges of the module content.
type source interface {
	// at returns the n bytes at off. The caller has checked that off+n is
	// within the content. The bytes are only valid during the parse.
	at(off, n uint64) ([]byte, error)
}

// memSource is module content already in memory.
type memSource []byte

func (m memSource) at(off, n uint64) ([]byte, error) { return m[off : off+n : off+n], nil }

// Sizes of the ELF structures this reader decodes.
const (
	ehdr32Size = 52
	ehdr64Size = 64
	shdr32Size = 40
	shdr64Size = 64
	sym32Size  = 16
	sym64Size  = 24
)

// elfFile is an opened ELF relocatable object.
type elfFile struct {
	src source
	// size is the length of the content the ELF must fit in; end names its
	// end in errors ("end of file", "end of module content").
	size  uint64
	end   string
	is64  bool
	bo    binary.ByteOrder
	class elf.Class
	mach  elf.Machine
	// shdrs is the raw section header table, shnum entries of shentsize.
	shdrs     []byte
	shnum     int
	shentsize uint64
	// shstr is the section name string table.
	shstr []byte
	// cache holds the sections read for symbol values, by index.
	cache map[uint32][]byte
}

// elfSection is a decoded section header.
type elfSection struct {
	index  int
	name   []byte // aliases the parse's buffers
	typ    elf.SectionType
	offset uint64
	size   uint64
	link   uint32
}

// openELF checks the ELF header, reads the section header table and the
// section name table.
func openELF(src source, size uint64, end string) (*elfFile, error) {
	e := &elfFile{src: src, size: size, end: end}
	n := min(size, uint64(len(elf.ELFMAG)))
	head, err := src.at(0, n)
	if err != nil {
		return nil, err
	}
	if string(head) != elf.ELFMAG[:n] {
		return nil, fmt.Errorf("%w: no ELF magic (file starts with % x)", ErrNotELF, head)
	}
	if size < elf.EI_NIDENT {
		return nil, fmt.Errorf("%w: ELF identification needs %d bytes, %s is at %d", ErrTruncated, elf.EI_NIDENT, end, size)
	}
	ident, err := src.at(0, elf.EI_NIDENT)
	if err != nil {
		return nil, err
	}
	hdrSize := uint64(ehdr32Size)
	switch e.class = elf.Class(ident[elf.EI_CLASS]); e.class {
	case elf.ELFCLASS32:
	case elf.ELFCLASS64:
		e.is64, hdrSize = true, ehdr64Size
	default:
		return nil, fmt.Errorf("%w: unknown ELF class %d", ErrMalformed, ident[elf.EI_CLASS])
	}
	switch elf.Data(ident[elf.EI_DATA]) {
	case elf.ELFDATA2LSB:
		e.bo = binary.LittleEndian
	case elf.ELFDATA2MSB:
		e.bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("%w: unknown ELF data encoding %d", ErrMalformed, ident[elf.EI_DATA])
	}
	if size < hdrSize {
		return nil, fmt.Errorf("%w: %v header needs %d bytes, %s is at %d", ErrTruncated, e.class, hdrSize, end, size)
	}
	h, err := src.at(0, hdrSize)
	if err != nil {
		return nil, err
	}
	var shoff uint64
	var shentsize, shnum, shstrndx uint16
	typ := elf.Type(e.bo.Uint16(h[16:]))
	e.mach = elf.Machine(e.bo.Uint16(h[18:]))
	if e.is64 {
		shoff = e.bo.Uint64(h[40:])
		shentsize, shnum, shstrndx = e.bo.Uint16(h[58:]), e.bo.Uint16(h[60:]), e.bo.Uint16(h[62:])
	} else {
		shoff = uint64(e.bo.Uint32(h[32:]))
		shentsize, shnum, shstrndx = e.bo.Uint16(h[46:]), e.bo.Uint16(h[48:]), e.bo.Uint16(h[50:])
	}
	if typ != elf.ET_REL {
		return nil, fmt.Errorf("%w: ELF type is %v, a module is ET_REL", ErrNotELF, typ)
	}
	if shoff == 0 {
		return nil, fmt.Errorf("%w: no section header table", ErrMalformed)
	}
	want := uint64(shdr32Size)
	if e.is64 {
		want = shdr64Size
	}
	if uint64(shentsize) != want {
		return nil, fmt.Errorf("%w: section header size %d, want %d", ErrMalformed, shentsize, want)
	}
	e.shentsize = want
	count := uint64(shnum)
	strndx := uint64(shstrndx)
	if shnum == 0 || shstrndx == uint16(elf.SHN_XINDEX) {
		// Extended numbering: the real values live in section header 0.
		if shoff > size || size-shoff < want {
			return nil, fmt.Errorf("%w: section header table at offset %#x extends past %s (%d bytes)", ErrTruncated, shoff, end, size)
		}
		s0, err := src.at(shoff, want)
		if err != nil {
			return nil, err
		}
		e.shdrs, e.shnum = s0, 1
		sec := e.section(0)
		if shnum == 0 {
			count = sec.size
		}
		if shstrndx == uint16(elf.SHN_XINDEX) {
			strndx = uint64(sec.link)
		}
	}
	if count == 0 {
		return nil, fmt.Errorf("%w: empty section header table", ErrMalformed)
	}
	if shoff > size || count > (size-shoff)/want {
		return nil, fmt.Errorf("%w: section header table (offset %#x, %d entries) extends past %s (%d bytes)", ErrTruncated, shoff, count, end, size)
	}
	if e.shdrs, err = src.at(shoff, count*want); err != nil {
		return nil, err
	}
	e.shnum = int(count)
	if strndx == 0 || strndx >= count {
		return nil, fmt.Errorf("%w: section name table index %d out of range (%d sections)", ErrMalformed, strndx, count)
	}
	str := e.section(int(strndx))
	if str.typ == elf.SHT_NOBITS || str.typ == elf.SHT_NULL {
		return nil, fmt.Errorf("%w: section name table has type %v", ErrMalformed, str.typ)
	}
	if err := e.check(str, "the section name table"); err != nil {
		return nil, err
	}
	if e.shstr, err = src.at(str.offset, str.size); err != nil {
		return nil, err
	}
	return e, nil
}

// section decodes section header i (0 <= i < shnum); name is left empty.
func (e *elfFile) section(i int) elfSection {
	b := e.shdrs[uint64(i)*e.shentsize:]
	s := elfSection{index: i, typ: elf.SectionType(e.bo.Uint32(b[4:]))}
	if e.is64 {
		s.offset, s.size, s.link = e.bo.Uint64(b[24:]), e.bo.Uint64(b[32:]), e.bo.Uint32(b[40:])
	} else {
		s.offset, s.size, s.link = uint64(e.bo.Uint32(b[16:])), uint64(e.bo.Uint32(b[20:])), e.bo.Uint32(b[24:])
	}
	return s
}

// namedSection decodes section header i with its name.
func (e *elfFile) namedSection(i int) (elfSection, error) {
	s := e.section(i)
	off := uint64(e.bo.Uint32(e.shdrs[uint64(i)*e.shentsize:]))
	if off >= uint64(len(e.shstr)) {
		return s, fmt.Errorf("%w: section %d name offset %#x outside the section name table (%d bytes)", ErrMalformed, i, off, len(e.shstr))
	}
	s.name = cbytes(e.shstr[off:])
	return s, nil
}

// check verifies that a section's data lies within the content. The error
// names the section by its name, else as #index followed by what.
func (e *elfFile) check(s elfSection, what string) error {
	if s.typ == elf.SHT_NOBITS || s.typ == elf.SHT_NULL {
		return nil
	}
	if s.offset > e.size || s.size > e.size-s.offset {
		label := string(s.name)
		if s.name == nil {
			label = fmt.Sprintf("#%d (%s)", s.index, what)
		}
		return fmt.Errorf("%w: section %s (offset %#x, size %#x) extends past %s (%d bytes)", ErrTruncated, label, s.offset, s.size, e.end, e.size)
	}
	return nil
}

// data returns a checked section's bytes (none for SHT_NOBITS).
func (e *elfFile) data(s elfSection) ([]byte, error) {
	if s.typ == elf.SHT_NOBITS || s.typ == elf.SHT_NULL || s.size == 0 {
		return nil, nil
	}
	return e.src.at(s.offset, s.size)
}

// data2 returns the bytes of two checked sections, read at once when they
// are close together in the file (as .symtab and .strtab are).
func (e *elfFile) data2(a, b elfSection) ([]byte, []byte, error) {
	if _, mem := e.src.(memSource); !mem && a.typ != elf.SHT_NOBITS && b.typ != elf.SHT_NOBITS &&
		a.typ != elf.SHT_NULL && b.typ != elf.SHT_NULL && a.size > 0 && b.size > 0 {
		lo, hi := min(a.offset, b.offset), max(a.offset+a.size, b.offset+b.size)
		if hi-lo <= a.size+b.size+4096 {
			all, err := e.src.at(lo, hi-lo)
			if err != nil {
				return nil, nil, err
			}
			return all[a.offset-lo : a.offset-lo+a.size], all[b.offset-lo : b.offset-lo+b.size], nil
		}
	}
	da, err := e.data(a)
	if err != nil {
		return nil, nil, err
	}
	db, err := e.data(b)
	return da, db, err
}

// cbytes is b up to its first NUL (all of b without one), without copying.
func cbytes(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// symbol decodes entry i of a symbol table section (ELF32 or ELF64 layout,
// the file's byte order). The caller has checked that entry i is in syms.
func (e *elfFile) symbol(syms []byte, i int) (nameOff uint32, info byte, shndx uint16, value uint64) {
	if e.is64 {
		b := syms[i*sym64Size : (i+1)*sym64Size]
		return e.bo.Uint32(b), b[4], e.bo.Uint16(b[6:]), e.bo.Uint64(b[8:])
	}
	b := syms[i*sym32Size : (i+1)*sym32Size]
	return e.bo.Uint32(b), b[12], e.bo.Uint16(b[14:]), uint64(e.bo.Uint32(b[4:]))
}
