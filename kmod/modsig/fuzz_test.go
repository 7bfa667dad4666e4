package modsig_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// FuzzSplit feeds the trailer and CMS parsers (and Verify on whatever
// parses) hostile module tails. Seeds: the tails of Debian-signed modules
// from the fixtures when present, and our own RSA and ECDSA signatures.
func FuzzSplit(f *testing.F) {
	content := []byte("\x7fELF\x02\x01\x01 fake module body")
	var certs []*x509.Certificate
	for _, key := range fuzzKeys(f) {
		cert := selfSigned(f, key)
		certs = append(certs, cert)
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA512} {
			tail, err := modsig.Sign(content, key, cert, h)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(append(bytes.Clone(content), tail...))
			// The bare CMS, for Parse, in DER and in BER with
			// indefinite lengths.
			cms := tail[:len(tail)-modsig.TrailerSize-len(modsig.Magic)]
			f.Add(bytes.Clone(cms))
			f.Add(toBER(f, cms))
		}
	}
	// Real Debian signatures, behind one byte of "module".
	mods, _ := filepath.Glob(filepath.Join(fixture.Dir(), "kernel/root/lib/modules/*/kernel/drivers/net/*.ko"))
	for i, p := range mods {
		if i == 4 {
			break
		}
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		c, sig, err := modsig.Split(data)
		if err != nil || sig == nil {
			continue
		}
		f.Add(append([]byte{c[0]}, data[len(c):]...))
		f.Add(bytes.Clone(sig.Raw))
	}
	f.Add([]byte(modsig.Magic))
	f.Add(append(make([]byte, 13), modsig.Magic...))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, sig, err := modsig.Split(data)
		if err != nil {
			if sig != nil {
				t.Fatal("error with a signature")
			}
			return
		}
		if sig == nil {
			if !bytes.Equal(c, data) {
				t.Fatal("unsigned content differs from input")
			}
		} else {
			if len(c)+len(sig.Raw)+modsig.TrailerSize+len(modsig.Magic) != len(data) || !bytes.HasPrefix(data, c) || len(c) == 0 {
				t.Fatalf("split sizes: content %d + sig %d != %d", len(c), len(sig.Raw), len(data))
			}
			if len(sig.Signers) == 0 {
				t.Fatal("signature without signers")
			}
			for _, si := range sig.Signers {
				if si.HashName == "" {
					t.Fatal("empty hash name")
				}
				_ = modsig.FormatSerial(si.Serial)
			}
			_, _ = modsig.Verify(c, sig, certs)
		}
		// The CMS parser on its own, on the raw input.
		if s, err := modsig.Parse(data); err == nil {
			_, _ = modsig.Verify(nil, s, certs)
		}
	})
}

func fuzzKeys(f *testing.F) []crypto.Signer {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	e256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	e384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	return []crypto.Signer{r, e256, e384}
}

func selfSigned(f *testing.F, key crypto.Signer) *x509.Certificate {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0x1234), Subject: pkix.Name{CommonName: "fuzz"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		f.Fatal(err)
	}
	return c
}

// toBER re-encodes DER with indefinite lengths on every constructed
// element, as streaming BER encoders do.
func toBER(tb testing.TB, der []byte) []byte {
	var out []byte
	for len(der) > 0 {
		id := der[0]
		l := int(der[1])
		hdr := 2
		if l&0x80 != 0 {
			n := l & 0x7f
			l = 0
			for i := 0; i < n; i++ {
				l = l<<8 | int(der[2+i])
			}
			hdr += n
		}
		body := der[hdr : hdr+l]
		if id&0x20 != 0 {
			out = append(out, id, 0x80)
			out = append(out, toBER(tb, body)...)
			out = append(out, 0, 0)
		} else {
			out = append(out, der[:hdr+l]...)
		}
		der = der[hdr+l:]
	}
	return out
}
