package modsig

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	_ "crypto/sha1" // registers SHA-1, which the kernel still accepts
	_ "crypto/sha3" // registers SHA3-*
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
)

// ErrNoSignature is returned by Verify for a nil Signature.
var ErrNoSignature = errors.New("module is not signed")

// Verify checks sig over content (the module without its signature) against
// the candidate certificates, as the kernel does with its trusted keyrings:
// certificates inside the CMS are ignored, signed attributes and embedded
// content are refused, the signer is found by issuer and serial number (or
// subject key identifier), and the content is hashed with the signer's
// digest. It returns the certificate of the first SignerInfo that matches
// one of certs and verifies. A SignerInfo that matches a certificate but
// does not verify is an error, as it is for the kernel.
func Verify(content []byte, sig *Signature, certs []*x509.Certificate) (*x509.Certificate, error) {
	if sig == nil {
		return nil, ErrNoSignature
	}
	if !sig.ContentType.Equal(oidData) {
		return nil, fmt.Errorf("CMS eContentType %s is not id-data", sig.ContentType)
	}
	if !sig.Detached {
		return nil, errors.New("PKCS#7 signature with non-detached data: the kernel rejects content embedded in a module signature")
	}
	if len(sig.Signers) == 0 {
		return nil, errors.New("signature has no SignerInfo")
	}
	for i, si := range sig.Signers {
		if si.HasSignedAttrs {
			return nil, fmt.Errorf("invalid module signature (has authattrs): SignerInfo %d carries signed attributes, which the kernel rejects; sign with -noattr / sign-file", i)
		}
	}
	digests := map[crypto.Hash][]byte{}
	for _, si := range sig.Signers {
		cert := findCert(si, certs)
		if cert == nil {
			continue
		}
		if err := checkHash(si); err != nil {
			return nil, err
		}
		d, ok := digests[si.Hash]
		if !ok {
			h := si.Hash.New()
			h.Write(content)
			d = h.Sum(nil)
			digests[si.Hash] = d
		}
		if err := verifyOne(si, cert, d); err != nil {
			return nil, err
		}
		return cert, nil
	}
	si := sig.Signers[0]
	return nil, fmt.Errorf("no certificate matches signer (%s)", describeSigner(si))
}

// describeSigner names a SignerInfo's identifier: "issuer CN=x, serial 01:02".
func describeSigner(si SignerInfo) string {
	if si.SubjectKeyID != nil {
		return fmt.Sprintf("subject key id %X", si.SubjectKeyID)
	}
	return fmt.Sprintf("issuer CN=%s, serial %s", si.IssuerCN, FormatSerial(si.Serial))
}

func findCert(si SignerInfo, certs []*x509.Certificate) *x509.Certificate {
	for _, c := range certs {
		if c == nil {
			continue
		}
		if si.SubjectKeyID != nil {
			if len(c.SubjectKeyId) > 0 && bytes.Equal(c.SubjectKeyId, si.SubjectKeyID) {
				return c
			}
			continue
		}
		if si.Serial != nil && c.SerialNumber != nil && si.Serial.Cmp(c.SerialNumber) == 0 && bytes.Equal(nameContent(c.RawIssuer), nameContent(si.IssuerRaw)) {
			return c
		}
	}
	return nil
}

// nameContent is the content of an encoded Name without its header: the
// bytes the kernel compares (asymmetric_key_generate_id over the issuer's
// value in both the certificate and the SignerInfo).
func nameContent(raw []byte) []byte {
	e, _, err := readElement(raw, 0)
	if err != nil {
		return raw
	}
	return e.content
}

func checkHash(si SignerInfo) error {
	switch si.Hash {
	case crypto.MD4, crypto.MD5:
		return fmt.Errorf("digest %s is not accepted by the kernel", si.HashName)
	}
	if si.Hash == 0 || !si.Hash.Available() {
		return fmt.Errorf("digest %s is not supported", si.HashName)
	}
	return nil
}

func verifyOne(si SignerInfo, cert *x509.Certificate, digest []byte) error {
	switch si.KeyAlgorithm {
	case "rsa":
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("signature algorithm %s does not fit the certificate's %s key", si.SignatureAlgorithm, cert.PublicKeyAlgorithm)
		}
		if err := rsa.VerifyPKCS1v15(pub, si.Hash, digest, si.SignatureBytes); err != nil {
			return errBadSignature
		}
	case "ecdsa":
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		if !ok {
			return fmt.Errorf("signature algorithm %s does not fit the certificate's %s key", si.SignatureAlgorithm, cert.PublicKeyAlgorithm)
		}
		if !ecdsa.VerifyASN1(pub, digest, si.SignatureBytes) {
			return errBadSignature
		}
	default:
		return fmt.Errorf("signature algorithm %s is not supported", si.SignatureAlgorithm)
	}
	return nil
}

var errBadSignature = errors.New("signature does not verify (content modified or wrong key)")

// IsBadSignature reports whether err says the signature did not verify
// cryptographically (as opposed to a missing certificate or a refused
// format).
func IsBadSignature(err error) bool { return errors.Is(err, errBadSignature) }

// FormatSerial formats a serial number as modinfo's sig_key does: the
// big-endian magnitude bytes (the sign is dropped, as BN_bn2bin does) in
// upper-case hex joined by colons.
func FormatSerial(n *big.Int) string {
	if n == nil {
		return ""
	}
	return ColonHex(n.Bytes())
}

// ColonHex formats b as upper-case hex bytes joined by colons ("4E:0A:D1"),
// as modinfo prints sig_key and signature.
func ColonHex(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	const digits = "0123456789ABCDEF"
	out := make([]byte, 3*len(b)-1)
	for i, x := range b {
		j := 3 * i
		if i > 0 {
			out[j-1] = ':'
		}
		out[j], out[j+1] = digits[x>>4], digits[x&0xf]
	}
	return string(out)
}
