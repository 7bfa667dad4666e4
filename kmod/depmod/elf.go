package depmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/kmod/internal/modfile"
)

// This file reads what depmod needs from a module, with kmod 30's rules
// (libkmod-elf.c), which differ from Module's:
//
//   - exports are the names of the __crc_* symbols of .symtab, in symbol
//     table order (kmod_elf_get_symbols); a module without any (built
//     without modversions), or whose symbol table names point outside
//     .strtab, exports every string of __ksymtab_strings instead, which
//     also holds namespace names;
//   - dependency symbols are the undefined symbols with a name, weak ones
//     included, plus the __versions entries no undefined symbol named
//     (module_layout), with the CRC of the first __versions entry of the
//     same name (0 without one);
//   - sections are found by name (.modinfo, .symtab, .strtab, __versions,
//     __ksymtab_strings), the first valid one winning;
//   - a module without .modinfo, .symtab or .strtab is not an error: it
//     has no aliases, exports or dependencies.
//
// Only the .modinfo keys depmod writes out are kept: alias and softdep.

// depSym is a symbol a module needs.
type depSym struct {
	name string
	weak bool
}

// depmodFacts is what depmod reads from one module file.
type depmodFacts struct {
	aliases, softdeps []string
	exports           []string
	// exportCRCs holds the exports' CRCs (kmod_elf_resolve_crc) when the
	// scan was asked for them.
	exportCRCs []uint64
	deps       []depSym
	// depCRCs holds the deps' __versions CRCs when the scan was asked for
	// them.
	depCRCs []uint64
}

// scanner reads modules for depmod; one per goroutine, as it keeps
// buffers from one module to the next.
type scanner struct {
	wantCRC bool
	// Indexes of strings in the scratch name buffer.
	aliases, softdeps, exports, depNames []int
	depWeak                              []bool
	exportCRCs, depCRCs                  []uint64
	// The __versions names back to back, where each ends, and an
	// open-addressing table from name to first entry (index+1, 0 empty).
	verNames []byte
	verEnds  []int
	verSlots []int32
	visited  []bool
}

func (w *scanner) reset() {
	w.aliases, w.softdeps, w.exports, w.depNames = w.aliases[:0], w.softdeps[:0], w.exports[:0], w.depNames[:0]
	w.depWeak, w.exportCRCs, w.depCRCs = w.depWeak[:0], w.exportCRCs[:0], w.depCRCs[:0]
	w.verNames, w.verEnds, w.visited = w.verNames[:0], w.verEnds[:0], w.visited[:0]
}

// scanFile reads the module at a host path.
func (w *scanner) scanFile(path string) (*depmodFacts, error) {
	f, size, err := modfile.OpenFile(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return w.scanReaderAt(f, size)
}

// scanReaderAt reads a size-byte module through r: an uncompressed one
// piecewise, a compressed one whole.
func (w *scanner) scanReaderAt(r io.ReaderAt, size int64) (*depmodFacts, error) {
	if size == 0 {
		return nil, modfile.ErrEmpty
	}
	if size > modfile.MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", modfile.ErrTooLarge, size, modfile.MaxSize)
	}
	sc := modfile.GetScratch()
	defer modfile.PutScratch(sc)
	src := modfile.NewFileSource(r, uint64(size), sc)
	var err error
	if size <= wholeRead {
		// One read costs less than the five a piecewise parse makes.
		data := sc.Alloc(uint64(size))
		if err := src.ReadFull(data, 0); err != nil {
			return nil, err
		}
		if c := compress.Detect(data); c != compress.None {
			if data, err = modfile.Decompress(data, c); err != nil {
				return nil, err
			}
		}
		return w.scanELF(modfile.MemSource(data), uint64(len(data)), sc)
	}
	if src.Head, err = src.ReadRange(0, min(uint64(size), 64)); err != nil {
		return nil, err
	}
	if c := compress.Detect(src.Head); c != compress.None {
		raw := make([]byte, size)
		if err := src.ReadFull(raw, 0); err != nil {
			return nil, err
		}
		data, err := modfile.Decompress(raw, c)
		if err != nil {
			return nil, err
		}
		return w.scanELF(modfile.MemSource(data), uint64(len(data)), sc)
	}
	src.TailOff = modfile.TailStart(src.Head, uint64(size))
	if src.Tail, err = src.ReadRange(src.TailOff, uint64(size)-src.TailOff); err != nil {
		return nil, err
	}
	return w.scanELF(src, uint64(size), sc)
}

