package depmod

import (
	"bytes"
	"cmp"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// This file renders depmod's output files from the computed module array,
// symbol table and dependency order (tools/depmod.c output_*).

// output renders the files, the independent ones on separate goroutines.
// Warnings keep kmod's order: each job collects its own.
func (d *generation) output(syms *symbolTable) {
	f := make([]File, 10)
	names := []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
		"modules.softdep", "modules.symbols", "modules.symbols.bin",
		"modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname"}
	for i, n := range names {
		f[i].Name = n
	}
	jobs := []func(d *generation){
		func(d *generation) {
			var lines []string
			f[0].Data, lines = d.outputDeps()
			f[1].Data = d.outputDepsBin(lines)
		},
		func(d *generation) { f[2].Data, f[3].Data = d.outputAliases() },
		func(d *generation) { f[4].Data = d.outputSoftdeps() },
		func(d *generation) { f[5].Data, f[6].Data = d.outputSymbols(syms) },
		func(d *generation) { f[7].Data = d.outputBuiltinBin() },
		func(d *generation) { f[8].Data = d.outputBuiltinAliasBin() },
		func(d *generation) { f[9].Data = d.outputDevname() },
	}
	warnings := make([][]string, len(jobs))
	var wg sync.WaitGroup
	for i, job := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := *d.opts
			o.warn = func(m string) { warnings[i] = append(warnings[i], m) }
			c := *d
			c.opts = &o
			job(&c)
		}()
	}
	wg.Wait()
	for _, ws := range warnings {
		for _, w := range ws {
			d.opts.warn(w)
		}
	}
	d.out = &Output{Files: f}
}

// depPath is mod_get_compressed_path: the path below the module folder,
// else (a module of an external folder) the absolute path.
func (m *depmodMod) depPath() string {
	if m.relpath != "" {
		return m.relpath
	}
	return m.path
}

// outputDeps writes modules.dep: per module its path, a colon, and all the
// modules it needs directly or not, in dependency order (the ones closest
// to it first). It returns the text and each module's line without the
// newline, the value modules.dep.bin stores.
func (d *generation) outputDeps() ([]byte, []string) {
	size := 0
	for _, m := range d.mods {
		size += len(m.depPath()) + 2
	}
	buf := make([]byte, 0, size*3)
	ends := make([]int, len(d.mods))
	stamp := make([]int32, len(d.mods))
	var closure, stack []int32
	for i, m := range d.mods {
		buf = append(buf, m.depPath()...)
		buf = append(buf, ':')
		if len(m.deps) > 0 {
			closure, stack = closure[:0], append(stack[:0], m.deps...)
			mark := int32(i) + 1
			for len(stack) > 0 {
				x := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				if stamp[x] == mark {
					continue
				}
				stamp[x] = mark
				closure = append(closure, x)
				stack = append(stack, d.mods[x].deps...)
			}
			slices.SortFunc(closure, func(a, b int32) int {
				return cmp.Compare(d.mods[a].depSortIdx, d.mods[b].depSortIdx)
			})
			for _, x := range closure {
				buf = append(buf, ' ')
				buf = append(buf, d.mods[x].depPath()...)
			}
		}
		ends[i] = len(buf)
		buf = append(buf, '\n')
	}
	all := string(buf)
	lines := make([]string, len(d.mods))
	start := 0
	for i, end := range ends {
		lines[i] = all[start:end]
		start = end + 1
	}
	return buf, lines
}

func (d *generation) outputDepsBin(lines []string) []byte {
	var b indexBuilder
	b.entries = make([]indexEntry, 0, len(d.mods))
	for i, m := range d.mods {
		if d.checkKey(m.modname) {
			b.add(m.modname, lines[i], uint32(m.idx))
		}
	}
	return b.write()
}

// checkKey refuses index keys kmod cannot store (bytes ≥ 128).
func (d *generation) checkKey(key string) bool {
	if validIndexKey(key) {
		return true
	}
	d.warnf("Module index: bad character in key %q - only 7-bit ASCII is supported; skipped", key)
	return false
}

