package dkms

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// dkms matches its regular expressions with glibc: bash's [[ s =~ re ]]
// (regcomp with REG_EXTENDED, unanchored search) for BUILD_EXCLUSIVE_KERNEL,
// BUILD_EXCLUSIVE_ARCH, MAKE_MATCH and PATCH_MATCH, and GNU grep -E for
// BUILD_EXCLUSIVE_CONFIG. Go's regexp differs on many constructs (\d, \w,
// \<, {,3}, back references, [[=a=]], a backslash inside brackets, an
// unmatched ")"), so this file reads the expression itself, accepts only
// the subset whose meaning it is sure of, and translates that subset into
// an equivalent Go expression. Anything else is "unknown", with a reason
// naming the construct, and expressions glibc rejects are reported as
// errors only where that was checked against bash and grep (regex_test.go).

// ereDialect is who compiles the expression: bash's regcomp or grep -E.
// Both accept the same subset with the same meaning; they reject different
// malformed expressions (grep takes "*a" and "a{" literally).
type ereDialect int

const (
	dialectBash ereDialect = iota
	dialectGrep
)

// maxEREBound is the largest {m,n} bound translated: Go's regexp allows
// 1000, glibc 32767 (RE_DUP_MAX); large bounds are rare enough to leave to
// glibc.
const maxEREBound = 255

// ereMaxPattern bounds the expressions read (dkms.conf values are short).
const ereMaxPattern = 4096

// EREError is an expression that glibc's regcomp (or grep -E) rejects:
// bash's [[ =~ ]] then returns status 2 and grep exits with status 2.
type EREError struct {
	Pattern string
	Msg     string
}

func (e *EREError) Error() string {
	return fmt.Sprintf("invalid regular expression %q: %s", e.Pattern, e.Msg)
}

// ereUnknownError says why an expression's meaning is known only to glibc.
type ereUnknownError struct {
	Pattern string
	Why     string
}

func (e *ereUnknownError) Error() string {
	return fmt.Sprintf("regular expression %q: %s: known only at build time", e.Pattern, e.Why)
}

// ere is a translated expression.
type ere struct {
	rx *regexp.Regexp
	// locale: the expression has ".", a negated bracket or a character
	// class, which match non-ASCII text differently in a UTF-8 locale and
	// in the C locale; on ASCII text they agree.
	locale bool
}

// compileERE translates a POSIX ERE. It returns an *EREError when the
// dialect rejects it and an *ereUnknownError when the translation would
// not be sure.
func compileERE(pattern string, d ereDialect) (*ere, error) {
	if len(pattern) > ereMaxPattern {
		return nil, &ereUnknownError{pattern[:40] + "...", fmt.Sprintf("longer than %d bytes", ereMaxPattern)}
	}
	p := &ereParser{src: pattern, dialect: d}
	goRE, err := p.alternation(0)
	if err != nil {
		return nil, err
	}
	if p.pos != len(p.src) { // cannot happen: ")" at depth 0 is literal
		return nil, p.unknown("unexpected text")
	}
	rx, cerr := regexp.Compile(goRE)
	if cerr != nil {
		return nil, p.unknown(fmt.Sprintf("too large to translate (%v)", cerr))
	}
	return &ere{rx: rx, locale: p.locale}, nil
}

