package kmod

import (
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// BenchmarkGenerateDepmod: the whole fixture tree, read as Depmod reads it.
func BenchmarkGenerateDepmod(b *testing.B) {
	root, err := DepmodDir(fixture.KernelRoot(b))
	if err != nil {
		b.Fatal(err)
	}
	kver := fixture.KVER(b)
	for b.Loop() {
		if _, err := GenerateDepmod(root, kver, WithDepmodConfig()); err != nil {
			b.Fatal(err)
		}
	}
}
