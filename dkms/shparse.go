package dkms

// A parser for the subset of bash that dkms.conf files are written in. It
// builds a syntax tree and never executes anything: the interpreter in
// sheval.go evaluates assignments and the few builtins that only assign,
// and reports everything else as unsupported.
//
// The grammar follows bash(1) "SHELL GRAMMAR" closely enough to find where
// every command, word and compound command begins and ends, including
// quoting, line continuations, comments, here-documents, command
// substitutions and case patterns, so that a construct we do not evaluate
// never desynchronises the parse of the rest of the file.

import (
	"fmt"
	"sort"
	"strings"
)

// Limits that keep parsing bounded on hostile input.
const (
	maxNesting = 200 // nested compound commands, substitutions, ${...}
)

type partKind uint8

const (
	pLit      partKind = iota // literal text
	pParam                    // $name or ${...}
	pCmdSubst                 // $(...) or `...`
	pArith                    // $((...))
	pTilde                    // an unquoted ~ that bash would expand
	pExtglob                  // an extglob group like @(a|b), literal text
	pOpaque                   // text parsed but not evaluated: known only at build time
)

// part is one piece of a word.
type part struct {
	kind   partKind
	quoted bool   // inside quotes or escaped: no splitting, no globbing
	text   string // literal text, or the source text of the expansion
	param  *paramExp
	arith  *word // pArith: the expression, itself subject to expansion
}

// paramExp is a parameter expansion.
type paramExp struct {
	name     string // variable name, or a special parameter ("@", "1", "#"...)
	special  bool   // positional or special parameter
	index    *word  // subscript, nil when absent
	allElems string // "@" or "*" when the subscript is [@] or [*]
	length   bool   // ${#name}
	indirect bool   // ${!name}
	op       string // "", ":-", "-", ":=", "=", ":+", "+", ":?", "?", "%", "%%", "#", "##", "/", "//", "/#", "/%", "^", "^^", ",", ",,", ":", "@"
	arg      *word
	arg2     *word // replacement (/ ops) or length (substring)
	hasArg2  bool
	bad      bool // syntax we do not evaluate
}

// word is a shell word: a sequence of parts.
type word struct {
	parts []part
	raw   string // source text
	line  int
}

// rawText is the word with quotes removed and expansions left as written:
// what Conf reports for a value.
func (w *word) rawText() string {
	if w == nil {
		return ""
	}
	var b strings.Builder
	for _, p := range w.parts {
		b.WriteString(p.text)
	}
	return b.String()
}

// literal reports the word's text when it has no expansions and no quoting.
func (w *word) literal() (string, bool) {
	if w == nil {
		return "", false
	}
	var b strings.Builder
	for _, p := range w.parts {
		if p.kind != pLit || p.quoted {
			return "", false
		}
		b.WriteString(p.text)
	}
	return b.String(), true
}

// ---- commands ----

type assignment struct {
	name     string
	index    *word // NAME[index]=
	append   bool  // +=
	value    *word // nil for an array literal
	isArray  bool  // NAME=( ... )
	elems    []arrayElem
	raw      string
	line     int
	hasIndex bool
	declArg  bool // an argument of declare/local/export/readonly/typeset
}

type arrayElem struct {
	index *word // [index]=value, nil for a plain element
	value *word
}

type simpleCmd struct {
	assigns []*assignment // leading assignments, or declaration arguments
	args    []*word
	decl    bool // args[0] is a declaration builtin whose NAME=value args are in assigns
	line    int
}

type pipeline struct {
	bang bool
	cmds []command
	line int
}

type andOr struct {
	first *pipeline
	ops   []string // "&&" or "||"
	rest  []*pipeline
	bg    bool // terminated by &
	line  int
}

type command interface{ cmdLine() int }

type ifClause struct {
	conds  [][]*andOr // if, elif...
	bodies [][]*andOr
	els    []*andOr
	hasEls bool
	line   int
}

type loopClause struct {
	until bool
	cond  []*andOr
	body  []*andOr
	line  int
}

type forClause struct {
	varName string
	words   []*word
	inGiven bool
	arith   bool // for (( ; ; ))
	body    []*andOr
	kw      string // for or select
	line    int
}

type caseItem struct {
	patterns []*word
	body     []*andOr
	term     string // ";;", ";&", ";;&" or "" (last item)
}

type caseClause struct {
	subject *word
	items   []caseItem
	line    int
}

type braceGroup struct {
	body []*andOr
	line int
}

type subshell struct {
	body []*andOr
	line int
}

type funcDef struct {
	name string
	body command
	line int
}

type arithCmd struct {
	expr *word
	line int
}

type condCmd struct { // [[ ... ]]
	words []*word
	line  int
}

func (c *simpleCmd) cmdLine() int  { return c.line }
func (c *ifClause) cmdLine() int   { return c.line }
func (c *loopClause) cmdLine() int { return c.line }
func (c *forClause) cmdLine() int  { return c.line }
func (c *caseClause) cmdLine() int { return c.line }
func (c *braceGroup) cmdLine() int { return c.line }
func (c *subshell) cmdLine() int   { return c.line }
func (c *funcDef) cmdLine() int    { return c.line }
func (c *arithCmd) cmdLine() int   { return c.line }
func (c *condCmd) cmdLine() int    { return c.line }

// ---- parser ----

type heredoc struct {
	delim     string
	stripTabs bool
}

type parser struct {
	src        string
	pos        int
	lineStarts []int
	lineBase   int // line of src[0] minus 1 for sub-parsers
	depth      int
	pending    []heredoc
	name       string
	arithMemo  map[int]int // start of $(( -> end, or -1 when not arithmetic
}

// syntaxError is a parse error at a line.
type syntaxError struct {
	line int
	msg  string
}

func (e *syntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

func newParser(src, name string) *parser {
	p := &parser{src: src, name: name}
	p.lineStarts = append(p.lineStarts, 0)
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			p.lineStarts = append(p.lineStarts, i+1)
		}
	}
	return p
}