// wholeRead is the size up to which a module file is read at once.
const wholeRead = 32 << 10

// scanBytes reads a module held in memory (plain or compressed).
func (w *scanner) scanBytes(data []byte) (*depmodFacts, error) {
	if len(data) == 0 {
		return nil, modfile.ErrEmpty
	}
	if c := compress.Detect(data); c != compress.None {
		var err error
		if data, err = modfile.Decompress(data, c); err != nil {
			return nil, err
		}
	} else if len(data) > modfile.MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", modfile.ErrTooLarge, len(data), modfile.MaxSize)
	}
	sc := modfile.GetScratch()
	defer modfile.PutScratch(sc)
	return w.scanELF(modfile.MemSource(data), uint64(len(data)), sc)
}

func (w *scanner) scanELF(src modfile.Source, size uint64, sc *modfile.Scratch) (*depmodFacts, error) {
	w.reset()
	e, err := modfile.OpenELF(src, size, "end of file")
	if err != nil {
		return nil, err
	}
	modinfo, strtab, symtab, versions, ksymStrings := -1, -1, -1, -1, -1
	for i := 1; i < e.Shnum; i++ {
		s, err := e.NamedSection(i)
		if err != nil || e.Check(s, "") != nil {
			continue // kmod skips sections it cannot name or read
		}
		var slot *int
		switch string(s.Name) {
		case ".modinfo":
			slot = &modinfo
		case ".strtab":
			slot = &strtab
		case ".symtab":
			slot = &symtab
		case "__versions":
			slot = &versions
		case "__ksymtab_strings":
			slot = &ksymStrings
		default:
			continue
		}
		if *slot < 0 {
			*slot = i
		}
	}
	if modinfo >= 0 {
		b, err := e.Data(e.Section(modinfo))
		if err != nil {
			return nil, err
		}
		w.readModinfo(b, sc)
	}

	// __versions: 64-byte entries, a CRC of the word size, then the name.
	var vers []byte
	crcLen := 4
	if e.Is64 {
		crcLen = 8
	}
	if versions >= 0 {
		if vers, err = e.Data(e.Section(versions)); err != nil {
			return nil, err
		}
		if len(vers)%64 != 0 {
			vers = nil
		}
		if len(vers) > 0 {
			w.indexVersions(vers, crcLen)
		}
	}

	exportsFallback, depsValid := true, false
	if symtab >= 0 && strtab >= 0 {
		symSec, strSec := e.Section(symtab), e.Section(strtab)
		syms, strs, err := e.Data2(symSec, strSec)
		if err != nil {
			return nil, err
		}
		if exportsFallback, depsValid, err = w.readSymtab(e, syms, strs, vers, crcLen, sc); err != nil {
			return nil, err
		}
	}
	if exportsFallback {
		w.exports, w.exportCRCs = w.exports[:0], w.exportCRCs[:0]
		if ksymStrings >= 0 {
			b, err := e.Data(e.Section(ksymStrings))
			if err != nil {
				return nil, err
			}
			forEachCString(b, func(s []byte) {
				w.exports = append(w.exports, sc.Add(s))
				w.exportCRCs = append(w.exportCRCs, 0)
			})
		}
	}
	if depsValid {
		// The __versions entries no undefined symbol claimed.
		for i, seen := range w.visited {
			if seen {
				continue
			}
			ent := vers[i*64:]
			w.depNames = append(w.depNames, sc.Add(modfile.CBytes(ent[crcLen:])))
			w.depWeak = append(w.depWeak, false)
			w.depCRCs = append(w.depCRCs, versionCRC(e, ent, crcLen))
		}
	}

	all := string(sc.Names)
	f := &depmodFacts{
		aliases:  sc.List(all, w.aliases),
		softdeps: sc.List(all, w.softdeps),
		exports:  sc.List(all, w.exports),
	}
	if w.wantCRC && len(w.exportCRCs) > 0 {
		f.exportCRCs = append([]uint64(nil), w.exportCRCs...)
	}
	if len(w.depNames) > 0 {
		f.deps = make([]depSym, len(w.depNames))
		for i, n := range w.depNames {
			f.deps[i] = depSym{name: sc.Get(all, n), weak: w.depWeak[i]}
		}
		if w.wantCRC {
			f.depCRCs = append([]uint64(nil), w.depCRCs...)
		}
	}
	return f, nil
}

