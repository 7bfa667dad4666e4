package dkms

// An interpreter for the syntax tree of shparse.go that evaluates what can
// be known without running anything: assignments, parameter and arithmetic
// expansion, the assignment builtins (declare, local, export, readonly,
// unset, let, :), test/[ on strings and numbers (and on the kernel's
// .config when it is given), case, if and for over known words, eval of
// known text, . of the kernel's .config, set -e/-u, shopt, exit and the
// errors after which bash stops reading the file. Every other command is
// not run; it is recorded as unsupported, and the variables that a
// construct could change without us knowing how are marked unknown ("known
// only at build time").
//
// Why not mvdan.cc/sh/v3: its interpreter is concrete. It executes
// builtins (and hands other commands to an exec handler), and every value
// it holds is a definite string; it has no notion of an unknown value.
// This reader must never run anything and must say "unknown" wherever a
// value depends on what it did not run, rather than give a wrong definite
// value, so unknown values have to flow through expansions, conditions and
// loops: that is what this evaluator does.
//
// The model of the environment is dkms's: a dkms.conf is sourced inside a
// shell function (safe_source) after dkms unset its own variables, so those
// start unset, while every other name may hold something from dkms or the
// environment and is unknown until the file assigns it.

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	maxValueLen   = 1 << 20 // longer values become unknown
	maxPatternLen = 4096    // values longer than this are not pattern-matched
	maxSteps      = 200000  // evaluation budget
	maxLoopIter   = 1000    // iterations of one for loop run exactly
	maxFields     = 10000
	maxEvalDepth  = 64 // nested eval evaluated
)

type elem struct {
	val   string
	known bool
	raw   string // source text of the last assignment, quotes removed
	line  int
}

type variable struct {
	array   bool
	elems   map[int64]*elem
	unknown bool // elements may exist that we do not know of
	local   bool // declared local (declare/local/typeset in the function)
}

func (v *variable) copy() *variable {
	n := &variable{array: v.array, unknown: v.unknown, local: v.local, elems: make(map[int64]*elem, len(v.elems))}
	for k, e := range v.elems {
		ec := *e
		n.elems[k] = &ec
	}
	return n
}