// subParser parses text that was cut out of the parent's source at line.
func (p *parser) subParser(text string, line int) *parser {
	q := newParser(text, p.name)
	q.lineBase = line - 1
	q.depth = p.depth
	return q
}

func (p *parser) lineAt(pos int) int {
	i := sort.Search(len(p.lineStarts), func(i int) bool { return p.lineStarts[i] > pos })
	return i + p.lineBase
}

func (p *parser) line() int { return p.lineAt(p.pos) }

func (p *parser) fail(format string, args ...any) {
	panic(&syntaxError{line: p.line(), msg: fmt.Sprintf(format, args...)})
}

func (p *parser) failAt(line int, format string, args ...any) {
	panic(&syntaxError{line: line, msg: fmt.Sprintf(format, args...)})
}

func (p *parser) enter() {
	p.depth++
	if p.depth > maxNesting {
		p.fail("nesting deeper than %d levels", maxNesting)
	}
}

func (p *parser) leave() { p.depth-- }

func (p *parser) eof() bool { return p.pos >= len(p.src) }

func (p *parser) peek() byte {
	if p.pos < len(p.src) {
		return p.src[p.pos]
	}
	return 0
}

func (p *parser) peekAt(off int) byte {
	if p.pos+off < len(p.src) {
		return p.src[p.pos+off]
	}
	return 0
}

func (p *parser) hasPrefix(s string) bool { return strings.HasPrefix(p.src[p.pos:], s) }

func isMeta(c byte) bool {
	switch c {
	case ' ', '\t', '\n', ';', '&', '|', '(', ')', '<', '>':
		return true
	}
	return false
}

func isNameStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isNameChar(c byte) bool  { return isNameStart(c) || c >= '0' && c <= '9' }
func isDigit(c byte) bool     { return c >= '0' && c <= '9' }

// isName reports whether s is a shell variable name.
func isName(s string) bool {
	if s == "" || !isNameStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isNameChar(s[i]) {
			return false
		}
	}
	return true
}

// skipBlanks skips spaces, tabs, line continuations and a comment, but not
// newlines.
func (p *parser) skipBlanks() {
	for !p.eof() {
		c := p.peek()
		switch {
		case c == ' ' || c == '\t':
			p.pos++
		case c == '\\' && p.peekAt(1) == '\n':
			p.pos += 2
		case c == '#':
			for !p.eof() && p.peek() != '\n' {
				p.pos++
			}
		default:
			return
		}
	}
}

// newline consumes one newline token and the bodies of pending
// here-documents that follow it.
func (p *parser) newline() {
	p.pos++ // the '\n'
	pend := p.pending
	p.pending = nil
	for _, h := range pend {
		for !p.eof() {
			end := strings.IndexByte(p.src[p.pos:], '\n')
			var ln string
			if end < 0 {
				ln = p.src[p.pos:]
				p.pos = len(p.src)
			} else {
				ln = p.src[p.pos : p.pos+end]
				p.pos += end + 1
			}
			if h.stripTabs {
				ln = strings.TrimLeft(ln, "\t")
			}
			if ln == h.delim {
				break
			}
		}
	}
}

// skipNewlines skips blanks, comments and newlines.
func (p *parser) skipNewlines() {
	for {
		p.skipBlanks()
		if p.peek() == '\n' {
			p.newline()
			continue
		}
		return
	}
}

// peekReserved returns the reserved word at the current position, if any.
func (p *parser) peekReserved() string {
	i := p.pos
	for i < len(p.src) && !isMeta(p.src[i]) && p.src[i] != '"' && p.src[i] != '\'' && p.src[i] != '\\' && p.src[i] != '$' && p.src[i] != '`' {
		i++
	}
	if i < len(p.src) && !isMeta(p.src[i]) {
		return "" // quoted or expanded text follows: not a reserved word
	}
	w := p.src[p.pos:i]
	switch w {
	case "if", "then", "elif", "else", "fi", "do", "done", "case", "esac", "while", "until", "for", "select", "in", "{", "}", "!", "[[", "]]", "function", "time":
		return w
	}
	return ""
}

func (p *parser) expectReserved(w string) {
	p.skipNewlines()
	if p.peekReserved() != w {
		got := p.tokenDesc()
		p.fail("expected %q, found %s", w, got)
	}
	p.pos += len(w)
}

func (p *parser) tokenDesc() string {
	if p.eof() {
		return "end of file"
	}
	i := p.pos
	for i < len(p.src) && i < p.pos+20 && p.src[i] != '\n' {
		i++
	}
	return fmt.Sprintf("%q", p.src[p.pos:i])
}

// parseProgram parses a whole file.
func (p *parser) parseProgram() []*andOr {
	list := p.parseList(nil)
	p.skipNewlines()
	if !p.eof() {
		p.fail("unexpected %s", p.tokenDesc())
	}
	return list
}

// stopFunc reports whether the list being parsed ends at the current
// position (before a command).
type stopFunc func(p *parser) bool

func stopAtReserved(words ...string) stopFunc {
	return func(p *parser) bool {
		r := p.peekReserved()
		for _, w := range words {
			if r == w {
				return true
			}
		}
		return false
	}
}

// parseList parses commands until EOF, a closing parenthesis, a case item
// terminator or what stop accepts.
func (p *parser) parseList(stop stopFunc) []*andOr {
	var list []*andOr
	for {
		p.skipNewlines()
		if p.eof() || p.peek() == ')' || p.hasPrefix(";;") || p.hasPrefix(";&") {
			return list
		}
		if stop != nil && stop(p) {
			return list
		}
		ao := p.parseAndOr()
		list = append(list, ao)
		p.skipBlanks()
		switch {
		case p.eof():
			return list
		case p.peek() == '\n':
			p.newline()
		case p.peek() == ';' && p.peekAt(1) != ';' && p.peekAt(1) != '&':
			p.pos++
		case p.peek() == '&' && p.peekAt(1) != '&' && p.peekAt(1) != '>':
			p.pos++
			ao.bg = true
		case p.peek() == ')' || p.hasPrefix(";;") || p.hasPrefix(";&"):
			return list
		default:
			if stop != nil && stop(p) {
				return list
			}
			p.fail("unexpected %s", p.tokenDesc())
		}
	}
}

