package modsig

import (
	"encoding/asn1"
	"errors"
	"fmt"
)

// maxSigners bounds the SignerInfos Parse accepts; real modules carry one
// (two with dual-signing scripts).
const maxSigners = 64

// Parse decodes a CMS ContentInfo holding a SignedData, as appended to a
// module. It accepts what the kernel's PKCS#7 parser accepts (BER or DER,
// SignedData/SignerInfo v1 or v3, issuerAndSerialNumber or
// subjectKeyIdentifier) and records, rather than rejects, what the kernel
// refuses at verification time (signed attributes, embedded content,
// unknown algorithms). The returned Signature aliases der.
func Parse(der []byte) (*Signature, error) {
	sig, err := parse(der)
	if err != nil {
		return nil, fmt.Errorf("signature CMS: %w", err)
	}
	return sig, nil
}

func parse(der []byte) (*Signature, error) {
	if len(der) == 0 {
		return nil, errors.New("empty")
	}
	ci, rest, err := readElement(der, 0)
	if err != nil {
		return nil, fmt.Errorf("ContentInfo: %w", err)
	}
	if !ci.is(classUniversal, tagSequence, true) {
		return nil, fmt.Errorf("ContentInfo: got %s, want SEQUENCE", ci.describe())
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after ContentInfo", len(rest))
	}
	sig := &Signature{Raw: der}

	r := newReader(ci, 0, "ContentInfo")
	ct, err := r.expect("contentType", classUniversal, tagOID, false)
	if err != nil {
		return nil, err
	}
	oid, err := parseOID(ct.content)
	if err != nil {
		return nil, fmt.Errorf("ContentInfo: contentType: %w", err)
	}
	if !oid.Equal(oidSignedData) {
		return nil, fmt.Errorf("ContentInfo: contentType %s is not signedData", oid)
	}
	wrap, err := r.expect("content", classContext, 0, true)
	if err != nil {
		return nil, err
	}
	wr := newReader(wrap, r.depth, "ContentInfo content")
	sd, err := wr.expect("SignedData", classUniversal, tagSequence, true)
	if err != nil {
		return nil, err
	}
	if !wr.empty() {
		return nil, errors.New("ContentInfo content: data after SignedData")
	}

	s := newReader(sd, wr.depth, "SignedData")
	v, err := s.expect("version", classUniversal, tagInteger, false)
	if err != nil {
		return nil, err
	}
	if sig.Version, err = parseInt(v); err != nil {
		return nil, fmt.Errorf("SignedData: version: %w", err)
	}

	das, err := s.expect("digestAlgorithms", classUniversal, tagSet, true)
	if err != nil {
		return nil, err
	}
	dr := newReader(das, s.depth, "SignedData digestAlgorithms")
	for !dr.empty() {
		alg, err := dr.expect("AlgorithmIdentifier", classUniversal, tagSequence, true)
		if err != nil {
			return nil, err
		}
		a, err := algorithmOID(alg, dr.depth, "SignedData digestAlgorithms")
		if err != nil {
			return nil, err
		}
		_, name := digestByOID(a)
		if len(sig.DigestAlgorithms) < maxSigners {
			sig.DigestAlgorithms = append(sig.DigestAlgorithms, name)
		}
	}

	eci, err := s.expect("encapContentInfo", classUniversal, tagSequence, true)
	if err != nil {
		return nil, err
	}
	er := newReader(eci, s.depth, "encapContentInfo")
	ect, err := er.expect("eContentType", classUniversal, tagOID, false)
	if err != nil {
		return nil, err
	}
	if sig.ContentType, err = parseOID(ect.content); err != nil {
		return nil, fmt.Errorf("encapContentInfo: eContentType: %w", err)
	}
	sig.Detached = true
	if !er.empty() {
		if _, err := er.expect("eContent", classContext, 0, true); err != nil {
			return nil, err
		}
		sig.Detached = false
		if !er.empty() {
			return nil, errors.New("encapContentInfo: data after eContent")
		}
	}

	// certificates [0] IMPLICIT, crls [1] IMPLICIT, then signerInfos SET.
	next, err := s.next("signerInfos")
	if err != nil {
		return nil, err
	}
	if next.class == classContext && next.tag == 0 {
		sig.HasCertificates = true
		if next, err = s.next("signerInfos"); err != nil {
			return nil, err
		}
	}
	if next.class == classContext && next.tag == 1 {
		sig.HasCRLs = true
		if next, err = s.next("signerInfos"); err != nil {
			return nil, err
		}
	}
	if !next.is(classUniversal, tagSet, true) {
		return nil, fmt.Errorf("SignedData: signerInfos: got %s, want SET", next.describe())
	}
	if !s.empty() {
		return nil, errors.New("SignedData: data after signerInfos")
	}
	sr := newReader(next, s.depth, "signerInfos")
	for !sr.empty() {
		if len(sig.Signers) == maxSigners {
			return nil, fmt.Errorf("more than %d SignerInfos", maxSigners)
		}
		e, err := sr.expect("SignerInfo", classUniversal, tagSequence, true)
		if err != nil {
			return nil, err
		}
		si, err := parseSignerInfo(e, sr.depth, len(sig.Signers))
		if err != nil {
			return nil, err
		}
		sig.Signers = append(sig.Signers, si)
	}
	if len(sig.Signers) == 0 {
		return nil, errors.New("SignedData has no SignerInfo")
	}
	return sig, nil
}

