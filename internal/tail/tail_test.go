package tail

import (
	"strings"
	"testing"
)

func TestBuffer(t *testing.T) {
	b := &Buffer{Max: 8}
	for _, s := range []string{"abc", "defgh", "ijk"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got := b.String(); got != "defghijk" {
		t.Errorf("String() = %q, want the last 8 bytes", got)
	}
	var d Buffer
	d.Write([]byte(strings.Repeat("x", 70<<10) + "end"))
	if got := d.String(); len(got) != 64<<10 || !strings.HasSuffix(got, "end") {
		t.Errorf("default Max: kept %d bytes", len(got))
	}
}
