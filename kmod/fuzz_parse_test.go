package kmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// A tiny ELF writer for hand-made modules: seeds for FuzzParse and the
// ELF32/ELF64 × LE/BE cases the fixtures do not all cover.

type testSection struct {
	name string
	typ  elf.SectionType
	data []byte
	link uint32
}

type testSym struct {
	name  string
	value uint64
	shndx uint16
	bind  elf.SymBind
	typ   elf.SymType
}

// buildELF lays out a relocatable object: header, section data, then the
// section header table; .shstrtab is appended as the last section.
func buildELF(class elf.Class, bo binary.ByteOrder, typ elf.Type, secs []testSection) []byte {
	is64 := class == elf.ELFCLASS64
	ehsize, shentsize := ehdr32Size, shdr32Size
	if is64 {
		ehsize, shentsize = ehdr64Size, shdr64Size
	}
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	secs = append(slices.Clone(secs), testSection{name: ".shstrtab", typ: elf.SHT_STRTAB})
	names := make([]int, len(secs))
	for i, s := range secs {
		names[i] = shstr.Len()
		shstr.WriteString(s.name)
		shstr.WriteByte(0)
	}
	secs[len(secs)-1].data = shstr.Bytes()

	out := make([]byte, ehsize)
	offsets := make([]int, len(secs))
	for i, s := range secs {
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		offsets[i] = len(out)
		if s.typ != elf.SHT_NOBITS {
			out = append(out, s.data...)
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
		bo.PutUint32(h[4:], uint32(s.typ))
		if is64 {
			bo.PutUint64(h[24:], uint64(offsets[i]))
			bo.PutUint64(h[32:], uint64(len(s.data)))
			bo.PutUint32(h[40:], s.link)
		} else {
			bo.PutUint32(h[16:], uint32(offsets[i]))
			bo.PutUint32(h[20:], uint32(len(s.data)))
			bo.PutUint32(h[24:], s.link)
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

// symtab encodes syms (after the null symbol) and their string table.
func symtab(class elf.Class, bo binary.ByteOrder, syms []testSym) (tab, strs []byte) {
	strs = []byte{0}
	size := sym32Size
	if class == elf.ELFCLASS64 {
		size = sym64Size
	}
	tab = make([]byte, size*(len(syms)+1))
	for i, s := range syms {
		b := tab[size*(i+1):]
		name := 0
		if s.name != "" {
			name = len(strs)
			strs = append(append(strs, s.name...), 0)
		}
		info := byte(s.bind)<<4 | byte(s.typ)
		if class == elf.ELFCLASS64 {
			bo.PutUint32(b, uint32(name))
			b[4] = info
			bo.PutUint16(b[6:], s.shndx)
			bo.PutUint64(b[8:], s.value)
		} else {
			bo.PutUint32(b, uint32(name))
			bo.PutUint32(b[4:], uint32(s.value))
			b[12] = info
			bo.PutUint16(b[14:], s.shndx)
		}
	}
	return tab, strs
}

// tinyModule is a hand-made module with two exports (one GPL and
// namespaced, with a CRC in __kcrctab; one with an absolute CRC), three
// imports (one weak) and one __versions entry.
func tinyModule(class elf.Class, bo binary.ByteOrder) []byte {
	crcSize := 4
	if class == elf.ELFCLASS64 {
		crcSize = 8
	}
	versions := make([]byte, 64)
	if crcSize == 8 {
		bo.PutUint64(versions, 0x1122334455667788)
	} else {
		bo.PutUint32(versions, 0x55667788)
	}
	copy(versions[crcSize:], "printk")
	kcrctab := make([]byte, 8)
	bo.PutUint32(kcrctab[4:], 0xdeadbeef)
	// Section indexes: 1 .modinfo, 2 __versions, 3 __ksymtab, 4
	// __ksymtab_gpl, 5 __kcrctab_gpl, 6 __ksymtab_strings, 7 .symtab,
	// 8 .strtab.
	tab, strs := symtab(class, bo, []testSym{
		{name: "", shndx: 1, typ: elf.STT_SECTION},
		{name: "printk", bind: elf.STB_GLOBAL},
		{name: "maybe_there", bind: elf.STB_WEAK},
		{name: "", bind: elf.STB_GLOBAL},
		{name: "__ksymtab_plain", shndx: 3},
		{name: "__crc_plain", shndx: uint16(elf.SHN_ABS), value: 0x12345678},
		{name: "__ksymtab_gplsym", shndx: 4},
		{name: "__crc_gplsym", shndx: 5, value: 4},
		{name: "__kstrtabns_gplsym", shndx: 6, value: 7},
		{name: "__kstrtabns_plain", shndx: 6, value: 6},
		{name: "vfree", bind: elf.STB_GLOBAL, typ: elf.STT_FUNC},
	})
	return buildELF(class, bo, elf.ET_REL, []testSection{
		{name: ".modinfo", typ: elf.SHT_PROGBITS, data: []byte("\x00\x00parmtype=p:int\x00parm=p:a param\x00name=tiny\x00depends=\x00license=GPL\x00\x00")},
		{name: "__versions", typ: elf.SHT_PROGBITS, data: versions},
		{name: "__ksymtab", typ: elf.SHT_PROGBITS, data: make([]byte, 12)},
		{name: "__ksymtab_gpl", typ: elf.SHT_PROGBITS, data: make([]byte, 12)},
		{name: "__kcrctab_gpl", typ: elf.SHT_PROGBITS, data: kcrctab},
		{name: "__ksymtab_strings", typ: elf.SHT_PROGBITS, data: []byte("plain\x00\x00MY_NS\x00gplsym\x00")},
		{name: ".symtab", typ: elf.SHT_SYMTAB, data: tab, link: 8},
		{name: ".strtab", typ: elf.SHT_STRTAB, data: strs},
	})
}

func TestParseSynthetic(t *testing.T) {
	for _, c := range []struct {
		class elf.Class
		bo    binary.ByteOrder
		crc   uint64
	}{
		{elf.ELFCLASS32, binary.LittleEndian, 0x55667788},
		{elf.ELFCLASS32, binary.BigEndian, 0x55667788},
		{elf.ELFCLASS64, binary.LittleEndian, 0x1122334455667788},
		{elf.ELFCLASS64, binary.BigEndian, 0x1122334455667788},
	} {
		t.Run(c.class.String()+"-"+c.bo.String(), func(t *testing.T) {
			m, err := Parse(tinyModule(c.class, c.bo))
			if err != nil {
				t.Fatal(err)
			}
			if m.Class != c.class || m.ByteOrder != c.bo || m.Machine != elf.EM_X86_64 || m.Signature != nil {
				t.Errorf("header: %v %v %v %v", m.Class, m.ByteOrder, m.Machine, m.Signature)
			}
			wantInfo := []Field{{"parmtype", "p:int"}, {"parm", "p:a param"}, {"name", "tiny"}, {"depends", ""}, {"license", "GPL"}}
			if !reflect.DeepEqual(m.Info, wantInfo) {
				t.Errorf("Info = %q", m.Info)
			}
			wantFields := []Field{{"name", "tiny"}, {"depends", ""}, {"license", "GPL"}, {"parm", "p:a param (int)"}}
			if got := m.ModinfoFields(); !reflect.DeepEqual(got, wantFields) {
				t.Errorf("ModinfoFields = %q", got)
			}
			if !slices.Equal(m.Undefined, []string{"printk", "vfree"}) || !slices.Equal(m.WeakUndefined, []string{"maybe_there"}) {
				t.Errorf("Undefined %q WeakUndefined %q", m.Undefined, m.WeakUndefined)
			}
			wantExports := []Export{
				{Name: "gplsym", GPL: true, Namespace: "MY_NS", CRC: 0xdeadbeef, HasCRC: true},
				{Name: "plain", CRC: 0x12345678, HasCRC: true},
			}
			if !reflect.DeepEqual(m.Exports, wantExports) {
				t.Errorf("Exports = %+v", m.Exports)
			}
			if !reflect.DeepEqual(m.Versions, []Version{{Name: "printk", CRC: c.crc}}) {
				t.Errorf("Versions = %+v", m.Versions)
			}
		})
	}
}

// fuzzErrors are the errors Parse may return, wrapped.
var fuzzErrors = []error{ErrEmpty, ErrNotELF, ErrTruncated, ErrMalformed, ErrNoModinfo, ErrCorruptCompressed, ErrTooLarge, ErrBadSignature}

// trailerFor is struct module_signature for a PKCS#7 blob of n bytes and
// the magic.
func trailerFor(n int) []byte {
	t := []byte{0, 0, 2, 0, 0, 0, 0, 0}
	t = binary.BigEndian.AppendUint32(t, uint32(n))
	return append(t, "~Module signature appended~\n"...)
}

func FuzzParse(f *testing.F) {
	for _, class := range []elf.Class{elf.ELFCLASS32, elf.ELFCLASS64} {
		for _, bo := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			f.Add(tinyModule(class, bo))
		}
	}
	tiny := tinyModule(elf.ELFCLASS64, binary.LittleEndian)
	for _, c := range []compress.Format{compress.Gzip, compress.XZ, compress.Zstd} {
		if b, err := compress.Compress(tiny, c); err == nil {
			f.Add(b)
		}
	}
	// tiny with a signature trailer around a garbage CMS blob.
	cms := []byte{0x30, 0x03, 0x02, 0x01, 0x01}
	f.Add(append(append(slices.Clone(tiny), cms...), trailerFor(len(cms))...))
	f.Add([]byte("\x7fELF"))
	f.Add([]byte{})
	// Small real modules, when the fixtures are there.
	for _, rel := range []string{"compressed/dummy.ko", "compressed/dummy.ko.xz", "foreign/armhf/dummy.ko", "foreign/s390x/dummy.ko"} {
		if b, err := os.ReadFile(filepath.Join(fixture.Dir(), rel)); err == nil {
			f.Add(b)
		}
	}
	// tiny signed with dummy.ko's signature (not valid for it, but parsed).
	if b, err := os.ReadFile(filepath.Join(fixture.Dir(), "compressed/dummy.ko")); err == nil {
		if m, err := Parse(b); err == nil && m.ContentSize < len(b) {
			f.Add(append(slices.Clone(tiny), b[m.ContentSize:]...))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		// The piecewise reader of ParseFile must agree with Parse.
		m2, err2 := parseReaderAt(bytes.NewReader(data), int64(len(data)), parseConfig{})
		if (err == nil) != (err2 == nil) {
			t.Fatalf("Parse error %v, piecewise error %v", err, err2)
		}
		if err != nil {
			known := false
			for _, e := range fuzzErrors {
				known = known || errors.Is(err, e)
			}
			if !known {
				t.Fatalf("error %q wraps none of the parser's errors", err)
			}
			if err.Error() != err2.Error() {
				t.Fatalf("Parse error %q, piecewise error %q", err, err2)
			}
			return
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("Parse and the piecewise reader differ")
		}
		// InfoOnly reads a subset: it must succeed and agree on that subset.
		mi, err := Parse(data, InfoOnly())
		if err != nil {
			t.Fatalf("full parse succeeded, InfoOnly failed: %v", err)
		}
		if !reflect.DeepEqual(mi.Info, m.Info) || !reflect.DeepEqual(mi.ModinfoFields(), m.ModinfoFields()) {
			t.Fatalf("InfoOnly and the full parse differ on .modinfo")
		}
		if m.Size > MaxModuleSize || m.ContentSize > m.Size {
			t.Fatalf("Size %d ContentSize %d", m.Size, m.ContentSize)
		}
		// Bounded output: every string comes from the input.
		if m.Compression == compress.None {
			if len(m.Info) > len(data) || len(m.Undefined)+len(m.WeakUndefined) > len(data)/sym32Size || len(m.Versions) > len(data)/64 || len(m.Exports) > len(data)/sym32Size {
				t.Fatalf("output larger than input: %d info, %d undefined, %d versions, %d exports", len(m.Info), len(m.Undefined), len(m.Versions), len(m.Exports))
			}
		}
		_ = m.ModinfoFields()
		_, _, _, _, _ = m.Name(), m.Vermagic(), m.Depends(), m.Intree(), m.All("alias")
	})
}