func (p *parser) parseAndOr() *andOr {
	ao := &andOr{line: p.line()}
	ao.first = p.parsePipeline()
	for {
		p.skipBlanks()
		var op string
		switch {
		case p.hasPrefix("&&"):
			op = "&&"
		case p.hasPrefix("||"):
			op = "||"
		default:
			return ao
		}
		p.pos += 2
		p.skipNewlines()
		ao.ops = append(ao.ops, op)
		ao.rest = append(ao.rest, p.parsePipeline())
	}
}

func (p *parser) parsePipeline() *pipeline {
	p.skipBlanks()
	pl := &pipeline{line: p.line()}
	for {
		switch p.peekReserved() {
		case "!":
			p.pos++
			pl.bang = !pl.bang
			p.skipBlanks()
			continue
		case "time":
			p.pos += 4
			p.skipBlanks()
			continue
		}
		break
	}
	for {
		pl.cmds = append(pl.cmds, p.parseCommand())
		p.skipBlanks()
		if p.peek() == '|' && p.peekAt(1) != '|' {
			p.pos++
			if p.peek() == '&' {
				p.pos++
			}
			p.skipNewlines()
			continue
		}
		return pl
	}
}

func (p *parser) parseCommand() command {
	p.skipBlanks()
	p.enter()
	defer p.leave()
	line := p.line()
	var c command
	switch p.peekReserved() {
	case "if":
		c = p.parseIf()
	case "while", "until":
		c = p.parseLoop()
	case "for", "select":
		c = p.parseFor()
	case "case":
		c = p.parseCase()
	case "{":
		c = p.parseBrace()
	case "function":
		c = p.parseFunction()
	case "[[":
		c = p.parseCond()
	case "":
		switch {
		case p.hasPrefix("(("):
			c = p.parseArithCmd()
		case p.peek() == '(':
			p.pos++
			body := p.parseList(nil)
			p.skipNewlines()
			if p.peek() != ')' {
				p.failAt(line, "unterminated subshell '('")
			}
			p.pos++
			c = &subshell{body: body, line: line}
		default:
			return p.parseSimple()
		}
	default:
		p.fail("unexpected %s", p.tokenDesc())
	}
	p.parseRedirs()
	return c
}

// parseRedirs skips redirections after a compound command.
func (p *parser) parseRedirs() {
	for {
		p.skipBlanks()
		if !p.atRedir() {
			return
		}
		p.parseRedir()
	}
}

// atRedir reports whether a redirection starts here ([n]<, [n]>, &>).
func (p *parser) atRedir() bool {
	i := p.pos
	for i < len(p.src) && isDigit(p.src[i]) {
		i++
	}
	if i < len(p.src) && (p.src[i] == '<' || p.src[i] == '>') {
		return true
	}
	return i == p.pos && p.hasPrefix("&>")
}

func (p *parser) parseRedir() {
	for isDigit(p.peek()) {
		p.pos++
	}
	ops := []string{"<<<", "<<-", "&>>", "<<", ">>", "<&", ">&", "<>", ">|", "&>", "<", ">"}
	op := ""
	for _, o := range ops {
		if p.hasPrefix(o) {
			op = o
			break
		}
	}
	p.pos += len(op)
	p.skipBlanks()
	if p.eof() || isMeta(p.peek()) {
		p.fail("redirection %q without a target", op)
	}
	w := p.parseWord(wordNormal)
	if op == "<<" || op == "<<-" {
		delim := w.rawText()
		p.pending = append(p.pending, heredoc{delim: delim, stripTabs: op == "<<-"})
	}
}

func (p *parser) parseIf() command {
	c := &ifClause{line: p.line()}
	p.pos += 2
	for {
		cond := p.parseList(stopAtReserved("then"))
		p.expectReserved("then")
		body := p.parseList(stopAtReserved("elif", "else", "fi"))
		c.conds = append(c.conds, cond)
		c.bodies = append(c.bodies, body)
		p.skipNewlines()
		switch p.peekReserved() {
		case "elif":
			p.pos += 4
			continue
		case "else":
			p.pos += 4
			c.els = p.parseList(stopAtReserved("fi"))
			c.hasEls = true
			p.expectReserved("fi")
			return c
		case "fi":
			p.pos += 2
			return c
		default:
			p.failAt(c.line, "if without fi (found %s)", p.tokenDesc())
		}
	}
}

func (p *parser) parseLoop() command {
	c := &loopClause{line: p.line()}
	if p.peekReserved() == "until" {
		c.until = true
		p.pos += 5
	} else {
		p.pos += 5
	}
	c.cond = p.parseList(stopAtReserved("do"))
	p.expectReserved("do")
	c.body = p.parseList(stopAtReserved("done"))
	p.expectReserved("done")
	return c
}

func (p *parser) parseFor() command {
	c := &forClause{line: p.line(), kw: p.peekReserved()}
	p.pos += len(c.kw)
	p.skipBlanks()
	if c.kw == "for" && p.hasPrefix("((") {
		c.arith = true
		p.scanArithParens(c.line)
		p.skipBlanks()
		if p.peek() == ';' {
			p.pos++
		}
	} else {
		start := p.pos
		for !p.eof() && isNameChar(p.peek()) {
			p.pos++
		}
		c.varName = p.src[start:p.pos]
		if !isName(c.varName) {
			p.fail("bad for loop variable %s", p.tokenDesc())
		}
		p.skipNewlines()
		if p.peekReserved() == "in" {
			p.pos += 2
			c.inGiven = true
			for {
				p.skipBlanks()
				if p.eof() || p.peek() == '\n' || p.peek() == ';' {
					break
				}
				if isMeta(p.peek()) {
					p.fail("unexpected %s in for word list", p.tokenDesc())
				}
				c.words = append(c.words, p.parseWord(wordNormal))
			}
			if p.peek() == ';' {
				p.pos++
			}
		} else if p.peek() == ';' {
			p.pos++
		}
	}
	p.skipNewlines()
	if p.peekReserved() == "{" { // legacy for ... { ... }
		b := p.parseBrace().(*braceGroup)
		c.body = b.body
		return c
	}
	p.expectReserved("do")
	c.body = p.parseList(stopAtReserved("done"))
	p.expectReserved("done")
	return c
}

