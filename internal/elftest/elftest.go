// Package elftest writes small ELF relocatable objects by hand for tests:
// the ELF32/ELF64 × little/big-endian modules, and the malformed ones, that
// the fixtures do not all cover.
package elftest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"slices"
)

// Section is one section of an object Build writes.
type Section struct {
	Name string
	Type elf.SectionType
	Data []byte
	Link uint32
}

// Sym is one symbol Symtab encodes.
type Sym struct {
	Name  string
	Value uint64
	Shndx uint16
	Bind  elf.SymBind
	Type  elf.SymType
}

// Build lays out a relocatable object: header, section data, then the
// section header table; .shstrtab is appended as the last section.
func Build(class elf.Class, bo binary.ByteOrder, typ elf.Type, secs []Section) []byte {
	is64 := class == elf.ELFCLASS64
	ehsize, shentsize := binary.Size(elf.Header32{}), binary.Size(elf.Section32{})
	if is64 {
		ehsize, shentsize = binary.Size(elf.Header64{}), binary.Size(elf.Section64{})
	}
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	secs = append(slices.Clone(secs), Section{Name: ".shstrtab", Type: elf.SHT_STRTAB})
	names := make([]int, len(secs))
	for i, s := range secs {
		names[i] = shstr.Len()
		shstr.WriteString(s.Name)
		shstr.WriteByte(0)
	}
	secs[len(secs)-1].Data = shstr.Bytes()

	out := make([]byte, ehsize)
	offsets := make([]int, len(secs))
	for i, s := range secs {
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		offsets[i] = len(out)
		if s.Type != elf.SHT_NOBITS {
			out = append(out, s.Data...)
		}
	}
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	shoff := len(out)
	out = append(out, make([]byte, shentsize*(len(secs)+1))...)
	for i, s := range secs {
		h := out[shoff+shentsize*(i+1):]
		bo.PutUint32(h[0:], uint32(names[i]))
		bo.PutUint32(h[4:], uint32(s.Type))
		if is64 {
			bo.PutUint64(h[24:], uint64(offsets[i]))
			bo.PutUint64(h[32:], uint64(len(s.Data)))
			bo.PutUint32(h[40:], s.Link)
		} else {
			bo.PutUint32(h[16:], uint32(offsets[i]))
			bo.PutUint32(h[20:], uint32(len(s.Data)))
			bo.PutUint32(h[24:], s.Link)
		}
	}
	copy(out, elf.ELFMAG)
	out[elf.EI_CLASS] = byte(class)
	out[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	if bo == binary.BigEndian {
		out[elf.EI_DATA] = byte(elf.ELFDATA2MSB)
	}
	out[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	bo.PutUint16(out[16:], uint16(typ))
	bo.PutUint16(out[18:], uint16(elf.EM_X86_64))
	bo.PutUint32(out[20:], uint32(elf.EV_CURRENT))
	if is64 {
		bo.PutUint64(out[40:], uint64(shoff))
		bo.PutUint16(out[52:], uint16(ehsize))
		bo.PutUint16(out[58:], uint16(shentsize))
		bo.PutUint16(out[60:], uint16(len(secs)+1))
		bo.PutUint16(out[62:], uint16(len(secs)))
	} else {
		bo.PutUint32(out[32:], uint32(shoff))
		bo.PutUint16(out[40:], uint16(ehsize))
		bo.PutUint16(out[46:], uint16(shentsize))
		bo.PutUint16(out[48:], uint16(len(secs)+1))
		bo.PutUint16(out[50:], uint16(len(secs)))
	}
	return out
}

// Symtab encodes syms (after the null symbol) and their string table.
func Symtab(class elf.Class, bo binary.ByteOrder, syms []Sym) (tab, strs []byte) {
	strs = []byte{0}
	size := elf.Sym32Size
	if class == elf.ELFCLASS64 {
		size = elf.Sym64Size
	}
	tab = make([]byte, size*(len(syms)+1))
	for i, s := range syms {
		b := tab[size*(i+1):]
		name := 0
		if s.Name != "" {
			name = len(strs)
			strs = append(append(strs, s.Name...), 0)
		}
		info := byte(s.Bind)<<4 | byte(s.Type)
		if class == elf.ELFCLASS64 {
			bo.PutUint32(b, uint32(name))
			b[4] = info
			bo.PutUint16(b[6:], s.Shndx)
			bo.PutUint64(b[8:], s.Value)
		} else {
			bo.PutUint32(b, uint32(name))
			bo.PutUint32(b[4:], uint32(s.Value))
			b[12] = info
			bo.PutUint16(b[14:], s.Shndx)
		}
	}
	return tab, strs
}
