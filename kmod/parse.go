package kmod

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"
	"strings"
	"sync"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// MaxModuleSize bounds the size of a module, after decompression: larger
// input is refused (ErrTooLarge) rather than read into memory. The largest
// in-tree module of a distribution kernel (amdgpu.ko) is about 20 MiB.
const MaxModuleSize = 256 << 20

// Errors of Parse and ParseFile; the returned errors wrap them with detail.
var (
	// ErrEmpty: the input has no bytes at all.
	ErrEmpty = errors.New("empty file")
	// ErrTruncated: the ELF header, section header table or a section
	// extends past the end of the file (or of the module content, before
	// the signature).
	ErrTruncated = errors.New("truncated ELF")
	// ErrMalformed: the ELF structures are inconsistent.
	ErrMalformed = errors.New("malformed ELF")
	// ErrNoModinfo: the ELF object has no .modinfo section, so it is no
	// kernel module.
	ErrNoModinfo = errors.New("missing .modinfo section")
	// ErrCorruptCompressed: the input starts with a gzip/xz/zstd magic but
	// does not decompress.
	ErrCorruptCompressed = errors.New("corrupt compressed module")
	// ErrTooLarge: the (decompressed) module exceeds MaxModuleSize.
	ErrTooLarge = errors.New("module too large")
	// ErrBadSignature wraps the error of modsig.Split for a module whose
	// signature trailer is inconsistent.
	ErrBadSignature = errors.New("bad module signature trailer")
)

// ParseOption changes what Parse and ParseFile read.
type ParseOption func(*parseConfig)

type parseConfig struct {
	infoOnly bool
}

// InfoOnly reads only what modinfo shows (.modinfo and the signature) and
// leaves Undefined, WeakUndefined, Exports and Versions empty: listing a
// whole tree does not pay for the symbol tables.
func InfoOnly() ParseOption { return func(c *parseConfig) { c.infoOnly = true } }

func newParseConfig(opts []ParseOption) parseConfig {
	var c parseConfig
	for _, o := range opts {
		o(&c)
	}
	return c
}

// Parse parses a kernel module held in memory: a plain .ko or one
// compressed with gzip, xz or zstd (detected by magic). The Module keeps no
// reference to data.
func Parse(data []byte, opts ...ParseOption) (*Module, error) {
	cfg := newParseConfig(opts)
	if len(data) == 0 {
		return nil, ErrEmpty
	}
	m := &Module{Compression: compress.Detect(data)}
	if m.Compression != compress.None {
		var err error
		if data, err = decompressModule(data, m.Compression); err != nil {
			return nil, err
		}
	} else if len(data) > MaxModuleSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), MaxModuleSize)
	}
	sc := getScratch()
	defer putScratch(sc)
	if err := m.parseDecompressed(memSource(data), data, uint64(len(data)), 0, sc, cfg); err != nil {
		return nil, err
	}
	return m, nil
}

// ParseFile parses the module at path like Parse and records the path. An
// uncompressed file is not read whole: only the ELF header, the section
// headers, the sections the Module needs and the signature are read.
// Errors name the path.
func ParseFile(path string, opts ...ParseOption) (*Module, error) {
	m, err := parseFile(path, newParseConfig(opts))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.Path = path
	return m, nil
}

func parseFile(path string, cfg parseConfig) (*Module, error) {
	f, size, err := openModuleFile(path)
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
	sc := getScratch()
	defer putScratch(sc)
	fs := &fileSource{r: r, size: uint64(size), sc: sc}
	var err error
	if fs.head, err = fs.readAt(0, min(uint64(size), 64)); err != nil {
		return nil, err
	}
	m := &Module{Compression: compress.Detect(fs.head)}
	if m.Compression != compress.None {
		raw := make([]byte, size)
		if err := fs.read(raw, 0); err != nil {
			return nil, err
		}
		data, err := decompressModule(raw, m.Compression)
		if err != nil {
			return nil, err
		}
		if err := m.parseDecompressed(memSource(data), data, uint64(len(data)), 0, sc, cfg); err != nil {
			return nil, err
		}
		return m, nil
	}
	// Read the end of the file at once: the signature, and the section
	// header table with, usually, the section name table just before it.
	fs.tailOff = tailStart(fs.head, uint64(size))
	tailLen := uint64(size) - fs.tailOff
	if fs.tail, err = fs.readAt(fs.tailOff, tailLen); err != nil {
		return nil, err
	}
	sigTail := fs.tail
	if need := sigTailLen(fs.tail); need > 0 {
		// modsig.Split gets bytes of its own, not the reusable scratch:
		// what it returns may alias its input.
		n := min(uint64(size), need)
		sigTail = make([]byte, n)
		if n <= tailLen {
			copy(sigTail, fs.tail[tailLen-n:])
		} else if err := fs.read(sigTail, uint64(size)-n); err != nil {
			return nil, err
		}
	}
	fs.ownTail = len(sigTail) > 0 && &sigTail[0] != &fs.tail[0]
	if err := m.parseDecompressed(fs, sigTail, uint64(size), uint64(size)-uint64(len(sigTail)), sc, cfg); err != nil {
		return nil, err
	}
	return m, nil
}

