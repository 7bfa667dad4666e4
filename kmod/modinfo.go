package kmod

import (
	"encoding/asn1"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/kmod/internal/modfile"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// ModinfoFields returns the key/value lines that kmod's `modinfo FILE`
// (kmod 30) prints after its "filename:" line, in the same order:
//
//   - every .modinfo string in section order (see Info), except parm and
//     parmtype, keys without '=' with an empty value;
//   - then, for a module signed with a PKCS#7 signature whose first signer
//     is identified by issuer and serial number, sig_id ("PKCS#7"), signer
//     (issuer commonName), sig_key (serial), sig_hashalgo and signature,
//     the last two bytes values as colon-separated uppercase hex (modinfo
//     wraps signature over several lines; here it is one value);
//   - last, one "parm" line per parameter name, merging its parm
//     (description) and parmtype strings: "name:desc (type)", "name:desc"
//     or "name:type"; a later string for the same name replaces an earlier
//     one, and the parameters come in reverse order of their first
//     appearance. parm/parmtype strings without ':' are dropped (modinfo
//     prints an error for them).
func (m *Module) ModinfoFields() []Field {
	out := make([]Field, 0, len(m.Info)+5)
	type param struct {
		name, desc, typ  string
		hasDesc, hasType bool
	}
	var params []param
	var index map[string]int
	for _, f := range m.Info {
		isDesc := f.Key == "parm"
		if !isDesc && f.Key != "parmtype" {
			out = append(out, f)
			continue
		}
		name, val, ok := strings.Cut(f.Value, ":")
		if !ok {
			continue
		}
		if index == nil {
			index = make(map[string]int)
		}
		i, seen := index[name]
		if !seen {
			i = len(params)
			index[name] = i
			params = append(params, param{name: name})
		}
		if isDesc {
			params[i].desc, params[i].hasDesc = val, true
		} else {
			params[i].typ, params[i].hasType = val, true
		}
	}
	out = append(out, m.signatureFields()...)
	for i := len(params) - 1; i >= 0; i-- {
		p := params[i]
		var v string
		switch {
		case !p.hasDesc:
			v = p.name + ":" + p.typ
		case p.hasType:
			v = p.name + ":" + p.desc + " (" + p.typ + ")"
		default:
			v = p.name + ":" + p.desc
		}
		out = append(out, Field{Key: "parm", Value: v})
	}
	return out
}

// kmodHashes are the digests kmod 30 maps to a name (its obj_to_hash_algo,
// by the names modsig gives them); for any other digest, sha3-256 for one,
// it prints no signature fields at all.
var kmodHashes = map[string]bool{
	"md4": true, "md5": true, "sha1": true, "rmd160": true, "sha224": true,
	"sha256": true, "sha384": true, "sha512": true, "sm3": true,
}

// signatureFields are modinfo's sig_* lines, which kmod derives from the
// first SignerInfo. kmod 30 prints none when its OpenSSL-based reader
// fails: a signer identified by subject key id (sign-file -k), a digest it
// has no name for, an issuer without attributes.
func (m *Module) signatureFields() []Field {
	s := m.Signature
	if s == nil || len(s.Signers) == 0 {
		return nil
	}
	si := s.Signers[0]
	if si.Serial == nil || si.SubjectKeyID != nil || !kmodHashes[si.HashName] {
		return nil
	}
	signer, ok := kmodSigner(si.IssuerRaw)
	if !ok {
		if len(si.IssuerRaw) > 0 && len(si.IssuerCN) == 0 {
			return nil
		}
		signer = si.IssuerCN
	}
	return []Field{
		{Key: "sig_id", Value: "PKCS#7"},
		{Key: "signer", Value: signer},
		{Key: "sig_key", Value: modsig.ColonHex(si.Serial.Bytes())},
		{Key: "sig_hashalgo", Value: si.HashName},
		{Key: "signature", Value: modsig.ColonHex(si.SignatureBytes)},
	}
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// kmodSigner is kmod 30's "signer" for a DER issuer Name: the value of its
// first commonName attribute or, when there is none, of its last attribute
// (so "O=Org, OU=Unit" gives "Unit"), as raw string bytes up to the first
// NUL. ok is false when the Name does not parse or has no attribute.
func kmodSigner(issuer []byte) (signer string, ok bool) {
	var name asn1.RawValue
	if rest, err := asn1.Unmarshal(issuer, &name); err != nil || len(rest) > 0 || name.Tag != asn1.TagSequence {
		return "", false
	}
	var last []byte
	found := false
	for rdns := name.Bytes; len(rdns) > 0; {
		var set asn1.RawValue
		var err error
		if rdns, err = asn1.Unmarshal(rdns, &set); err != nil || set.Tag != asn1.TagSet {
			return "", false
		}
		for atvs := set.Bytes; len(atvs) > 0; {
			var atv asn1.RawValue
			if atvs, err = asn1.Unmarshal(atvs, &atv); err != nil || atv.Tag != asn1.TagSequence {
				return "", false
			}
			var oid asn1.ObjectIdentifier
			rest, err := asn1.Unmarshal(atv.Bytes, &oid)
			if err != nil {
				return "", false
			}
			var value asn1.RawValue
			if _, err := asn1.Unmarshal(rest, &value); err != nil {
				return "", false
			}
			last, found = value.Bytes, true
			if oid.Equal(oidCommonName) {
				return string(modfile.CBytes(last)), true
			}
		}
	}
	return string(modfile.CBytes(last)), found
}