func (v *variable) sortedIndices() []int64 {
	ks := make([]int64, 0, len(v.elems))
	for k := range v.elems {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}

type status struct {
	code  int
	known bool
}

var (
	stOK      = status{0, true}
	stFail    = status{1, true}
	stUnknown = status{}
)

type note struct {
	line int
	msg  string
}

// optState is what is known of a shell option (set -e, set -u).
type optState uint8

const (
	optOff optState = iota
	optOn
	optMaybe // set or unset under conditions known only at build time
)

type interp struct {
	errexit    optState // set -e
	nounset    optState // set -u
	noErrexit  int      // >0 where set -e is ignored (if/while conditions, && || lists, !)
	fatal      string   // an error that always happens: bash stops and dkms reads nothing from the file
	maybeFatal string   // such an error may happen: every value is known only at build time
	// anyCommand is set once text we could not read ran (eval or source
	// of unknown text): it may have defined functions or aliases, so any
	// command we do not evaluate may then assign anything.
	anyCommand string
	// patterns is set when a shopt changed how patterns match: pattern
	// results are then known only at build time.
	patterns   string
	config     *kernelConfig // the kernel's .config when known (PlanOptions.KernelConfig)
	line       int           // line of the command being evaluated
	evalDepth  int
	vars       map[string]*variable
	unsetKnown map[string]bool // names known to be unset unless assigned
	funcs      map[string]*funcDef
	running    map[string]bool // functions being called (recursion guard)
	cond       int             // >0 inside code that may or may not run
	maybeStop  bool            // a conditional return/exit was seen
	stopped    bool            // an unconditional return/exit was seen
	exhausted  bool            // the step budget ran out: nothing is known
	steps      int
	notes      []note
	seen       map[note]bool
	unknownWhy map[string]string // variable -> why it became unknown
	iterations int
}

func newInterp() *interp {
	return &interp{
		vars:       map[string]*variable{},
		unsetKnown: map[string]bool{},
		funcs:      map[string]*funcDef{},
		running:    map[string]bool{},
		seen:       map[note]bool{},
		unknownWhy: map[string]string{},
	}
}

// clone copies the variables (not the notes) for a new evaluation.
func (in *interp) clone() *interp {
	n := newInterp()
	for k, v := range in.vars {
		n.vars[k] = v.copy()
	}
	for k := range in.unsetKnown {
		n.unsetKnown[k] = true
	}
	return n
}

func (in *interp) note(line int, format string, args ...any) {
	n := note{line, readable(fmt.Sprintf(format, args...))}
	if in.seen[n] {
		return
	}
	in.seen[n] = true
	in.notes = append(in.notes, n)
}

// Parse evaluates a file without a kernel: the variables dkms provides
// ($kernelver, $arch, $dkms_tree...) then hold placeholders, NUL-delimited
// names that cannot occur in a file. They pass through concatenation, and
// anything that looks inside them yields unknown: Plan evaluates those.
func placeholder(name string) string { return "\x00" + name + "\x00" }

// opaque reports whether s holds a placeholder, noting why the result is
// unknown.
func (in *interp) opaque(line int, what string, ss ...string) bool {
	for _, s := range ss {
		if i := strings.IndexByte(s, 0); i >= 0 {
			j := strings.IndexByte(s[i+1:], 0)
			name := "a dkms variable"
			if j >= 0 {
				name = "$" + s[i+1:i+1+j]
			}
			in.note(line, "%s depends on the value of %s: evaluated per kernel by Plan", what, name)
			return true
		}
	}
	return false
}

// readable replaces placeholders by $name in messages.
func readable(s string) string {
	for {
		i := strings.IndexByte(s, 0)
		if i < 0 {
			return s
		}
		j := strings.IndexByte(s[i+1:], 0)
		if j < 0 {
			return s[:i] + s[i+1:]
		}
		s = s[:i] + "$" + s[i+1:i+1+j] + s[i+2+j:]
	}
}

func (in *interp) conditional() bool { return in.cond > 0 || in.maybeStop }

// fatalError is an error after which bash stops reading the file (exit, an
// expansion error, set -e or set -u): dkms's safe_source then prints
// nothing, so dkms reads no variable from this file.
func (in *interp) fatalError(line int, what string) {
	if in.conditional() {
		in.possiblyFatal(line, what+" under conditions known only at build time")
		return
	}
	in.note(line, "%s: dkms reads nothing from this file", what)
	if in.fatal == "" {
		in.fatal = fmt.Sprintf("line %d: %s: dkms reads nothing from this file", line, what)
	}
	in.stopped = true
}

// possiblyFatal records that bash may stop reading the file here: from
// then on nothing is known, and dkms may read nothing from the file.
func (in *interp) possiblyFatal(line int, what string) {
	in.note(line, "%s: dkms may read nothing from this file", what)
	in.maybeStop = true
	if in.maybeFatal == "" {
		in.maybeFatal = fmt.Sprintf("line %d: %s: dkms may read nothing from this file", line, what)
	}
}

// taintAll records that unknown code ran that could have assigned any
// variable.
func (in *interp) taintAll(why string) {
	for n := range in.vars {
		in.markUnknown(n, why)
	}
	for n := range in.unsetKnown {
		in.markUnknown(n, why)
	}
	in.unsetKnown = map[string]bool{}
}

// unknownText records that text we cannot read was run (eval, source):
// it may assign anything, define functions, set options or exit.
func (in *interp) unknownText(line int, what string) {
	why := fmt.Sprintf("line %d: %s", line, what)
	in.taintAll(why)
	if in.anyCommand == "" {
		in.anyCommand = why
	}
	in.errexit = maybeOpt(in.errexit)
	in.nounset = maybeOpt(in.nounset)
	in.possiblyFatal(line, what)
}

func maybeOpt(o optState) optState {
	if o == optOn {
		return o
	}
	return optMaybe
}

// setOpt sets an option, or makes it maybe under a condition.
func (in *interp) setOpt(o *optState, on bool) {
	want := optOff
	if on {
		want = optOn
	}
	if in.conditional() && *o != want {
		*o = optMaybe
		return
	}
	*o = want
}

// checkErrexit is set -e after a command (not a compound command).
func (in *interp) checkErrexit(line int, st status) {
	if in.errexit == optOff || in.noErrexit > 0 || in.stopped || st.known && st.code == 0 {
		return
	}
	if st.known && in.errexit == optOn {
		in.fatalError(line, "set -e and a command that fails")
		return
	}
	in.possiblyFatal(line, "set -e and a command whose status is known only at build time")
}

// unbound is set -u's check of an unset variable; certain tells whether
// the variable is known to be unset.
func (in *interp) unbound(line int, name string, certain bool) {
	if in.nounset == optOff {
		return
	}
	if certain && in.nounset == optOn {
		in.fatalError(line, "set -u and $"+name+" unset")
		return
	}
	in.possiblyFatal(line, "set -u and $"+name+" perhaps unset")
}

// certainArithError reports an arithmetic error that bash surely reports
// too (the operands are known): division by 0, a negative exponent.
func certainArithError(err error) bool {
	if err == nil || err == errArithUnknown {
		return false
	}
	msg := err.Error()
	return msg == "division by 0" || msg == "exponent less than 0"
}

// arithExpansionError is an arithmetic error inside an expansion ($((...)),
// a subscript, ${x:off:len}), which makes bash stop reading the file
// (unlike in (( )) or let, where only the command fails).
func (in *interp) arithExpansionError(line int, err error) {
	if err == nil || err == errArithUnknown {
		return
	}
	switch msg := err.Error(); {
	case certainArithError(err):
		in.fatalError(line, "arithmetic error: "+msg)
	default:
		// our evaluator's limits, or an error we do not claim to
		// reproduce exactly
		in.possiblyFatal(line, "arithmetic error: "+msg)
	}
}

// charge spends n units of the evaluation budget.
func (in *interp) charge(n int) bool {
	in.steps += n
	if in.steps > maxSteps {
		in.exhausted = true
	}
	return !in.exhausted
}

// tick is called by the arithmetic evaluator for each variable it reads.
func (in *interp) tick() bool { return in.charge(1) }

func (in *interp) step() bool {
	in.steps++
	if in.steps > maxSteps {
		in.exhausted = true
	}
	return !in.exhausted
}

// ---- the kernel's .config ----

// kernelConfig is what is known of the kernel's .config: where dkms's
// variables say it is, and its contents when PlanOptions.KernelConfig
// gives them.
type kernelConfig struct {
	paths  []string // $kernel_source_dir/.config, $kernel_config
	boot   string   // /boot/config-$kernelver: the same kind of file, contents not given
	srcDir string   // $kernel_source_dir
	data   []byte   // nil: not given
}

type configKind uint8

const (
	configNone   configKind = iota // not the kernel's config
	configShaped                   // the kernel's config, contents not given
	configKnown                    // the kernel's config, contents given
)

func (in *interp) configFile(path string) configKind {
	k := in.config
	if k == nil {
		return configNone
	}
	for _, p := range k.paths {
		if path == p {
			if k.data != nil {
				return configKnown
			}
			return configShaped
		}
	}
	if path == k.boot {
		return configShaped
	}
	return configNone
}

// fileTest evaluates test's -e, -f, -r, -s and -d on the kernel's config
// and source directory, which exist when the config is given (the Driver
// read it there).
func (in *interp) fileTest(op, path string) (bool, bool) {
	k := in.config
	if k == nil || k.data == nil {
		return false, false
	}
	switch op {
	case "-e", "-f", "-r":
		if in.configFile(path) == configKnown {
			return true, true
		}
	case "-s":
		if in.configFile(path) == configKnown {
			return len(k.data) > 0, true
		}
	case "-d":
		if path == k.srcDir || path == k.srcDir+"/" {
			return true, true
		}
	}
	return false, false
}

// condFileTest evaluates [[ -f FILE ]] and [[ ! -f FILE ]] (and -e, -r,
// -s, -d) when fileTest knows the answer.
func (in *interp) condFileTest(c *condCmd) (status, bool) {
	w := c.words
	neg := false
	if len(w) == 3 {
		if s, ok := w[0].literal(); ok && s == "!" {
			neg, w = true, w[1:]
		}
	}
	if len(w) != 2 {
		return stUnknown, false
	}
	op, ok := w[0].literal()
	if !ok {
		return stUnknown, false
	}
	switch op {
	case "-e", "-f", "-r", "-s", "-d":
	default:
		return stUnknown, false
	}
	path, ok := in.expandString(w[1], c.line)
	if !ok {
		return stUnknown, false
	}
	r, ok := in.fileTest(op, path)
	if !ok {
		return stUnknown, false
	}
	return status{b2iInt(r == neg), true}, true
}

// sourceConfig is . on the kernel's .config: a file of CONFIG_X=value
// assignments and comments, evaluated as shell when given; otherwise
// every CONFIG_ variable is known only at build time.
func (in *interp) sourceConfig(line int, path string, kind configKind) status {
	if kind == configShaped {
		in.note(line, ". %s: the kernel's config, known only at build time", readable(path))
		why := fmt.Sprintf("line %d: set by the kernel's config %s, known only at build time", line, readable(path))
		for n := range in.vars {
			if strings.HasPrefix(n, "CONFIG_") {
				in.markUnknown(n, why)
			}
		}
		for n := range in.unsetKnown {
			if strings.HasPrefix(n, "CONFIG_") {
				in.markUnknown(n, why)
				delete(in.unsetKnown, n)
			}
		}
		return stUnknown
	}
	prog, err := parseShell(string(in.config.data), readable(path))
	if err != nil {
		in.unknownText(line, fmt.Sprintf(". %s: the kernel config does not parse (%v)", readable(path), err))
		return stUnknown
	}
	return in.runList(prog)
}

// ---- variables ----

// lookup returns the variable, whether it is known to be unset, and
// whether anything is known about it at all.
func (in *interp) lookup(name string) (v *variable, known bool) {
	if v, ok := in.vars[name]; ok {
		return v, true
	}
	return nil, in.unsetKnown[name]
}

func (in *interp) markUnknown(name, why string) {
	v, ok := in.vars[name]
	if !ok {
		v = &variable{elems: map[int64]*elem{}}
		in.vars[name] = v
	}
	v.unknown = true
	for _, e := range v.elems {
		e.known = false
	}
	if _, ok := in.unknownWhy[name]; !ok {
		in.unknownWhy[name] = why
	}
}

// markIncomplete records that a variable may have elements (or values)
// besides those we know.
func (in *interp) markIncomplete(name, why string) {
	v, ok := in.vars[name]
	if !ok {
		v = &variable{elems: map[int64]*elem{}}
		in.vars[name] = v
	}
	v.unknown = true
	if _, ok := in.unknownWhy[name]; !ok {
		in.unknownWhy[name] = why
	}
}

// write assigns one element. idx nil means "the index is not known".
func (in *interp) write(name string, idx *int64, val string, known bool, raw string, line int, appendTo bool) {
	v, ok := in.vars[name]
	if !ok {
		v = &variable{elems: map[int64]*elem{}}
		if in.conditional() && !in.unsetKnown[name] {
			// the name may hold something from outside the file
			v.unknown = true
		}
		in.vars[name] = v
	}
	if idx == nil {
		v.unknown = true
		v.array = true
		in.why(name, line, "assigned at an index known only at build time")
		return
	}
	e, existed := v.elems[*idx]
	if !existed {
		// the previous value: unset, unless the variable has elements we
		// do not know of
		e = &elem{known: !v.unknown}
		v.elems[*idx] = e
	}
	if appendTo {
		if e.known && known {
			val = e.val + val
		} else {
			known = false
		}
		raw = e.raw + raw
	}
	if len(val) > maxValueLen {
		val, known = "", false
		in.note(line, "value of %s longer than %d bytes: not evaluated", name, maxValueLen)
	}
	e.raw, e.line = raw, line
	if in.conditional() {
		if !existed {
			// the element may or may not exist afterwards
			v.unknown = true
		}
		// either the old or the new value
		if !(existed && e.known && known && e.val == val) {
			e.known = false
			in.why(name, line, "assigned in code that runs only under conditions known at build time")
		}
		return
	}
	e.val, e.known = val, known
	if !known {
		in.why(name, line, "value known only at build time")
	}
}

func (in *interp) why(name string, line int, msg string) {
	if _, ok := in.unknownWhy[name]; !ok {
		in.unknownWhy[name] = fmt.Sprintf("line %d: %s", line, msg)
	}
}

func (in *interp) unset(name string, idx *int64, line int) {
	if in.conditional() {
		in.markUnknown(name, fmt.Sprintf("line %d: unset under conditions known only at build time", line))
		return
	}
	if idx == nil {
		delete(in.vars, name)
		in.unsetKnown[name] = true
		return
	}
	if v, ok := in.vars[name]; ok {
		delete(v.elems, *idx)
	}
}

// get returns element idx (nil: element 0 of $name) of a variable.
func (in *interp) get(name string, idx int64) (string, bool) {
	v, known := in.lookup(name)
	if v == nil {
		return "", known
	}
	if idx < 0 {
		if v.unknown {
			return "", false
		}
		ks := v.sortedIndices()
		if len(ks) == 0 {
			return "", true
		}
		idx = ks[len(ks)-1] + 1 + idx
		if idx < 0 {
			return "", false // bash: bad array subscript
		}
	}
	e, ok := v.elems[idx]
	if !ok {
		return "", !v.unknown
	}
	return e.val, e.known
}

// isSet reports whether element idx is set (for ${x-...} and ${x+...}).
func (in *interp) isSet(name string, idx int64) (set, known bool) {
	v, known := in.lookup(name)
	if v == nil {
		return false, known
	}
	if _, ok := v.elems[idx]; ok {
		return true, true
	}
	return false, !v.unknown
}

func (in *interp) arithGet(name string, index *int64) (string, bool) {
	var i int64
	if index != nil {
		i = *index
	}
	if in.nounset != optOff {
		if set, known := in.isSet(name, i); !set {
			in.unbound(in.line, name, known)
			return "", false
		}
	}
	return in.get(name, i)
}

func (in *interp) arithSet(name string, index *int64, v int64) {
	var i int64
	if index != nil {
		i = *index
	}
	s := strconv.FormatInt(v, 10)
	in.write(name, &i, s, true, s, 0, false)
}

// ---- running ----

func (in *interp) runList(list []*andOr) status {
	st := stOK
	for _, ao := range list {
		if in.stopped || in.exhausted {
			return st
		}
		st = in.runAndOr(ao)
	}
	return st
}

func (in *interp) runAndOr(ao *andOr) status {
	if !in.step() {
		return stUnknown
	}
	if ao.bg {
		in.note(ao.line, "background command (&): runs in a subshell, not evaluated")
		return stOK
	}
	// set -e ignores every member of a && || list but the last
	run := func(i int, pl *pipeline) status {
		if i < len(ao.rest) {
			in.noErrexit++
			defer func() { in.noErrexit-- }()
		}
		return in.runPipeline(pl)
	}
	st := run(0, ao.first)
	for i, pl := range ao.rest {
		if in.stopped {
			return st
		}
		op := ao.ops[i]
		switch {
		case st.known && (op == "&&") == (st.code == 0):
			st = run(i+1, pl)
		case st.known:
			// skipped
		default:
			in.cond++
			run(i+1, pl)
			in.cond--
			st = stUnknown
		}
	}
	return st
}

func (in *interp) runPipeline(pl *pipeline) status {
	if pl.bang {
		in.noErrexit++
		defer func() { in.noErrexit-- }()
	}
	if len(pl.cmds) > 1 {
		in.note(pl.line, "pipeline: runs in subshells, not evaluated")
		if in.anyCommand != "" {
			in.taintAll(in.anyCommand)
		}
		in.checkErrexit(pl.line, stUnknown)
		return stUnknown
	}
	st := in.runCommand(pl.cmds[0])
	switch pl.cmds[0].(type) {
	case *simpleCmd, *subshell, *arithCmd, *condCmd:
		// set -e looks at these, not at compound commands
		in.checkErrexit(pl.cmds[0].cmdLine(), st)
	}
	if pl.bang && st.known {
		st.code = b2iInt(st.code == 0)
	}
	return st
}

func b2iInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (in *interp) runCommand(c command) status {
	if !in.step() {
		return stUnknown
	}
	in.line = c.cmdLine()
	switch c := c.(type) {
	case *simpleCmd:
		return in.runSimple(c)
	case *braceGroup:
		return in.runList(c.body)
	case *subshell:
		in.note(c.line, "subshell ( ... ): runs in a subshell, not evaluated")
		return stUnknown
	case *ifClause:
		return in.runIf(c)
	case *loopClause:
		return in.runLoop(c)
	case *forClause:
		return in.runFor(c)
	case *caseClause:
		return in.runCase(c)
	case *funcDef:
		in.note(c.line, "function %s: defined, evaluated only where called", c.name)
		if !in.conditional() {
			in.funcs[c.name] = c
		} else {
			in.funcs[c.name] = c // either way a call may run it
		}
		return stOK
	case *arithCmd:
		s, ok := in.expandString(c.expr, c.line)
		if !ok {
			in.note(c.line, "(( ... )): operands known only at build time")
			in.taintArith(c.expr)
			return stUnknown
		}
		v, err := evalArith(s, in, 0)
		if err != nil {
			in.arithFailed(c.line, err, c.expr)
			if certainArithError(err) {
				return stFail // (( )) fails; bash goes on
			}
			return stUnknown
		}
		return status{b2iInt(v == 0), true}
	case *condCmd:
		if st, ok := in.condFileTest(c); ok {
			return st
		}
		in.note(c.line, "[[ ... ]]: test evaluated only at build time")
		return stUnknown
	}
	return stUnknown
}

func (in *interp) arithFailed(line int, err error, w *word) {
	if err == errArithUnknown && w != nil && strings.Contains(w.raw, "$") {
		in.note(line, "arithmetic %s on values known only at build time (or per kernel)", shorten(w.raw))
	} else if err == errArithUnknown {
		in.note(line, "arithmetic on values known only at build time")
	} else {
		in.note(line, "arithmetic error: %v", err)
	}
	if certainArithError(err) {
		return // the assignments before the error were made, as in bash
	}
	in.taintArith(w)
}

// taintArith marks the variables an arithmetic expression could assign as
// unknown when the expression cannot be evaluated.
func (in *interp) taintArith(w *word) {
	if w == nil {
		return
	}
	s := w.rawText()
	for i := 0; i < len(s); i++ {
		if !isNameStart(s[i]) || i > 0 && isNameChar(s[i-1]) {
			continue
		}
		j := i
		for j < len(s) && isNameChar(s[j]) {
			j++
		}
		name := s[i:j]
		k := j
		if k < len(s) && s[k] == '[' {
			if e := matchSquare(s, k); e > 0 {
				k = e + 1
			}
		}
		for k < len(s) && s[k] == ' ' {
			k++
		}
		rest := s[k:]
		assigns := strings.HasPrefix(rest, "++") || strings.HasPrefix(rest, "--") ||
			i >= 2 && (s[i-2:i] == "++" || s[i-2:i] == "--")
		for _, op := range assignOps {
			if strings.HasPrefix(rest, op) && !strings.HasPrefix(rest, "==") {
				assigns = true
			}
		}
		if assigns {
			in.markUnknown(name, fmt.Sprintf("line %d: assigned by arithmetic known only at build time", w.line))
		}
		i = j
	}
}

func (in *interp) runIf(c *ifClause) status {
	for i, cond := range c.conds {
		st := in.runCond(cond)
		if in.stopped {
			return st
		}
		if st.known && st.code == 0 {
			return in.runList(c.bodies[i])
		}
		if st.known {
			continue
		}
		in.note(c.line, "if: condition known only at build time; assignments inside are known only at build time")
		in.cond++
		in.runList(c.bodies[i])
		for j := i + 1; j < len(c.conds); j++ {
			in.runCond(c.conds[j])
			in.runList(c.bodies[j])
		}
		if c.hasEls {
			in.runList(c.els)
		}
		in.cond--
		return stUnknown
	}
	if c.hasEls {
		return in.runList(c.els)
	}
	return stOK
}

// runCond runs the condition of an if, while or until, where set -e is
// ignored.
func (in *interp) runCond(list []*andOr) status {
	in.noErrexit++
	defer func() { in.noErrexit-- }()
	return in.runList(list)
}

// runConditionally runs a body that may run any number of times; outside
// other conditional code it runs it twice so that values changed late in
// the body are unknown early in it too.
func (in *interp) runConditionally(body func()) {
	passes := 1
	if in.cond == 0 {
		passes = 2
	}
	in.cond++
	for i := 0; i < passes && !in.exhausted; i++ {
		body()
	}
	in.cond--
}

func (in *interp) runLoop(c *loopClause) status {
	kw := "while"
	if c.until {
		kw = "until"
	}
	st := in.runCond(c.cond)
	if st.known && (st.code == 0) == c.until {
		return stOK // the body never runs
	}
	in.note(c.line, "%s loop: evaluated only at build time", kw)
	in.runConditionally(func() {
		in.runList(c.body)
		in.runCond(c.cond)
	})
	return stUnknown
}

func (in *interp) runFor(c *forClause) status {
	if c.arith || !c.inGiven || c.kw == "select" {
		in.note(c.line, "%s loop: evaluated only at build time", c.kw)
		in.runConditionally(func() {
			if c.varName != "" {
				in.markUnknown(c.varName, fmt.Sprintf("line %d: loop variable", c.line))
			}
			in.runList(c.body)
		})
		return stUnknown
	}
	var fields []string
	known := true
	for _, w := range c.words {
		fs, ok := in.expandFields(w)
		if !ok {
			known = false
		}
		fields = append(fields, fs...)
	}
	if !known || in.conditional() || in.iterations+len(fields) > maxLoopIter || hasBreak(c.body) {
		in.note(c.line, "for loop: words or iterations known only at build time")
		in.runConditionally(func() {
			in.markUnknown(c.varName, fmt.Sprintf("line %d: loop variable", c.line))
			in.runList(c.body)
		})
		return stUnknown
	}
	in.iterations += len(fields)
	st := stOK
	for _, f := range fields {
		if in.stopped || in.exhausted {
			break
		}
		zero := int64(0)
		in.write(c.varName, &zero, f, true, f, c.line, false)
		st = in.runList(c.body)
	}
	return st
}

// hasBreak reports whether a loop body contains break or continue.
func hasBreak(list []*andOr) bool {
	found := false
	var walkList func([]*andOr)
	var walkCmd func(command)
	walkCmd = func(c command) {
		switch c := c.(type) {
		case *simpleCmd:
			if len(c.args) > 0 {
				if s, ok := c.args[0].literal(); ok && (s == "break" || s == "continue") {
					found = true
				}
			}
		case *braceGroup:
			walkList(c.body)
		case *ifClause:
			for i := range c.conds {
				walkList(c.conds[i])
				walkList(c.bodies[i])
			}
			walkList(c.els)
		case *caseClause:
			for _, it := range c.items {
				walkList(it.body)
			}
		}
	}
	walkList = func(l []*andOr) {
		for _, ao := range l {
			for _, c := range ao.first.cmds {
				walkCmd(c)
			}
			for _, pl := range ao.rest {
				for _, c := range pl.cmds {
					walkCmd(c)
				}
			}
		}
	}
	walkList(list)
	return found
}

func (in *interp) runCase(c *caseClause) status {
	subj, known := in.expandString(c.subject, c.line)
	if known && (len(subj) > maxPatternLen || in.opaque(c.line, "case", subj)) {
		known = false
	}
	st := stOK
	fallthroughNext := false
	for i, it := range c.items {
		matched := fallthroughNext
		if !matched {
			for _, pw := range it.patterns {
				pat, ok := in.expandPattern(pw, c.line)
				if ok && (in.opaque(c.line, "case pattern", pat) || !in.patternsKnown(c.line)) {
					ok = false
				}
				var toks []globTok
				var err error
				if ok {
					toks, err = compileGlob(pat)
					ok = err == nil
				}
				if !known || !ok {
					in.note(c.line, "case: word or pattern known only at build time; assignments inside are known only at build time")
					in.cond++
					for _, rest := range c.items[i:] {
						in.runList(rest.body)
					}
					in.cond--
					return stUnknown
				}
				if !in.charge(len(subj) * (len(toks) + 1) / 256) {
					return stUnknown
				}
				if globMatch(toks, []rune(subj)) {
					matched = true
					break
				}
			}
		}
		fallthroughNext = false
		if !matched {
			continue
		}
		st = in.runList(it.body)
		switch it.term {
		case ";&":
			fallthroughNext = true
		case ";;&":
			continue
		default:
			return st
		}
	}
	return st
}

// declaration builtins
var declBuiltins = map[string]bool{"declare": true, "typeset": true, "local": true, "export": true, "readonly": true}

func (in *interp) runSimple(c *simpleCmd) status {
	if len(c.args) == 0 {
		st := stOK
		for _, a := range c.assigns {
			if in.assign(a, false) {
				st = stUnknown // a command substitution's status
			}
		}
		return st
	}
	// Assignments before a command only reach the command's environment.
	var leading []*assignment
	var declArgs []*assignment
	for _, a := range c.assigns {
		if a.declArg {
			declArgs = append(declArgs, a)
		} else {
			leading = append(leading, a)
		}
	}
	for _, a := range leading {
		in.expandAssignmentForEffects(a)
	}
	name, ok := in.expandString(c.args[0], c.line)
	if !ok {
		in.note(c.line, "command with a name known only at build time: not run")
		in.expandArgsForEffects(c.args[1:])
		// it may be eval, source, exit, set...
		in.unknownText(c.line, "command with a name known only at build time")
		return stUnknown
	}
	args := c.args[1:]
	// command and builtin run the builtin they name
	for (name == "command" || name == "builtin") && len(args) > 0 {
		next, ok := args[0].literal()
		if !ok || strings.HasPrefix(next, "-") {
			break
		}
		if declBuiltins[next] {
			in.unknownText(c.line, name+" "+next+": not evaluated")
			return stUnknown
		}
		name, args = next, args[1:]
	}
	switch name {
	case "exec":
		if len(args) > 0 {
			// the command replaces safe_source's subshell (or, not
			// found, the shell exits): nothing is printed
			in.expandArgsForEffects(args)
			in.fatalError(c.line, "exec")
			return stUnknown
		}
		return stOK
	case "trap":
		if len(args) > 0 {
			if s, ok := args[0].literal(); !ok || s != "-l" && s != "-p" {
				// an EXIT trap prints into safe_source's output after it
				in.possiblyFatal(c.line, "trap: code run at build time")
			}
		}
		return stUnknown
	case "cd", "pushd", "popd":
		in.note(c.line, "command %s: not run (changes the working directory at build time)", name)
		in.expandArgsForEffects(args)
		for _, n := range []string{"PWD", "OLDPWD", "DIRSTACK"} {
			in.markUnknown(n, fmt.Sprintf("line %d: %s at build time", c.line, name))
		}
		return stUnknown
	case ":", "true":
		in.expandArgsForEffects(args)
		return stOK
	case "false":
		in.expandArgsForEffects(args)
		return stFail
	case "declare", "typeset", "local", "export", "readonly":
		return in.runDecl(name, c, declArgs)
	case "unset":
		return in.runUnset(c.line, args)
	case "let":
		st := stOK
		for i, w := range args {
			s, ok := in.expandString(w, c.line)
			if !ok {
				in.note(c.line, "let: operands known only at build time")
				in.taintArith(w)
				st = stUnknown
				continue
			}
			v, err := evalArith(s, in, 0)
			if err != nil {
				// an error ends let: the next arguments are not evaluated
				in.arithFailed(c.line, err, w)
				if certainArithError(err) {
					return stFail
				}
				for _, rest := range args[i+1:] {
					in.taintArith(rest)
				}
				return stUnknown
			}
			st = status{b2iInt(v == 0), true}
		}
		return st
	case "[", "test":
		return in.runTest(name, c.line, args)
	case "read", "mapfile", "readarray", "getopts", "printf":
		in.runReader(name, c.line, args)
		return stUnknown
	case ".", "source":
		return in.runSource(name, c.line, args)
	case "eval":
		return in.runEval(c.line, args)
	case "set":
		return in.runSet(c.line, args)
	case "shopt":
		return in.runShopt(c.line, args)
	case "exit":
		// exit leaves safe_source's subshell before it prints anything
		in.expandArgsForEffects(args)
		in.fatalError(c.line, "exit")
		return stUnknown
	case "return":
		// return ends the sourced file; safe_source still prints
		if in.conditional() {
			in.note(c.line, "%s under conditions known only at build time: later assignments are known only at build time", name)
			in.maybeStop = true
			return stUnknown
		}
		in.stopped = true
		return stOK
	}
	if fd, ok := in.funcs[name]; ok {
		in.note(c.line, "call of function %s: its assignments are known only at build time", name)
		in.expandArgsForEffects(args)
		if !in.running[name] {
			in.running[name] = true
			in.runConditionally(func() { in.runCommand(fd.body) })
			delete(in.running, name)
		}
		return stUnknown
	}
	in.note(c.line, "command %s: not run (known only at build time)", name)
	in.expandArgsForEffects(args)
	if in.anyCommand != "" {
		in.taintAll(in.anyCommand + " (and " + name + " may be a function it defined)")
		in.possiblyFatal(c.line, "command "+name+" after "+in.anyCommand)
	}
	return stUnknown
}

// runEval evaluates eval on known text, as bash does: the arguments joined
// by spaces, parsed and run here.
func (in *interp) runEval(line int, args []*word) status {
	var fields []string
	for _, w := range args {
		fs, ok := in.expandFields(w)
		if !ok {
			in.unknownText(line, "eval of text known only at build time")
			return stUnknown
		}
		fields = append(fields, fs...)
	}
	if in.evalDepth >= maxEvalDepth {
		in.unknownText(line, "eval nested too deeply to evaluate")
		return stUnknown
	}
	prog, err := parseShellAt(strings.Join(fields, " "), "eval", line)
	if err != nil {
		// a syntax error in eval's text stops bash
		in.fatalError(line, fmt.Sprintf("eval: %v", err))
		return stUnknown
	}
	in.evalDepth++
	defer func() { in.evalDepth-- }()
	return in.runList(prog)
}

// runSource evaluates . FILE: the kernel's .config is read when known
// (PlanOptions.KernelConfig), any other file is unknown text.
func (in *interp) runSource(name string, line int, args []*word) status {
	if len(args) == 0 {
		return status{2, true}
	}
	path, ok := in.expandString(args[0], line)
	in.expandArgsForEffects(args[1:])
	if ok && len(args) == 1 {
		if kind := in.configFile(path); kind != configNone {
			return in.sourceConfig(line, path, kind)
		}
	}
	in.unknownText(line, fmt.Sprintf("%s %s: another file, known only at build time", name, shorten(args[0].raw)))
	return stUnknown
}

// runSet evaluates set's options -e and -u (-o errexit, -o nounset); the
// other options that change what a file assigns make it unknown.
func (in *interp) runSet(line int, args []*word) status {
	var strs []string
	for _, w := range args {
		s, ok := in.expandString(w, line)
		if !ok {
			in.errexit, in.nounset = maybeOpt(in.errexit), maybeOpt(in.nounset)
			in.possiblyFatal(line, "set with arguments known only at build time")
			return stUnknown
		}
		strs = append(strs, s)
	}
	option := func(o string, on bool) {
		switch o {
		case "errexit":
			in.setOpt(&in.errexit, on)
		case "nounset":
			in.setOpt(&in.nounset, on)
		case "noexec":
			if on {
				// commands after this one are read, not run: safe_source
				// prints nothing
				in.fatalError(line, "set -n")
			}
		case "allexport", "braceexpand", "emacs", "errtrace", "functrace", "hashall", "histexpand", "history",
			"ignoreeof", "interactive-comments", "keyword", "monitor", "noclobber", "noglob", "nolog", "notify",
			"physical", "pipefail", "privileged", "verbose", "vi", "xtrace":
			// no effect on the values we evaluate
		default:
			in.possiblyFatal(line, "set -o "+o+": not evaluated")
		}
	}
	letters := map[byte]string{'e': "errexit", 'u': "nounset", 'n': "noexec", 'a': "allexport", 'B': "braceexpand",
		'b': "notify", 'C': "noclobber", 'E': "errtrace", 'f': "noglob", 'H': "histexpand", 'h': "hashall",
		'k': "keyword", 'm': "monitor", 'P': "physical", 'p': "privileged", 'T': "functrace", 'v': "verbose", 'x': "xtrace"}
	for i := 0; i < len(strs); i++ {
		s := strs[i]
		if s == "--" || s == "-" || len(s) < 2 || s[0] != '-' && s[0] != '+' {
			break // positional parameters
		}
		on := s[0] == '-'
		for j := 1; j < len(s); j++ {
			if s[j] == 'o' {
				if i+1 < len(strs) {
					i++
					option(strs[i], on)
				}
				continue
			}
			if o, ok := letters[s[j]]; ok {
				option(o, on)
			} else {
				option("-"+s[j:j+1], on)
			}
		}
	}
	return stOK
}

// runShopt: the options that change how patterns match make pattern
// results unknown; expand_aliases makes any command unknown.
func (in *interp) runShopt(line int, args []*word) status {
	var strs []string
	for _, w := range args {
		s, ok := in.expandString(w, line)
		if !ok {
			in.patterns = fmt.Sprintf("line %d: shopt with arguments known only at build time", line)
			in.unknownText(line, "shopt with arguments known only at build time")
			return stUnknown
		}
		strs = append(strs, s)
	}
	mode := ""
	setO := false
	for _, s := range strs {
		if strings.HasPrefix(s, "-") && len(s) > 1 {
			for _, f := range s[1:] {
				switch f {
				case 's', 'u':
					mode = string(f)
				case 'o':
					setO = true
				}
			}
			continue
		}
		if mode == "" {
			continue // a query
		}
		on := mode == "s"
		if setO {
			w := "-o"
			if !on {
				w = "+o"
			}
			in.runSet(line, []*word{{parts: []part{{kind: pLit, text: w}}}, {parts: []part{{kind: pLit, text: s}}}})
			continue
		}
		switch s {
		case "extglob", "globasciiranges", "patsub_replacement":
			if !on { // on in dkms's shell
				in.patterns = fmt.Sprintf("line %d: shopt -u %s", line, s)
			}
		case "nocasematch", "nocaseglob":
			if on {
				in.patterns = fmt.Sprintf("line %d: shopt -s %s", line, s)
			}
		case "nullglob", "failglob":
			if on {
				// safe_source's NAME[i]="value" words are patterns
				in.possiblyFatal(line, "shopt -s "+s+" changes what safe_source prints")
			}
		case "expand_aliases":
			if on {
				in.unknownText(line, "shopt -s expand_aliases: aliases are not evaluated")
			}
		}
	}
	return stOK
}

// patternsKnown reports whether pattern matching is evaluated (no shopt
// changed it).
func (in *interp) patternsKnown(line int) bool {
	if in.patterns == "" {
		return true
	}
	in.note(line, "pattern matching known only at build time (%s)", in.patterns)
	return false
}

// expandAssignmentForEffects expands an assignment's value only for the
// side effects of the expansion (${x:=y}, $((i++))).
func (in *interp) expandAssignmentForEffects(a *assignment) {
	if a.value != nil {
		in.expandString(a.value, a.line)
	}
	for _, el := range a.elems {
		in.expandFields(el.value)
	}
}

func (in *interp) expandArgsForEffects(args []*word) {
	for _, w := range args {
		in.expandFields(w)
	}
}

// assign performs an assignment; it reports whether the value contained a
// command substitution.
func (in *interp) assign(a *assignment, declLocal bool) (hadCmdSubst bool) {
	hadCmdSubst = hasCmdSubst(a.value)
	if a.isArray {
		in.assignArray(a)
		return false
	}
	val, known := in.expandString(a.value, a.line)
	raw := a.value.rawText()
	zero := int64(0)
	idx := &zero
	if a.hasIndex {
		idx = in.subscript(a.name, a.index, a.line)
	}
	in.write(a.name, idx, val, known, raw, a.line, a.append)
	if a.hasIndex {
		in.vars[a.name].array = true
	}
	return hadCmdSubst
}

func hasCmdSubst(w *word) bool {
	if w == nil {
		return false
	}
	for _, p := range w.parts {
		if p.kind == pCmdSubst {
			return true
		}
	}
	return false
}

// subscript evaluates an array subscript; nil means unknown.
func (in *interp) subscript(name string, w *word, line int) *int64 {
	s, ok := in.expandString(w, line)
	if !ok {
		in.note(line, "subscript of %s known only at build time", name)
		in.taintArith(w)
		return nil
	}
	v, err := evalArith(s, in, 0)
	if err != nil {
		in.arithFailed(line, err, w)
		in.arithExpansionError(line, err)
		return nil
	}
	if v < 0 {
		var ok bool
		v, ok = in.negIndex(name, v)
		if !ok {
			in.note(line, "negative subscript of %s", name)
			return nil
		}
	}
	return &v
}

func (in *interp) negIndex(name string, v int64) (int64, bool) {
	vv, _ := in.lookup(name)
	if vv == nil || vv.unknown || len(vv.elems) == 0 {
		return 0, false
	}
	ks := vv.sortedIndices()
	v = ks[len(ks)-1] + 1 + v
	return v, v >= 0
}

func (in *interp) assignArray(a *assignment) {
	v, ok := in.vars[a.name]
	if !ok || !a.append {
		old := v
		v = &variable{array: true, elems: map[int64]*elem{}}
		if in.conditional() {
			// either the old value or the new one: keep the old elements,
			// all unknown
			if old != nil {
				v = old
			}
			v.unknown = true
		}
		in.vars[a.name] = v
	}
	v.array = true
	next := int64(0)
	if a.append {
		if v.unknown {
			next = -1
		} else if ks := v.sortedIndices(); len(ks) > 0 {
			next = ks[len(ks)-1] + 1
		}
	}
	for _, el := range a.elems {
		if el.index != nil {
			idx := in.subscript(a.name, el.index, a.line)
			val, known := in.expandString(el.value, a.line)
			in.write(a.name, idx, val, known, el.value.rawText(), a.line, false)
			if idx != nil {
				next = *idx + 1
			} else {
				next = -1
			}
			continue
		}
		fields, known := in.expandFields(el.value)
		if !known {
			in.note(a.line, "array element %s of %s known only at build time", el.value.raw, a.name)
			v.unknown = true
			in.why(a.name, a.line, "array elements known only at build time")
			next = -1
			continue
		}
		for _, f := range fields {
			if next < 0 {
				in.write(a.name, nil, f, true, f, a.line, false)
				continue
			}
			i := next
			in.write(a.name, &i, f, true, el.value.rawText(), a.line, false)
			next++
		}
	}
}

func (in *interp) runDecl(name string, c *simpleCmd, declArgs []*assignment) status {
	var flags string
	global := name == "export" || name == "readonly"
	for _, w := range c.args[1:] {
		s, ok := w.literal()
		if ok && len(s) > 1 && (s[0] == '-' || s[0] == '+') {
			if s[0] == '-' {
				flags += s[1:]
			}
			continue
		}
		if !ok {
			in.note(c.line, "%s %s: argument known only at build time", name, w.raw)
			continue
		}
		// NAME without a value
		base := s
		if i := strings.IndexByte(s, '['); i > 0 {
			base = s[:i]
		}
		if !isName(base) {
			continue
		}
		if strings.ContainsAny(flags, "pfF") {
			continue
		}
		if strings.ContainsAny(flags, "Aniluc") {
			in.markUnknown(base, fmt.Sprintf("line %d: %s -%s", c.line, name, flags))
			continue
		}
		if !global && !strings.Contains(flags, "g") {
			// a new local in dkms's sourcing function: unset
			v, ok := in.vars[base]
			if ok && v.local {
				if strings.Contains(flags, "a") {
					v.array = true
				}
				continue
			}
			if in.conditional() {
				in.markUnknown(base, fmt.Sprintf("line %d: %s under conditions known only at build time", c.line, name))
				continue
			}
			nv := &variable{local: true, array: strings.Contains(flags, "a"), elems: map[int64]*elem{}}
			in.vars[base] = nv
		}
	}
	if strings.ContainsAny(flags, "pfF") {
		return stOK
	}
	for _, a := range declArgs {
		if strings.ContainsAny(flags, "Aniluc") {
			in.note(a.line, "%s -%s %s: attribute not evaluated", name, flags, a.name)
			in.markUnknown(a.name, fmt.Sprintf("line %d: %s -%s", a.line, name, flags))
			continue
		}
		if !global && !strings.Contains(flags, "g") {
			if v, ok := in.vars[a.name]; ok && !v.local && !in.conditional() && !a.append {
				delete(in.vars, a.name) // a fresh local shadows the outer value
			}
		}
		in.assign(a, true)
		if v, ok := in.vars[a.name]; ok {
			if !global && !strings.Contains(flags, "g") {
				v.local = true
			}
			if strings.Contains(flags, "a") {
				v.array = true
			}
		}
	}
	return stOK
}

func (in *interp) runUnset(line int, args []*word) status {
	mode := "v"
	for _, w := range args {
		s, ok := in.expandString(w, line)
		if !ok {
			in.note(line, "unset of a name known only at build time")
			return stUnknown
		}
		switch s {
		case "-v":
			mode = "v"
			continue
		case "-f":
			mode = "f"
			continue
		}
		if mode == "f" {
			delete(in.funcs, s)
			continue
		}
		if i := strings.IndexByte(s, '['); i > 0 && strings.HasSuffix(s, "]") {
			name := s[:i]
			sub := s[i+1 : len(s)-1]
			if sub == "@" || sub == "*" {
				in.unset(name, nil, line)
				continue
			}
			v, err := evalArith(sub, in, 0)
			if err != nil {
				in.markUnknown(name, fmt.Sprintf("line %d: unset of an element known only at build time", line))
				continue
			}
			in.unset(name, &v, line)
			continue
		}
		if _, isFunc := in.funcs[s]; isFunc {
			if _, isVar := in.vars[s]; !isVar && !in.unsetKnown[s] {
				delete(in.funcs, s)
				continue
			}
		}
		in.unset(s, nil, line)
	}
	return stOK
}

func (in *interp) runReader(name string, line int, args []*word) {
	in.note(line, "%s: reads input at build time", name)
	var strs []string
	for _, w := range args {
		v, ok := in.expandString(w, line)
		if !ok {
			// an option or a name we do not know: any variable
			in.taintAll(fmt.Sprintf("line %d: %s with arguments known only at build time", line, name))
			return
		}
		strs = append(strs, v)
	}
	// options that take an argument
	withArg := map[string]string{"read": "adinNptu", "mapfile": "dnOsuCc", "readarray": "dnOsuCc", "printf": "v", "getopts": ""}[name]
	var targets, operands []string
	for i := 0; i < len(strs); i++ {
		s := strs[i]
		if s == "--" {
			operands = append(operands, strs[i+1:]...)
			break
		}
		if len(s) < 2 || s[0] != '-' {
			operands = append(operands, strs[i:]...)
			break
		}
		for j := 1; j < len(s); j++ {
			if !strings.ContainsRune(withArg, rune(s[j])) {
				continue
			}
			arg := s[j+1:]
			if arg == "" && i+1 < len(strs) {
				i++
				arg = strs[i]
			}
			if name == "read" && s[j] == 'a' || name == "printf" && s[j] == 'v' {
				targets = append(targets, arg)
			}
			break
		}
	}
	switch name {
	case "read":
		targets = append(targets, operands...)
		if len(targets) == 0 {
			targets = append(targets, "REPLY")
		}
	case "mapfile", "readarray":
		if len(operands) > 0 {
			targets = append(targets, operands[0])
		} else {
			targets = append(targets, "MAPFILE")
		}
	case "getopts":
		if len(operands) >= 2 {
			targets = append(targets, operands[1])
		}
		targets = append(targets, "OPTARG", "OPTIND")
	}
	for _, t := range targets {
		if i := strings.IndexByte(t, '['); i > 0 && strings.HasSuffix(t, "]") {
			t = t[:i] // printf -v a[i]
		}
		if isName(t) {
			in.markUnknown(t, fmt.Sprintf("line %d: set by %s at build time", line, name))
		}
	}
}

// runTest evaluates test / [ on strings and integers.
func (in *interp) runTest(name string, line int, args []*word) status {
	var fields []string
	for _, w := range args {
		fs, ok := in.expandFields(w)
		if !ok {
			in.note(line, "%s: operands known only at build time", name)
			return stUnknown
		}
		fields = append(fields, fs...)
	}
	if name == "[" {
		if len(fields) == 0 || fields[len(fields)-1] != "]" {
			in.note(line, "[ without ]")
			return status{2, true}
		}
		fields = fields[:len(fields)-1]
	}
	st, ok := evalTest(fields, in.fileTest)
	if !ok {
		in.note(line, "%s %s: not evaluated (file tests and complex expressions are known only at build time)", name, shorten(strings.Join(fields, " ")))
		return stUnknown
	}
	if in.opaque(line, name, fields...) {
		return stUnknown
	}
	return st
}

// evalTest evaluates test's arguments; fileTest answers the file tests it
// knows.
func evalTest(f []string, fileTest func(op, path string) (bool, bool)) (status, bool) {
	switch len(f) {
	case 0:
		return stFail, true
	case 1:
		return status{b2iInt(f[0] == ""), true}, true
	case 2:
		switch f[0] {
		case "!":
			return status{b2iInt(f[1] != ""), true}, true
		case "-n":
			return status{b2iInt(f[1] == ""), true}, true
		case "-z":
			return status{b2iInt(f[1] != ""), true}, true
		case "-e", "-f", "-r", "-s", "-d":
			if r, ok := fileTest(f[0], f[1]); ok {
				return status{b2iInt(!r), true}, true
			}
		}
		return stUnknown, false
	case 3:
		a, op, b := f[0], f[1], f[2]
		switch op {
		case "=", "==":
			return status{b2iInt(a != b), true}, true
		case "!=":
			return status{b2iInt(a == b), true}, true
		case "-eq", "-ne", "-lt", "-le", "-gt", "-ge":
			x, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
			y, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 64)
			if err1 != nil || err2 != nil {
				return status{2, true}, true
			}
			var r bool
			switch op {
			case "-eq":
				r = x == y
			case "-ne":
				r = x != y
			case "-lt":
				r = x < y
			case "-le":
				r = x <= y
			case "-gt":
				r = x > y
			case "-ge":
				r = x >= y
			}
			return status{b2iInt(!r), true}, true
		}
		if a == "!" {
			st, ok := evalTest(f[1:], fileTest)
			if ok && st.code <= 1 {
				st.code = 1 - st.code
			}
			return st, ok
		}
		return stUnknown, false
	case 4:
		if f[0] == "!" {
			st, ok := evalTest(f[1:], fileTest)
			if ok && st.code <= 1 {
				st.code = 1 - st.code
			}
			return st, ok
		}
	}
	return stUnknown, false
}