// match is the unanchored search. known is false for non-ASCII text with
// a locale-dependent expression.
func (e *ere) match(s string) (match, known bool) {
	if e.locale && !isASCII(s) {
		return false, false
	}
	return e.rx.MatchString(s), true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

type ereParser struct {
	src     string
	pos     int
	dialect ereDialect
	locale  bool
}

func (p *ereParser) bad(msg string) error {
	if p.dialect == dialectGrep {
		// grep -E is more lenient than regcomp on malformed expressions:
		// only the errors checked against grep are reported as errors.
		return p.unknown("malformed for glibc's regcomp (" + msg + "), which grep -E may read differently")
	}
	return &EREError{Pattern: p.src, Msg: msg}
}

// badBoth is an error both regcomp and grep -E report.
func (p *ereParser) badBoth(msg string) error {
	return &EREError{Pattern: p.src, Msg: msg}
}

func (p *ereParser) unknown(why string) error {
	return &ereUnknownError{Pattern: p.src, Why: why}
}

// alternation reads branches separated by "|" up to the end or, inside a
// group, up to its ")".
func (p *ereParser) alternation(depth int) (string, error) {
	var branches []string
	for {
		b, err := p.branch(depth)
		if err != nil {
			return "", err
		}
		branches = append(branches, b)
		if p.pos < len(p.src) && p.src[p.pos] == '|' {
			p.pos++
			continue
		}
		return strings.Join(branches, "|"), nil
	}
}

// pieceKind is what precedes a repetition operator.
type pieceKind int

const (
	pieceNone   pieceKind = iota // start of the expression, of a group or of a branch
	pieceAnchor                  // ^ or $
	pieceAtom
)

func (p *ereParser) branch(depth int) (string, error) {
	var pieces []string
	last := pieceNone
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case c == '|':
			return strings.Join(pieces, ""), nil
		case c == ')' && depth > 0:
			return strings.Join(pieces, ""), nil
		case c == '*' || c == '+' || c == '?' || c == '{':
			if last != pieceAtom {
				// glibc: "Invalid preceding regular expression"
				// (RE_CONTEXT_INVALID_OPS); grep takes it literally.
				return "", p.bad("repetition operator " + string(c) + " without an operand")
			}
			op, err := p.repetition()
			if err != nil {
				return "", err
			}
			// Wrapping keeps "a**" and "a*?" (a repeated repetition for
			// glibc) from reading as Go's non-greedy or invalid forms.
			pieces[len(pieces)-1] = "(?:" + pieces[len(pieces)-1] + ")" + op
			continue
		}
		atom, kind, err := p.atom(depth)
		if err != nil {
			return "", err
		}
		pieces = append(pieces, atom)
		last = kind
	}
	return strings.Join(pieces, ""), nil
}

func (p *ereParser) atom(depth int) (string, pieceKind, error) {
	c := p.src[p.pos]
	p.pos++
	switch c {
	case '(':
		if depth >= 100 {
			return "", 0, p.unknown("groups nested more than 100 deep")
		}
		inner, err := p.alternation(depth + 1)
		if err != nil {
			return "", 0, err
		}
		if p.pos >= len(p.src) || p.src[p.pos] != ')' {
			return "", 0, p.badBoth("unmatched ( or \\(")
		}
		p.pos++
		return "(?:" + inner + ")", pieceAtom, nil
	case ')':
		// An unmatched ")" is an ordinary character for regcomp
		// (RE_UNMATCHED_RIGHT_PAREN_ORD) and for grep.
		return `\)`, pieceAtom, nil
	case '^':
		// Anchors anywhere (RE_CONTEXT_INDEP_ANCHORS); without REG_NEWLINE
		// they match only at the ends of the text, newlines included.
		return `\A`, pieceAnchor, nil
	case '$':
		return `\z`, pieceAnchor, nil
	case '.':
		p.locale = true
		return `(?s:.)`, pieceAtom, nil
	case '[':
		s, err := p.bracket()
		return s, pieceAtom, err
	case '\\':
		if p.pos >= len(p.src) {
			return "", 0, p.bad("trailing backslash")
		}
		e := p.src[p.pos]
		p.pos++
		if strings.IndexByte(`.[]\()*+?{}|^$/-_=:,;@%#!"&~ `, e) >= 0 {
			return regexp.QuoteMeta(string(e)), pieceAtom, nil
		}
		return "", 0, p.unknown(backslashWhy(e))
	}
	if c >= 0x80 {
		return "", 0, p.unknown("a non-ASCII byte, matched according to the locale dkms runs in")
	}
	return literalByte(c), pieceAtom, nil
}

