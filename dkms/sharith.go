package dkms

// Bash arithmetic ($((...)), ((...)), let, array subscripts) on 64-bit
// integers, following bash(1) "ARITHMETIC EVALUATION": C operators with
// C precedence, assignment operators, ++/--, the comma operator, integer
// constants in bases 2-64, and variables whose values are themselves
// evaluated as expressions.

import (
	"errors"
	"strconv"
	"strings"
)

var errArithUnknown = errors.New("value known only at build time")

type arithErr struct{ msg string }

func (e *arithErr) Error() string { return e.msg }

// arithEnv is what the evaluator needs from the interpreter.
type arithEnv interface {
	// arithGet returns a variable's (element's) string value.
	arithGet(name string, index *int64) (string, bool)
	// arithSet assigns a number to a variable (element).
	arithSet(name string, index *int64, v int64)
	// tick spends evaluation budget; false stops the evaluation.
	tick() bool
}

type arith struct {
	s     string
	pos   int
	env   arithEnv
	skip  int // >0 while evaluating a branch whose result is discarded
	depth int
}

const maxArithDepth = 64

// evalArith evaluates an expanded arithmetic expression. An empty
// expression is 0.
func evalArith(s string, env arithEnv, depth int) (int64, error) {
	if depth > maxArithDepth {
		return 0, &arithErr{"expression recursion level exceeded"}
	}
	if strings.IndexByte(s, 0) >= 0 {
		return 0, errArithUnknown
	}
	a := &arith{s: s, env: env, depth: depth}
	a.ws()
	if a.pos == len(a.s) {
		return 0, nil
	}
	v, err := a.comma()
	if err != nil {
		return 0, err
	}
	a.ws()
	if a.pos != len(a.s) {
		return 0, &arithErr{"syntax error in expression (error token is \"" + a.s[a.pos:] + "\")"}
	}
	return v, nil
}

func (a *arith) ws() {
	for a.pos < len(a.s) && (a.s[a.pos] == ' ' || a.s[a.pos] == '\t' || a.s[a.pos] == '\n') {
		a.pos++
	}
}

func (a *arith) peekOp(ops ...string) string {
	a.ws()
	for _, o := range ops {
		if strings.HasPrefix(a.s[a.pos:], o) {
			return o
		}
	}
	return ""
}

func (a *arith) comma() (int64, error) {
	v, err := a.assign()
	for err == nil && a.peekOp(",") != "" {
		a.pos++
		v, err = a.assign()
	}
	return v, err
}

// lvalue is a variable reference parsed at the current position.
type lvalue struct {
	name  string
	index *int64
}

func (a *arith) tryLvalue() (*lvalue, int, bool, error) {
	a.ws()
	start := a.pos
	if a.pos >= len(a.s) || !isNameStart(a.s[a.pos]) {
		return nil, start, false, nil
	}
	for a.pos < len(a.s) && isNameChar(a.s[a.pos]) {
		a.pos++
	}
	lv := &lvalue{name: a.s[start:a.pos]}
	if a.pos < len(a.s) && a.s[a.pos] == '[' {
		end := matchSquare(a.s, a.pos)
		if end < 0 {
			return nil, start, false, &arithErr{"bad array subscript"}
		}
		iv, err := a.sub(a.s[a.pos+1 : end])
		if err != nil {
			return nil, start, false, err
		}
		lv.index = &iv
		a.pos = end + 1
	}
	return lv, start, true, nil
}

func (a *arith) sub(s string) (int64, error) {
	if a.skip > 0 {
		return 0, nil
	}
	return evalArith(s, a.env, a.depth+1)
}

