package loadconf

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// maxModuleName is the longest module name the kernel accepts:
// MODULE_NAME_LEN (64 - sizeof(unsigned long)) less the terminating NUL,
// on a 64-bit kernel.
const maxModuleName = 55

// maxLine bounds a rendered line; udev refuses longer rule lines
// (LINE_SIZE, 16 KiB) and nothing here needs more.
const maxLine = 16 << 10

var (
	moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	confNameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	udevNameRE   = regexp.MustCompile(`^[0-9][0-9]-[A-Za-z0-9][A-Za-z0-9._-]*$`)
	paramNameRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
)

// normName is a module name as kmod compares them: '-' and '_' are the
// same.
func normName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// checkModuleName reports whether s is a kernel module name.
func checkModuleName(s string) error {
	switch {
	case s == "":
		return errors.New("empty module name")
	case len(s) > maxModuleName:
		return fmt.Errorf("module name %q is longer than %d characters", s, maxModuleName)
	case !moduleNameRE.MatchString(s):
		return fmt.Errorf("invalid module name %q (letters, digits, '_' and '-' only)", s)
	}
	return nil
}

// checkText rejects what cannot stand in one line of a configuration
// file: newlines and other control characters (tab excepted), invalid
// UTF-8, a trailing backslash (kmod and udev join the next line to it)
// and overlong values.
func checkText(what, s string) error {
	if s == "" {
		return fmt.Errorf("empty %s", what)
	}
	if len(s) > maxLine {
		return fmt.Errorf("%s is longer than %d bytes", what, maxLine)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	for _, r := range s {
		if r == '\n' || r == '\r' {
			return fmt.Errorf("%s %q contains a newline", what, s)
		}
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return fmt.Errorf("%s %q contains control character %U", what, s, r)
		}
	}
	if strings.HasSuffix(s, `\`) {
		return fmt.Errorf("%s %q ends with a backslash, which would continue the line", what, s)
	}
	return nil
}

// param is one "name[=value]" of an options line.
type param struct{ name, value string }

// parseOptions splits a modprobe.d options value into parameters as the
// kernel's parse_args does: blanks separate them except inside double
// quotes.
func parseOptions(s string) ([]param, error) {
	if err := checkText("options", s); err != nil {
		return nil, err
	}
	var params []param
	var cur strings.Builder
	inQuote := false
	flush := func() error {
		if cur.Len() == 0 {
			return nil
		}
		tok := cur.String()
		cur.Reset()
		name, value, _ := strings.Cut(tok, "=")
		if !paramNameRE.MatchString(name) {
			return fmt.Errorf("invalid parameter %q in options %q", tok, s)
		}
		params = append(params, param{name: name, value: value})
		return nil
	}
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			cur.WriteRune(r)
		case (r == ' ' || r == '\t') && !inQuote:
			if err := flush(); err != nil {
				return nil, err
			}
		default:
			cur.WriteRune(r)
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unbalanced double quote in options %q", s)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(params) == 0 {
		return nil, fmt.Errorf("options %q name no parameter", s)
	}
	return params, nil
}

// parseSoftdep checks a softdep value ("pre: a b post: c") and returns it
// with single blanks.
func parseSoftdep(s string) (string, error) {
	if err := checkText("softdep", s); err != nil {
		return "", err
	}
	fields := strings.Fields(s)
	if fields[0] != "pre:" && fields[0] != "post:" {
		return "", fmt.Errorf("softdep %q must start with \"pre:\" or \"post:\"", s)
	}
	mods := 0
	for _, f := range fields {
		if f == "pre:" || f == "post:" {
			continue
		}
		if err := checkModuleName(f); err != nil {
			return "", fmt.Errorf("softdep %q: %w", s, err)
		}
		mods++
	}
	if mods == 0 {
		return "", fmt.Errorf("softdep %q names no module", s)
	}
	return strings.Join(fields, " "), nil
}

// checkAlias checks the wildcard of an alias line: one word, printable.
func checkAlias(s string) error {
	if err := checkText("alias", s); err != nil {
		return err
	}
	if strings.ContainsAny(s, " \t") {
		return fmt.Errorf("alias %q contains a blank", s)
	}
	if strings.HasPrefix(s, "#") {
		return fmt.Errorf("alias %q starts with '#'", s)
	}
	return nil
}

// checkHeader checks Options.Header and returns it as a comment line.
func checkHeader(h string) (string, error) {
	if h == "" {
		return "", nil
	}
	if err := checkText("header", h); err != nil {
		return "", err
	}
	if !strings.HasPrefix(h, "#") {
		h = "# " + h
	}
	return h, nil
}

// disableCommands are install commands that make modprobe fail or do
// nothing instead of loading the module.
var disableCommands = map[string]bool{
	"/bin/false": true, "/usr/bin/false": true, "false": true,
	"/bin/true": true, "/usr/bin/true": true, "true": true, ":": true,
}

func isDisableCommand(cmd string) bool { return disableCommands[strings.TrimSpace(cmd)] }

// checkUdevRule checks one udev rule line the way udev tokenizes it: a
// list of KEY[{attr}] OP "value" separated by commas or blanks, with OP
// one of == != = += -= :=, and values in double quotes (optionally
// prefixed by e for C escapes). A line starting with '#' is a comment.
func checkUdevRule(s string) error {
	if err := checkText("udev rule", s); err != nil {
		return err
	}
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "#") {
		return nil
	}
	i, n, tokens := 0, len(t), 0
	isKey := func(c byte) bool {
		return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_'
	}
	for {
		for i < n && (t[i] == ' ' || t[i] == '\t' || t[i] == ',') {
			i++
		}
		if i == n {
			break
		}
		start := i
		for i < n && isKey(t[i]) {
			i++
		}
		if i == start {
			return fmt.Errorf("udev rule %q: expected a key at %q", s, t[start:])
		}
		if i < n && t[i] == '{' {
			j := strings.IndexByte(t[i:], '}')
			if j < 0 {
				return fmt.Errorf("udev rule %q: unterminated '{' after %s", s, t[start:i])
			}
			i += j + 1
		}
		key := t[start:i]
		for i < n && (t[i] == ' ' || t[i] == '\t') {
			i++
		}
		op := ""
		for _, o := range []string{"==", "!=", "+=", "-=", ":=", "="} {
			if strings.HasPrefix(t[i:], o) {
				op = o
				break
			}
		}
		if op == "" {
			return fmt.Errorf("udev rule %q: key %s has no operator (==, !=, =, +=, -=, :=)", s, key)
		}
		i += len(op)
		for i < n && (t[i] == ' ' || t[i] == '\t') {
			i++
		}
		if i < n && t[i] == 'e' {
			i++
		}
		if i >= n || t[i] != '"' {
			return fmt.Errorf("udev rule %q: the value of %s must be in double quotes", s, key)
		}
		i++
		closed := false
		for i < n {
			if t[i] == '\\' && i+1 < n {
				i += 2
				continue
			}
			if t[i] == '"' {
				closed = true
				i++
				break
			}
			i++
		}
		if !closed {
			return fmt.Errorf("udev rule %q: unterminated value of %s", s, key)
		}
		if i < n && t[i] != ' ' && t[i] != '\t' && t[i] != ',' {
			return fmt.Errorf("udev rule %q: expected ',' after the value of %s", s, key)
		}
		tokens++
	}
	if tokens == 0 {
		return fmt.Errorf("udev rule %q has no key", s)
	}
	return nil
}