// ---- expansion ----

// expandString expands a word without field splitting or pathname
// expansion (assignment values, case words, redirection targets).
func (in *interp) expandString(w *word, line int) (string, bool) {
	if w == nil {
		return "", true
	}
	var b strings.Builder
	known := true
	for i := range w.parts {
		s, ok := in.expandPart(&w.parts[i], line)
		if !ok {
			known = false
			continue
		}
		if known {
			b.WriteString(s)
			if b.Len() > maxValueLen {
				in.note(line, "value longer than %d bytes: not evaluated", maxValueLen)
				return "", false
			}
		}
	}
	if !known || !in.charge(b.Len()/256) {
		return "", false
	}
	return b.String(), true
}

func (in *interp) expandPart(p *part, line int) (string, bool) {
	switch p.kind {
	case pLit, pExtglob:
		return p.text, true
	case pTilde:
		in.note(line, "~: home directory known only at build time")
		return "", false
	case pOpaque:
		in.note(line, "%s inside \"${...}\": not evaluated", shorten(p.text))
		return "", false
	case pCmdSubst:
		in.note(line, "command substitution %s: known only at build time", shorten(p.text))
		return "", false
	case pArith:
		s, ok := in.expandString(p.arith, line)
		if !ok {
			in.note(line, "arithmetic %s on values known only at build time", shorten(p.text))
			in.taintArith(p.arith)
			return "", false
		}
		v, err := evalArith(s, in, 0)
		if err != nil {
			in.arithFailed(line, err, p.arith)
			in.arithExpansionError(line, err)
			return "", false
		}
		return strconv.FormatInt(v, 10), true
	case pParam:
		return in.expandParam(p.param, p.text, line)
	}
	return "", false
}