func (d *generation) outputAliases() ([]byte, []byte) {
	const header = "# Aliases extracted from modules themselves.\n"
	n, size := 0, len(header)
	for _, m := range d.mods {
		n += len(m.facts.aliases)
		for _, a := range m.facts.aliases {
			size += len("alias  \n") + len(a) + len(m.modname)
		}
	}
	text := make([]byte, 0, size)
	text = append(text, header...)
	var b indexBuilder
	b.entries = make([]indexEntry, 0, n)
	for _, m := range d.mods {
		for _, a := range m.facts.aliases {
			text = append(text, "alias "...)
			text = append(text, a...)
			text = append(text, ' ')
			text = append(text, m.modname...)
			text = append(text, '\n')
			key, ok := aliasNormalize(a)
			if !ok {
				d.warnf("Unmatched bracket in %s", a)
				continue
			}
			if d.checkKey(key) {
				b.add(key, m.modname, uint32(m.idx))
			}
		}
	}
	return text, b.write()
}

// aliasNormalize is kmod's alias_normalize: '-' becomes '_' except inside
// a [...] range; an unmatched bracket is an error. At most PATH_MAX-1
// characters are kept.
func aliasNormalize(alias string) (string, bool) {
	if len(alias) < pathMax-1 && strings.IndexAny(alias, "-[]") < 0 {
		return alias, true
	}
	buf := make([]byte, 0, len(alias))
	for i := 0; i < pathMax-1 && i < len(alias); i++ {
		switch c := alias[i]; c {
		case '-':
			buf = append(buf, '_')
		case ']':
			return "", false
		case '[':
			for i < len(alias) && alias[i] != ']' {
				buf = append(buf, alias[i])
				i++
			}
			if i >= len(alias) {
				return "", false
			}
			buf = append(buf, ']')
		default:
			buf = append(buf, c)
		}
	}
	return string(buf), true
}

func (d *generation) outputSoftdeps() []byte {
	text := []byte("# Soft dependencies extracted from modules themselves.\n")
	for _, m := range d.mods {
		for _, s := range m.facts.softdeps {
			text = append(text, "softdep "...)
			text = append(text, m.modname...)
			text = append(text, ' ')
			text = append(text, s...)
			text = append(text, '\n')
		}
	}
	return text
}

// outputSymbols writes modules.symbols and its index: the symbols modules
// export, in the order of depmod's symbol hash table (2048 buckets, names
// sorted in a bucket), each owned by the last module that exports it.
func (d *generation) outputSymbols(t *symbolTable) ([]byte, []byte) {
	type owned struct {
		hash uint32
		sym  *depmodSymbol
	}
	list := make([]owned, 0, len(t.list))
	size := 0
	for i := range t.list {
		s := &t.list[i]
		if s.owner < 0 {
			continue
		}
		list = append(list, owned{superFastHash(s.name) & 2047, s})
		size += len("alias symbol: \n") + len(s.name) + len(d.mods[s.owner].modname)
	}
	slices.SortFunc(list, func(a, b owned) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return strings.Compare(a.sym.name, b.sym.name)
	})
	const header = "# Aliases for symbols, used by symbol_request().\n"
	text := make([]byte, 0, size+len(header))
	text = append(text, header...)
	var b indexBuilder
	b.entries = make([]indexEntry, 0, len(list))
	// kmod 30 builds the key in a 1024-byte buffer and, once a longer key
	// moved it to the heap, keeps inserting the stale stack copy: every
	// key from the first symbol longer than 1016 characters on is the
	// last shorter one (fixed in kmod 31).
	frozen, last := false, "symbol:"
	for _, o := range list {
		owner := d.mods[o.sym.owner]
		text = append(text, "alias symbol:"...)
		text = append(text, o.sym.name...)
		text = append(text, ' ')
		text = append(text, owner.modname...)
		text = append(text, '\n')
		if !frozen && len("symbol:")+len(o.sym.name)+1 <= 1024 {
			last = "symbol:" + o.sym.name
		} else {
			frozen = true
		}
		if d.checkKey(last) {
			b.add(last, owner.modname, uint32(owner.idx))
		}
	}
	return text, b.write()
}

