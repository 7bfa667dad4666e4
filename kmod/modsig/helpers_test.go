package modsig_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
)

func certsOf(keys ...*sigtest.Key) []*x509.Certificate {
	var out []*x509.Certificate
	for _, k := range keys {
		out = append(out, k.Cert)
	}
	return out
}

// edKey is an Ed25519 key with a certificate: a type sign-file's kernel
// does not verify for modules and Sign refuses.
func edKey(t *testing.T) *sigtest.Key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ed"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &sigtest.Key{Signer: priv, Cert: c}
}
