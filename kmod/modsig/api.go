// Package modsig reads and writes the signature the kernel expects appended
// to a module: a detached PKCS#7/CMS SignedData, a 12-byte trailer struct and
// the "~Module signature appended~\n" magic.
package modsig

import (
	"crypto"
	"crypto/x509"
	"errors"
	"math/big"
)

// Magic ends every signed module.
const Magic = "~Module signature appended~\n"

// Signature is a parsed module signature.
type Signature struct {
	// Raw is the DER CMS blob exactly as appended.
	Raw []byte
	// Signers holds every SignerInfo; modinfo reports the first.
	Signers []SignerInfo
}

// SignerInfo is one CMS SignerInfo.
type SignerInfo struct {
	Version int
	// IssuerRaw is the DER of the issuer Name (empty when identified by SKID).
	IssuerRaw []byte
	// IssuerCN is the issuer's commonName: modinfo's "signer".
	IssuerCN string
	Serial   *big.Int
	// SubjectKeyID is set when the signer is identified by key id (sign-file -k).
	SubjectKeyID []byte
	Hash         crypto.Hash
	// HashName is the digest name as modinfo prints it (sha256, ...).
	HashName string
	// KeyAlgorithm is "rsa" or "ecdsa".
	KeyAlgorithm   string
	SignatureBytes []byte
	HasSignedAttrs bool
}

// ErrNotImplemented marks a stub being filled in.
var ErrNotImplemented = errors.New("not implemented")

var _ = x509.Certificate{}
