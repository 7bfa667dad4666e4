package modfile

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

// Source hands out byte ranges of the module content.
type Source interface {
	// at returns the n bytes at off. The caller has checked that off+n is
	// within the content. The bytes are only valid during the parse.
	At(off, n uint64) ([]byte, error)
}

// MemSource is module content already in memory.
type MemSource []byte

// At implements Source.
func (m MemSource) At(off, n uint64) ([]byte, error) { return m[off : off+n : off+n], nil }

// Sizes of the ELF structures this reader decodes.
const (
	Ehdr32Size = 52
	Ehdr64Size = 64
	Shdr32Size = 40
	Shdr64Size = 64
	Sym32Size  = 16
	Sym64Size  = 24
)

// ELF is an opened ELF relocatable object.
type ELF struct {
	src Source
	// size is the length of the content the ELF must fit in; end names its
	// end in errors ("end of file", "end of module content").
	size      uint64
	end       string
	Is64      bool
	ByteOrder binary.ByteOrder
	Class     elf.Class
	Machine   elf.Machine
	// shdrs is the raw section header table, shnum entries of shentsize.
	shdrs     []byte
	Shnum     int
	shentsize uint64
	// shstr is the section name string table.
	shstr []byte
	// cache holds the sections read for symbol values, by index.
	cache map[uint32][]byte
}

// Section is a decoded section header.
type Section struct {
	Index  int
	Name   []byte // aliases the parse's buffers
	Type   elf.SectionType
	Offset uint64
	Size   uint64
	Link   uint32
}

// OpenELF checks the ELF header, reads the section header table and the
// section name table. end names the end of the content in errors ("end of
// file", "end of module content").
func OpenELF(src Source, size uint64, end string) (*ELF, error) {
	e := &ELF{src: src, size: size, end: end}
	n := min(size, uint64(len(elf.ELFMAG)))
	head, err := src.At(0, n)
	if err != nil {
		return nil, err
	}
	if string(head) != elf.ELFMAG[:n] {
		return nil, fmt.Errorf("%w: no ELF magic (file starts with % x)", ErrNotELF, head)
	}
	if size < elf.EI_NIDENT {
		return nil, fmt.Errorf("%w: ELF identification needs %d bytes, %s is at %d", ErrTruncated, elf.EI_NIDENT, end, size)
	}
	ident, err := src.At(0, elf.EI_NIDENT)
	if err != nil {
		return nil, err
	}
	hdrSize := uint64(Ehdr32Size)
	switch e.Class = elf.Class(ident[elf.EI_CLASS]); e.Class {
	case elf.ELFCLASS32:
	case elf.ELFCLASS64:
		e.Is64, hdrSize = true, Ehdr64Size
	default:
		return nil, fmt.Errorf("%w: unknown ELF class %d", ErrMalformed, ident[elf.EI_CLASS])
	}
	switch elf.Data(ident[elf.EI_DATA]) {
	case elf.ELFDATA2LSB:
		e.ByteOrder = binary.LittleEndian
	case elf.ELFDATA2MSB:
		e.ByteOrder = binary.BigEndian
	default:
		return nil, fmt.Errorf("%w: unknown ELF data encoding %d", ErrMalformed, ident[elf.EI_DATA])
	}
	if size < hdrSize {
		return nil, fmt.Errorf("%w: %v header needs %d bytes, %s is at %d", ErrTruncated, e.Class, hdrSize, end, size)
	}
	h, err := src.At(0, hdrSize)
	if err != nil {
		return nil, err
	}
	var shoff uint64
	var shentsize, shnum, shstrndx uint16
	typ := elf.Type(e.ByteOrder.Uint16(h[16:]))
	e.Machine = elf.Machine(e.ByteOrder.Uint16(h[18:]))
	if e.Is64 {
		shoff = e.ByteOrder.Uint64(h[40:])
		shentsize, shnum, shstrndx = e.ByteOrder.Uint16(h[58:]), e.ByteOrder.Uint16(h[60:]), e.ByteOrder.Uint16(h[62:])
	} else {
		shoff = uint64(e.ByteOrder.Uint32(h[32:]))
		shentsize, shnum, shstrndx = e.ByteOrder.Uint16(h[46:]), e.ByteOrder.Uint16(h[48:]), e.ByteOrder.Uint16(h[50:])
	}
	if typ != elf.ET_REL {
		return nil, fmt.Errorf("%w: ELF type is %v, a module is ET_REL", ErrNotELF, typ)
	}
	if shoff == 0 {
		return nil, fmt.Errorf("%w: no section header table", ErrMalformed)
	}
	want := uint64(Shdr32Size)
	if e.Is64 {
		want = Shdr64Size
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
		s0, err := src.At(shoff, want)
		if err != nil {
			return nil, err
		}
		e.shdrs, e.Shnum = s0, 1
		sec := e.Section(0)
		if shnum == 0 {
			count = sec.Size
		}
		if shstrndx == uint16(elf.SHN_XINDEX) {
			strndx = uint64(sec.Link)
		}
	}
	if count == 0 {
		return nil, fmt.Errorf("%w: empty section header table", ErrMalformed)
	}
	if shoff > size || count > (size-shoff)/want {
		return nil, fmt.Errorf("%w: section header table (offset %#x, %d entries) extends past %s (%d bytes)", ErrTruncated, shoff, count, end, size)
	}
	if e.shdrs, err = src.At(shoff, count*want); err != nil {
		return nil, err
	}
	e.Shnum = int(count)
	if strndx == 0 || strndx >= count {
		return nil, fmt.Errorf("%w: section name table index %d out of range (%d sections)", ErrMalformed, strndx, count)
	}
	str := e.Section(int(strndx))
	if str.Type == elf.SHT_NOBITS || str.Type == elf.SHT_NULL {
		return nil, fmt.Errorf("%w: section name table has type %v", ErrMalformed, str.Type)
	}
	if err := e.Check(str, "the section name table"); err != nil {
		return nil, err
	}
	if e.shstr, err = src.At(str.Offset, str.Size); err != nil {
		return nil, err
	}
	return e, nil
}

