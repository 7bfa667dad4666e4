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
	"github.com/kmodctl/packer-plugin-kmod/internal/elftest"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod/internal/modfile"
)

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
	tab, strs := elftest.Symtab(class, bo, []elftest.Sym{
		{Name: "", Shndx: 1, Type: elf.STT_SECTION},
		{Name: "printk", Bind: elf.STB_GLOBAL},
		{Name: "maybe_there", Bind: elf.STB_WEAK},
		{Name: "", Bind: elf.STB_GLOBAL},
		{Name: "__ksymtab_plain", Shndx: 3},
		{Name: "__crc_plain", Shndx: uint16(elf.SHN_ABS), Value: 0x12345678},
		{Name: "__ksymtab_gplsym", Shndx: 4},
		{Name: "__crc_gplsym", Shndx: 5, Value: 4},
		{Name: "__kstrtabns_gplsym", Shndx: 6, Value: 7},
		{Name: "__kstrtabns_plain", Shndx: 6, Value: 6},
		{Name: "vfree", Bind: elf.STB_GLOBAL, Type: elf.STT_FUNC},
	})
	return elftest.Build(class, bo, elf.ET_REL, []elftest.Section{
		{Name: ".modinfo", Type: elf.SHT_PROGBITS, Data: []byte("\x00\x00parmtype=p:int\x00parm=p:a param\x00name=tiny\x00depends=\x00license=GPL\x00\x00")},
		{Name: "__versions", Type: elf.SHT_PROGBITS, Data: versions},
		{Name: "__ksymtab", Type: elf.SHT_PROGBITS, Data: make([]byte, 12)},
		{Name: "__ksymtab_gpl", Type: elf.SHT_PROGBITS, Data: make([]byte, 12)},
		{Name: "__kcrctab_gpl", Type: elf.SHT_PROGBITS, Data: kcrctab},
		{Name: "__ksymtab_strings", Type: elf.SHT_PROGBITS, Data: []byte("plain\x00\x00MY_NS\x00gplsym\x00")},
		{Name: ".symtab", Type: elf.SHT_SYMTAB, Data: tab, Link: 8},
		{Name: ".strtab", Type: elf.SHT_STRTAB, Data: strs},
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
			if len(m.Info) > len(data) || len(m.Undefined)+len(m.WeakUndefined) > len(data)/modfile.Sym32Size || len(m.Versions) > len(data)/64 || len(m.Exports) > len(data)/modfile.Sym32Size {
				t.Fatalf("output larger than input: %d info, %d undefined, %d versions, %d exports", len(m.Info), len(m.Undefined), len(m.Versions), len(m.Exports))
			}
		}
		_ = m.ModinfoFields()
		_, _, _, _, _ = m.Name(), m.Vermagic(), m.Depends(), m.Intree(), m.All("alias")
	})
}
