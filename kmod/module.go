// Package kmod reads, signs, verifies and checks Linux kernel modules (.ko,
// optionally .ko.xz/.ko.zst/.ko.gz) without the kernel's C tools.
package kmod

import (
	"debug/elf"
	"encoding/binary"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/kmod/internal/modfile"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// Field is one key=value string of the .modinfo section.
type Field struct {
	Key, Value string
}

// Export is a symbol the module exports (__ksymtab / __ksymtab_gpl).
type Export struct {
	Name      string
	GPL       bool
	Namespace string
	// CRC is the modversions CRC from __kcrctab, when HasCRC.
	CRC    uint32
	HasCRC bool
}

// Version is one __versions entry: the CRC the module expects for a symbol.
type Version struct {
	Name string
	CRC  uint64
}

// Module is a parsed kernel module.
type Module struct {
	// Path is the file the module was read from, if any.
	Path string
	// Compression is the file's compression (None for a plain .ko).
	Compression compress.Format
	Class       elf.Class
	ByteOrder   binary.ByteOrder
	Machine     elf.Machine
	// Info holds the .modinfo strings in section order.
	Info []Field
	// Undefined lists, in symbol-table order, the undefined symbols the
	// module needs from vmlinux or other modules: every SHN_UNDEF entry of
	// .symtab with a non-empty name that is not weak. These are the symbols
	// `depmod -e` reports as "needs unknown symbol" when nobody exports them
	// and that the kernel refuses to load without ("Unknown symbol").
	Undefined []string
	// WeakUndefined lists the weak undefined symbols: depmod still turns
	// them into dependencies when some module exports them, but neither
	// depmod -e nor the kernel complains when they stay unresolved.
	WeakUndefined []string
	// Exports lists the module's exported symbols, sorted by name.
	Exports []Export
	// Versions holds the __versions table (modversions CRCs of imports).
	Versions []Version
	// Signature is nil for an unsigned module.
	Signature *modsig.Signature
	// Size is the length of the decompressed module, signature included;
	// ContentSize the length without the signature.
	Size, ContentSize int
}

// ErrNotELF is returned for input that is not an ELF relocatable module.
var ErrNotELF = modfile.ErrNotELF

// Get returns the value of the first .modinfo field named key, the one the
// kernel's get_modinfo finds.
func (m *Module) Get(key string) (string, bool) {
	for _, f := range m.Info {
		if f.Key == key {
			return f.Value, true
		}
	}
	return "", false
}

// All returns the values of every .modinfo field named key, in section order.
func (m *Module) All(key string) []string {
	var vals []string
	for _, f := range m.Info {
		if f.Key == key {
			vals = append(vals, f.Value)
		}
	}
	return vals
}

// Name is the module name: the name= field, or, as kmod derives it from a
// path, the file's base name up to its first '.' with '-' turned into '_'.
func (m *Module) Name() string {
	if n, ok := m.Get("name"); ok && n != "" {
		return n
	}
	return ModuleNameFromPath(m.Path)
}

// ModuleNameFromPath is kmod's module name for a file path:
// "/x/snd-hda-intel.ko.xz" → "snd_hda_intel". It is "" for an empty path.
func ModuleNameFromPath(path string) string {
	base := path
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		base = base[i+1:]
	}
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// Vermagic is the vermagic= field ("" when absent).
func (m *Module) Vermagic() string {
	v, _ := m.Get("vermagic")
	return v
}

// Depends lists the modules named by the depends= field; an empty or absent
// field yields none.
func (m *Module) Depends() []string {
	v, _ := m.Get("depends")
	var deps []string
	for _, d := range strings.Split(v, ",") {
		if d != "" {
			deps = append(deps, d)
		}
	}
	return deps
}

// Intree reports whether the module carries an intree= field. The kernel
// only tests its presence: without it, loading taints the kernel
// ("loading out-of-tree module taints kernel").
func (m *Module) Intree() bool {
	_, ok := m.Get("intree")
	return ok
}
