// Package shquote quotes words for a POSIX shell (/bin/sh) command line.
//
// A word made only of characters no shell treats specially is left as it
// is, so that logged commands stay readable; any other word is put in
// single quotes, each single quote in it closing the quotes, adding an
// escaped quote and opening them again:
//
//	it's  ->  'it'\''s'
package shquote

import "strings"

// safe reports whether c needs no quoting anywhere in a word.
func safe(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("_-./:=@%+,", c) >= 0
}

// Quote returns s as one shell word: s itself when every byte is a letter,
// digit or one of _-./:=@%+, and s in single quotes otherwise (the empty
// string becomes a pair of single quotes).
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	for i := 0; i < len(s); i++ {
		if !safe(s[i]) {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}

// Join quotes each word and joins them with spaces.
func Join(words ...string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = Quote(w)
	}
	return strings.Join(q, " ")
}