// backslashWhy names what glibc makes of a backslash before e, and Go.
func backslashWhy(e byte) string {
	lit := fmt.Sprintf(`\%c is a literal %q in glibc's ERE`, e, string(e))
	switch {
	case e >= '1' && e <= '9':
		return fmt.Sprintf(`\%c is a back reference in glibc's ERE, which Go's regexp lacks`, e)
	case e == '<' || e == '>':
		return fmt.Sprintf(`\%c is a GNU word-boundary operator in glibc's ERE, an error in Go's`, e)
	case e == '`' || e == '\'':
		return fmt.Sprintf(`\%c is a GNU text anchor in glibc's ERE, an error in Go's`, e)
	case strings.IndexByte("wWsSbB", e) >= 0:
		return fmt.Sprintf(`\%c is a GNU operator in glibc's ERE (word characters, spaces, word boundaries), whose members depend on the locale`, e)
	case e == 'd' || e == 'D':
		return lit + ", a digit class in Go's"
	case e == 'x':
		return lit + ` (so \x78 is "x78"), a hexadecimal escape in Go's`
	case strings.IndexByte("aftnrv", e) >= 0:
		return lit + ", a control character in Go's"
	case e == 'p' || e == 'P':
		return lit + ", a Unicode class in Go's"
	case e == 'A' || e == 'z':
		return lit + ", an anchor in Go's"
	case e == 'Q' || e == 'E':
		return lit + ", quoting in Go's"
	case e >= 0x80:
		return "a backslash before a non-ASCII byte, read according to the locale"
	}
	return lit + ", an error in Go's"
}

func literalByte(c byte) string {
	if c < 0x20 || c == 0x7f {
		return fmt.Sprintf(`\x%02x`, c)
	}
	return regexp.QuoteMeta(string(c))
}

