package modsig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha256" // registers SHA-224/256
	_ "crypto/sha512" // registers SHA-384/512
	"crypto/x509"
	"errors"
	"fmt"
	"io"
)

// Signer produces module signatures with one key, certificate and hash.
// Everything that does not depend on the module (the DER around the
// signature value) is computed once by NewSigner. A Signer is safe for
// concurrent use.
type Signer struct {
	key  crypto.Signer
	hash crypto.Hash
	rand io.Reader

	// DER pieces of the CMS, all fixed for the key and certificate.
	digestAlg []byte // SEQUENCE { OID hash }
	sigAlg    []byte // SEQUENCE { OID rsaEncryption, NULL } / { ecdsa-with-SHA* }
	sid       []byte // issuerAndSerialNumber
	// sigLen is the signature size for RSA (the modulus size); ECDSA
	// signatures vary and are bounded by maxSigLen.
	sigLen, maxSigLen int
	maxSize           int
	// prefix is the whole CMS up to the signature value, when sigLen is
	// fixed.
	prefix []byte
}

var version1 = []byte{idInteger, 1, 1}

// CheckHash refuses a digest NewSigner does not sign with: SHA-256,
// SHA-384 and SHA-512 are the ones the kernel's module signing uses.
func CheckHash(hash crypto.Hash) error {
	switch hash {
	case crypto.SHA256, crypto.SHA384, crypto.SHA512:
		return nil
	}
	name := "0"
	if hash != 0 {
		name = HashName(hash)
	}
	return fmt.Errorf("hash %s is not supported for signing modules: use sha256, sha384 or sha512", name)
}

// NewSigner checks key, cert and hash and prepares a Signer. It accepts RSA
// keys (PKCS#1 v1.5 signatures, as sign-file makes) and ECDSA keys on P-256
// or P-384, with SHA-256, SHA-384 or SHA-512. The certificate identifies
// the signer by issuer and serial number, like sign-file without -k, and
// must hold key's public key.
func NewSigner(key crypto.Signer, cert *x509.Certificate, hash crypto.Hash) (*Signer, error) {
	if key == nil {
		return nil, errors.New("no signing key")
	}
	if cert == nil {
		return nil, errors.New("no signing certificate")
	}
	if err := CheckHash(hash); err != nil {
		return nil, err
	}
	if len(cert.RawIssuer) == 0 || cert.SerialNumber == nil {
		return nil, errors.New("certificate has no raw issuer or serial number (parse it from DER or PEM)")
	}
	if err := KeyMatchesCertificate(key, cert); err != nil {
		return nil, err
	}
	d, _ := digestByHash(hash)
	s := &Signer{key: key, hash: hash, rand: rand.Reader}
	s.digestAlg = tlv(idSequence, derOID(d.oid))

	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		if k, ok := key.(*rsa.PrivateKey); ok && k.Precomputed.Dp == nil {
			// Parsed keys come precomputed; keys built by hand do not,
			// and would pay for it on every signature.
			k.Precompute()
		}
		s.sigAlg = tlv(idSequence, derOID(oidRSAEncryption), []byte{idNull, 0})
		s.sigLen = pub.Size()
		s.maxSigLen = s.sigLen
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256(), elliptic.P384():
		default:
			return nil, fmt.Errorf("ECDSA curve %s is not supported: the kernel verifies P-256 and P-384", pub.Curve.Params().Name)
		}
		alg, _ := ecdsaSigAlg(hash)
		s.sigAlg = tlv(idSequence, derOID(alg.oid))
		// Ecdsa-Sig-Value: SEQUENCE of two INTEGERs of at most size+1
		// bytes each.
		n := (pub.Curve.Params().BitSize + 7) / 8
		i := headerLen(n+1) + n + 1
		s.maxSigLen = headerLen(2*i) + 2*i
	default:
		return nil, fmt.Errorf("%T keys are not supported for signing modules: use RSA or ECDSA (P-256, P-384)", pub)
	}

	serial, err := derInt(cert.SerialNumber)
	if err != nil {
		return nil, fmt.Errorf("certificate serial number: %w", err)
	}
	s.sid = tlv(idSequence, cert.RawIssuer, serial)
	if s.sigLen > 0 {
		s.prefix = s.appendCMSPrefix(nil, s.sigLen)
	}
	// Shorter signatures never need longer headers.
	s.maxSize = len(s.appendCMSPrefix(nil, s.maxSigLen)) + s.maxSigLen + TrailerSize + len(Magic)
	return s, nil
}

// Hash is the digest the Signer uses.
func (s *Signer) Hash() crypto.Hash { return s.hash }

