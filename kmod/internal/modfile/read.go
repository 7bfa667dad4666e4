package modfile

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/kmodctl/packer-plugin-kmod/compress"
)

// MaxSize bounds the size of a module, after decompression: larger input
// is refused (ErrTooLarge) rather than read into memory. The largest
// in-tree module of a distribution kernel (amdgpu.ko) is about 20 MiB.
const MaxSize = 256 << 20

// Errors of the reader; kmod exports them under the same names, with
// their documentation.
var (
	ErrEmpty             = errors.New("empty file")
	ErrNotELF            = errors.New("not an ELF kernel module")
	ErrTruncated         = errors.New("truncated ELF")
	ErrMalformed         = errors.New("malformed ELF")
	ErrCorruptCompressed = errors.New("corrupt compressed module")
	ErrTooLarge          = errors.New("module too large")
)

// TailStart is where a piecewise parse starts reading the end of a file: a little
// before the section header table that head (the file's start) announces,
// as linkers put it after all sections but the signature and place the
// section name table just before it. Without a plausible table offset it
// is fileTailRead bytes before the end.
func TailStart(head []byte, size uint64) uint64 {
	fallback := size - min(size, fileTailRead)
	if len(head) < Ehdr64Size || string(head[:4]) != elf.ELFMAG {
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

// Decompress decompresses module content in format f, bounded by MaxSize;
// its errors wrap ErrTooLarge, ErrCorruptCompressed or ErrEmpty.
func Decompress(data []byte, f compress.Format) ([]byte, error) {
	out, err := compress.Decompress(data, f, MaxSize)
	if errors.Is(err, compress.ErrTooLarge) {
		return nil, fmt.Errorf("%w: %s data decompresses to more than %d bytes", ErrTooLarge, f, MaxSize)
	}
	if err != nil {
		return nil, fmt.Errorf("%w (%s): %w", ErrCorruptCompressed, f, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %s data decompresses to nothing", ErrEmpty, f)
	}
	return out, nil
}

// SymRef is a symbol found by name prefix, kept until the symbol pass ends.
type SymRef struct {
	Name  []byte // without the prefix
	Shndx uint32
	Value uint64
	Kind  uint8
}

// SymbolData returns the bytes of the section a symbol is defined in from
// the symbol's value (an offset in ET_REL) on, at most max bytes (0: up to
// the section's end); nil when the symbol does not point into section data.
// Each section is read once.
func (e *ELF) SymbolData(r SymRef, max uint64) ([]byte, error) {
	if r.Shndx == 0 || r.Shndx >= uint32(e.Shnum) {
		return nil, nil
	}
	data, ok := e.cache[r.Shndx]
	if !ok {
		var err error
		if data, err = e.Data(e.Section(int(r.Shndx))); err != nil {
			return nil, err
		}
		if e.cache == nil {
			e.cache = map[uint32][]byte{}
		}
		e.cache[r.Shndx] = data
	}
	if r.Value >= uint64(len(data)) {
		return nil, nil
	}
	data = data[r.Value:]
	if max > 0 && uint64(len(data)) > max {
		data = data[:max]
	}
	return data, nil
}

// Scratch holds a parse's temporary buffers; they are pooled, so nothing
// in a returned Module may alias them.
type Scratch struct {
	// arena backs the ranges read from a file.
	arena []byte
	// Names holds the symbol names of the module back to back; ends[i] is
	// where the i-th ends.
	Names []byte
	ends  []int
	// Undef and Weak index names; Exports, CRCs and NSs are the symbols
	// that describe exports.
	Undef, Weak        []int
	Exports, CRCs, NSs []SymRef
}

var scratchPool = sync.Pool{New: func() any { return new(Scratch) }}

// GetScratch takes a Scratch from the pool; PutScratch returns it.
func GetScratch() *Scratch { return scratchPool.Get().(*Scratch) }

// maxPooledArena bounds the arena kept for reuse: a few huge modules must
// not pin memory.
const maxPooledArena = 4 << 20

// PutScratch returns sc to the pool; nothing taken from it may be used
// afterwards.
func PutScratch(sc *Scratch) {
	if cap(sc.arena) > maxPooledArena {
		sc.arena = nil
	}
	if cap(sc.Names) > maxPooledArena {
		sc.Names = nil
	}
	sc.arena, sc.Names, sc.ends = sc.arena[:0], sc.Names[:0], sc.ends[:0]
	sc.Undef, sc.Weak = sc.Undef[:0], sc.Weak[:0]
	// Entries past len were cleared by earlier calls.
	clear(sc.Exports)
	clear(sc.CRCs)
	clear(sc.NSs)
	sc.Exports, sc.CRCs, sc.NSs = sc.Exports[:0], sc.CRCs[:0], sc.NSs[:0]
	scratchPool.Put(sc)
}

// Alloc returns n bytes of the arena. A request that does not fit gets a
// new, larger arena; the old one stays valid for the slices handed out.
func (sc *Scratch) Alloc(n uint64) []byte {
	if uint64(cap(sc.arena)-len(sc.arena)) < n {
		sc.arena = make([]byte, 0, max(n, 2*uint64(cap(sc.arena)), 64<<10))
	}
	l := uint64(len(sc.arena))
	sc.arena = sc.arena[:l+n]
	return sc.arena[l : l+n : l+n]
}

// Count is the number of names added.
func (sc *Scratch) Count() int { return len(sc.ends) }

// Add appends a name and returns its index.
func (sc *Scratch) Add(b []byte) int {
	sc.Names = append(sc.Names, b...)
	sc.ends = append(sc.ends, len(sc.Names))
	return len(sc.ends) - 1
}

// Get is name i, cut from all, the copy of sc.Names.
func (sc *Scratch) Get(all string, i int) string {
	start := 0
	if i > 0 {
		start = sc.ends[i-1]
	}
	return all[start:sc.ends[i]]
}

// List is the names idx indexes, cut from all (nil for none).
func (sc *Scratch) List(all string, idx []int) []string {
	if len(idx) == 0 {
		return nil
	}
	out := make([]string, len(idx))
	for i, n := range idx {
		out[i] = sc.Get(all, n)
	}
	return out
}

// FileSource reads ranges of a module file into the scratch arena, serving
// them from the head and tail it has already read when it can.
type FileSource struct {
	r          io.ReaderAt
	size       uint64
	sc         *Scratch
	Head, Tail []byte
	TailOff    uint64
	// OwnTail is set when the tail handed to modsig.Split is a buffer of
	// its own rather than scratch memory.
	OwnTail bool
}

// NewFileSource reads the size-byte module file r into sc's arena.
func NewFileSource(r io.ReaderAt, size uint64, sc *Scratch) *FileSource {
	return &FileSource{r: r, size: size, sc: sc}
}

// At implements Source, serving the head and tail already read.
func (s *FileSource) At(off, n uint64) ([]byte, error) {
	if off >= s.TailOff && off+n <= s.TailOff+uint64(len(s.Tail)) {
		return s.Tail[off-s.TailOff : off-s.TailOff+n], nil
	}
	if off+n <= uint64(len(s.Head)) {
		return s.Head[off : off+n], nil
	}
	return s.ReadRange(off, n)
}

// ReadRange reads n bytes at off into the arena.
func (s *FileSource) ReadRange(off, n uint64) ([]byte, error) {
	buf := s.sc.Alloc(n)
	return buf, s.ReadFull(buf, off)
}

// ReadFull reads len(buf) bytes at off; a file that shrank is ErrTruncated.
func (s *FileSource) ReadFull(buf []byte, off uint64) error {
	n, err := s.r.ReadAt(buf, int64(off))
	if n == len(buf) {
		return nil
	}
	if err == io.EOF || err == nil {
		return fmt.Errorf("%w: the file shrank while being read", ErrTruncated)
	}
	return err
}