// Section decodes section header i (0 <= i < Shnum); name is left empty.
func (e *ELF) Section(i int) Section {
	b := e.shdrs[uint64(i)*e.shentsize:]
	s := Section{Index: i, Type: elf.SectionType(e.ByteOrder.Uint32(b[4:]))}
	if e.Is64 {
		s.Offset, s.Size, s.Link = e.ByteOrder.Uint64(b[24:]), e.ByteOrder.Uint64(b[32:]), e.ByteOrder.Uint32(b[40:])
	} else {
		s.Offset, s.Size, s.Link = uint64(e.ByteOrder.Uint32(b[16:])), uint64(e.ByteOrder.Uint32(b[20:])), e.ByteOrder.Uint32(b[24:])
	}
	return s
}

// NamedSection decodes section header i with its name.
func (e *ELF) NamedSection(i int) (Section, error) {
	s := e.Section(i)
	off := uint64(e.ByteOrder.Uint32(e.shdrs[uint64(i)*e.shentsize:]))
	if off >= uint64(len(e.shstr)) {
		return s, fmt.Errorf("%w: section %d name offset %#x outside the section name table (%d bytes)", ErrMalformed, i, off, len(e.shstr))
	}
	s.Name = CBytes(e.shstr[off:])
	return s, nil
}

// Check verifies that a section's data lies within the content. The error
// names the section by its name, else as #index followed by what.
func (e *ELF) Check(s Section, what string) error {
	if s.Type == elf.SHT_NOBITS || s.Type == elf.SHT_NULL {
		return nil
	}
	if s.Offset > e.size || s.Size > e.size-s.Offset {
		label := string(s.Name)
		if s.Name == nil {
			label = fmt.Sprintf("#%d (%s)", s.Index, what)
		}
		return fmt.Errorf("%w: section %s (offset %#x, size %#x) extends past %s (%d bytes)", ErrTruncated, label, s.Offset, s.Size, e.end, e.size)
	}
	return nil
}

// Data returns a checked section's bytes (none for SHT_NOBITS).
func (e *ELF) Data(s Section) ([]byte, error) {
	if s.Type == elf.SHT_NOBITS || s.Type == elf.SHT_NULL || s.Size == 0 {
		return nil, nil
	}
	return e.src.At(s.Offset, s.Size)
}

// Data2 returns the bytes of two checked sections, read at once when they
// are close together in the file (as .symtab and .strtab are).
func (e *ELF) Data2(a, b Section) ([]byte, []byte, error) {
	if _, mem := e.src.(MemSource); !mem && a.Type != elf.SHT_NOBITS && b.Type != elf.SHT_NOBITS &&
		a.Type != elf.SHT_NULL && b.Type != elf.SHT_NULL && a.Size > 0 && b.Size > 0 {
		lo, hi := min(a.Offset, b.Offset), max(a.Offset+a.Size, b.Offset+b.Size)
		if hi-lo <= a.Size+b.Size+4096 {
			all, err := e.src.At(lo, hi-lo)
			if err != nil {
				return nil, nil, err
			}
			return all[a.Offset-lo : a.Offset-lo+a.Size], all[b.Offset-lo : b.Offset-lo+b.Size], nil
		}
	}
	da, err := e.Data(a)
	if err != nil {
		return nil, nil, err
	}
	db, err := e.Data(b)
	return da, db, err
}

// CBytes is b up to its first NUL (all of b without one), without copying.
func CBytes(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// Symbol decodes entry i of a symbol table section (ELF32 or ELF64 layout,
// the file's byte order). The caller has checked that entry i is in syms.
func (e *ELF) Symbol(syms []byte, i int) (nameOff uint32, info byte, shndx uint16, value uint64) {
	if e.Is64 {
		b := syms[i*Sym64Size : (i+1)*Sym64Size]
		return e.ByteOrder.Uint32(b), b[4], e.ByteOrder.Uint16(b[6:]), e.ByteOrder.Uint64(b[8:])
	}
	b := syms[i*Sym32Size : (i+1)*Sym32Size]
	return e.ByteOrder.Uint32(b), b[12], e.ByteOrder.Uint16(b[14:]), uint64(e.ByteOrder.Uint32(b[4:]))
}