func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// checkNounset is set -u on a parameter expansion: an unset variable is
// an error, except in ${x-...}, ${x=...}, ${x+...}, ${x?...} and "${a[@]}".
func (in *interp) checkNounset(pe *paramExp, line int) {
	if !nounsetApplies(pe) || pe.index != nil && !pe.bad && !pe.indirect {
		return // an element is checked by paramValue, once its subscript is evaluated
	}
	if pe.special {
		switch pe.name {
		case "@", "*", "#", "?", "-", "$", "0":
			return
		}
		in.unbound(line, pe.name, false)
		return
	}
	if pe.bad || pe.indirect || pe.name == "" {
		in.unbound(line, pe.name, false)
		return
	}
	if pe.allElems != "" {
		if pe.op == "" && !pe.length {
			return
		}
		v, known := in.lookup(pe.name)
		if v == nil && known {
			in.unbound(line, pe.name, false) // ${#a[@]}, ${a[@]%x}: not checked against bash
		} else if v == nil || v.unknown {
			in.unbound(line, pe.name, false)
		}
		return
	}
	if set, known := in.isSet(pe.name, 0); !set {
		in.unbound(line, pe.name, known)
	}
}

func nounsetApplies(pe *paramExp) bool {
	switch pe.op {
	case "-", ":-", "=", ":=", "+", ":+", "?", ":?":
		return pe.length || pe.bad || pe.indirect
	}
	return true
}