func (p *parser) parseCase() command {
	c := &caseClause{line: p.line()}
	p.pos += 4
	p.skipBlanks()
	if p.eof() || isMeta(p.peek()) {
		p.fail("case without a word")
	}
	c.subject = p.parseWord(wordNormal)
	p.expectReserved("in")
	for {
		p.skipNewlines()
		if p.peekReserved() == "esac" {
			p.pos += 4
			return c
		}
		if p.eof() {
			p.failAt(c.line, "case without esac")
		}
		var it caseItem
		if p.peek() == '(' {
			p.pos++
		}
		for {
			p.skipBlanks()
			if p.eof() || isMeta(p.peek()) {
				p.fail("bad case pattern %s", p.tokenDesc())
			}
			it.patterns = append(it.patterns, p.parseWord(wordNormal))
			p.skipBlanks()
			if p.peek() == '|' {
				p.pos++
				continue
			}
			if p.peek() != ')' {
				p.fail("expected ')' after case pattern, found %s", p.tokenDesc())
			}
			p.pos++
			break
		}
		it.body = p.parseList(stopAtReserved("esac"))
		p.skipNewlines()
		switch {
		case p.hasPrefix(";;&"):
			it.term = ";;&"
		case p.hasPrefix(";;"):
			it.term = ";;"
		case p.hasPrefix(";&"):
			it.term = ";&"
		}
		p.pos += len(it.term)
		c.items = append(c.items, it)
		if it.term == "" {
			p.expectReserved("esac")
			return c
		}
	}
}

func (p *parser) parseBrace() command {
	c := &braceGroup{line: p.line()}
	p.pos++
	c.body = p.parseList(stopAtReserved("}"))
	p.skipNewlines()
	if p.peekReserved() != "}" {
		p.failAt(c.line, "'{' without '}'")
	}
	p.pos++
	return c
}

func (p *parser) parseFunction() command {
	line := p.line()
	p.pos += len("function")
	p.skipBlanks()
	start := p.pos
	for !p.eof() && !isMeta(p.peek()) {
		p.pos++
	}
	name := p.src[start:p.pos]
	if name == "" {
		p.fail("function without a name")
	}
	p.skipBlanks()
	if p.hasPrefix("(") {
		p.pos++
		p.skipBlanks()
		if p.peek() != ')' {
			p.fail("expected ')' after function name")
		}
		p.pos++
	}
	p.skipNewlines()
	return &funcDef{name: name, body: p.parseCommand(), line: line}
}

func (p *parser) parseCond() command {
	c := &condCmd{line: p.line()}
	p.pos += 2
	for {
		for !p.eof() {
			ch := p.peek()
			if ch == ' ' || ch == '\t' || ch == '\n' {
				p.pos++
			} else if ch == '\\' && p.peekAt(1) == '\n' {
				p.pos += 2
			} else {
				break
			}
		}
		if p.eof() {
			p.failAt(c.line, "'[[' without ']]'")
		}
		if p.hasPrefix("]]") && (p.pos+2 >= len(p.src) || isMeta(p.src[p.pos+2])) {
			p.pos += 2
			return c
		}
		c.words = append(c.words, p.parseWord(wordCond))
	}
}

// parseArithCmd parses (( ... )).
func (p *parser) parseArithCmd() command {
	line := p.line()
	text := p.scanArithParens(line)
	return &arithCmd{expr: p.subParser(text, line).parseEmbedded(), line: line}
}

// scanArithParens consumes "((" ... "))" and returns the text between.
func (p *parser) scanArithParens(line int) string {
	p.pos += 2
	start := p.pos
	depth := 0
	for {
		if p.eof() {
			p.failAt(line, "'((' without '))'")
		}
		c := p.peek()
		switch c {
		case '(':
			depth++
		case ')':
			if depth == 0 {
				if p.peekAt(1) != ')' {
					p.failAt(line, "'((' closed by a single ')'")
				}
				text := p.src[start:p.pos]
				p.pos += 2
				return text
			}
			depth--
		case '\'', '"', '`', '\\':
			p.skipLight()
			continue
		}
		p.pos++
	}
}

// skipLight skips an escape or a quoted string without parsing what is
// inside (text that is parsed later by a sub-parser must not be parsed
// twice, or nesting would cost exponential time).
func (p *parser) skipLight() {
	switch p.peek() {
	case '\\':
		p.pos += 2
	case '\'':
		if i := strings.IndexByte(p.src[p.pos+1:], '\''); i >= 0 {
			p.pos += i + 2
			return
		}
		p.pos = len(p.src)
	case '"', '`':
		q := p.peek()
		p.pos++
		for p.pos < len(p.src) && p.src[p.pos] != q {
			if p.src[p.pos] == '\\' {
				p.pos++
			}
			p.pos++
		}
		p.pos++
	default:
		p.pos++
	}
	if p.pos > len(p.src) {
		p.pos = len(p.src)
	}
}

// skipQuotedOrExpansion skips one quoted string, escape or $-expansion
// (used while scanning arithmetic text whose parts are parsed later).
func (p *parser) skipQuotedOrExpansion() {
	switch p.peek() {
	case '\\':
		p.pos += 2
		if p.pos > len(p.src) {
			p.pos = len(p.src)
		}
	case '\'':
		p.parseSingleQuoted()
	case '"':
		var parts []part
		p.parseDoubleQuoted(&parts)
	case '`':
		p.parseBacktick(false)
	case '$':
		var parts []part
		p.parseDollar(&parts, false)
	}
}

// parseEmbedded parses a whole sub-parser's text as one word in which blanks
// and metacharacters are literal (arithmetic expressions, subscripts).
func (p *parser) parseEmbedded() *word {
	return p.parseWord(wordEmbedded)
}