// tailStart is where ParseFile starts reading the end of a file: a little
// before the section header table that head (the file's start) announces,
// as linkers put it after all sections but the signature and place the
// section name table just before it. Without a plausible table offset it
// is fileTailRead bytes before the end.
func tailStart(head []byte, size uint64) uint64 {
	fallback := size - min(size, fileTailRead)
	if len(head) < ehdr64Size || string(head[:4]) != elf.ELFMAG {
		return fallback
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if elf.Data(head[elf.EI_DATA]) == elf.ELFDATA2MSB {
		bo = binary.BigEndian
	}
	var shoff uint64
	if elf.Class(head[elf.EI_CLASS]) == elf.ELFCLASS64 {
		shoff = bo.Uint64(head[40:])
	} else {
		shoff = uint64(bo.Uint32(head[32:]))
	}
	start := shoff - min(shoff, tailSlack)
	if shoff >= size || size-start > maxTailRead {
		return fallback
	}
	return start
}

const (
	// fileTailRead is how much of a file's end ParseFile reads when the
	// header gives no section header table offset.
	fileTailRead = 16 << 10
	// tailSlack is how much before the section header table it reads.
	tailSlack = 2 << 10
	// maxTailRead bounds the tail read from the section header table on.
	maxTailRead = 256 << 10
)

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

func decompressModule(data []byte, f compress.Format) ([]byte, error) {
	out, err := compress.Decompress(data, f, MaxModuleSize)
	if errors.Is(err, compress.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %s data decompresses to more than %d bytes", ErrTooLarge, f, MaxModuleSize)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (%s): %w", ErrCorruptCompressed, f, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s data decompresses to nothing", ErrEmpty, f)
	}
	return out, nil
}

// parseDecompressed fills m from a decompressed module of size bytes read
// through src. tail holds the module's last bytes, starting at tailOff.
func (m *Module) parseDecompressed(src source, tail []byte, size, tailOff uint64, sc *scratch, cfg parseConfig) error {
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
		if fs, ok := src.(*fileSource); ok && fs.ownTail {
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

// symRef is a symbol found by name prefix, kept until the symbol pass ends.
type symRef struct {
	name  []byte // without the prefix
	shndx uint32
	value uint64
	kind  uint8
}

func (m *Module) parseELF(src source, size uint64, end string, sc *scratch, cfg parseConfig) error {
	e, err := openELF(src, size, end)
	if err != nil {
		return err
	}
	m.Class, m.ByteOrder, m.Machine = e.class, e.bo, e.mach

	modinfo, symtab, versions := -1, -1, -1
	var kinds []uint8
	for i := 1; i < e.shnum; i++ {
		s, err := e.namedSection(i)
		if s.typ == elf.SHT_NULL {
			continue
		}
		if err != nil {
			return err
		}
		if err := e.check(s, ""); err != nil {
			return err
		}
		switch {
		case string(s.name) == ".modinfo":
			if modinfo < 0 {
				modinfo = i
			}
		case string(s.name) == "__versions":
			if versions < 0 {
				versions = i
			}
		case s.typ == elf.SHT_SYMTAB:
			if symtab < 0 {
				symtab = i
			}
		default:
			if k := ksymtabKind(s.name); k != secOther {
				if kinds == nil {
					kinds = make([]uint8, e.shnum)
				}
				kinds[i] = k
			}
		}
	}
	if modinfo < 0 {
		return ErrNoModinfo
	}
	info, err := e.data(e.section(modinfo))
	if err != nil {
		return err
	}
	m.Info = splitModinfo(info)
	if cfg.infoOnly {
		return nil
	}

	// Every name goes to sc.names first, then to one string.
	if versions >= 0 {
		if err = m.readVersions(e, e.section(versions), sc); err != nil {
			return err
		}
	}
	if symtab >= 0 {
		if err = readSymbols(e, e.section(symtab), kinds, sc); err != nil {
			return err
		}
	}
	exports, crcs, nss := sc.exports, sc.crcs, sc.nss
	firstExport := len(sc.ends)
	for _, x := range exports {
		sc.add(x.name)
	}
	firstNS := len(sc.ends)
	if len(exports) > 0 {
		for _, x := range nss {
			b, err := e.symbolData(x, 0)
			if err != nil {
				return err
			}
			sc.add(cbytes(b))
		}
	}
	all := string(sc.names)

	for i := range m.Versions {
		m.Versions[i].Name = sc.get(all, i)
	}
	m.Undefined = sc.list(all, sc.undef)
	m.WeakUndefined = sc.list(all, sc.weak)
	if len(exports) == 0 {
		return nil
	}
	m.Exports = make([]Export, len(exports))
	byName := make(map[string]int, len(exports))
	for i, x := range exports {
		m.Exports[i] = Export{Name: sc.get(all, firstExport+i), GPL: x.kind == secKsymtabGPL}
		byName[m.Exports[i].Name] = i
	}
	for _, c := range crcs {
		i, ok := byName[string(c.name)]
		if !ok {
			continue
		}
		if c.shndx == uint32(elf.SHN_ABS) {
			m.Exports[i].CRC, m.Exports[i].HasCRC = uint32(c.value), true
		} else if b, err := e.symbolData(c, 4); err == nil && len(b) >= 4 {
			m.Exports[i].CRC, m.Exports[i].HasCRC = e.bo.Uint32(b), true
		} else if err != nil {
			return err
		}
	}
	for j, x := range nss {
		if i, ok := byName[string(x.name)]; ok {
			m.Exports[i].Namespace = sc.get(all, firstNS+j)
		}
	}
	slices.SortFunc(m.Exports, func(a, b Export) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

// symbolData returns the bytes of the section a symbol is defined in from
// the symbol's value (an offset in ET_REL) on, at most max bytes (0: up to
// the section's end); nil when the symbol does not point into section data.
// Each section is read once.
func (e *elfFile) symbolData(r symRef, max uint64) ([]byte, error) {
	if r.shndx == 0 || r.shndx >= uint32(e.shnum) {
		return nil, nil
	}
	data, ok := e.cache[r.shndx]
	if !ok {
		var err error
		if data, err = e.data(e.section(int(r.shndx))); err != nil {
			return nil, err
		}
		if e.cache == nil {
			e.cache = map[uint32][]byte{}
		}
		e.cache[r.shndx] = data
	}
	if r.value >= uint64(len(data)) {
		return nil, nil
	}
	data = data[r.value:]
	if max > 0 && uint64(len(data)) > max {
		data = data[:max]
	}
	return data, nil
}

// readVersions decodes __versions: entries of 64 bytes, an unsigned long
// CRC in the module's byte order and a NUL-padded name.
// Their names are the first strings of sc.
func (m *Module) readVersions(e *elfFile, s elfSection, sc *scratch) error {
	const entry = 64
	if s.size%entry != 0 {
		return fmt.Errorf("%w: __versions size %d is not a multiple of %d", ErrMalformed, s.size, entry)
	}
	b, err := e.data(s)
	if err != nil {
		return err
	}
	crcSize := 4
	if e.is64 {
		crcSize = 8
	}
	n := len(b) / entry
	m.Versions = make([]Version, n)
	for i := range n {
		ent := b[i*entry : (i+1)*entry]
		if e.is64 {
			m.Versions[i].CRC = e.bo.Uint64(ent)
		} else {
			m.Versions[i].CRC = uint64(e.bo.Uint32(ent))
		}
		sc.add(cbytes(ent[crcSize:]))
	}
	return nil
}

// readSymbols walks the symbol table once, collecting into sc the
// undefined symbols and the __ksymtab_/__crc_/__kstrtabns_ symbols that
// describe exports.
func readSymbols(e *elfFile, s elfSection, kinds []uint8, sc *scratch) error {
	if s.link == 0 || uint64(s.link) >= uint64(e.shnum) {
		return fmt.Errorf("%w: symbol table links to string table %d of %d sections", ErrMalformed, s.link, e.shnum)
	}
	syms, strs, err := e.data2(s, e.section(int(s.link)))
	if err != nil {
		return err
	}
	entsize := sym32Size
	if e.is64 {
		entsize = sym64Size
	}
	count := len(syms) / entsize
	for i := 1; i < count; i++ {
		nameOff, info, shndx, value := e.symbol(syms, i)
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
			name := cbytes(rest)
			if len(name) == 0 {
				continue
			}
			if elf.SymBind(info>>4) == elf.STB_WEAK {
				sc.weak = append(sc.weak, sc.add(name))
			} else {
				sc.undef = append(sc.undef, sc.add(name))
			}
			continue
		}
		if len(rest) < 2 || rest[0] != '_' || rest[1] != '_' {
			continue
		}
		name := cbytes(rest)
		ref := symRef{shndx: uint32(shndx), value: value}
		switch {
		case bytes.HasPrefix(name, []byte("__ksymtab_")):
			if kinds != nil && int(shndx) < len(kinds) && kinds[shndx] != secOther {
				ref.name, ref.kind = name[len("__ksymtab_"):], kinds[shndx]
				sc.exports = append(sc.exports, ref)
			}
		case bytes.HasPrefix(name, []byte("__crc_")):
			ref.name = name[len("__crc_"):]
			sc.crcs = append(sc.crcs, ref)
		case bytes.HasPrefix(name, []byte("__kstrtabns_")):
			ref.name = name[len("__kstrtabns_"):]
			sc.nss = append(sc.nss, ref)
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

// scratch holds a parse's temporary buffers; they are pooled, so nothing
// in a returned Module may alias them.
type scratch struct {
	// arena backs the ranges read from a file.
	arena []byte
	// names holds the symbol names of the module back to back; ends[i] is
	// where the i-th ends.
	names []byte
	ends  []int
	// undef and weak index names; exports, crcs and nss are the symbols
	// that describe exports.
	undef, weak        []int
	exports, crcs, nss []symRef
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

// maxPooledArena bounds the arena kept for reuse: a few huge modules must
// not pin memory.
const maxPooledArena = 4 << 20

func putScratch(sc *scratch) {
	if cap(sc.arena) > maxPooledArena {
		sc.arena = nil
	}
	if cap(sc.names) > maxPooledArena {
		sc.names = nil
	}
	sc.arena, sc.names, sc.ends = sc.arena[:0], sc.names[:0], sc.ends[:0]
	sc.undef, sc.weak = sc.undef[:0], sc.weak[:0]
	// Entries past len were cleared by earlier calls.
	clear(sc.exports)
	clear(sc.crcs)
	clear(sc.nss)
	sc.exports, sc.crcs, sc.nss = sc.exports[:0], sc.crcs[:0], sc.nss[:0]
	scratchPool.Put(sc)
}

// alloc returns n bytes of the arena. A request that does not fit gets a
// new, larger arena; the old one stays valid for the slices handed out.
func (sc *scratch) alloc(n uint64) []byte {
	if uint64(cap(sc.arena)-len(sc.arena)) < n {
		sc.arena = make([]byte, 0, max(n, 2*uint64(cap(sc.arena)), 64<<10))
	}
	l := uint64(len(sc.arena))
	sc.arena = sc.arena[:l+n]
	return sc.arena[l : l+n : l+n]
}

// add appends a name and returns its index.
func (sc *scratch) add(b []byte) int {
	sc.names = append(sc.names, b...)
	sc.ends = append(sc.ends, len(sc.names))
	return len(sc.ends) - 1
}

// get is name i, cut from all, the copy of sc.names.
func (sc *scratch) get(all string, i int) string {
	start := 0
	if i > 0 {
		start = sc.ends[i-1]
	}
	return all[start:sc.ends[i]]
}

func (sc *scratch) list(all string, idx []int) []string {
	if len(idx) == 0 {
		return nil
	}
	out := make([]string, len(idx))
	for i, n := range idx {
		out[i] = sc.get(all, n)
	}
	return out
}

// fileSource reads ranges of a module file into the scratch arena, serving
// them from the head and tail it has already read when it can.
type fileSource struct {
	r          io.ReaderAt
	size       uint64
	sc         *scratch
	head, tail []byte
	tailOff    uint64
	// ownTail is set when the tail handed to modsig.Split is a buffer of
	// its own rather than scratch memory.
	ownTail bool
}

func (s *fileSource) at(off, n uint64) ([]byte, error) {
	if off >= s.tailOff && off+n <= s.tailOff+uint64(len(s.tail)) {
		return s.tail[off-s.tailOff : off-s.tailOff+n], nil
	}
	if off+n <= uint64(len(s.head)) {
		return s.head[off : off+n], nil
	}
	return s.readAt(off, n)
}

// readAt reads n bytes at off into the arena.
func (s *fileSource) readAt(off, n uint64) ([]byte, error) {
	buf := s.sc.alloc(n)
	return buf, s.read(buf, off)
}

func (s *fileSource) read(buf []byte, off uint64) error {
	n, err := s.r.ReadAt(buf, int64(off))
	if n == len(buf) {
		return nil
	}
	if err == io.EOF || err == nil {
		return fmt.Errorf("%w: the file shrank while being read", ErrTruncated)
	}
	return err
}
