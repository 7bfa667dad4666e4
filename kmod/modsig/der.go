package modsig

import (
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small ASN.1 reader for the CMS a module carries and a writer
// for the CMS we produce. The reader accepts BER as the kernel's decoder does
// (definite lengths in any length form, indefinite lengths on constructed
// elements) but never allocates more than the input it is given, never
// recurses deeper than maxDepth and never panics on hostile input.

// ASN.1 classes.
const (
	classUniversal   = 0
	classApplication = 1
	classContext     = 2
	classPrivate     = 3
)

// Universal tags used here.
const (
	tagInteger     = 2
	tagOctetString = 4
	tagNull        = 5
	tagOID         = 6
	tagUTF8String  = 12
	tagSequence    = 16
	tagSet         = 17
	tagPrintable   = 19
	tagT61String   = 20
	tagIA5String   = 22
	tagUniversal   = 28
	tagBMPString   = 30
)

// maxDepth bounds nesting of indefinite-length elements.
const maxDepth = 24

// element is one decoded TLV. content aliases the input.
type element struct {
	class       int
	tag         int
	constructed bool
	// indefinite is true for an indefinite-length encoding; content then
	// holds the encodings of the children without the end-of-contents.
	indefinite bool
	content    []byte
	// full is the whole encoding, header included.
	full []byte
}

func (e element) is(class, tag int, constructed bool) bool {
	return e.class == class && e.tag == tag && e.constructed == constructed
}

// describe names an element for error messages: "SEQUENCE", "[0]", ...
func (e element) describe() string {
	if e.class == classUniversal {
		switch e.tag {
		case 0:
			return "end-of-contents"
		case tagInteger:
			return "INTEGER"
		case tagOctetString:
			return "OCTET STRING"
		case tagNull:
			return "NULL"
		case tagOID:
			return "OBJECT IDENTIFIER"
		case tagSequence:
			return "SEQUENCE"
		case tagSet:
			return "SET"
		}
		return "universal tag " + strconv.Itoa(e.tag)
	}
	return fmt.Sprintf("[%s%d]", [...]string{"UNIVERSAL ", "APPLICATION ", "", "PRIVATE "}[e.class], e.tag)
}

var errTruncated = errors.New("truncated ASN.1 data")

// readElement decodes the element at the start of b and returns it and the
// bytes after it.
func readElement(b []byte, depth int) (e element, rest []byte, err error) {
	if depth > maxDepth {
		return e, nil, fmt.Errorf("ASN.1 nesting deeper than %d", maxDepth)
	}
	if len(b) < 2 {
		return e, nil, errTruncated
	}
	p := 0
	id := b[p]
	p++
	e.class = int(id >> 6)
	e.constructed = id&0x20 != 0
	e.tag = int(id & 0x1f)
	if e.tag == 0x1f {
		// High tag number form: base-128, at most 4 bytes (28 bits).
		e.tag = 0
		for i := 0; ; i++ {
			if p >= len(b) {
				return e, nil, errTruncated
			}
			if i == 4 {
				return e, nil, errors.New("ASN.1 tag number too large")
			}
			c := b[p]
			p++
			if i == 0 && c == 0x80 {
				return e, nil, errors.New("ASN.1 tag number not minimally encoded")
			}
			e.tag = e.tag<<7 | int(c&0x7f)
			if c&0x80 == 0 {
				break
			}
		}
	}
	if p >= len(b) {
		return e, nil, errTruncated
	}
	l := b[p]
	p++
	switch {
	case l < 0x80:
		n := int(l)
		if n > len(b)-p {
			return e, nil, fmt.Errorf("ASN.1 %s length %d exceeds the %d bytes left", e.describe(), n, len(b)-p)
		}
		e.content = b[p : p+n]
		e.full = b[:p+n]
		return e, b[p+n:], nil
	case l == 0x80:
		if !e.constructed {
			return e, nil, fmt.Errorf("ASN.1 %s: indefinite length on a primitive element", e.describe())
		}
		e.indefinite = true
		start := p
		r := b[p:]
		for {
			if len(r) >= 2 && r[0] == 0 && r[1] == 0 {
				e.content = b[start : len(b)-len(r)]
				e.full = b[:len(b)-len(r)+2]
				return e, r[2:], nil
			}
			if _, r, err = readElement(r, depth+1); err != nil {
				return e, nil, err
			}
		}
	case l == 0xff:
		return e, nil, errors.New("ASN.1 reserved length byte 0xff")
	default:
		nb := int(l & 0x7f)
		if nb > len(b)-p {
			return e, nil, errTruncated
		}
		n := 0
		for i := 0; i < nb; i++ {
			if n > (1<<31-1)>>8 {
				return e, nil, errors.New("ASN.1 length too large")
			}
			n = n<<8 | int(b[p+i])
		}
		p += nb
		if n > len(b)-p {
			return e, nil, fmt.Errorf("ASN.1 %s length %d exceeds the %d bytes left", e.describe(), n, len(b)-p)
		}
		e.content = b[p : p+n]
		e.full = b[:p+n]
		return e, b[p+n:], nil
	}
}

// reader walks the children of a constructed element in order.
type reader struct {
	b     []byte
	depth int
	// what names the enclosing structure in errors.
	what string
}

func newReader(e element, depth int, what string) *reader {
	return &reader{b: e.content, depth: depth + 1, what: what}
}

func (r *reader) empty() bool { return len(r.b) == 0 }

// peek returns the next element without consuming it.
func (r *reader) peek() (element, error) {
	e, _, err := readElement(r.b, r.depth)
	if err != nil {
		return e, fmt.Errorf("%s: %w", r.what, err)
	}
	return e, nil
}

func (r *reader) next(field string) (element, error) {
	if len(r.b) == 0 {
		return element{}, fmt.Errorf("%s: %s missing", r.what, field)
	}
	e, rest, err := readElement(r.b, r.depth)
	if err != nil {
		return e, fmt.Errorf("%s: %s: %w", r.what, field, err)
	}
	r.b = rest
	return e, nil
}

// expect reads the next element and checks its identifier.
func (r *reader) expect(field string, class, tag int, constructed bool) (element, error) {
	e, err := r.next(field)
	if err != nil {
		return e, err
	}
	if !e.is(class, tag, constructed) {
		want := element{class: class, tag: tag, constructed: constructed}
		return e, fmt.Errorf("%s: %s: got %s, want %s", r.what, field, e.describe(), want.describe())
	}
	return e, nil
}

// parseInt decodes a small INTEGER (versions).
func parseInt(e element) (int, error) {
	c := e.content
	if len(c) == 0 {
		return 0, errors.New("empty INTEGER")
	}
	if len(c) > 4 {
		return 0, fmt.Errorf("INTEGER of %d bytes too large", len(c))
	}
	v := int64(int8(c[0]))
	for _, x := range c[1:] {
		v = v<<8 | int64(x)
	}
	return int(v), nil
}

// parseBigInt decodes a two's complement INTEGER.
func parseBigInt(e element) (*big.Int, error) {
	c := e.content
	if len(c) == 0 {
		return nil, errors.New("empty INTEGER")
	}
	n := new(big.Int).SetBytes(c)
	if c[0]&0x80 != 0 {
		n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(len(c))*8))
	}
	return n, nil
}