// paramValue returns the value of name[index] (or $name), and whether it is
// set.
func (in *interp) paramValue(pe *paramExp, line int) (val string, set bool, known bool) {
	if pe.special {
		in.note(line, "special parameter $%s: known only at build time", pe.name)
		return "", false, false
	}
	if pe.allElems != "" {
		v, known := in.lookup(pe.name)
		if v == nil {
			return "", false, known
		}
		if v.unknown {
			return "", false, false
		}
		var vals []string
		for _, k := range v.sortedIndices() {
			e := v.elems[k]
			if !e.known {
				return "", false, false
			}
			vals = append(vals, e.val)
		}
		return strings.Join(vals, " "), len(vals) > 0, true
	}
	idx := int64(0)
	if pe.index != nil {
		ip := in.subscript(pe.name, pe.index, line)
		if ip == nil {
			if in.nounset != optOff && nounsetApplies(pe) {
				in.unbound(line, pe.name, false)
			}
			return "", false, false
		}
		idx = *ip
	}
	set, known = in.isSet(pe.name, idx)
	if pe.index != nil && in.nounset != optOff && nounsetApplies(pe) && !set {
		in.unbound(line, pe.name+"["+strconv.FormatInt(idx, 10)+"]", known)
	}
	if !known {
		return "", false, false
	}
	if !set {
		return "", false, true
	}
	val, known = in.get(pe.name, idx)
	return val, true, known
}

