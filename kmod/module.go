// Package kmod reads, signs, verifies and checks Linux kernel modules (.ko,
// optionally .ko.xz/.ko.zst/.ko.gz) without the kernel's C tools.
package kmod

import (
	"debug/elf"
	"encoding/binary"
	"errors"

	"github.com/kmodctl/packer-plugin-kmod/internal/compress"
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
	// Undefined lists the undefined symbols the module needs from others.
	Undefined []string
	// Exports lists the module's exported symbols.
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
var ErrNotELF = errors.New("not an ELF kernel module")