// parseOID decodes an OBJECT IDENTIFIER's content.
func parseOID(c []byte) (asn1.ObjectIdentifier, error) {
	if len(c) == 0 {
		return nil, errors.New("empty OBJECT IDENTIFIER")
	}
	if len(c) > 128 {
		return nil, fmt.Errorf("OBJECT IDENTIFIER of %d bytes too long", len(c))
	}
	oid := make(asn1.ObjectIdentifier, 0, 8)
	v, start := 0, true
	for i, x := range c {
		if start && x == 0x80 {
			return nil, errors.New("OBJECT IDENTIFIER not minimally encoded")
		}
		if v > (1<<31-1)>>7 {
			return nil, errors.New("OBJECT IDENTIFIER component too large")
		}
		v = v<<7 | int(x&0x7f)
		start = x&0x80 == 0
		if !start {
			if i == len(c)-1 {
				return nil, errors.New("truncated OBJECT IDENTIFIER")
			}
			continue
		}
		if len(oid) == 0 {
			switch {
			case v < 40:
				oid = append(oid, 0, v)
			case v < 80:
				oid = append(oid, 1, v-40)
			default:
				oid = append(oid, 2, v-80)
			}
		} else {
			oid = append(oid, v)
		}
		v = 0
	}
	return oid, nil
}

