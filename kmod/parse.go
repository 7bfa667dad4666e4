package kmod

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/kmod/internal/modfile"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// MaxModuleSize bounds the size of a module, after decompression: larger
// input is refused (ErrTooLarge) rather than read into memory. The largest
// in-tree module of a distribution kernel (amdgpu.ko) is about 20 MiB.
const MaxModuleSize = modfile.MaxSize

// Errors of Parse and ParseFile; the returned errors wrap them with detail.
var (
	// ErrEmpty: the input has no bytes at all.
	ErrEmpty = modfile.ErrEmpty
	// ErrTruncated: the ELF header, section header table or a section
	// extends past the end of the file (or of the module content, before
	// the signature).
	ErrTruncated = modfile.ErrTruncated
	// ErrMalformed: the ELF structures are inconsistent.
	ErrMalformed = modfile.ErrMalformed
	// ErrNoModinfo: the ELF object has no .modinfo section, so it is no
	// kernel module.
	ErrNoModinfo = errors.New("missing .modinfo section")
	// ErrCorruptCompressed: the input starts with a gzip/xz/zstd magic but
	// does not decompress.
	ErrCorruptCompressed = modfile.ErrCorruptCompressed
	// ErrTooLarge: the (decompressed) module exceeds MaxModuleSize.
	ErrTooLarge = modfile.ErrTooLarge
	// ErrBadSignature wraps the error of modsig.Split for a module whose
	// signature trailer is inconsistent.
	ErrBadSignature = errors.New("bad module signature trailer")
)

// ParseOption changes what Parse and ParseFile read; one with a bad
// argument makes them fail.
type ParseOption func(*parseConfig) error

type parseConfig struct {
	infoOnly bool
}

// InfoOnly reads only what modinfo shows (.modinfo and the signature) and
// leaves Undefined, WeakUndefined, Exports and Versions empty: listing a
// whole tree does not pay for the symbol tables.
func InfoOnly() ParseOption {
	return func(c *parseConfig) error { c.infoOnly = true; return nil }
}

func newParseConfig(opts []ParseOption) (parseConfig, error) {
	var c parseConfig
	for _, o := range opts {
		if err := o(&c); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Parse parses a kernel module held in memory: a plain .ko or one
// compressed with gzip, xz or zstd (detected by magic). The Module keeps no
// reference to data.
func Parse(data []byte, opts ...ParseOption) (*Module, error) {
	cfg, err := newParseConfig(opts)
	if err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, ErrEmpty
	}
	m := &Module{Compression: compress.Detect(data)}
	if m.Compression != compress.None {
		if data, err = modfile.Decompress(data, m.Compression); err != nil {
			return nil, err
		}
	} else if len(data) > MaxModuleSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxModuleSize)
	}
	sc := modfile.GetScratch()
	defer modfile.PutScratch(sc)
	if err := m.parseDecompressed(modfile.MemSource(data), data, uint64(len(data)), 0, sc, cfg); err != nil {
		return nil, err
	}
	return m, nil
}