func (p *parser) parseSimple() command {
	c := &simpleCmd{line: p.line()}
	for {
		p.skipBlanks()
		if p.eof() || p.peek() == '\n' || p.peek() == ';' || p.peek() == '&' && !p.hasPrefix("&>") || p.peek() == '|' || p.peek() == ')' {
			break
		}
		if p.atRedir() {
			p.parseRedir()
			continue
		}
		if p.peek() == '(' {
			// NAME ( ) compound: a function definition.
			if len(c.args) == 1 && len(c.assigns) == 0 {
				name, ok := c.args[0].literal()
				if !ok {
					p.fail("bad function name")
				}
				p.pos++
				p.skipBlanks()
				if p.peek() != ')' {
					p.fail("expected ')' in function definition %s", name)
				}
				p.pos++
				p.skipNewlines()
				return &funcDef{name: name, body: p.parseCommand(), line: c.line}
			}
			p.fail("unexpected '('")
		}
		if (len(c.args) == 0 || c.decl) && p.atAssignment() {
			a := p.parseAssignment()
			a.declArg = len(c.args) > 0
			c.assigns = append(c.assigns, a)
			continue
		}
		w := p.parseWord(wordNormal)
		if len(c.args) == 0 {
			if s, ok := w.literal(); ok {
				switch s {
				case "declare", "typeset", "local", "export", "readonly":
					c.decl = true
				}
			}
		}
		c.args = append(c.args, w)
	}
	if len(c.args) == 0 && len(c.assigns) == 0 {
		p.fail("unexpected %s", p.tokenDesc())
	}
	return c
}

// atAssignment reports whether NAME=, NAME+=, NAME[...]= or NAME[...]+=
// starts here.
func (p *parser) atAssignment() bool {
	i := p.pos
	if i >= len(p.src) || !isNameStart(p.src[i]) {
		return false
	}
	for i < len(p.src) && isNameChar(p.src[i]) {
		i++
	}
	if i < len(p.src) && p.src[i] == '[' {
		j, ok := p.matchBracket(i)
		if !ok {
			return false
		}
		i = j + 1
	}
	if i < len(p.src) && p.src[i] == '+' {
		i++
	}
	return i < len(p.src) && p.src[i] == '='
}

