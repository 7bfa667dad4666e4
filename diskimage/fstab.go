package diskimage

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// FstabEntry is one entry of an fstab(5) file, octal escapes (\040 for a
// space) undone in every field.
type FstabEntry struct {
	Spec    string   // what is mounted: UUID=..., LABEL=..., /dev/..., tmpfs
	File    string   // the mount point as written (not cleaned)
	Type    string   // the filesystem type; "auto" when the line has none
	Options []string // the mount options; nil when the line has none
	Line    int      // the line number, from 1
}

// HasOption reports whether the entry's options include opt.
func (e FstabEntry) HasOption(opt string) bool { return slices.Contains(e.Options, opt) }

// ErrBadFstabLine is wrapped by ParseFstab's error for a line that is not an
// entry (a single field).
var ErrBadFstabLine = errors.New("not an fstab entry")

// ParseFstab reads the fstab(5) lines of r: fields separated by blanks,
// comments (#) and blank lines skipped. Like mount(8), it skips a line that
// is not an entry and goes on: it then returns all the entries with an
// error wrapping ErrBadFstabLine that names the first such line, so that a
// caller may refuse the file or use the entries. Any other error (reading
// r, a line longer than 1 MiB) comes with no entries.
func ParseFstab(r io.Reader) ([]FstabEntry, error) {
	var (
		res []FstabEntry
		bad error
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			if bad == nil {
				bad = fmt.Errorf("fstab line %d: %w: want at least what to mount and where, got %q", n, ErrBadFstabLine, line)
			}
			continue
		}
		e := FstabEntry{Spec: unescapeOctal(f[0]), File: unescapeOctal(f[1]), Type: "auto", Line: n}
		if len(f) > 2 {
			e.Type = unescapeOctal(f[2])
		}
		if len(f) > 3 {
			e.Options = strings.Split(unescapeOctal(f[3]), ",")
		}
		res = append(res, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("fstab: %w", err)
	}
	return res, bad
}

// unescapeOctal undoes the octal escapes of fstab, mtab and mountinfo: a
// backslash and three octal digits (at most \377) stand for one byte; any
// other backslash stays.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