// ParseFile parses the module at path like Parse and records the path. An
// uncompressed file is not read whole: only the ELF header, the section
// headers, the sections the Module needs and the signature are read.
// Errors name the path.
func ParseFile(path string, opts ...ParseOption) (*Module, error) {
	cfg, err := newParseConfig(opts)
	if err != nil {
		return nil, err
	}
	m, err := parseFile(path, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.Path = path
	return m, nil
}

func parseFile(path string, cfg parseConfig) (*Module, error) {
	f, size, err := modfile.OpenFile(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseReaderAt(f, size, cfg)
}

// parseReaderAt parses the size-byte module read through r, reading an
// uncompressed module piecewise.
func parseReaderAt(r io.ReaderAt, size int64, cfg parseConfig) (*Module, error) {
	if size == 0 {
		return nil, ErrEmpty
	}
	if size > MaxModuleSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, size, MaxModuleSize)
	}
	sc := modfile.GetScratch()
	defer modfile.PutScratch(sc)
	fs := modfile.NewFileSource(r, uint64(size), sc)
	var err error
	if fs.Head, err = fs.ReadRange(0, min(uint64(size), 64)); err != nil {
		return nil, err
	}
	m := &Module{Compression: compress.Detect(fs.Head)}
	if m.Compression != compress.None {
		raw := make([]byte, size)
		if err := fs.ReadFull(raw, 0); err != nil {
			return nil, err
		}
		data, err := modfile.Decompress(raw, m.Compression)
		if err != nil {
			return nil, err
		}
		if err := m.parseDecompressed(modfile.MemSource(data), data, uint64(len(data)), 0, sc, cfg); err != nil {
			return nil, err
		}
		return m, nil
	}
	// Read the end of the file at once: the signature, and the section
	// header table with, usually, the section name table just before it.
	fs.TailOff = modfile.TailStart(fs.Head, uint64(size))
	tailLen := uint64(size) - fs.TailOff
	if fs.Tail, err = fs.ReadRange(fs.TailOff, tailLen); err != nil {
		return nil, err
	}
	sigTail := fs.Tail
	if need := sigTailLen(fs.Tail); need > 0 {
		// modsig.Split gets bytes of its own, not the reusable scratch:
		// what it returns may alias its input.
		n := min(uint64(size), need)
		sigTail = make([]byte, n)
		if n <= tailLen {
			copy(sigTail, fs.Tail[tailLen-n:])
		} else if err := fs.ReadFull(sigTail, uint64(size)-n); err != nil {
			return nil, err
		}
	}
	fs.OwnTail = len(sigTail) > 0 && &sigTail[0] != &fs.Tail[0]
	if err := m.parseDecompressed(fs, sigTail, uint64(size), uint64(size)-uint64(len(sigTail)), sc, cfg); err != nil {
		return nil, err
	}
	return m, nil
}

// sigTailSlack is how many bytes before a signature the part of the module
// handed to modsig.Split includes.
const sigTailSlack = 512

// sigTailLen is the length of the file tail that holds the whole signature
// announced by the trailer at the end of tail (plus some slack), or 0 when
// tail does not end with the signature magic.
func sigTailLen(tail []byte) uint64 {
	const trailer = modsig.TrailerSize + len(modsig.Magic)
	if len(tail) < trailer || string(tail[len(tail)-len(modsig.Magic):]) != modsig.Magic {
		return 0
	}
	b := tail[len(tail)-trailer:]
	sigLen := uint64(b[8])<<24 | uint64(b[9])<<16 | uint64(b[10])<<8 | uint64(b[11])
	return sigLen + uint64(trailer) + sigTailSlack
}

// parseDecompressed fills m from a decompressed module of size bytes read
// through src. tail holds the module's last bytes, starting at tailOff.
func (m *Module) parseDecompressed(src modfile.Source, tail []byte, size, tailOff uint64, sc *modfile.Scratch, cfg parseConfig) error {
	m.Size = int(size)
	content, sig, err := modsig.Split(tail)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	contentSize := tailOff + uint64(len(content))
	m.ContentSize = int(contentSize)
	end := "end of file"
	if sig != nil {
		// A signature parsed from a file's private tail may keep it; one
		// parsed from a whole module must not.
		if fs, ok := src.(*modfile.FileSource); ok && fs.OwnTail {
			m.Signature = sig
		} else {
			m.Signature = cloneSignature(sig)
		}
		end = "end of module content (before the signature)"
	} else if contentSize != size {
		end = "end of module content"
	}
	return m.parseELF(src, contentSize, end, sc, cfg)
}

// cloneSignature copies a signature so that it no longer aliases the
// module's bytes.
func cloneSignature(s *modsig.Signature) *modsig.Signature {
	c := *s
	c.Raw = bytes.Clone(s.Raw)
	c.Signers = slices.Clone(s.Signers)
	for i := range c.Signers {
		si := &c.Signers[i]
		si.IssuerRaw = bytes.Clone(si.IssuerRaw)
		si.IssuerCN = strings.Clone(si.IssuerCN)
		si.SubjectKeyID = bytes.Clone(si.SubjectKeyID)
		si.SignatureBytes = bytes.Clone(si.SignatureBytes)
		if si.Serial != nil {
			si.Serial = new(big.Int).Set(si.Serial)
		}
	}
	return &c
}

// Kinds of sections the symbol pass cares about.
const (
	secOther uint8 = iota
	secKsymtab
	secKsymtabGPL
)

