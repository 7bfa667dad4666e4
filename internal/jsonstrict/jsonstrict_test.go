package jsonstrict

import (
	"strings"
	"testing"
)

func TestCheckKeys(t *testing.T) {
	for doc, want := range map[string]string{
		`{"a":1,"b":{"a":2},"c":[{"a":1},{"a":1}]}`: "",
		`{"a":1,"a":2}`:                 `duplicate field "a"`,
		`{"x":{"a":[1,{"b":1,"b":2}]}}`: `duplicate field "b"`,
		`[[[[[1]]]]]`:                   "nested deeper than 4 levels",
		`{"a":`:                         "EOF",
		`{"Bad":1}`:                     "key Bad",
	} {
		err := CheckKeys([]byte(doc), 4, func(k string) error {
			if k == "Bad" {
				return errBad
			}
			return nil
		})
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", doc, err, want)
		}
	}
}

type badKey struct{}

func (badKey) Error() string { return "key Bad" }

var errBad = badKey{}

func TestCheckText(t *testing.T) {
	for s, want := range map[string]string{"ok text": "", "tab\there": "control character U+0009", "\xff": "UTF-8", strings.Repeat("a", 9): "longer than 8"} {
		err := CheckText(s, 8)
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", s, err, want)
		}
	}
	b, err := Encode(map[string]string{"b": "<&>", "a": "x"})
	if err != nil || string(b) != "{\n  \"a\": \"x\",\n  \"b\": \"<&>\"\n}\n" {
		t.Errorf("Encode = %q, %v", b, err)
	}
}
