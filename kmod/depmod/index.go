package depmod

import (
	"cmp"
	"encoding/binary"
	"slices"
	"strings"
)

// This file writes the binary indexes of depmod (modules.*.bin): a radix
// trie with one character per arc, in the layout of kmod's
// libkmod-index.c, written node by node in post-order like kmod ≤ 33
// (children in character order, each node after its children, the root
// last and its offset patched into the header).
//
// kmod builds the trie by inserting keys one by one, splitting nodes on the
// way. The result does not depend on the insertion order: every node but
// the root carries the longest prefix its keys share (the root's prefix is
// always empty, as kmod never gives it one), so the trie is built here from
// the sorted keys. Only the order of a key's values depends on insertion:
// kmod inserts a value before the first one whose priority is not lower, so
// values ascend by priority and, within a priority, the later insert comes
// first.

const (
	indexMagic   = 0xB007F457
	indexVersion = 0x00020001

	indexNodePrefix   = 0x80000000
	indexNodeValues   = 0x40000000
	indexNodeChildren = 0x20000000

	// indexChildMax bounds the characters of keys: 7-bit ASCII.
	indexChildMax = 128
)

// indexEntry is one insert into an index.
type indexEntry struct {
	key, value string
	priority   uint32
	seq        int32 // insertion order
}

// indexBuilder collects the inserts of one index in kmod's order.
type indexBuilder struct {
	entries []indexEntry
}

// add inserts value under key. Keys must be 7-bit ASCII (see validIndexKey).
func (b *indexBuilder) add(key, value string, priority uint32) {
	b.entries = append(b.entries, indexEntry{key: key, value: value, priority: priority, seq: int32(len(b.entries))})
}

// validIndexKey reports whether kmod can store key: every byte below 128.
// (kmod's check misses bytes ≥ 128, as its char is signed, and then indexes
// its child array out of bounds; such keys are refused here.)
func validIndexKey(key string) bool {
	for i := 0; i < len(key); i++ {
		if key[i] >= indexChildMax {
			return false
		}
	}
	return true
}

// write returns the index file.
func (b *indexBuilder) write() []byte {
	e := b.entries
	slices.SortFunc(e, func(x, y indexEntry) int {
		if c := strings.Compare(x.key, y.key); c != 0 {
			return c
		}
		if c := cmp.Compare(x.priority, y.priority); c != 0 {
			return c
		}
		return cmp.Compare(y.seq, x.seq)
	})
	// keys[i] starts the values e[starts[i]:starts[i+1]].
	keys := make([]string, 0, len(e))
	starts := make([]int32, 0, len(e)+1)
	size := 12
	for i := range e {
		if i == 0 || e[i].key != e[i-1].key {
			keys = append(keys, e[i].key)
			starts = append(starts, int32(i))
			size += len(e[i].key) + 16
		}
		size += len(e[i].value) + 5
	}
	starts = append(starts, int32(len(e)))
	w := trieWriter{entries: e, keys: keys, starts: starts, buf: make([]byte, 12, size)}
	binary.BigEndian.PutUint32(w.buf[0:], indexMagic)
	binary.BigEndian.PutUint32(w.buf[4:], indexVersion)
	root := w.node(0, len(keys), 0, true)
	binary.BigEndian.PutUint32(w.buf[8:], root)
	return w.buf
}

type trieWriter struct {
	entries []indexEntry
	keys    []string
	starts  []int32
	buf     []byte
	// refs is a stack of child references, shared by the recursion.
	refs []uint32
}

// node writes the node for keys[lo:hi], which all start with the depth
// characters that lead to it, and returns its reference.
func (w *trieWriter) node(lo, hi, depth int, root bool) uint32 {
	p := depth // end of this node's prefix in the keys
	if !root && hi > lo {
		first, last := w.keys[lo], w.keys[hi-1]
		n := min(len(first), len(last))
		for p < n && first[p] == last[p] {
			p++
		}
	}
	i := lo
	hasValues := hi > lo && len(w.keys[lo]) == p
	if hasValues {
		i++
	}
	// Children, in character order: sorted keys group by their byte at p.
	base := len(w.refs)
	var firstCh, lastCh int
	for i < hi {
		c := w.keys[i][p]
		j := i + 1
		for j < hi && w.keys[j][p] == c {
			j++
		}
		ref := w.node(i, j, p+1, false)
		if len(w.refs) == base {
			firstCh = int(c)
		}
		for len(w.refs)-base < int(c)-firstCh {
			w.refs = append(w.refs, 0)
		}
		w.refs = append(w.refs, ref)
		lastCh = int(c)
		i = j
	}
	off := uint32(len(w.buf))
	if p > depth {
		w.buf = append(w.buf, w.keys[lo][depth:p]...)
		w.buf = append(w.buf, 0)
		off |= indexNodePrefix
	}
	if len(w.refs) > base {
		w.buf = append(w.buf, byte(firstCh), byte(lastCh))
		for _, r := range w.refs[base:] {
			w.buf = binary.BigEndian.AppendUint32(w.buf, r)
		}
		w.refs = w.refs[:base]
		off |= indexNodeChildren
	}
	if hasValues {
		vals := w.entries[w.starts[lo]:w.starts[lo+1]]
		w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(len(vals)))
		for _, v := range vals {
			w.buf = binary.BigEndian.AppendUint32(w.buf, v.priority)
			w.buf = append(w.buf, v.value...)
			w.buf = append(w.buf, 0)
		}
		off |= indexNodeValues
	}
	return off
}

// superFastHash is kmod's hash of shared/hash.c (Paul Hsieh's
// SuperFastHash) as it runs on a little-endian machine with signed char:
// depmod's hash tables iterate in bucket order, which fixes the order of
// the modules outside modules.order and of modules.symbols.
func superFastHash(s string) uint32 {
	n := len(s)
	hash := uint32(n)
	i := 0
	for k := n / 4; k > 0; k-- {
		hash += uint32(s[i]) | uint32(s[i+1])<<8
		tmp := (uint32(s[i+2])|uint32(s[i+3])<<8)<<11 ^ hash
		hash = hash<<16 ^ tmp
		i += 4
		hash += hash >> 11
	}
	switch n & 3 {
	case 3:
		hash += uint32(s[i]) | uint32(s[i+1])<<8
		hash ^= hash << 16
		hash ^= uint32(int32(int8(s[i+2])) << 18)
		hash += hash >> 11
	case 2:
		hash += uint32(s[i]) | uint32(s[i+1])<<8
		hash ^= hash << 11
		hash += hash >> 17
	case 1:
		hash += uint32(int32(int8(s[i])))
		hash ^= hash << 10
		hash += hash >> 1
	}
	hash ^= hash << 3
	hash += hash >> 5
	hash ^= hash << 4
	hash += hash >> 17
	hash ^= hash << 25
	hash += hash >> 6
	return hash
}
