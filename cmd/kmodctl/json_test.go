package main

import (
	"encoding/json"
	"testing"
)

// appendJSONString must decode to what encoding/json would produce for the
// same Go string (invalid UTF-8 replaced by U+FFFD).
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " and \ backslash`, "tab\tnewline\ncr\r", "\x00\x01\x1f\x7f",
		"unicode ü 日本", "bad \xff utf8 \xc3", "line1\nline2 (int)", "<&>",
	} {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Errorf("%q -> %s: %v", s, b, err)
			continue
		}
		want, _ := json.Marshal(s)
		var w string
		_ = json.Unmarshal(want, &w)
		if got != w {
			t.Errorf("%q: decodes to %q, encoding/json gives %q", s, got, w)
		}
	}
}

func FuzzAppendJSONString(f *testing.F) {
	f.Add("x\"\\\n\xff")
	f.Fuzz(func(t *testing.T, s string) {
		var got string
		if err := json.Unmarshal(appendJSONString(nil, s), &got); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		want, _ := json.Marshal(s)
		var w string
		_ = json.Unmarshal(want, &w)
		if got != w {
			t.Fatalf("%q: %q vs %q", s, got, w)
		}
	})
}
