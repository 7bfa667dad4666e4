package kmod

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// ErrNotSigned is returned when a module carries no signature.
var ErrNotSigned = modsig.ErrNoSignature

// VerifyResult describes a module's signature.
type VerifyResult struct {
	// Signer is the issuer commonName of the first SignerInfo (modinfo's
	// "signer"), Serial its certificate serial and SigKey the serial as
	// modinfo's sig_key prints it; HashName is modinfo's sig_hashalgo.
	Signer   string
	Serial   *big.Int
	SigKey   string
	HashName string
	// KeyAlgorithm is "rsa" or "ecdsa".
	KeyAlgorithm string
	// Certificate is the certificate that verified the signature (nil
	// when verification failed).
	Certificate *x509.Certificate
	// Compression is the file's compression.
	Compression compress.Format
	// ContentSize is the size of the signed ELF content (uncompressed).
	ContentSize int
	Signature   *modsig.Signature
}

// VerifyBytes checks the signature of a module image (plain or
// compressed) against certs, the keys the target kernel trusts, as the
// kernel does (see modsig.Verify). An unsigned module gives ErrNotSigned.
// When a signature is present but does not verify, the result still
// describes it and err says why it failed.
func VerifyBytes(data []byte, certs []*x509.Certificate) (*VerifyResult, error) {
	res := &VerifyResult{Compression: compress.Detect(data)}
	raw := data
	if res.Compression != compress.None {
		var err error
		if raw, err = compress.Decompress(data, res.Compression, DefaultMaxModuleSize); err != nil {
			return nil, fmt.Errorf("decompress: %w", err)
		}
	}
	content, sig, err := modsig.Split(raw)
	if err != nil {
		return nil, err
	}
	if sig == nil {
		if bytes.HasSuffix(raw, []byte(modsig.Magic[:len(modsig.Magic)-1])) {
			return nil, fmt.Errorf("%w (it ends with the signature magic without its final newline: truncated or converted as text?)", ErrNotSigned)
		}
		return nil, ErrNotSigned
	}
	res.Signature = sig
	res.ContentSize = len(content)
	si := sig.Signers[0]
	res.Signer, res.Serial, res.SigKey = si.IssuerCN, si.Serial, modsig.FormatSerial(si.Serial)
	res.HashName, res.KeyAlgorithm = si.HashName, si.KeyAlgorithm
	cert, err := modsig.Verify(content, sig, certs)
	if err != nil {
		return res, err
	}
	res.Certificate = cert
	return res, nil
}

// VerifyFile reads the module at path and checks it like VerifyBytes.
// Errors name the file.
func VerifyFile(path string, certs []*x509.Certificate) (*VerifyResult, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileError("verify", path, err)
	}
	res, err := VerifyBytes(data, certs)
	if err != nil {
		return res, fileError("verify", path, err)
	}
	return res, nil
}

// fileError is err of op on the file at path, naming path once: an
// *fs.PathError about path itself (os.ReadFile's, say) gives up its copy
// of the name; errors.Is still sees its errno.
func fileError(op, path string, err error) error {
	if pe, ok := err.(*fs.PathError); ok && filepath.Clean(pe.Path) == filepath.Clean(path) {
		err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}