// algorithmOID returns the algorithm of an AlgorithmIdentifier, whose
// parameters are ignored.
func algorithmOID(alg element, depth int, what string) (asn1.ObjectIdentifier, error) {
	ar := newReader(alg, depth, what+" AlgorithmIdentifier")
	o, err := ar.expect("algorithm", classUniversal, tagOID, false)
	if err != nil {
		return nil, err
	}
	oid, err := parseOID(o.content)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return oid, nil
}

func parseSignerInfo(e element, depth, index int) (SignerInfo, error) {
	var si SignerInfo
	r := newReader(e, depth, fmt.Sprintf("SignerInfo %d", index))
	v, err := r.expect("version", classUniversal, tagInteger, false)
	if err != nil {
		return si, err
	}
	if si.Version, err = parseInt(v); err != nil {
		return si, fmt.Errorf("%s: version: %w", r.what, err)
	}

	sid, err := r.next("sid")
	if err != nil {
		return si, err
	}
	switch {
	case sid.is(classUniversal, tagSequence, true):
		ir := newReader(sid, r.depth, r.what+" issuerAndSerialNumber")
		issuer, err := ir.expect("issuer", classUniversal, tagSequence, true)
		if err != nil {
			return si, err
		}
		si.IssuerRaw = issuer.full
		if si.IssuerCN, err = commonName(issuer, ir.depth); err != nil {
			return si, fmt.Errorf("%s: %w", r.what, err)
		}
		sn, err := ir.expect("serialNumber", classUniversal, tagInteger, false)
		if err != nil {
			return si, err
		}
		if len(sn.content) > 128 {
			return si, fmt.Errorf("%s: serialNumber of %d bytes too long", r.what, len(sn.content))
		}
		if si.Serial, err = parseBigInt(sn); err != nil {
			return si, fmt.Errorf("%s: serialNumber: %w", r.what, err)
		}
		if !ir.empty() {
			return si, fmt.Errorf("%s: data after serialNumber", ir.what)
		}
	case sid.class == classContext && sid.tag == 0:
		if si.SubjectKeyID, err = octets(sid, r.depth); err != nil {
			return si, fmt.Errorf("%s: subjectKeyIdentifier: %w", r.what, err)
		}
	default:
		return si, fmt.Errorf("%s: sid: got %s, want issuerAndSerialNumber or [0] subjectKeyIdentifier", r.what, sid.describe())
	}

	da, err := r.expect("digestAlgorithm", classUniversal, tagSequence, true)
	if err != nil {
		return si, err
	}
	if si.DigestOID, err = algorithmOID(da, r.depth, r.what+" digestAlgorithm"); err != nil {
		return si, err
	}
	si.Hash, si.HashName = digestByOID(si.DigestOID)

	next, err := r.next("signatureAlgorithm")
	if err != nil {
		return si, err
	}
	if next.class == classContext && next.tag == 0 {
		si.HasSignedAttrs = true
		if next, err = r.next("signatureAlgorithm"); err != nil {
			return si, err
		}
	}
	if !next.is(classUniversal, tagSequence, true) {
		return si, fmt.Errorf("%s: signatureAlgorithm: got %s, want SEQUENCE", r.what, next.describe())
	}
	if si.SignatureOID, err = algorithmOID(next, r.depth, r.what+" signatureAlgorithm"); err != nil {
		return si, err
	}
	alg, _ := sigAlgByOID(si.SignatureOID)
	si.KeyAlgorithm, si.SignatureAlgorithm = alg.key, alg.name

	sv, err := r.next("signature")
	if err != nil {
		return si, err
	}
	if sv.class != classUniversal || sv.tag != tagOctetString {
		return si, fmt.Errorf("%s: signature: got %s, want OCTET STRING", r.what, sv.describe())
	}
	if si.SignatureBytes, err = octets(sv, r.depth); err != nil {
		return si, fmt.Errorf("%s: signature: %w", r.what, err)
	}
	if !r.empty() {
		ua, err := r.next("unsignedAttrs")
		if err != nil {
			return si, err
		}
		if ua.class != classContext || ua.tag != 1 {
			return si, fmt.Errorf("%s: unexpected %s after signature", r.what, ua.describe())
		}
		si.HasUnsignedAttrs = true
		if !r.empty() {
			return si, fmt.Errorf("%s: data after unsignedAttrs", r.what)
		}
	}
	return si, nil
}