func versionCRC(e *modfile.ELF, ent []byte, crcLen int) uint64 {
	if crcLen == 8 {
		return e.ByteOrder.Uint64(ent)
	}
	return uint64(e.ByteOrder.Uint32(ent))
}

// readModinfo keeps the alias= and softdep= values of .modinfo, split the
// way kmod_elf_get_strings splits it.
func (w *scanner) readModinfo(b []byte, sc *modfile.Scratch) {
	forEachCString(b, func(s []byte) {
		// The key runs up to the first '='; without one the value is empty.
		key, val := s, []byte(nil)
		if i := bytes.IndexByte(s, '='); i >= 0 {
			key, val = s[:i], s[i+1:]
		}
		switch string(key) {
		case "alias":
			w.aliases = append(w.aliases, sc.Add(val))
		case "softdep":
			w.softdeps = append(w.softdeps, sc.Add(val))
		}
	})
}

// forEachCString calls f for every string of a section of NUL-terminated
// strings the way kmod reads .modinfo and __ksymtab_strings: leading NULs
// are skipped, a section of at most one byte after them holds nothing,
// runs of NULs separate strings, and an unterminated last string counts.
func forEachCString(b []byte, f func([]byte)) {
	i := 0
	for i < len(b)-1 && b[i] == 0 {
		i++
	}
	if len(b)-i <= 1 {
		return
	}
	b = b[i:]
	for len(b) > 0 {
		j := bytes.IndexByte(b, 0)
		if j < 0 {
			f(b)
			return
		}
		if j > 0 {
			f(b[:j])
		}
		b = b[j+1:]
	}
}

// indexVersions fills the table from __versions names to their first
// entry.
func (w *scanner) indexVersions(vers []byte, crcLen int) {
	n := len(vers) / 64
	for off := 0; off < len(vers); off += 64 {
		w.verNames = append(w.verNames, modfile.CBytes(vers[off+crcLen:])...)
		w.verEnds = append(w.verEnds, len(w.verNames))
	}
	w.visited = append(w.visited, make([]bool, n)...)
	size := 16
	for size < 2*n {
		size *= 2
	}
	if cap(w.verSlots) < size {
		w.verSlots = make([]int32, size)
	} else {
		w.verSlots = w.verSlots[:size]
		clear(w.verSlots)
	}
	mask := uint32(size - 1)
	for i := range n {
		name := w.verName(i)
		for h := fnv32(name) & mask; ; h = (h + 1) & mask {
			j := w.verSlots[h] - 1
			if j < 0 {
				w.verSlots[h] = int32(i) + 1
				break
			}
			if bytes.Equal(w.verName(int(j)), name) {
				break // a later duplicate: the first entry stays
			}
		}
	}
}