// matchBracket returns the index of the ']' closing the '[' at i, skipping
// quoted text and nested brackets, within one line.
func (p *parser) matchBracket(i int) (int, bool) {
	depth := 0
	for i < len(p.src) {
		switch p.src[i] {
		case '[':
			depth++
		case ']':
			depth--
			if depth == 0 {
				return i, true
			}
		case '\\':
			i++
		case '\'':
			j := strings.IndexByte(p.src[i+1:], '\'')
			if j < 0 {
				return 0, false
			}
			i += j + 1
		case '"':
			j := i + 1
			for j < len(p.src) && p.src[j] != '"' {
				if p.src[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(p.src) {
				return 0, false
			}
			i = j
		case '\n', ' ', '\t', ';', '&', '|', '<', '>':
			// bash allows blanks in subscripts of assignment words only
			// in some contexts; we do not.
			return 0, false
		}
		i++
	}
	return 0, false
}

func (p *parser) parseAssignment() *assignment {
	a := &assignment{line: p.line()}
	start := p.pos
	for isNameChar(p.peek()) {
		p.pos++
	}
	a.name = p.src[start:p.pos]
	if p.peek() == '[' {
		j, _ := p.matchBracket(p.pos)
		sub := p.src[p.pos+1 : j]
		a.index = p.subParser(sub, a.line).parseEmbedded()
		a.hasIndex = true
		p.pos = j + 1
	}
	if p.peek() == '+' {
		a.append = true
		p.pos++
	}
	p.pos++ // '='
	if p.peek() == '(' {
		if a.hasIndex {
			p.fail("cannot assign a list to an array element")
		}
		a.isArray = true
		p.pos++
		for {
			p.skipNewlines()
			if p.eof() {
				p.failAt(a.line, "unterminated array assignment")
			}
			if p.peek() == ')' {
				p.pos++
				break
			}
			if isMeta(p.peek()) {
				p.fail("unexpected %s in array assignment", p.tokenDesc())
			}
			var el arrayElem
			if p.peek() == '[' {
				if j, ok := p.matchBracket(p.pos); ok && j+1 < len(p.src) && p.src[j+1] == '=' {
					el.index = p.subParser(p.src[p.pos+1:j], p.line()).parseEmbedded()
					p.pos = j + 2
				}
			}
			el.value = p.parseWord(wordNormal)
			a.elems = append(a.elems, el)
		}
	} else {
		a.value = p.parseWord(wordAssign)
	}
	a.raw = p.src[start:p.pos]
	return a
}

// word contexts
type wordCtx uint8

const (
	wordNormal   wordCtx = iota // ends at blanks and metacharacters
	wordAssign                  // assignment value: like normal, tilde after ':' too
	wordCond                    // inside [[ ]]: only blanks end it
	wordEmbedded                // whole text is one word
	wordBrace                   // ${...} operand: ends at an unquoted '}'
	wordBraceDQ                 // ${...} operand inside double quotes
	wordPattern                 // ${x/pattern/...}: ends at '/' or '}'
)

func (p *parser) parseWord(ctx wordCtx) *word {
	w := &word{line: p.line()}
	start := p.pos
	w.parts = p.scanWordParts(ctx)
	w.raw = p.src[start:p.pos]
	return w
}

func (p *parser) scanWordParts(ctx wordCtx) []part {
	return mergeLits(p.scanWordPartsRaw(ctx))
}

// mergeLits joins adjacent literal parts with the same quoting (scanning
// appends one part per piece to stay linear).
func mergeLits(parts []part) []part {
	var out []part
	for i := 0; i < len(parts); {
		pt := parts[i]
		if pt.kind != pLit {
			out = append(out, pt)
			i++
			continue
		}
		j := i + 1
		for j < len(parts) && parts[j].kind == pLit && parts[j].quoted == pt.quoted {
			j++
		}
		if j > i+1 {
			var b strings.Builder
			for _, q := range parts[i:j] {
				b.WriteString(q.text)
			}
			pt.text = b.String()
		}
		out = append(out, pt)
		i = j
	}
	return out
}

func (p *parser) scanWordPartsRaw(ctx wordCtx) []part {
	var parts []part
	lit := func(s string, quoted bool) {
		parts = append(parts, part{kind: pLit, quoted: quoted, text: s})
	}
	atStart := true
	inBraceOp := ctx == wordBrace || ctx == wordBraceDQ || ctx == wordPattern
	dqOp := ctx == wordBraceDQ
	for !p.eof() {
		c := p.peek()
		switch ctx {
		case wordNormal, wordAssign:
			if isMeta(c) {
				return parts
			}
		case wordCond:
			if c == ' ' || c == '\t' || c == '\n' {
				return parts
			}
		case wordBrace, wordBraceDQ:
			if c == '}' {
				return parts
			}
		case wordPattern:
			if c == '}' || c == '/' {
				return parts
			}
		}
		switch {
		case c == '\\':
			if p.peekAt(1) == '\n' {
				p.pos += 2
				continue
			}
			if p.pos+1 >= len(p.src) {
				p.pos++
				lit("\\", false)
				continue
			}
			if dqOp {
				// inside "${x:-...}": backslash quotes only the DQ specials
				n := p.src[p.pos+1]
				if n == '$' || n == '`' || n == '"' || n == '\\' || n == '}' {
					lit(string(n), true)
				} else {
					lit("\\"+string(n), true)
				}
				p.pos += 2
				continue
			}
			lit(p.src[p.pos+1:p.pos+2], true)
			p.pos += 2
		case c == '\'' && dqOp:
			// inside "${x:-...}" single quotes still group at parse time
			// (a '}' between them does not end the expansion), but they
			// stay in the value and what is between them is expanded
			s := p.parseSingleQuoted()
			if strings.ContainsAny(s, "\\\"$`") {
				parts = append(parts, part{kind: pOpaque, quoted: true, text: "'" + s + "'"})
			} else {
				lit("'"+s+"'", true)
			}
		case c == '\'' && !dqOp:
			s := p.parseSingleQuoted()
			if s == "" {
				parts = append(parts, part{kind: pLit, quoted: true})
			} else {
				lit(s, true)
			}
		case c == '"':
			p.parseDoubleQuoted(&parts)
		case c == '$':
			p.parseDollar(&parts, dqOp)
		case c == '`':
			parts = append(parts, part{kind: pCmdSubst, quoted: dqOp, text: p.parseBacktick(dqOp)})
		case c == '~' && !dqOp && ctx != wordEmbedded && (atStart || ctx == wordAssign && p.pos > 0 && p.src[p.pos-1] == ':'):
			p.pos++
			parts = append(parts, part{kind: pTilde, text: "~"})
		case (c == '@' || c == '!' || c == '+' || c == '*' || c == '?') && p.peekAt(1) == '(' && (ctx == wordNormal || ctx == wordAssign || ctx == wordCond):
			// extglob group (dkms runs with shopt -s extglob)
			start := p.pos
			p.pos++
			p.scanParenGroup()
			parts = append(parts, part{kind: pExtglob, text: p.src[start:p.pos]})
		default:
			// a run of plain characters
			start := p.pos
			for !p.eof() {
				d := p.peek()
				if d == '\\' || d == '\'' || d == '"' || d == '$' || d == '`' || d == '~' || d == '}' || d == '/' || d == '@' || d == '!' || d == '+' || d == '*' || d == '?' || d == ':' {
					break
				}
				if (ctx == wordNormal || ctx == wordAssign) && isMeta(d) {
					break
				}
				if ctx == wordCond && (d == ' ' || d == '\t' || d == '\n') {
					break
				}
				p.pos++
			}
			if p.pos == start {
				p.pos++
			}
			lit(p.src[start:p.pos], dqOp)
		}
		atStart = false
	}
	if inBraceOp {
		p.fail("unterminated ${...}")
	}
	return parts
}

// scanParenGroup consumes a balanced "( ... )" starting at '('.
func (p *parser) scanParenGroup() {
	line := p.line()
	depth := 0
	for !p.eof() {
		switch p.peek() {
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				p.pos++
				return
			}
		case '\\', '\'', '"', '`', '$':
			p.skipQuotedOrExpansion()
			continue
		case '\n':
			p.failAt(line, "unterminated pattern group")
		}
		p.pos++
	}
	p.failAt(line, "unterminated pattern group")
}

func (p *parser) parseSingleQuoted() string {
	line := p.line()
	p.pos++
	end := strings.IndexByte(p.src[p.pos:], '\'')
	if end < 0 {
		p.failAt(line, "unterminated single quote")
	}
	s := p.src[p.pos : p.pos+end]
	p.pos += end + 1
	return s
}

func (p *parser) parseDoubleQuoted(parts *[]part) {
	line := p.line()
	p.pos++
	any := false
	lit := func(s string) {
		any = true
		*parts = append(*parts, part{kind: pLit, quoted: true, text: s})
	}
	for {
		if p.eof() {
			p.failAt(line, "unterminated double quote")
		}
		c := p.peek()
		switch c {
		case '"':
			p.pos++
			if !any {
				*parts = append(*parts, part{kind: pLit, quoted: true})
			}
			return
		case '\\':
			n := p.peekAt(1)
			switch n {
			case '\n':
				p.pos += 2
			case '$', '`', '"', '\\':
				lit(string(n))
				p.pos += 2
			default:
				lit("\\")
				p.pos++
			}
		case '$':
			any = true
			p.parseDollar(parts, true)
		case '`':
			any = true
			*parts = append(*parts, part{kind: pCmdSubst, quoted: true, text: p.parseBacktick(true)})
		default:
			start := p.pos
			for !p.eof() && p.peek() != '"' && p.peek() != '\\' && p.peek() != '$' && p.peek() != '`' {
				p.pos++
			}
			lit(p.src[start:p.pos])
		}
	}
}

// parseBacktick consumes `...` and returns its source text.
func (p *parser) parseBacktick(inDQ bool) string {
	line := p.line()
	start := p.pos
	p.pos++
	for {
		if p.eof() {
			p.failAt(line, "unterminated backquote")
		}
		switch p.peek() {
		case '\\':
			p.pos += 2
			if p.pos > len(p.src) {
				p.pos = len(p.src)
			}
			continue
		case '`':
			p.pos++
			return p.src[start:p.pos]
		}
		p.pos++
	}
}

// parseDollar parses an expansion starting at '$'.
func (p *parser) parseDollar(parts *[]part, inDQ bool) {
	p.enter()
	defer p.leave()
	line := p.line()
	start := p.pos
	n := p.peekAt(1)
	switch {
	case n == '(' && p.peekAt(2) == '(':
		// $(( arithmetic )), unless it turns out to be $( (subshell) )
		save := p.pos
		if p.arithMemo == nil {
			p.arithMemo = map[int]int{}
		}
		if end, seen := p.arithMemo[save]; seen && end >= 0 {
			text := p.src[save+3 : end-2]
			p.pos = end
			*parts = append(*parts, part{kind: pArith, quoted: inDQ, text: p.src[start:p.pos], arith: p.subParser(text, line).parseEmbedded()})
			return
		} else if seen {
			p.pos = save
		} else if text, ok := p.tryArith(); ok {
			p.arithMemo[save] = p.pos
			*parts = append(*parts, part{kind: pArith, quoted: inDQ, text: p.src[start:p.pos], arith: p.subParser(text, line).parseEmbedded()})
			return
		}
		p.arithMemo[save] = -1
		p.pos = save
		fallthrough
	case n == '(':
		p.pos += 2
		p.parseList(nil)
		p.skipNewlines()
		if p.peek() != ')' {
			p.failAt(line, "unterminated $(")
		}
		p.pos++
		*parts = append(*parts, part{kind: pCmdSubst, quoted: inDQ, text: p.src[start:p.pos]})
	case n == '{':
		pe := p.parseBraceParam(inDQ)
		*parts = append(*parts, part{kind: pParam, quoted: inDQ, text: p.src[start:p.pos], param: pe})
	case n == '\'' && !inDQ:
		p.pos++
		s := p.parseANSIC()
		*parts = append(*parts, part{kind: pLit, quoted: true, text: s})
	case n == '"' && !inDQ:
		p.pos++ // $"..." is "..." (no translation catalogue)
		p.parseDoubleQuoted(parts)
	case isNameStart(n):
		p.pos++
		s := p.pos
		for isNameChar(p.peek()) {
			p.pos++
		}
		*parts = append(*parts, part{kind: pParam, quoted: inDQ, text: p.src[start:p.pos], param: &paramExp{name: p.src[s:p.pos]}})
	case isDigit(n) || strings.IndexByte("@*#?-$!", n) >= 0 && n != 0:
		p.pos += 2
		*parts = append(*parts, part{kind: pParam, quoted: inDQ, text: p.src[start:p.pos], param: &paramExp{name: string(n), special: true}})
	default:
		p.pos++
		*parts = append(*parts, part{kind: pLit, quoted: inDQ, text: "$"})
	}
}

// tryArith consumes $(( ... )) and returns the expression text, or reports
// false when the parentheses do not close with "))".
func (p *parser) tryArith() (string, bool) {
	p.pos += 3
	start := p.pos
	depth := 0
	for !p.eof() {
		switch p.peek() {
		case '(':
			depth++
		case ')':
			if depth == 0 {
				if p.peekAt(1) == ')' {
					text := p.src[start:p.pos]
					p.pos += 2
					return text, true
				}
				return "", false
			}
			depth--
		case '\\', '\'', '"', '`':
			p.skipLight()
			continue
		}
		p.pos++
	}
	return "", false
}

func (p *parser) parseANSIC() string {
	line := p.line()
	p.pos++ // the quote
	var b strings.Builder
	for {
		if p.eof() {
			p.failAt(line, "unterminated $'")
		}
		c := p.peek()
		if c == '\'' {
			p.pos++
			return b.String()
		}
		if c != '\\' || p.pos+1 >= len(p.src) {
			b.WriteByte(c)
			p.pos++
			continue
		}
		n := p.src[p.pos+1]
		p.pos += 2
		switch n {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'a':
			b.WriteByte(7)
		case 'b':
			b.WriteByte(8)
		case 'e', 'E':
			b.WriteByte(27)
		case 'f':
			b.WriteByte(12)
		case 'v':
			b.WriteByte(11)
		case '\\', '\'', '"', '?':
			b.WriteByte(n)
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(n - '0')
			for k := 0; k < 2 && p.peek() >= '0' && p.peek() <= '7'; k++ {
				v = v*8 + int(p.peek()-'0')
				p.pos++
			}
			b.WriteByte(byte(v))
		case 'x':
			v, k := 0, 0
			for ; k < 2 && isHex(p.peek()); k++ {
				v = v*16 + hexVal(p.peek())
				p.pos++
			}
			if k == 0 {
				b.WriteString("\\x")
			} else {
				b.WriteByte(byte(v))
			}
		default:
			b.WriteByte('\\')
			b.WriteByte(n)
		}
	}
}

func isHex(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
func hexVal(c byte) int {
	switch {
	case isDigit(c):
		return int(c - '0')
	case c >= 'a':
		return int(c-'a') + 10
	default:
		return int(c-'A') + 10
	}
}

// parseBraceParam parses ${...} starting at '$'.
func (p *parser) parseBraceParam(inDQ bool) *paramExp {
	line := p.line()
	p.pos += 2
	pe := &paramExp{}
	switch {
	case p.peek() == '#' && p.peekAt(1) != '}' && (isNameStart(p.peekAt(1)) || isDigit(p.peekAt(1)) || strings.IndexByte("@*#?-$!", p.peekAt(1)) >= 0) && !(p.peekAt(1) == '#' && p.peekAt(2) != '}'):
		pe.length = true
		p.pos++
	case p.peek() == '!' && p.peekAt(1) != '}':
		pe.indirect = true
		p.pos++
	}
	c := p.peek()
	switch {
	case isNameStart(c):
		s := p.pos
		for isNameChar(p.peek()) {
			p.pos++
		}
		pe.name = p.src[s:p.pos]
	case isDigit(c):
		s := p.pos
		for isDigit(p.peek()) {
			p.pos++
		}
		pe.name, pe.special = p.src[s:p.pos], true
	case c != 0 && strings.IndexByte("@*#?-$!", c) >= 0:
		pe.name, pe.special = string(c), true
		p.pos++
	default:
		pe.bad = true
	}
	if p.peek() == '[' && !pe.special && pe.name != "" {
		j, ok := p.matchBracketAny(p.pos)
		if !ok {
			p.failAt(line, "unterminated subscript in ${%s[", pe.name)
		}
		sub := p.src[p.pos+1 : j]
		switch sub {
		case "@", "*":
			pe.allElems = sub
		default:
			pe.index = p.subParser(sub, line).parseEmbedded()
		}
		p.pos = j + 1
	}
	if p.peek() == '}' && !pe.bad {
		p.pos++
		return pe
	}
	if pe.bad || pe.length || pe.indirect {
		// something we do not evaluate: skip to the matching brace
		pe.bad = true
		p.skipBraceOperand(inDQ, line)
		return pe
	}
	ops := []string{":-", ":=", ":+", ":?", "%%", "##", "//", "/#", "/%", "^^", ",,", "-", "=", "+", "?", "%", "#", "/", "^", ",", ":", "@"}
	for _, o := range ops {
		if p.hasPrefix(o) {
			pe.op = o
			break
		}
	}
	if pe.op == "" {
		pe.bad = true
		p.skipBraceOperand(inDQ, line)
		return pe
	}
	p.pos += len(pe.op)
	ctxArg := wordBrace
	if inDQ {
		ctxArg = wordBraceDQ
	}
	switch pe.op {
	case "/", "//", "/#", "/%":
		// Quoting the whole expansion does not quote the pattern nor the
		// replacement: bash 5.2 reads them as outside double quotes
		// ("${k%%-*}" removes a glob match; "${x#"$y"}" is literal).
		pe.arg = p.parseWordCtxInBrace(wordPattern, line)
		if p.peek() == '/' {
			p.pos++
			pe.hasArg2 = true
			pe.arg2 = p.parseWordCtxInBrace(wordBrace, line)
		}
	case "%", "%%", "#", "##", "^", "^^", ",", ",,":
		pe.arg = p.parseWordCtxInBrace(wordBrace, line)
	case ":":
		pe.arg = p.parseSubstringPart(line)
		if p.peek() == ':' {
			p.pos++
			pe.hasArg2 = true
			pe.arg2 = p.parseSubstringPart(line)
		}
	case "@":
		pe.bad = true
		p.skipBraceOperand(inDQ, line)
		return pe
	default:
		pe.arg = p.parseWordCtxInBrace(ctxArg, line)
	}
	if p.peek() != '}' {
		p.failAt(line, "unterminated ${")
	}
	p.pos++
	return pe
}

func (p *parser) parseWordCtxInBrace(ctx wordCtx, line int) *word {
	w := &word{line: line}
	start := p.pos
	w.parts = p.scanBraceWord(ctx, line)
	w.raw = p.src[start:p.pos]
	return w
}

// scanBraceWord is scanWordParts for ${...} operands, which may span lines.
func (p *parser) scanBraceWord(ctx wordCtx, line int) []part {
	defer func() {
		if r := recover(); r != nil {
			if se, ok := r.(*syntaxError); ok && se.msg == "unterminated ${...}" {
				panic(&syntaxError{line: line, msg: "unterminated ${"})
			}
			panic(r)
		}
	}()
	return p.scanWordParts(ctx)
}

// parseSubstringPart parses an offset or length of ${x:off:len}: an
// arithmetic expression ending at ':' or '}'.
func (p *parser) parseSubstringPart(line int) *word {
	start := p.pos
	depth, braces := 0, 0
	for {
		if p.eof() {
			p.failAt(line, "unterminated ${")
		}
		c := p.peek()
		if depth == 0 && braces == 0 && (c == ':' || c == '}') {
			break
		}
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		case '$':
			if p.peekAt(1) == '{' {
				braces++
				p.pos++
			}
		case '}':
			braces--
		case '\\', '\'', '"', '`':
			p.skipLight()
			continue
		}
		p.pos++
	}
	return p.subParser(p.src[start:p.pos], line).parseEmbedded()
}

// skipBraceOperand skips to the '}' closing a ${ we do not evaluate.
func (p *parser) skipBraceOperand(inDQ bool, line int) {
	for {
		if p.eof() {
			p.failAt(line, "unterminated ${")
		}
		switch p.peek() {
		case '}':
			p.pos++
			return
		case '\\', '\'', '"', '`', '$':
			// single quotes group even inside double quotes
			p.skipQuotedOrExpansion()
		default:
			p.pos++
		}
	}
}

// matchBracketAny finds the ']' closing the '[' at i; unlike matchBracket it
// allows blanks (subscripts inside ${...}).
func (p *parser) matchBracketAny(i int) (int, bool) {
	depth := 0
	for i < len(p.src) {
		switch p.src[i] {
		case '[':
			depth++
		case ']':
			depth--
			if depth == 0 {
				return i, true
			}
		case '\\':
			i++
		case '}':
			return 0, false
		}
		i++
	}
	return 0, false
}

// parseShell parses a whole file, converting syntax panics to errors.
func parseShell(src, name string) (prog []*andOr, err error) {
	return parseShellAt(src, name, 1)
}

// parseShellAt parses text that starts at line (eval's text).
func parseShellAt(src, name string, line int) (prog []*andOr, err error) {
	p := newParser(src, name)
	p.lineBase = line - 1
	defer func() {
		if r := recover(); r != nil {
			se, ok := r.(*syntaxError)
			if !ok {
				panic(r)
			}
			err = se
		}
	}()
	return p.parseProgram(), nil
}
