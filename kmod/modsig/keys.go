package modsig

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// ParsePrivateKey reads a private key from PEM: PKCS#1 ("RSA PRIVATE KEY"),
// PKCS#8 ("PRIVATE KEY") or SEC1 ("EC PRIVATE KEY"). Other PEM blocks, such
// as the certificate in the kernel's combined signing_key.pem, are skipped;
// the first key block is used. Raw DER in any of the three forms is
// accepted too. Encrypted keys are refused with a hint.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("private key: empty input")
	}
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		k, err := parseDERKey(data)
		if err != nil {
			return nil, fmt.Errorf("private key: not PEM, and not a DER PKCS#1, PKCS#8 or SEC1 key: %w", err)
		}
		return k, nil
	}
	var seen []string
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY":
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("private key: the PEM key is encrypted (ENCRYPTED PRIVATE KEY); decrypt it first, e.g. `openssl pkey -in key.pem -out plain.pem`")
		default:
			seen = append(seen, b.Type)
			continue
		}
		if _, ok := b.Headers["DEK-Info"]; ok {
			return nil, fmt.Errorf("private key: the PEM %s is encrypted (DEK-Info header); decrypt it first, e.g. `openssl pkey -in key.pem -out plain.pem`", b.Type)
		}
		var k any
		var err error
		switch b.Type {
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("private key: PEM %s: %w", b.Type, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key: PEM %s holds a %T, which cannot sign", b.Type, k)
		}
		return s, nil
	}
	if len(seen) == 0 {
		return nil, errors.New("private key: no PEM block found")
	}
	return nil, fmt.Errorf("private key: no RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY block (found %s)", strings.Join(seen, ", "))
}

func parseDERKey(der []byte) (crypto.Signer, error) {
	var errs []error
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("PKCS#8 key of type %T cannot sign", k)
	} else {
		errs = append(errs, err)
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errs[0]
}

// ParseCertificates reads one or more X.509 certificates from PEM
// ("CERTIFICATE" blocks; other blocks such as a private key are skipped) or
// from DER (one or more concatenated certificates).
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("certificate: empty input")
	}
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		certs, err := x509.ParseCertificates(data)
		if err != nil {
			return nil, fmt.Errorf("certificate: not PEM, and not DER: %w", err)
		}
		if len(certs) == 0 {
			return nil, errors.New("certificate: no certificate in DER input")
		}
		return certs, nil
	}
	var certs []*x509.Certificate
	var seen []string
	rest := data
	for n := 1; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" && b.Type != "X509 CERTIFICATE" {
			seen = append(seen, b.Type)
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate: PEM CERTIFICATE block %d: %w", n, err)
		}
		certs = append(certs, c)
		n++
	}
	if len(certs) == 0 {
		if len(seen) == 0 {
			return nil, errors.New("certificate: no PEM block found")
		}
		return nil, fmt.Errorf("certificate: no CERTIFICATE block (found %s)", strings.Join(seen, ", "))
	}
	return certs, nil
}

// KeyMatchesCertificate reports, as an error, whether cert does not hold
// key's public key.
func KeyMatchesCertificate(key crypto.Signer, cert *x509.Certificate) error {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		return fmt.Errorf("public key of type %T cannot be compared with the certificate", key.Public())
	}
	if !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("private key does not match certificate %q (serial %s): the public keys differ", cert.Subject.CommonName, FormatSerial(cert.SerialNumber))
	}
	return nil
}