// ksymtabKind classifies a section name: __ksymtab, __ksymtab_gpl, or the
// per-symbol ___ksymtab+NAME / ___ksymtab_gpl+NAME input sections of a
// module not linked with the kernel's module.lds.
func ksymtabKind(name []byte) uint8 {
	switch {
	case string(name) == "__ksymtab", bytes.HasPrefix(name, []byte("___ksymtab+")):
		return secKsymtab
	case string(name) == "__ksymtab_gpl", bytes.HasPrefix(name, []byte("___ksymtab_gpl+")):
		return secKsymtabGPL
	}
	return secOther
}

func (m *Module) parseELF(src modfile.Source, size uint64, end string, sc *modfile.Scratch, cfg parseConfig) error {
	e, err := modfile.OpenELF(src, size, end)
	if err != nil {
		return err
	}
	m.Class, m.ByteOrder, m.Machine = e.Class, e.ByteOrder, e.Machine

	modinfo, symtab, versions := -1, -1, -1
	var kinds []uint8
	for i := 1; i < e.Shnum; i++ {
		s, err := e.NamedSection(i)
		if s.Type == elf.SHT_NULL {
			continue
		}
		if err != nil {
			return err
		}
		if err := e.Check(s, ""); err != nil {
			return err
		}
		switch {
		case string(s.Name) == ".modinfo":
			if modinfo < 0 {
				modinfo = i
			}
		case string(s.Name) == "__versions":
			if versions < 0 {
				versions = i
			}
		case s.Type == elf.SHT_SYMTAB:
			if symtab < 0 {
				symtab = i
			}
		default:
			if k := ksymtabKind(s.Name); k != secOther {
				if kinds == nil {
					kinds = make([]uint8, e.Shnum)
				}
				kinds[i] = k
			}
		}
	}
	if modinfo < 0 {
		return ErrNoModinfo
	}
	info, err := e.Data(e.Section(modinfo))
	if err != nil {
		return err
	}
	m.Info = splitModinfo(info)
	if cfg.infoOnly {
		return nil
	}

	// Every name goes to sc.names first, then to one string.
	if versions >= 0 {
		if err = m.readVersions(e, e.Section(versions), sc); err != nil {
			return err
		}
	}
	if symtab >= 0 {
		if err = readSymbols(e, e.Section(symtab), kinds, sc); err != nil {
			return err
		}
	}
	exports, crcs, nss := sc.Exports, sc.CRCs, sc.NSs
	firstExport := sc.Count()
	for _, x := range exports {
		sc.Add(x.Name)
	}
	firstNS := sc.Count()
	if len(exports) > 0 {
		for _, x := range nss {
			b, err := e.SymbolData(x, 0)
			if err != nil {
				return err
			}
			sc.Add(modfile.CBytes(b))
		}
	}
	all := string(sc.Names)

	for i := range m.Versions {
		m.Versions[i].Name = sc.Get(all, i)
	}
	m.Undefined = sc.List(all, sc.Undef)
	m.WeakUndefined = sc.List(all, sc.Weak)
	if len(exports) == 0 {
		return nil
	}
	m.Exports = make([]Export, len(exports))
	byName := make(map[string]int, len(exports))
	for i, x := range exports {
		m.Exports[i] = Export{Name: sc.Get(all, firstExport+i), GPL: x.Kind == secKsymtabGPL}
		byName[m.Exports[i].Name] = i
	}
	for _, c := range crcs {
		i, ok := byName[string(c.Name)]
		if !ok {
			continue
		}
		if c.Shndx == uint32(elf.SHN_ABS) {
			m.Exports[i].CRC, m.Exports[i].HasCRC = uint32(c.Value), true
		} else if b, err := e.SymbolData(c, 4); err == nil && len(b) >= 4 {
			m.Exports[i].CRC, m.Exports[i].HasCRC = e.ByteOrder.Uint32(b), true
		} else if err != nil {
			return err
		}
	}
	for j, x := range nss {
		if i, ok := byName[string(x.Name)]; ok {
			m.Exports[i].Namespace = sc.Get(all, firstNS+j)
		}
	}
	slices.SortFunc(m.Exports, func(a, b Export) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

// readVersions decodes __versions: entries of 64 bytes, an unsigned long
// CRC in the module's byte order and a NUL-padded name.
// Their names are the first strings of sc.
func (m *Module) readVersions(e *modfile.ELF, s modfile.Section, sc *modfile.Scratch) error {
	const entry = 64
	if s.Size%entry != 0 {
		return fmt.Errorf("%w: __versions size %d is not a multiple of %d", ErrMalformed, s.Size, entry)
	}
	b, err := e.Data(s)
	if err != nil {
		return err
	}
	crcSize := 4
	if e.Is64 {
		crcSize = 8
	}
	n := len(b) / entry
	m.Versions = make([]Version, n)
	for i := range n {
		ent := b[i*entry : (i+1)*entry]
		if e.Is64 {
			m.Versions[i].CRC = e.ByteOrder.Uint64(ent)
		} else {
			m.Versions[i].CRC = uint64(e.ByteOrder.Uint32(ent))
		}
		sc.Add(modfile.CBytes(ent[crcSize:]))
	}
	return nil
}

// readSymbols walks the symbol table once, collecting into sc the
// undefined symbols and the __ksymtab_/__crc_/__kstrtabns_ symbols that
// describe exports.
func readSymbols(e *modfile.ELF, s modfile.Section, kinds []uint8, sc *modfile.Scratch) error {
	if s.Link == 0 || uint64(s.Link) >= uint64(e.Shnum) {
		return fmt.Errorf("%w: symbol table links to string table %d of %d sections", ErrMalformed, s.Link, e.Shnum)
	}
	syms, strs, err := e.Data2(s, e.Section(int(s.Link)))
	if err != nil {
		return err
	}
	entsize := modfile.Sym32Size
	if e.Is64 {
		entsize = modfile.Sym64Size
	}
	count := len(syms) / entsize
	for i := 1; i < count; i++ {
		nameOff, info, shndx, value := e.Symbol(syms, i)
		if nameOff == 0 {
			continue // no name
		}
		if uint64(nameOff) >= uint64(len(strs)) {
			return fmt.Errorf("%w: symbol %d name offset %#x outside its string table (%d bytes)", ErrMalformed, i, nameOff, len(strs))
		}
		rest := strs[nameOff:]
		if shndx == uint16(elf.SHN_UNDEF) {
			if elf.SymType(info&0xf) == elf.STT_SECTION {
				continue
			}
			name := modfile.CBytes(rest)
			if len(name) == 0 {
				continue
			}
			if elf.SymBind(info>>4) == elf.STB_WEAK {
				sc.Weak = append(sc.Weak, sc.Add(name))
			} else {
				sc.Undef = append(sc.Undef, sc.Add(name))
			}
			continue
		}
		if len(rest) < 2 || rest[0] != '_' || rest[1] != '_' {
			continue
		}
		name := modfile.CBytes(rest)
		ref := modfile.SymRef{Shndx: uint32(shndx), Value: value}
		switch {
		case bytes.HasPrefix(name, []byte("__ksymtab_")):
			if kinds != nil && int(shndx) < len(kinds) && kinds[shndx] != secOther {
				ref.Name, ref.Kind = name[len("__ksymtab_"):], kinds[shndx]
				sc.Exports = append(sc.Exports, ref)
			}
		case bytes.HasPrefix(name, []byte("__crc_")):
			ref.Name = name[len("__crc_"):]
			sc.CRCs = append(sc.CRCs, ref)
		case bytes.HasPrefix(name, []byte("__kstrtabns_")):
			ref.Name = name[len("__kstrtabns_"):]
			sc.NSs = append(sc.NSs, ref)
		}
	}
	return nil
}

// splitModinfo splits .modinfo the way kmod does: leading padding NULs are
// skipped, a section of at most one byte after them holds nothing, every
// run of NULs ends a string (an unterminated last string counts), and each
// string splits at its first '=' (no '=': the whole string is the key).
// All fields share one copy of the section.
func splitModinfo(sec []byte) []Field {
	i := 0
	for i < len(sec)-1 && sec[i] == 0 {
		i++
	}
	if len(sec)-i <= 1 {
		return nil
	}
	s := string(sec[i:])
	n := 0
	for p := range strings.SplitSeq(s, "\x00") {
		if p != "" {
			n++
		}
	}
	fields := make([]Field, 0, n)
	for p := range strings.SplitSeq(s, "\x00") {
		if p == "" {
			continue
		}
		k, v, _ := strings.Cut(p, "=")
		fields = append(fields, Field{Key: k, Value: v})
	}
	return fields
}