func (in *interp) expandParam(pe *paramExp, text string, line int) (string, bool) {
	if in.nounset != optOff {
		in.checkNounset(pe, line)
		if in.stopped {
			return "", false
		}
	}
	if pe.bad || pe.indirect {
		in.note(line, "expansion %s: not evaluated", shorten(text))
		return "", false
	}
	if pe.length {
		if pe.allElems != "" {
			v, known := in.lookup(pe.name)
			if v == nil {
				return "0", known
			}
			if v.unknown {
				return "", false
			}
			return strconv.Itoa(len(v.elems)), true
		}
		val, _, known := in.paramValue(pe, line)
		if !known || in.opaque(line, shorten(text), val) {
			return "", false
		}
		return strconv.Itoa(utf8.RuneCountInString(val)), true
	}
	val, set, known := in.paramValue(pe, line)
	if pe.allElems != "" && pe.op != "" && pe.op != ":-" && pe.op != "-" && pe.op != ":+" && pe.op != "+" {
		in.note(line, "expansion %s: not evaluated", shorten(text))
		return "", false
	}
	switch pe.op {
	case "":
		return val, known
	case ":-", "-", ":=", "=":
		if !known {
			// the operand may or may not be expanded
			in.cond++
			in.expandString(pe.arg, line)
			in.cond--
			if pe.op == ":=" || pe.op == "=" {
				in.markUnknown(pe.name, fmt.Sprintf("line %d: %s", line, shorten(text)))
			}
			return "", false
		}
		use := !set || pe.op[0] == ':' && val == ""
		if !use {
			return val, true
		}
		d, ok := in.expandString(pe.arg, line)
		if pe.op == ":=" || pe.op == "=" {
			if pe.allElems != "" || pe.special {
				return "", false
			}
			idx := int64(0)
			if pe.index != nil {
				ip := in.subscript(pe.name, pe.index, line)
				if ip == nil {
					return "", false
				}
				idx = *ip
			}
			in.write(pe.name, &idx, d, ok, pe.arg.rawText(), line, false)
		}
		return d, ok
	case ":+", "+":
		if !known {
			in.cond++
			in.expandString(pe.arg, line)
			in.cond--
			return "", false
		}
		use := set && !(pe.op == ":+" && val == "")
		if !use {
			return "", true
		}
		return in.expandString(pe.arg, line)
	case ":?", "?":
		if !known {
			in.possiblyFatal(line, shorten(text)+" on a value known only at build time")
			return "", false
		}
		if !set || pe.op == ":?" && val == "" {
			in.fatalError(line, shorten(text)+" unset or empty")
			return "", false
		}
		return val, true
	case "%", "%%", "#", "##":
		pat, ok := in.expandPattern(pe.arg, line)
		if !known || !ok || in.opaque(line, shorten(text), val, pat) {
			return "", false
		}
		return in.removePattern(val, pat, pe.op, text, line)
	case "/", "//", "/#", "/%":
		pat, ok := in.expandPattern(pe.arg, line)
		rep := ""
		repOK := true
		if pe.hasArg2 {
			rep, repOK = in.expandString(pe.arg2, line)
			if strings.Contains(pe.arg2.raw, "&") {
				// bash 5.2 patsub_replacement: & is the matched text
				in.note(line, "expansion %s: & in the replacement not evaluated", shorten(text))
				repOK = false
			}
		}
		if !known || !ok || !repOK || in.opaque(line, shorten(text), val, pat) {
			return "", false
		}
		return in.replacePattern(val, pat, rep, pe.op, text, line)
	case "^", "^^", ",", ",,":
		// the pattern (default ?) selects the characters converted
		var toks []globTok
		if pe.arg != nil && len(pe.arg.parts) > 0 {
			pat, ok := in.expandPattern(pe.arg, line)
			if !ok || in.opaque(line, shorten(text), pat) {
				return "", false
			}
			if pat != "" {
				if !in.patternsKnown(line) {
					return "", false
				}
				var err error
				if toks, err = compileGlob(pat); err != nil {
					in.note(line, "expansion %s: %v", shorten(text), err)
					return "", false
				}
			}
		}
		if !known || in.opaque(line, shorten(text), val) || !utf8.ValidString(val) {
			return "", false
		}
		conv := unicode.ToUpper
		if pe.op[0] == ',' {
			conv = unicode.ToLower
		}
		rs := []rune(val)
		if !in.charge(len(rs) * (len(toks) + 1) / 256) {
			return "", false
		}
		for i, r := range rs {
			if i > 0 && len(pe.op) == 1 {
				break
			}
			if toks == nil || globMatch(toks, rs[i:i+1]) {
				rs[i] = conv(r)
			}
		}
		return string(rs), true
	case ":":
		if !known || in.opaque(line, shorten(text), val) {
			return "", false
		}
		return in.substring(val, pe, text, line)
	}
	in.note(line, "expansion %s: not evaluated", shorten(text))
	return "", false
}