// repetition reads * + ? or an interval {m} {m,} {m,n} {,n} {,}.
func (p *ereParser) repetition() (string, error) {
	c := p.src[p.pos]
	p.pos++
	if c != '{' {
		return string(c), nil
	}
	end := strings.IndexByte(p.src[p.pos:], '}')
	if end < 0 {
		return "", p.bad("unmatched { or \\{")
	}
	body := p.src[p.pos : p.pos+end]
	p.pos += end + 1
	lo, hi, comma := body, "", false
	if i := strings.IndexByte(body, ','); i >= 0 {
		lo, hi, comma = body[:i], body[i+1:], true
	}
	if (lo == "" && !comma) || !digits(lo) || !digits(hi) {
		return "", p.bad("invalid content of \\{\\}: {" + body + "}")
	}
	if len(lo) > 5 || len(hi) > 5 {
		return "", p.bad("bound too large: {" + body + "}")
	}
	m, n := 0, -1
	if lo != "" {
		m, _ = strconv.Atoi(lo)
	}
	if !comma {
		n = m
	} else if hi != "" {
		n, _ = strconv.Atoi(hi)
	}
	if m > 32767 || n > 32767 {
		return "", p.bad("bound above RE_DUP_MAX (32767): {" + body + "}")
	}
	if n >= 0 && n < m {
		return "", p.bad("invalid content of \\{\\}: {" + body + "}")
	}
	if m > maxEREBound || n > maxEREBound {
		return "", p.unknown(fmt.Sprintf("the bound {%s} is above %d", body, maxEREBound))
	}
	switch {
	case n < 0:
		return "{" + strconv.Itoa(m) + ",}", nil
	case n == m:
		return "{" + strconv.Itoa(m) + "}", nil
	default:
		return "{" + strconv.Itoa(m) + "," + strconv.Itoa(n) + "}", nil
	}
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ereClasses are the POSIX character classes; Go's [:name:] are their C
// locale (ASCII) sets, which a UTF-8 locale agrees with on ASCII text.
var ereClasses = map[string]bool{
	"alpha": true, "upper": true, "lower": true, "digit": true, "xdigit": true, "space": true,
	"print": true, "punct": true, "graph": true, "cntrl": true, "blank": true, "alnum": true,
}

// bracket reads a bracket expression after its "[". A backslash in it is
// an ordinary character, as POSIX says and glibc does.
func (p *ereParser) bracket() (string, error) {
	var b strings.Builder
	b.WriteByte('[')
	if p.pos < len(p.src) && p.src[p.pos] == '^' {
		p.pos++
		b.WriteByte('^')
		p.locale = true
	}
	first := true
	for {
		if p.pos >= len(p.src) {
			return "", p.badBoth("unmatched [, [^, [:, [., or [=")
		}
		c := p.src[p.pos]
		if c == ']' && !first {
			p.pos++
			b.WriteByte(']')
			return b.String(), nil
		}
		first = false
		if c == '[' && p.pos+1 < len(p.src) {
			switch p.src[p.pos+1] {
			case ':':
				end := strings.Index(p.src[p.pos+2:], ":]")
				if end < 0 {
					return "", p.unknown("\"[:\" without its \":]\" in a bracket expression")
				}
				name := p.src[p.pos+2 : p.pos+2+end]
				if !ereClasses[name] {
					return "", p.badBoth("invalid character class name [:" + name + ":]")
				}
				p.pos += 2 + end + 2
				if p.pos+1 < len(p.src) && p.src[p.pos] == '-' && p.src[p.pos+1] != ']' {
					return "", p.unknown("a range starting with a character class")
				}
				p.locale = true
				b.WriteString("[:" + name + ":]")
				continue
			case '=':
				return "", p.unknown("an equivalence class [= =], which depends on the locale's collation")
			case '.':
				return "", p.unknown("a collating element [. .], which depends on the locale's collation")
			}
		}
		if c >= 0x80 {
			return "", p.unknown("a non-ASCII byte in a bracket expression, matched according to the locale")
		}
		p.pos++
		// A range c-e, unless the "-" is the last character before "]".
		if p.pos+1 < len(p.src) && p.src[p.pos] == '-' && p.src[p.pos+1] != ']' {
			e := p.src[p.pos+1]
			if e == '[' {
				return "", p.unknown("a range ending in a class, equivalence class or collating element")
			}
			if e >= 0x80 {
				return "", p.unknown("a non-ASCII byte in a bracket expression, matched according to the locale")
			}
			p.pos += 2
			if rangeGroup(c) == 0 || rangeGroup(c) != rangeGroup(e) {
				return "", p.unknown(fmt.Sprintf("the range %c-%c, whose members depend on the locale's collation order", c, e))
			}
			if e < c {
				return "", p.badBoth(fmt.Sprintf("invalid range end %c-%c", c, e))
			}
			if p.pos+1 < len(p.src) && p.src[p.pos] == '-' && p.src[p.pos+1] != ']' {
				return "", p.bad("a range followed by \"-\"")
			}
			b.WriteString(classByte(c) + "-" + classByte(e))
			continue
		}
		b.WriteString(classByte(c))
	}
}

// rangeGroup: ranges within the digits, the lower-case or the upper-case
// letters have the same members in every locale glibc ships.
func rangeGroup(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return 1
	case c >= 'a' && c <= 'z':
		return 2
	case c >= 'A' && c <= 'Z':
		return 3
	}
	return 0
}

func classByte(c byte) string {
	return fmt.Sprintf(`\x%02x`, c)
}

// bashRegexMatch is [[ s =~ re ]] in bash (glibc's POSIX ERE, unanchored).
// known is false when only glibc can tell, and err then says why; with
// known true, a non-nil err (an *EREError) means bash rejects the
// expression ([[ =~ ]] returns 2).
func bashRegexMatch(re, s string) (match, known bool, err error) {
	e, err := compileERE(re, dialectBash)
	if err != nil {
		if _, ok := err.(*EREError); ok {
			return false, true, err
		}
		return false, false, err
	}
	m, ok := e.match(s)
	if !ok {
		return false, false, &ereUnknownError{Pattern: re, Why: "matched against non-ASCII text according to the locale dkms runs in"}
	}
	return m, true, nil
}

