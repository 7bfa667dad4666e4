// Package modsig reads and writes the signature the kernel expects appended
// to a module: a detached PKCS#7/CMS SignedData, a 12-byte trailer struct and
// the "~Module signature appended~\n" magic.
//
// Split and Parse accept what the kernel's parser accepts and report what it
// would reject (signed attributes, embedded content) in fields that Verify
// checks. Sign produces, for RSA keys, exactly the bytes the kernel's
// scripts/sign-file appends.
package modsig

import (
	"crypto"
	"encoding/asn1"
	"math/big"
)

// Magic ends every signed module.
const Magic = "~Module signature appended~\n"

// TrailerSize is the size of struct module_signature that precedes Magic.
const TrailerSize = 12

// idPKCS7 is module_signature.id_type for a PKCS#7 message.
const idPKCS7 = 2

// Signature is a parsed module signature.
type Signature struct {
	// Raw is the DER CMS blob exactly as appended. It aliases the input of
	// Split/Parse.
	Raw []byte
	// Signers holds every SignerInfo; modinfo reports the first.
	Signers []SignerInfo

	// Version is the SignedData version (1 from sign-file, 3 with -k).
	Version int
	// DigestAlgorithms lists SignedData.digestAlgorithms by name.
	DigestAlgorithms []string
	// ContentType is encapContentInfo.eContentType (id-data for modules).
	ContentType asn1.ObjectIdentifier
	// Detached is false when the CMS embeds content, which the kernel
	// rejects ("PKCS#7 signature with non-detached data").
	Detached bool
	// HasCertificates and HasCRLs report the optional SignedData sets; the
	// kernel never uses certificates from the message, and neither does
	// Verify.
	HasCertificates, HasCRLs bool
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
	// Hash is the digest algorithm; 0 when Go has no implementation of it.
	Hash crypto.Hash
	// HashName is the digest name as modinfo prints it (sha256, ...), or the
	// dotted OID of a digest this package does not know.
	HashName string
	// DigestOID is the digestAlgorithm OID.
	DigestOID asn1.ObjectIdentifier
	// KeyAlgorithm is "rsa" or "ecdsa" (others: "rsa-pss", "sm2", "ecrdsa",
	// "ed25519", or "" when the OID is unknown).
	KeyAlgorithm string
	// SignatureAlgorithm names signatureAlgorithm ("rsaEncryption",
	// "ecdsa-with-SHA256", ... or the dotted OID); SignatureOID is the OID.
	SignatureAlgorithm string
	SignatureOID       asn1.ObjectIdentifier
	SignatureBytes     []byte
	// HasSignedAttrs: the kernel rejects such module signatures ("has
	// authattrs").
	HasSignedAttrs   bool
	HasUnsignedAttrs bool
}