func (in *interp) substring(val string, pe *paramExp, text string, line int) (string, bool) {
	offS, ok := in.expandString(pe.arg, line)
	if !ok {
		return "", false
	}
	off, err := evalArith(offS, in, 0)
	if err != nil {
		in.arithFailed(line, err, pe.arg)
		in.arithExpansionError(line, err)
		return "", false
	}
	rs := []rune(val)
	n := int64(len(rs))
	if off < 0 {
		off += n
		if off < 0 {
			return "", true
		}
	}
	if off > n {
		return "", true
	}
	end := n
	if pe.hasArg2 {
		lenS, ok := in.expandString(pe.arg2, line)
		if !ok {
			return "", false
		}
		l, err := evalArith(lenS, in, 0)
		if err != nil {
			in.arithFailed(line, err, pe.arg2)
			in.arithExpansionError(line, err)
			return "", false
		}
		if l < 0 {
			end = n + l
			if end < off {
				in.fatalError(line, shorten(text)+": substring expression < 0")
				return "", false
			}
		} else if off+l < n {
			end = off + l
		}
	}
	return string(rs[off:end]), true
}

// expandPattern expands a word used as a pattern: quoted characters are
// escaped so that they match literally.
func (in *interp) expandPattern(w *word, line int) (string, bool) {
	if w == nil {
		return "", true
	}
	var b strings.Builder
	for i := range w.parts {
		p := &w.parts[i]
		if p.kind == pExtglob {
			in.note(line, "extended glob %s: not evaluated", shorten(p.text))
			return "", false
		}
		s, ok := in.expandPart(p, line)
		if !ok {
			return "", false
		}
		if p.quoted {
			s = globQuote(s)
		}
		b.WriteString(s)
	}
	return b.String(), true
}

