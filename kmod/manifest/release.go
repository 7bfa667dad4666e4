package manifest

// CompareReleases orders kernel releases the way their versions sort:
// runs of digits compare as numbers and other runs byte by byte, with a
// '~' run sorting before anything (so 6.1~rc1 < 6.1), and the end of a
// release before a longer one: 5.10.0-9-amd64 < 5.10.0-10-amd64 <
// 6.1.0-1-amd64. Releases that compare equal this way (leading zeros)
// are ordered as strings, so the order is total. The result is negative,
// zero or positive.
func CompareReleases(a, b string) int {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		ca, cb := a[i], b[j]
		switch {
		case isDigit(ca) && isDigit(cb):
			si, sj := i, j
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
			if c := compareNumbers(a[si:i], b[sj:j]); c != 0 {
				return c
			}
		case ca == cb:
			i++
			j++
		default:
			return weight(ca) - weight(cb)
		}
	}
	// One is a prefix of the other (as versions): a following '~' makes
	// the longer one older, anything else newer.
	switch {
	case i < len(a):
		if a[i] == '~' {
			return -1
		}
		return 1
	case j < len(b):
		if b[j] == '~' {
			return 1
		}
		return -1
	}
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// weight orders non-equal bytes: '~' first, then digits (a number sorts
// before a letter or punctuation at the same place), then the rest by
// value.
func weight(c byte) int {
	switch {
	case c == '~':
		return -1
	case isDigit(c):
		return 0
	}
	return int(c) + 1
}

// compareNumbers compares two digit strings as numbers of any length.
func compareNumbers(a, b string) int {
	for len(a) > 1 && a[0] == '0' {
		a = a[1:]
	}
	for len(b) > 1 && b[0] == '0' {
		b = b[1:]
	}
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
