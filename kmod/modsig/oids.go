package modsig

import (
	"crypto"
	"encoding/asn1"
)

var (
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}

	oidRSAEncryption = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidRSAPSS        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 10}
	oidECPublicKey   = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
)

// digestAlg is a digest algorithm as the CMS names it.
type digestAlg struct {
	oid  asn1.ObjectIdentifier
	hash crypto.Hash // 0 when Go has no implementation
	// name is what modinfo prints (kmod's pkey_hash_algo names where kmod
	// knows the hash, OpenSSL's short name otherwise).
	name string
}

var digestAlgs = []digestAlg{
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 4}, crypto.MD4, "md4"},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 5}, crypto.MD5, "md5"},
	{asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}, crypto.SHA1, "sha1"},
	{asn1.ObjectIdentifier{1, 3, 36, 3, 2, 1}, crypto.RIPEMD160, "rmd160"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}, crypto.SHA256, "sha256"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, crypto.SHA384, "sha384"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}, crypto.SHA512, "sha512"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 4}, crypto.SHA224, "sha224"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 5}, crypto.SHA512_224, "sha512-224"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 6}, crypto.SHA512_256, "sha512-256"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 7}, crypto.SHA3_224, "sha3-224"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 8}, crypto.SHA3_256, "sha3-256"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 9}, crypto.SHA3_384, "sha3-384"},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 10}, crypto.SHA3_512, "sha3-512"},
	{asn1.ObjectIdentifier{1, 2, 156, 10197, 1, 401}, 0, "sm3"},
	{asn1.ObjectIdentifier{1, 2, 643, 7, 1, 1, 2, 2}, 0, "streebog256"},
	{asn1.ObjectIdentifier{1, 2, 643, 7, 1, 1, 2, 3}, 0, "streebog512"},
}

func digestByOID(oid asn1.ObjectIdentifier) (crypto.Hash, string) {
	for _, d := range digestAlgs {
		if d.oid.Equal(oid) {
			return d.hash, d.name
		}
	}
	return 0, oid.String()
}

func digestByHash(h crypto.Hash) (digestAlg, bool) {
	for _, d := range digestAlgs {
		if d.hash == h && h != 0 {
			return d, true
		}
	}
	return digestAlg{}, false
}

// HashName is the name modinfo prints for h ("sha256"), or h.String() for a
// hash the CMS tables do not know.
func HashName(h crypto.Hash) string {
	if d, ok := digestByHash(h); ok {
		return d.name
	}
	return h.String()
}

// sigAlg is a CMS SignerInfo signatureAlgorithm.
type sigAlg struct {
	oid  asn1.ObjectIdentifier
	key  string      // "rsa", "ecdsa", ...
	hash crypto.Hash // digest the OID names, 0 for rsaEncryption
	name string
}

var sigAlgs = []sigAlg{
	{oidRSAEncryption, "rsa", 0, "rsaEncryption"},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}, "rsa", crypto.SHA1, "sha1WithRSAEncryption"},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}, "rsa", crypto.SHA256, "sha256WithRSAEncryption"},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}, "rsa", crypto.SHA384, "sha384WithRSAEncryption"},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}, "rsa", crypto.SHA512, "sha512WithRSAEncryption"},
	{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 14}, "rsa", crypto.SHA224, "sha224WithRSAEncryption"},
	{oidRSAPSS, "rsa-pss", 0, "RSASSA-PSS"},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}, "ecdsa", crypto.SHA1, "ecdsa-with-SHA1"},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 1}, "ecdsa", crypto.SHA224, "ecdsa-with-SHA224"},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}, "ecdsa", crypto.SHA256, "ecdsa-with-SHA256"},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}, "ecdsa", crypto.SHA384, "ecdsa-with-SHA384"},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}, "ecdsa", crypto.SHA512, "ecdsa-with-SHA512"},
	{oidECPublicKey, "ecdsa", 0, "id-ecPublicKey"},
	{asn1.ObjectIdentifier{1, 3, 101, 112}, "ed25519", 0, "Ed25519"},
	{asn1.ObjectIdentifier{1, 2, 156, 10197, 1, 501}, "sm2", 0, "SM2-with-SM3"},
	{asn1.ObjectIdentifier{1, 2, 643, 7, 1, 1, 1, 1}, "ecrdsa", 0, "gost2012PKey256"},
	{asn1.ObjectIdentifier{1, 2, 643, 7, 1, 1, 1, 2}, "ecrdsa", 0, "gost2012PKey512"},
}

func sigAlgByOID(oid asn1.ObjectIdentifier) (sigAlg, bool) {
	for _, a := range sigAlgs {
		if a.oid.Equal(oid) {
			return a, true
		}
	}
	return sigAlg{oid: oid, name: oid.String()}, false
}

// ecdsaSigAlg returns the ecdsa-with-SHA* algorithm for h.
func ecdsaSigAlg(h crypto.Hash) (sigAlg, bool) {
	for _, a := range sigAlgs {
		if a.key == "ecdsa" && a.hash == h && h != 0 {
			return a, true
		}
	}
	return sigAlg{}, false
}
