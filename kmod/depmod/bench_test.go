package depmod

import (
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// BenchmarkGenerate: the whole fixture tree, read as Write reads it.
func BenchmarkGenerate(b *testing.B) {
	root, err := Dir(fixture.KernelRoot(b))
	if err != nil {
		b.Fatal(err)
	}
	kver := fixture.KVER(b)
	for b.Loop() {
		if _, err := Generate(root, kver, WithoutConfig()); err != nil {
			b.Fatal(err)
		}
	}
}