func (in *interp) removePattern(val, pat, op, text string, line int) (string, bool) {
	if !in.patternsKnown(line) {
		return "", false
	}
	toks, err := compileGlob(pat)
	if err != nil {
		in.note(line, "expansion %s: %v", shorten(text), err)
		return "", false
	}
	rs := []rune(val)
	if len(rs) > maxPatternLen || !in.charge(len(rs)*len(rs)*(len(toks)+1)/4096) {
		in.note(line, "expansion %s: value too long to match", shorten(text))
		return "", false
	}
	n := len(rs)
	switch op {
	case "#":
		for i := 0; i <= n; i++ {
			if globMatch(toks, rs[:i]) {
				return string(rs[i:]), true
			}
		}
	case "##":
		for i := n; i >= 0; i-- {
			if globMatch(toks, rs[:i]) {
				return string(rs[i:]), true
			}
		}
	case "%":
		for i := n; i >= 0; i-- {
			if globMatch(toks, rs[i:]) {
				return string(rs[:i]), true
			}
		}
	case "%%":
		for i := 0; i <= n; i++ {
			if globMatch(toks, rs[i:]) {
				return string(rs[:i]), true
			}
		}
	}
	return val, true
}

func (in *interp) replacePattern(val, pat, rep, op, text string, line int) (string, bool) {
	if pat == "" {
		return val, true
	}
	if !in.patternsKnown(line) {
		return "", false
	}
	toks, err := compileGlob(pat)
	if err != nil {
		in.note(line, "expansion %s: %v", shorten(text), err)
		return "", false
	}
	rs := []rune(val)
	if len(rs) > maxPatternLen || !in.charge(len(rs)*len(rs)*(len(toks)+1)/4096) {
		in.note(line, "expansion %s: value too long to match", shorten(text))
		return "", false
	}
	n := len(rs)
	switch op {
	case "/#":
		for j := n; j >= 0; j-- {
			if globMatch(toks, rs[:j]) {
				return rep + string(rs[j:]), true
			}
		}
		return val, true
	case "/%":
		for i := 0; i <= n; i++ {
			if globMatch(toks, rs[i:]) {
				return string(rs[:i]) + rep, true
			}
		}
		return val, true
	}
	var b strings.Builder
	i := 0
	replaced := false
	for i < n {
		if replaced && op == "/" {
			b.WriteString(string(rs[i:]))
			return b.String(), true
		}
		m := -1
		for j := n; j > i; j-- {
			if globMatch(toks, rs[i:j]) {
				m = j
				break
			}
		}
		if m < 0 {
			b.WriteRune(rs[i])
			i++
			continue
		}
		b.WriteString(rep)
		i = m
		replaced = true
		if b.Len() > maxValueLen {
			return "", false
		}
	}
	return b.String(), true
}

// expandFields expands a word with field splitting (default IFS) and
// reports unknown when pathname or brace expansion could change the
// result.
func (in *interp) expandFields(w *word) ([]string, bool) {
	if w == nil {
		return nil, true
	}
	if v, ok := in.vars["IFS"]; ok && v != nil {
		in.note(w.line, "IFS is assigned: field splitting not evaluated")
		return nil, false
	}
	var fields []string
	var cur strings.Builder
	have := false // current field exists (quoted text or content)
	known := true
	flush := func() {
		if have {
			fields = append(fields, cur.String())
		}
		cur.Reset()
		have = false
	}
	for i := range w.parts {
		p := &w.parts[i]
		if p.kind == pParam && p.quoted && p.param.allElems == "@" && p.param.op == "" && !p.param.length && !p.param.bad {
			// "${a[@]}": one field per element
			v, k := in.lookup(p.param.name)
			if v == nil {
				if !k {
					known = false
				}
				continue
			}
			if v.unknown {
				known = false
				continue
			}
			ks := v.sortedIndices()
			for j, idx := range ks {
				e := v.elems[idx]
				if !e.known {
					known = false
				}
				cur.WriteString(e.val)
				have = true
				if j < len(ks)-1 {
					flush()
				}
			}
			continue
		}
		s, ok := in.expandPart(p, w.line)
		if !ok {
			known = false
			continue
		}
		switch {
		case p.quoted:
			cur.WriteString(s)
			have = true
		case p.kind == pLit || p.kind == pExtglob:
			if p.kind == pExtglob || hasGlobChars(s) || strings.Contains(s, "{") && strings.Contains(s, "}") {
				in.note(w.line, "word %s: pathname or brace expansion known only at build time", shorten(w.raw))
				known = false
			}
			cur.WriteString(s)
			have = have || s != ""
		default:
			// unquoted expansion: split on blanks, then globbing
			if hasGlobChars(s) {
				in.note(w.line, "word %s: pathname expansion known only at build time", shorten(w.raw))
				known = false
			}
			for j := 0; j < len(s); j++ {
				c := s[j]
				if c == ' ' || c == '\t' || c == '\n' {
					flush()
					continue
				}
				cur.WriteByte(c)
				have = true
			}
		}
		if len(fields) > maxFields || !in.charge(len(fields)) {
			return nil, false
		}
	}
	flush()
	if len(fields) > maxFields || !in.charge(len(fields)) {
		return nil, false
	}
	return fields, known
}