// regexMatcher answers [[ s =~ re ]] with bashRegexMatch or, when that
// cannot be sure and PlanOptions.MatchERE is set, with glibc on the target.
// The result is as bashRegexMatch's.
func regexMatcher(matchERE func(pattern, subject string) (bool, error)) func(re, s string) (bool, bool, error) {
	return func(re, s string) (bool, bool, error) {
		m, known, err := bashRegexMatch(re, s)
		if known || matchERE == nil {
			return m, known, err
		}
		m, terr := matchERE(re, s)
		if terr == nil {
			return m, true, nil
		}
		if ee, ok := terr.(*EREError); ok {
			return false, true, ee
		}
		return false, false, fmt.Errorf("%v; matching with bash on the target failed: %v", err, terr)
	}
}

// checkKernelConfig is dkms 3.0.10's BUILD_EXCLUSIVE_CONFIG check, run when
// the kernel's .config exists:
//
//	for kconf in $BUILD_EXCLUSIVE_CONFIG ; do
//	    case "$kconf" in
//	        !*) grep -q -E "^${kconf#!}=[ym]" $kernel_source_dir/.config && build_exclude="yes" ;;
//	        *)  grep -q -E "^${kconf}=[ym]" $kernel_source_dir/.config || build_exclude="yes" ;;
//	    esac
//	done
//
// Each word is an extended regular expression matched against each line
// (so "CONFIG_X86_(32|64)" and "CONFIG_A|CONFIG_B" mean what grep makes of
// them), grep failing on a malformed expression (status 2) excludes for a
// plain word and not for a negated one. It returns the reasons to exclude,
// or known false and why when only the target can tell.
func checkKernelConfig(list string, config []byte) (reasons []string, known bool, why string) {
	if strings.IndexByte(string(config), 0) >= 0 {
		return nil, false, "the kernel config contains a NUL byte, which grep reads as binary data"
	}
	text := string(config)
	var lines []string
	if text != "" {
		lines = strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	}
	// The words come from an unquoted expansion in dkms (default IFS), so
	// they are split on blanks and newlines and are file name patterns
	// (dkms runs with extglob) expanded in dkms's working directory.
	words := strings.FieldsFunc(list, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' })
	for _, w := range words {
		if strings.ContainsAny(w, "*?[") || strings.Contains(w, "@(") || strings.Contains(w, "!(") || strings.Contains(w, "+(") {
			return nil, false, fmt.Sprintf("the word %q is a file name pattern, which dkms's unquoted $BUILD_EXCLUSIVE_CONFIG expands against the files of its working directory", w)
		}
		neg := strings.HasPrefix(w, "!")
		name := strings.TrimPrefix(w, "!")
		pattern := "^" + name + "=[ym]"
		e, err := compileERE(pattern, dialectGrep)
		if err != nil {
			if _, ok := err.(*EREError); !ok {
				return nil, false, fmt.Sprintf("BUILD_EXCLUSIVE_CONFIG word %q: %v", w, err)
			}
			if !neg {
				reasons = append(reasons, fmt.Sprintf("BUILD_EXCLUSIVE_CONFIG: grep -E rejects %q (%v), so dkms excludes", pattern, err))
			}
			continue
		}
		found, unsure := false, false
		for _, ln := range lines {
			m, ok := e.match(ln)
			if !ok {
				unsure = true
				continue
			}
			if m {
				found = true
				break
			}
		}
		if !found && unsure {
			return nil, false, fmt.Sprintf("BUILD_EXCLUSIVE_CONFIG word %q: the kernel config has non-ASCII lines, which grep matches according to the locale dkms runs in", w)
		}
		switch {
		case neg && found:
			reasons = append(reasons, fmt.Sprintf("BUILD_EXCLUSIVE_CONFIG: %s is set in the kernel config", name))
		case !neg && !found:
			reasons = append(reasons, fmt.Sprintf("BUILD_EXCLUSIVE_CONFIG: %s is not set in the kernel config", name))
		}
	}
	return reasons, true, ""
}
