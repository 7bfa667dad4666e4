package modsig_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os/exec"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

func TestParsePrivateKey(t *testing.T) {
	rk := sigtest.GoKey(t, "rsa:2048")
	ek := sigtest.GoKey(t, "ec:P-256")
	rsaKey := rk.Signer.(*rsa.PrivateKey)
	ecKey := ek.Signer.(*ecdsa.PrivateKey)
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	pkcs1 := x509.MarshalPKCS1PrivateKey(rsaKey)
	enc := func(typ string, b []byte, h map[string]string) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b, Headers: h})
	}
	ok := []struct {
		name string
		in   []byte
		pub  any
	}{
		{"PKCS#1", enc("RSA PRIVATE KEY", pkcs1, nil), rsaKey.Public()},
		{"PKCS#8", enc("PRIVATE KEY", pkcs8, nil), rsaKey.Public()},
		{"SEC1", enc("EC PRIVATE KEY", sec1, nil), ecKey.Public()},
		{"openssl PKCS#8 EC", sigtest.OpenSSLKey(t, "ec:P-384").KeyPEM, sigtest.OpenSSLKey(t, "ec:P-384").Cert.PublicKey},
		{"kernel-style key+cert file", append(bytes.Clone(rk.CertPEM), rk.KeyPEM...), rsaKey.Public()},
		{"DER PKCS#8", pkcs8, rsaKey.Public()},
		{"DER PKCS#1", pkcs1, rsaKey.Public()},
		{"DER SEC1", sec1, ecKey.Public()},
	}
	for _, tc := range ok {
		k, err := modsig.ParsePrivateKey(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.pub) {
			t.Errorf("%s: wrong key", tc.name)
		}
	}
	bad := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "private key: empty input"},
		{"garbage", []byte("hello"), "private key: not PEM, and not a DER PKCS#1, PKCS#8 or SEC1 key"},
		{"cert only", rk.CertPEM, "private key: no RSA PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY block (found CERTIFICATE)"},
		{"broken PEM", []byte("-----BEGIN PRIVATE KEY-----\n!!\n"), "private key: no PEM block found"},
		{"bad PKCS#1", enc("RSA PRIVATE KEY", []byte{0x30, 0}, nil), "private key: PEM RSA PRIVATE KEY: "},
		{"legacy encrypted", enc("RSA PRIVATE KEY", pkcs1, map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00"}), "private key: the PEM RSA PRIVATE KEY is encrypted (DEK-Info header)"},
		{"PKCS#8 encrypted", enc("ENCRYPTED PRIVATE KEY", []byte{0x30, 0}, nil), "private key: the PEM key is encrypted (ENCRYPTED PRIVATE KEY)"},
	}
	for _, tc := range bad {
		if _, err := modsig.ParsePrivateKey(tc.in); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A real encrypted key from openssl.
	openssl := fixture.Tool(t, "openssl")
	cmd := exec.Command(openssl, "pkey", "-in", rk.KeyPath, "-aes256", "-passout", "pass:secret")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := modsig.ParsePrivateKey(out); err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Errorf("openssl encrypted: %v", err)
	}
}

func TestParseCertificates(t *testing.T) {
	a, b := sigtest.GoKey(t, "rsa:2048"), sigtest.OpenSSLKey(t, "rsa:2048")
	for _, tc := range []struct {
		name string
		in   []byte
		n    int
	}{
		{"PEM", a.CertPEM, 1},
		{"two PEM", append(bytes.Clone(a.CertPEM), b.CertPEM...), 2},
		{"PEM with key", append(bytes.Clone(b.KeyPEM), b.CertPEM...), 1},
		{"DER", a.Cert.Raw, 1},
		{"two DER", append(bytes.Clone(a.Cert.Raw), b.Cert.Raw...), 2},
	} {
		certs, err := modsig.ParseCertificates(tc.in)
		if err != nil || len(certs) != tc.n {
			t.Errorf("%s: %d certs, %v", tc.name, len(certs), err)
		}
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", []byte("\n"), "certificate: empty input"},
		{"garbage", []byte("nope"), "certificate: not PEM, and not DER: x509:"},
		{"key only", a.KeyPEM, "certificate: no CERTIFICATE block (found PRIVATE KEY)"},
		{"bad block", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 1, 0}}), "certificate: PEM CERTIFICATE block 1: x509:"},
	} {
		if _, err := modsig.ParseCertificates(tc.in); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestKeyMatchesCertificate(t *testing.T) {
	a, b := sigtest.GoKey(t, "rsa:2048"), sigtest.OpenSSLKey(t, "rsa:2048")
	if err := modsig.KeyMatchesCertificate(a.Signer, a.Cert); err != nil {
		t.Error(err)
	}
	err := modsig.KeyMatchesCertificate(a.Signer, b.Cert)
	if err == nil || !strings.HasPrefix(err.Error(), `private key does not match certificate "kmodctl test rsa:2048" (serial `) {
		t.Errorf("mismatch: %v", err)
	}
}
