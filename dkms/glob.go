package dkms

// Shell pattern matching (bash(1) "Pattern Matching") for case patterns and
// ${var#pattern}-style expansions: *, ?, bracket expressions with ranges,
// negation and character classes, and backslash escapes. Extended patterns
// (extglob) are not supported; callers treat them as unknown.

import (
	"errors"
	"unicode"
)

var errExtglob = errors.New("extended glob patterns are not evaluated")

type globTok struct {
	kind  byte // 'c' char, '?' any, '*' star, '[' class
	r     rune
	class *bracket
}

type bracket struct {
	neg    bool
	ranges [][2]rune
	fns    []func(rune) bool
}

func (b *bracket) match(r rune) bool {
	in := false
	for _, rg := range b.ranges {
		if r >= rg[0] && r <= rg[1] {
			in = true
			break
		}
	}
	if !in {
		for _, f := range b.fns {
			if f(r) {
				in = true
				break
			}
		}
	}
	return in != b.neg
}

var charClasses = map[string]func(rune) bool{
	"alnum":  func(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) },
	"alpha":  unicode.IsLetter,
	"ascii":  func(r rune) bool { return r < 128 },
	"blank":  func(r rune) bool { return r == ' ' || r == '\t' },
	"cntrl":  unicode.IsControl,
	"digit":  func(r rune) bool { return r >= '0' && r <= '9' },
	"graph":  func(r rune) bool { return unicode.IsGraphic(r) && !unicode.IsSpace(r) },
	"lower":  unicode.IsLower,
	"print":  unicode.IsPrint,
	"punct":  unicode.IsPunct,
	"space":  unicode.IsSpace,
	"upper":  unicode.IsUpper,
	"word":   func(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) },
	"xdigit": func(r rune) bool { return isHex(byte(r)) && r < 128 },
}

// compileGlob turns a pattern (where a backslash quotes the next character)
// into tokens.
func compileGlob(pat string) ([]globTok, error) {
	rs := []rune(pat)
	var toks []globTok
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch r {
		case '\\':
			if i+1 < len(rs) {
				i++
				toks = append(toks, globTok{kind: 'c', r: rs[i]})
			} else {
				toks = append(toks, globTok{kind: 'c', r: '\\'})
			}
		case '?':
			if i+1 < len(rs) && rs[i+1] == '(' {
				return nil, errExtglob
			}
			toks = append(toks, globTok{kind: '?'})
		case '*':
			if i+1 < len(rs) && rs[i+1] == '(' {
				return nil, errExtglob
			}
			if n := len(toks); n == 0 || toks[n-1].kind != '*' {
				toks = append(toks, globTok{kind: '*'})
			}
		case '+', '@', '!':
			if i+1 < len(rs) && rs[i+1] == '(' {
				return nil, errExtglob
			}
			toks = append(toks, globTok{kind: 'c', r: r})
		case '[':
			b, n, ok := parseBracket(rs, i)
			if !ok {
				toks = append(toks, globTok{kind: 'c', r: '['})
				continue
			}
			toks = append(toks, globTok{kind: '[', class: b})
			i = n
		default:
			toks = append(toks, globTok{kind: 'c', r: r})
		}
	}
	return toks, nil
}

// parseBracket parses a bracket expression starting at rs[i] == '['. It
// returns the index of the closing ']'.
func parseBracket(rs []rune, i int) (*bracket, int, bool) {
	b := &bracket{}
	j := i + 1
	if j < len(rs) && (rs[j] == '!' || rs[j] == '^') {
		b.neg = true
		j++
	}
	first := true
	for j < len(rs) {
		r := rs[j]
		if r == ']' && !first {
			return b, j, true
		}
		first = false
		if r == '[' && j+1 < len(rs) && rs[j+1] == ':' {
			end := -1
			for k := j + 2; k+1 < len(rs); k++ {
				if rs[k] == ':' && rs[k+1] == ']' {
					end = k
					break
				}
			}
			if end >= 0 {
				name := string(rs[j+2 : end])
				if f, ok := charClasses[name]; ok {
					b.fns = append(b.fns, f)
				}
				j = end + 2
				continue
			}
		}
		if r == '\\' && j+1 < len(rs) {
			j++
			r = rs[j]
		}
		lo := r
		if j+2 < len(rs) && rs[j+1] == '-' && rs[j+2] != ']' {
			hi := rs[j+2]
			k := j + 2
			if hi == '\\' && k+1 < len(rs) {
				k++
				hi = rs[k]
			}
			b.ranges = append(b.ranges, [2]rune{lo, hi})
			j = k + 1
			continue
		}
		b.ranges = append(b.ranges, [2]rune{lo, lo})
		j++
	}
	return nil, 0, false
}

// globMatch reports whether the whole of s matches the compiled pattern.
// It runs in O(len(s) * len(toks)) with the classic single-backtrack
// algorithm, which is exact for patterns without extglob groups.
func globMatch(toks []globTok, s []rune) bool {
	ti, si := 0, 0
	starT, starS := -1, 0
	for si < len(s) {
		if ti < len(toks) {
			t := toks[ti]
			switch t.kind {
			case '*':
				starT, starS = ti, si
				ti++
				continue
			case '?':
				ti++
				si++
				continue
			case 'c':
				if t.r == s[si] {
					ti++
					si++
					continue
				}
			case '[':
				if t.class.match(s[si]) {
					ti++
					si++
					continue
				}
			}
		}
		if starT < 0 {
			return false
		}
		starS++
		si = starS
		ti = starT + 1
	}
	for ti < len(toks) && toks[ti].kind == '*' {
		ti++
	}
	return ti == len(toks)
}

// hasGlobChars reports whether an unquoted text would undergo pathname
// expansion.
func hasGlobChars(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[':
			return true
		}
	}
	return false
}

// globQuote escapes the pattern characters of s.
func globQuote(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\', '+', '@', '!', '(', ')', '|':
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}