func (w *scanner) verName(i int) []byte {
	start := 0
	if i > 0 {
		start = w.verEnds[i-1]
	}
	return w.verNames[start:w.verEnds[i]]
}

// findVersion is the first __versions entry named name, or -1.
func (w *scanner) findVersion(name []byte) int {
	mask := uint32(len(w.verSlots) - 1)
	for h := fnv32(name) & mask; ; h = (h + 1) & mask {
		j := int(w.verSlots[h]) - 1
		if j < 0 || bytes.Equal(w.verName(j), name) {
			return j
		}
	}
}

// fnv32 is the 32-bit FNV-1a hash.
func fnv32(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

const stRegister = 13 // STT_REGISTER of SPARC

// readSymtab walks the symbol table once for exports (__crc_ symbols) and
// dependency symbols (undefined ones). It reports whether the exports must
// come from __ksymtab_strings instead and whether kmod would accept the
// dependency symbols at all.
func (w *scanner) readSymtab(e *modfile.ELF, syms, strs, vers []byte, crcLen int, sc *modfile.Scratch) (exportsFallback, depsValid bool, err error) {
	entsize := modfile.Sym32Size
	if e.Is64 {
		entsize = modfile.Sym64Size
	}
	if len(syms)%entsize != 0 {
		return true, false, nil
	}
	sparc := e.Machine == elf.EM_SPARC || e.Machine == elf.EM_SPARCV9
	badName, badUndefName := false, false
	count := len(syms) / entsize
	for i := 1; i < count; i++ {
		nameOff, info, shndx, value := e.Symbol(syms, i)
		undef := shndx == uint16(elf.SHN_UNDEF) && !(sparc && info&0xf == stRegister)
		if uint64(nameOff) >= uint64(len(strs)) {
			badName = true
			if undef {
				badUndefName = true
			}
			continue
		}
		rest := strs[nameOff:]
		isCRC := len(rest) >= 6 && string(rest[:6]) == "__crc_"
		if !undef && !isCRC {
			continue // most symbols: defined, not a CRC
		}
		name := modfile.CBytes(rest)
		if undef {
			if len(name) == 0 {
				continue
			}
			var crc uint64
			if len(vers) > 0 {
				if vi := w.findVersion(name); vi >= 0 {
					w.visited[vi] = true
					crc = versionCRC(e, vers[int(vi)*64:], crcLen)
				}
			}
			w.depNames = append(w.depNames, sc.Add(name))
			w.depWeak = append(w.depWeak, elf.SymBind(info>>4) == elf.STB_WEAK)
			w.depCRCs = append(w.depCRCs, crc)
			// An undefined __crc_ symbol still counts as an export below.
		}
		if isCRC && len(name) >= 6 {
			w.exports = append(w.exports, sc.Add(name[6:]))
			if w.wantCRC {
				crc, err := resolveCRC(e, value, shndx)
				if err != nil {
					return false, false, err
				}
				w.exportCRCs = append(w.exportCRCs, crc)
			}
		}
	}
	if badUndefName {
		w.depNames, w.depWeak, w.depCRCs = w.depNames[:0], w.depWeak[:0], w.depCRCs[:0]
	}
	return badName || len(w.exports) == 0, !badUndefName, nil
}

// resolveCRC is kmod_elf_resolve_crc: the value of an absolute or
// undefined __crc_ symbol, else the 32-bit word it points at; all ones
// when it points nowhere.
func resolveCRC(e *modfile.ELF, value uint64, shndx uint16) (uint64, error) {
	if shndx == uint16(elf.SHN_ABS) || shndx == uint16(elf.SHN_UNDEF) {
		return value, nil
	}
	b, err := e.SymbolData(modfile.SymRef{Shndx: uint32(shndx), Value: value}, 4)
	if err != nil {
		return 0, err
	}
	if len(b) < 4 {
		return ^uint64(0), nil
	}
	return uint64(e.ByteOrder.Uint32(b)), nil
}