// outputBuiltinBin indexes modules.builtin: one key per line, the module
// name of the line's base name, with an empty value. Without the file the
// index is an empty file.
func (d *generation) outputBuiltinBin() []byte {
	data, err := fs.ReadFile(d.root, d.moddir+"/modules.builtin")
	if err != nil {
		d.warnf("could not open modules.builtin at %s: %v", d.display(d.dirname), unwrapPathError(err))
		return []byte{}
	}
	var b indexBuilder
	modname, have := "", false
	fgetsChunks(data, pathMax, func(line []byte) {
		if len(line) == 0 || !isAlpha(line[0]) {
			d.warnf("Invalid modules.builtin line: %s", line)
			return
		}
		// path_to_modname on the line, newline included; an empty base
		// name leaves kmod's buffer as it was.
		base := line
		if i := bytes.LastIndexByte(line, '/'); i >= 0 {
			base = line[i+1:]
		}
		if len(base) > 0 {
			modname, have = moduleNameFromFileName(string(base)), true
		}
		if have && d.checkKey(modname) {
			b.add(modname, "", 0)
		}
	})
	return b.write()
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// outputBuiltinAliasBin indexes the alias fields of
// modules.builtin.modinfo ("modname.alias=value" strings), parsed with
// kmod 30's stream reader and its quirks (a string without '=' makes it
// skip the next string too).
func (d *generation) outputBuiltinAliasBin() []byte {
	data, err := fs.ReadFile(d.root, d.moddir+"/modules.builtin.modinfo")
	if err != nil {
		d.warnf("could not open modules.builtin.modinfo at %s: %v", d.display(d.dirname), unwrapPathError(err))
		return []byte{}
	}
	var b indexBuilder
	pos, eof := 0, false
	getc := func() int {
		if pos >= len(data) {
			eof = true
			return -1
		}
		pos++
		return int(data[pos-1])
	}
	// flushTo is flush_stream_to with a PATH_MAX buffer.
	flushTo := func(end int) string {
		start, n := pos, 0
		c := getc()
		for c != -1 && c != end && c != 0 && n < pathMax {
			n++
			c = getc()
		}
		if n == pathMax {
			d.warnf("Could not flush stream: %d. Partial content: %s", 28, data[start:start+n])
			n--
		}
		if c != end {
			return ""
		}
		return string(data[start : start+n])
	}
	flush := func(end int) {
		for c := getc(); c != -1 && c != end && c != 0; c = getc() {
		}
	}
	for !eof {
		modname := flushTo('.')
		if modname == "" {
			continue
		}
		if key := flushTo('='); key != "alias" {
			flush(0)
			continue
		}
		value := flushTo(0)
		if value == "" {
			continue
		}
		alias, ok := aliasNormalize(value)
		if !ok {
			d.warnf("Unmatched bracket in %s", value)
			continue
		}
		if d.checkKey(alias) {
			b.add(alias, modname, 0)
		}
	}
	return b.write()
}

// outputDevname writes modules.devname: for each module with a
// devname:NAME alias and a char-major-M-m or block-major-M-m alias, one
// "modname NAME cM:m" line; the header only when there is a line.
func (d *generation) outputDevname() []byte {
	var text []byte
	for _, m := range d.mods {
		devname, have := "", false
		var typ byte
		var major, minor uint32
		for _, a := range m.facts.aliases {
			if v, ok := strings.CutPrefix(a, "devname:"); ok {
				devname, have = v, true
			} else if maj, mn, ok := scanMajorMinor(a, "char-major-"); ok {
				typ, major, minor = 'c', maj, mn
			} else if maj, mn, ok := scanMajorMinor(a, "block-major-"); ok {
				typ, major, minor = 'b', maj, mn
			}
			if typ != 0 && have {
				break
			}
		}
		if !have {
			continue
		}
		if typ == 0 {
			d.warnf("Module '%s' has devname (%s) but lacks major and minor information. Ignoring.", m.modname, devname)
			continue
		}
		if text == nil {
			text = []byte("# Device nodes to trigger on-demand module loading.\n")
		}
		text = fmt.Appendf(text, "%s %s %c%s:%s\n", m.modname, devname, typ,
			strconv.FormatUint(uint64(major), 10), strconv.FormatUint(uint64(minor), 10))
	}
	if text == nil {
		text = []byte{}
	}
	return text
}

// scanMajorMinor is sscanf(s, PREFIX "%u-%u", &maj, &min) == 2.
func scanMajorMinor(s, prefix string) (uint32, uint32, bool) {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return 0, 0, false
	}
	maj, rest, ok := scanUnsigned(rest)
	if !ok || rest == "" || rest[0] != '-' {
		return 0, 0, false
	}
	mn, _, ok := scanUnsigned(rest[1:])
	if !ok {
		return 0, 0, false
	}
	return maj, mn, true
}

// scanUnsigned is scanf's %u: optional white space and sign, decimal
// digits (strtoul, saturating), the result cut to 32 bits.
func scanUnsigned(s string) (uint32, string, bool) {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg, s = s[0] == '-', s[1:]
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, s, false
	}
	v, ok := parseCULong(s[:i], 10)
	if !ok {
		return 0, s, false
	}
	if neg && v != ^uint64(0) {
		v = -v
	}
	return uint32(v), s[i:], true
}
