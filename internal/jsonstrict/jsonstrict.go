// Package jsonstrict checks the shape of a JSON document before
// encoding/json decodes it: encoding/json keeps the last of duplicate keys
// and matches keys case-insensitively, which a strict format must refuse.
package jsonstrict

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// CheckText bounds a string field to max bytes of valid UTF-8 without
// control characters (a value that is printed or written into a file).
func CheckText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("is longer than %d bytes", max)
	}
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("contains control character %U", r)
		}
	}
	return nil
}

// Encode encodes v indented by two spaces with a trailing newline and
// without HTML escaping: equal values give equal bytes.
func Encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// CheckKeys walks the JSON document and refuses a key that appears twice
// in one object, nesting deeper than maxDepth, and, when key is not nil, a
// key for which it returns an error.
func CheckKeys(data []byte, maxDepth int, key func(string) error) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		object bool
		keys   map[string]bool
		// wantKey: inside an object, the next string is a key.
		wantKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			if len(stack) > 0 {
				return io.ErrUnexpectedEOF
			}
			return nil
		}
		if err != nil {
			return err
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
			top := stack[n-1]
			k, ok := tok.(string)
			if !ok {
				// The closing brace.
				stack = stack[:n-1]
				if len(stack) > 0 && stack[len(stack)-1].object {
					stack[len(stack)-1].wantKey = true
				}
				continue
			}
			if key != nil {
				if err := key(k); err != nil {
					return err
				}
			}
			if top.keys[k] {
				return fmt.Errorf("duplicate field %q", k)
			}
			top.keys[k] = true
			top.wantKey = false
			continue
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if len(stack) >= maxDepth {
					return fmt.Errorf("nested deeper than %d levels", maxDepth)
				}
				stack = append(stack, &frame{object: d == '{', keys: map[string]bool{}, wantKey: d == '{'})
				continue
			case ']':
				stack = stack[:len(stack)-1]
			}
		}
		// A value ended: in an object, a key comes next.
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].wantKey = true
		}
	}
}