// octets returns the value of an OCTET STRING, joining the segments of a
// constructed (BER) one.
func octets(e element, depth int) ([]byte, error) {
	if !e.constructed {
		return e.content, nil
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("ASN.1 nesting deeper than %d", maxDepth)
	}
	var out []byte
	r := &reader{b: e.content, depth: depth + 1, what: "OCTET STRING"}
	for !r.empty() {
		seg, err := r.next("segment")
		if err != nil {
			return nil, err
		}
		if seg.class != classUniversal || seg.tag != tagOctetString {
			return nil, fmt.Errorf("OCTET STRING segment is %s", seg.describe())
		}
		b, err := octets(seg, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return out, nil
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// commonName returns the first commonName of a DER Name (RDNSequence).
func commonName(name element, depth int) (string, error) {
	rdns := newReader(name, depth, "issuer Name")
	for !rdns.empty() {
		rdn, err := rdns.expect("RelativeDistinguishedName", classUniversal, tagSet, true)
		if err != nil {
			return "", err
		}
		atvs := newReader(rdn, rdns.depth, "RelativeDistinguishedName")
		for !atvs.empty() {
			atv, err := atvs.expect("AttributeTypeAndValue", classUniversal, tagSequence, true)
			if err != nil {
				return "", err
			}
			f := newReader(atv, atvs.depth, "AttributeTypeAndValue")
			t, err := f.expect("type", classUniversal, tagOID, false)
			if err != nil {
				return "", err
			}
			v, err := f.next("value")
			if err != nil {
				return "", err
			}
			oid, err := parseOID(t.content)
			if err != nil {
				return "", fmt.Errorf("issuer Name: %w", err)
			}
			if oid.Equal(oidCommonName) {
				return decodeString(v), nil
			}
		}
	}
	return "", nil
}

// decodeString converts an ASN.1 character string to UTF-8. Types other
// than BMP and Universal strings are returned byte for byte, as modinfo
// prints them.
func decodeString(v element) string {
	if v.class != classUniversal || v.constructed {
		return string(v.content)
	}
	switch v.tag {
	case tagBMPString:
		if len(v.content)%2 != 0 {
			return string(v.content)
		}
		u := make([]uint16, len(v.content)/2)
		for i := range u {
			u[i] = uint16(v.content[2*i])<<8 | uint16(v.content[2*i+1])
		}
		return string(utf16.Decode(u))
	case tagUniversal:
		if len(v.content)%4 != 0 {
			return string(v.content)
		}
		out := make([]byte, 0, len(v.content)/4)
		for i := 0; i < len(v.content); i += 4 {
			r := rune(uint32(v.content[i])<<24 | uint32(v.content[i+1])<<16 | uint32(v.content[i+2])<<8 | uint32(v.content[i+3]))
			if !utf8.ValidRune(r) {
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
		}
		return string(out)
	}
	return string(v.content)
}

// --- writer ---

// appendHeader appends a definite-length DER identifier and length.
func appendHeader(b []byte, id byte, n int) []byte {
	b = append(b, id)
	switch {
	case n < 0x80:
		return append(b, byte(n))
	case n < 1<<8:
		return append(b, 0x81, byte(n))
	case n < 1<<16:
		return append(b, 0x82, byte(n>>8), byte(n))
	case n < 1<<24:
		return append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		return append(b, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// headerLen is len(appendHeader(nil, id, n)).
func headerLen(n int) int {
	switch {
	case n < 0x80:
		return 2
	case n < 1<<8:
		return 3
	case n < 1<<16:
		return 4
	case n < 1<<24:
		return 5
	default:
		return 6
	}
}

// tlv returns the DER of one element with the given identifier byte and the
// concatenation of parts as its content.
func tlv(id byte, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b := appendHeader(make([]byte, 0, headerLen(n)+n), id, n)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// DER identifier bytes.
const (
	idInteger     = 0x02
	idOctetString = 0x04
	idNull        = 0x05
	idOID         = 0x06
	idSequence    = 0x30
	idSet         = 0x31
	idContext0    = 0xa0
)

func derOID(oid asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(oid)
	if err != nil {
		panic("modsig: bad built-in OID " + oid.String())
	}
	return b
}

func derInt(n *big.Int) ([]byte, error) {
	return asn1.Marshal(n)
}