// MaxSize bounds the number of bytes Append adds to a module: CMS, struct
// and magic.
func (s *Signer) MaxSize() int { return s.maxSize }

// appendCMSPrefix appends the CMS ContentInfo up to and including the
// header of the signature OCTET STRING, for a signature of sigLen bytes.
// The layout is byte for byte what OpenSSL's CMS_sign produces for
// sign-file (CMS_NOCERTS | CMS_BINARY | CMS_DETACHED, no attributes):
//
//	ContentInfo SEQUENCE {
//	  contentType signedData
//	  [0] SignedData SEQUENCE {
//	    version 1
//	    digestAlgorithms SET { SEQUENCE { hash } }        -- no NULL
//	    encapContentInfo SEQUENCE { id-data }              -- detached
//	    signerInfos SET { SignerInfo SEQUENCE {
//	      version 1
//	      issuerAndSerialNumber SEQUENCE { issuer, serial }
//	      digestAlgorithm SEQUENCE { hash }                -- no NULL
//	      signatureAlgorithm SEQUENCE { rsaEncryption, NULL }
//	                      or SEQUENCE { ecdsa-with-SHA* }  -- no params
//	      signature OCTET STRING } } } }
func (s *Signer) appendCMSPrefix(dst []byte, sigLen int) []byte {
	sigOctets := headerLen(sigLen) + sigLen
	siBody := len(version1) + len(s.sid) + len(s.digestAlg) + len(s.sigAlg) + sigOctets
	si := headerLen(siBody) + siBody
	sis := headerLen(si) + si
	digestAlgs := headerLen(len(s.digestAlg)) + len(s.digestAlg)
	eci := tlv(idSequence, derOID(oidData))
	sdBody := len(version1) + digestAlgs + len(eci) + sis
	sd := headerLen(sdBody) + sdBody
	ctx := headerLen(sd) + sd
	ct := derOID(oidSignedData)
	ciBody := len(ct) + ctx

	dst = appendHeader(dst, idSequence, ciBody)
	dst = append(dst, ct...)
	dst = appendHeader(dst, idContext0, sd)
	dst = appendHeader(dst, idSequence, sdBody)
	dst = append(dst, version1...)
	dst = appendHeader(dst, idSet, len(s.digestAlg))
	dst = append(dst, s.digestAlg...)
	dst = append(dst, eci...)
	dst = appendHeader(dst, idSet, si)
	dst = appendHeader(dst, idSequence, siBody)
	dst = append(dst, version1...)
	dst = append(dst, s.sid...)
	dst = append(dst, s.digestAlg...)
	dst = append(dst, s.sigAlg...)
	dst = appendHeader(dst, idOctetString, sigLen)
	return dst
}

// Digest hashes content with the Signer's hash.
func (s *Signer) Digest(content []byte) []byte {
	h := s.hash.New()
	h.Write(content)
	return h.Sum(nil)
}

// Append signs content and appends the signature block (CMS, struct and
// Magic) to dst, returning the extended slice. With dst = content[:len:cap]
// holding room for MaxSize more bytes, signing copies nothing.
func (s *Signer) Append(dst, content []byte) ([]byte, error) {
	raw, err := s.key.Sign(s.rand, s.Digest(content), s.hash)
	if err != nil {
		return dst, fmt.Errorf("sign: %w", err)
	}
	if s.sigLen > 0 && len(raw) != s.sigLen {
		return dst, fmt.Errorf("sign: signer returned %d bytes, want %d", len(raw), s.sigLen)
	}
	if len(raw) > s.maxSigLen {
		return dst, fmt.Errorf("sign: signer returned %d bytes, more than %d", len(raw), s.maxSigLen)
	}
	start := len(dst)
	if s.prefix != nil {
		dst = append(dst, s.prefix...)
	} else {
		dst = s.appendCMSPrefix(dst, len(raw))
	}
	dst = append(dst, raw...)
	return AppendTrailer(dst, len(dst)-start), nil
}

// Sign returns the signature block for content: the CMS, the 12-byte
// struct and Magic, to be appended to content.
func (s *Signer) Sign(content []byte) ([]byte, error) {
	return s.Append(make([]byte, 0, s.MaxSize()), content)
}

// Sign returns the bytes to append to content (an unsigned module) to sign
// it with key and cert using hash: the same bytes the kernel's
// `scripts/sign-file <hash> key cert module` appends for RSA keys.
func Sign(content []byte, key crypto.Signer, cert *x509.Certificate, hash crypto.Hash) ([]byte, error) {
	s, err := NewSigner(key, cert, hash)
	if err != nil {
		return nil, err
	}
	return s.Sign(content)
}