func matchSquare(s string, i int) int {
	depth := 0
	for ; i < len(s); i++ {
		switch s[i] {
		case '[':
			depth++
		case ']':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

var assignOps = []string{"<<=", ">>=", "*=", "/=", "%=", "+=", "-=", "&=", "^=", "|=", "="}

func (a *arith) assign() (int64, error) {
	save := a.pos
	lv, _, ok, err := a.tryLvalue()
	if err != nil {
		return 0, err
	}
	if ok {
		op := a.peekOp(assignOps...)
		if op == "=" && strings.HasPrefix(a.s[a.pos:], "==") {
			op = ""
		}
		if op != "" {
			a.pos += len(op)
			rhs, err := a.assign()
			if err != nil {
				return 0, err
			}
			v := rhs
			if op != "=" {
				cur, err := a.get(lv)
				if err != nil {
					return 0, err
				}
				v, err = binop(op[:len(op)-1], cur, rhs)
				if err != nil {
					return 0, err
				}
			}
			a.set(lv, v)
			return v, nil
		}
	}
	a.pos = save
	return a.ternary()
}

func (a *arith) get(lv *lvalue) (int64, error) {
	if a.skip > 0 {
		return 0, nil
	}
	if !a.env.tick() {
		return 0, &arithErr{"evaluation budget exhausted"}
	}
	s, known := a.env.arithGet(lv.name, lv.index)
	if !known || strings.IndexByte(s, 0) >= 0 {
		return 0, errArithUnknown
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	return evalArith(s, a.env, a.depth+1)
}

func (a *arith) set(lv *lvalue, v int64) {
	if a.skip > 0 {
		return
	}
	a.env.arithSet(lv.name, lv.index, v)
}

func (a *arith) ternary() (int64, error) {
	c, err := a.binary(0)
	if err != nil {
		return 0, err
	}
	if a.peekOp("?") == "" {
		return c, nil
	}
	a.pos++
	if c == 0 {
		a.skip++
	}
	t, err := a.comma()
	if c == 0 {
		a.skip--
	}
	if err != nil {
		return 0, err
	}
	if a.peekOp(":") == "" {
		return 0, &arithErr{"`:' expected for conditional expression"}
	}
	a.pos++
	if c != 0 {
		a.skip++
	}
	f, err := a.assign()
	if c != 0 {
		a.skip--
	}
	if err != nil {
		return 0, err
	}
	if c != 0 {
		return t, nil
	}
	return f, nil
}

// binary operator precedence levels, lowest first.
var binLevels = [][]string{
	{"||"},
	{"&&"},
	{"|"},
	{"^"},
	{"&"},
	{"==", "!="},
	{"<=", ">=", "<", ">"},
	{"<<", ">>"},
	{"+", "-"},
	{"*", "/", "%"},
}

func (a *arith) binary(level int) (int64, error) {
	if level == len(binLevels) {
		return a.power()
	}
	l, err := a.binary(level + 1)
	if err != nil {
		return 0, err
	}
	for {
		op := a.peekOp(binLevels[level]...)
		if op == "" {
			return l, nil
		}
		// do not take the first char of a longer operator (| of ||, & of &&,
		// < of <<, = of ==, assignment operators)
		rest := a.s[a.pos+len(op):]
		if (op == "|" && strings.HasPrefix(rest, "|")) || (op == "&" && strings.HasPrefix(rest, "&")) ||
			(op == "<" && strings.HasPrefix(rest, "<")) || (op == ">" && strings.HasPrefix(rest, ">")) ||
			strings.HasPrefix(rest, "=") && op != "==" && op != "!=" && op != "<=" && op != ">=" ||
			(op == "*" && strings.HasPrefix(rest, "*")) {
			return l, nil
		}
		a.pos += len(op)
		switch op {
		case "&&":
			if l == 0 {
				a.skip++
			}
			r, err := a.binary(level + 1)
			if l == 0 {
				a.skip--
			}
			if err != nil {
				return 0, err
			}
			l = b2i(l != 0 && r != 0)
			continue
		case "||":
			if l != 0 {
				a.skip++
			}
			r, err := a.binary(level + 1)
			if l != 0 {
				a.skip--
			}
			if err != nil {
				return 0, err
			}
			l = b2i(l != 0 || r != 0)
			continue
		}
		r, err := a.binary(level + 1)
		if err != nil {
			return 0, err
		}
		if a.skip > 0 {
			l = 0
			continue
		}
		l, err = binop(op, l, r)
		if err != nil {
			return 0, err
		}
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func binop(op string, l, r int64) (int64, error) {
	switch op {
	case "+":
		return l + r, nil
	case "-":
		return l - r, nil
	case "*":
		return l * r, nil
	case "/", "%":
		if r == 0 {
			return 0, &arithErr{"division by 0"}
		}
		if op == "/" {
			return l / r, nil
		}
		return l % r, nil
	case "<<":
		return l << (uint64(r) & 63), nil
	case ">>":
		return l >> (uint64(r) & 63), nil
	case "&":
		return l & r, nil
	case "|":
		return l | r, nil
	case "^":
		return l ^ r, nil
	case "==":
		return b2i(l == r), nil
	case "!=":
		return b2i(l != r), nil
	case "<":
		return b2i(l < r), nil
	case "<=":
		return b2i(l <= r), nil
	case ">":
		return b2i(l > r), nil
	case ">=":
		return b2i(l >= r), nil
	case "**":
		if r < 0 {
			return 0, &arithErr{"exponent less than 0"}
		}
		res, base := int64(1), l
		for e := uint64(r); e > 0; e >>= 1 {
			if e&1 == 1 {
				res *= base
			}
			base *= base
		}
		return res, nil
	}
	return 0, &arithErr{"unknown operator " + op}
}

// power is right-associative and binds tighter than * but looser than
// unary operators.
func (a *arith) power() (int64, error) {
	l, err := a.unary()
	if err != nil {
		return 0, err
	}
	if a.peekOp("**") == "" {
		return l, nil
	}
	a.pos += 2
	r, err := a.power()
	if err != nil {
		return 0, err
	}
	if a.skip > 0 {
		return 0, nil
	}
	return binop("**", l, r)
}

func (a *arith) unary() (int64, error) {
	a.enter()
	defer func() { a.depth-- }()
	if a.depth > maxArithDepth*4 {
		return 0, &arithErr{"expression nested too deeply"}
	}
	switch op := a.peekOp("++", "--", "+", "-", "!", "~"); op {
	case "++", "--":
		a.pos += 2
		lv, _, ok, err := a.tryLvalue()
		if err != nil {
			return 0, err
		}
		if !ok {
			// "++5" is two unary pluses in bash
			a.pos -= 1
			return a.unary()
		}
		cur, err := a.get(lv)
		if err != nil {
			return 0, err
		}
		if op == "++" {
			cur++
		} else {
			cur--
		}
		a.set(lv, cur)
		return cur, nil
	case "+", "-", "!", "~":
		a.pos++
		v, err := a.unary()
		if err != nil {
			return 0, err
		}
		switch op {
		case "-":
			return -v, nil
		case "!":
			return b2i(v == 0), nil
		case "~":
			return ^v, nil
		}
		return v, nil
	}
	return a.postfix()
}

func (a *arith) enter() { a.depth++ }

func (a *arith) postfix() (int64, error) {
	a.ws()
	if a.pos >= len(a.s) {
		return 0, &arithErr{"operand expected"}
	}
	c := a.s[a.pos]
	switch {
	case c == '(':
		a.pos++
		v, err := a.comma()
		if err != nil {
			return 0, err
		}
		if a.peekOp(")") == "" {
			return 0, &arithErr{"missing `)'"}
		}
		a.pos++
		return v, nil
	case isDigit(c):
		return a.number()
	case isNameStart(c):
		lv, _, _, err := a.tryLvalue()
		if err != nil {
			return 0, err
		}
		if op := a.peekOp("++", "--"); op != "" {
			a.pos += 2
			cur, err := a.get(lv)
			if err != nil {
				return 0, err
			}
			nv := cur + 1
			if op == "--" {
				nv = cur - 1
			}
			a.set(lv, nv)
			return cur, nil
		}
		return a.get(lv)
	}
	return 0, &arithErr{"syntax error: operand expected (error token is \"" + a.s[a.pos:] + "\")"}
}

func (a *arith) number() (int64, error) {
	start := a.pos
	for a.pos < len(a.s) && (isNameChar(a.s[a.pos]) || a.s[a.pos] == '#' || a.s[a.pos] == '@') {
		a.pos++
	}
	tok := a.s[start:a.pos]
	base := int64(10)
	digits := tok
	switch {
	case strings.Contains(tok, "#"):
		i := strings.IndexByte(tok, '#')
		b, err := strconv.ParseInt(tok[:i], 10, 64)
		if err != nil || b < 2 || b > 64 {
			return 0, &arithErr{"invalid arithmetic base (error token is \"" + tok + "\")"}
		}
		base, digits = b, tok[i+1:]
	case len(tok) > 1 && tok[0] == '0' && (tok[1] == 'x' || tok[1] == 'X'):
		base, digits = 16, tok[2:]
	case len(tok) > 1 && tok[0] == '0':
		base, digits = 8, tok[1:]
	}
	if digits == "" {
		return 0, &arithErr{"invalid number (error token is \"" + tok + "\")"}
	}
	var v int64
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		var d int64
		switch {
		case isDigit(c):
			d = int64(c - '0')
		case c >= 'a' && c <= 'z':
			d = int64(c-'a') + 10
		case c >= 'A' && c <= 'Z':
			if base <= 36 {
				d = int64(c-'A') + 10
			} else {
				d = int64(c-'A') + 36
			}
		case c == '@':
			d = 62
		case c == '_':
			d = 63
		default:
			d = 99
		}
		if d >= base {
			return 0, &arithErr{"value too great for base (error token is \"" + tok + "\")"}
		}
		v = v*base + d
	}
	return v, nil
}
