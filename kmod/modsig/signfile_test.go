package modsig_test

import (
	"bytes"
	"crypto"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

var hashes = []struct {
	name string
	hash crypto.Hash
}{{"sha256", crypto.SHA256}, {"sha384", crypto.SHA384}, {"sha512", crypto.SHA512}}

// modules returns unsigned module contents: the test modules and some
// in-tree modules with their Debian signature stripped.
func modules(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, name := range []string{"kmodtest_base", "kmodtest_dep", "kmodtest_marker", "kmodtest_param", "kmodtest_unresolved"} {
		b, err := os.ReadFile(fixture.TestModule(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, sig, err := modsig.Split(b); err != nil || sig != nil {
			t.Fatalf("%s: test module is expected unsigned (sig %v, err %v)", name, sig != nil, err)
		}
		out[name] = b
	}
	for _, p := range sigtest.InTreeModules(t, 4) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = sigtest.Unsigned(t, b)
	}
	return out
}

// TestSignMatchesSignFile: our RSA signature block is byte-identical to what
// the kernel's sign-file appends, for OpenSSL- and Go-made keys and
// certificates, several hashes and several modules.
func TestSignMatchesSignFile(t *testing.T) {
	mods := modules(t)
	keys := map[string]*sigtest.Key{
		"openssl-rsa2048": sigtest.OpenSSLKey(t, "rsa:2048"),
		"openssl-rsa4096": sigtest.OpenSSLKey(t, "rsa:4096"),
		"go-rsa2048":      sigtest.GoKey(t, "rsa:2048"),
		"go-rsa3072":      sigtest.GoKey(t, "rsa:3072"),
	}
	n := 0
	for kname, k := range keys {
		for _, h := range hashes {
			for mname, content := range mods {
				if kname != "openssl-rsa2048" && h.name == "sha384" && !strings.HasPrefix(mname, "kmodtest_base") {
					continue // keep the matrix quick; full on one key
				}
				want := sigtest.SignFile(t, h.name, k, content)
				tail, err := modsig.Sign(content, k.Signer, k.Cert, h.hash)
				if err != nil {
					t.Fatalf("%s %s %s: %v", kname, h.name, mname, err)
				}
				got := append(append([]byte(nil), content...), tail...)
				if !bytes.Equal(got, want) {
					i := 0
					for i < len(got) && i < len(want) && got[i] == want[i] {
						i++
					}
					t.Errorf("%s %s %s: output differs from sign-file at byte %d (len %d vs %d)", kname, h.name, mname, i, len(got), len(want))
					continue
				}
				// And it verifies and parses as expected.
				c, sig, err := modsig.Split(got)
				if err != nil || sig == nil || !bytes.Equal(c, content) {
					t.Fatalf("%s %s %s: Split: %v", kname, h.name, mname, err)
				}
				if _, err := modsig.Verify(c, sig, nil); err == nil {
					t.Fatalf("verify without certs succeeded")
				}
				if _, err := modsig.Verify(c, sig, certsOf(k)); err != nil {
					t.Fatalf("%s %s %s: Verify: %v", kname, h.name, mname, err)
				}
				n++
			}
		}
	}
	t.Logf("%d signatures byte-identical to sign-file", n)
}

// TestSignFileOutputVerifies: our verifier accepts what sign-file makes,
// RSA and ECDSA.
func TestSignFileOutputVerifies(t *testing.T) {
	content, err := os.ReadFile(fixture.TestModule(t, "kmodtest_param"))
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []string{"rsa:2048", "ec:P-256", "ec:P-384"} {
		k := sigtest.OpenSSLKey(t, spec)
		for _, h := range hashes {
			signed := sigtest.SignFile(t, h.name, k, content)
			c, sig, err := modsig.Split(signed)
			if err != nil {
				t.Fatalf("%s %s: %v", spec, h.name, err)
			}
			si := sig.Signers[0]
			if si.HashName != h.name || si.Hash != h.hash {
				t.Errorf("%s %s: hash %s/%v", spec, h.name, si.HashName, si.Hash)
			}
			if cert, err := modsig.Verify(c, sig, certsOf(k)); err != nil || cert != k.Cert {
				t.Errorf("%s %s: Verify: %v", spec, h.name, err)
			}
			// ECDSA signatures are randomized, so compare our structure
			// to sign-file's by re-signing and checking everything up
			// to the signature value has the same shape.
			ours, err := modsig.Sign(content, k.Signer, k.Cert, h.hash)
			if err != nil {
				t.Fatal(err)
			}
			_, osig, err := modsig.Split(append(append([]byte(nil), content...), ours...))
			if err != nil {
				t.Fatal(err)
			}
			o := osig.Signers[0]
			if o.SignatureAlgorithm != si.SignatureAlgorithm || o.HashName != si.HashName || o.IssuerCN != si.IssuerCN || o.Serial.Cmp(si.Serial) != 0 || osig.Version != sig.Version {
				t.Errorf("%s %s: ours %+v, sign-file %+v", spec, h.name, o, si)
			}
			// ECDSA signatures are randomized: replay sign-file's
			// signature value through our encoder, which must then
			// produce sign-file's bytes exactly.
			replay, err := modsig.Sign(content, fixedSigner{k.Signer, si.SignatureBytes}, k.Cert, h.hash)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(replay, signed[len(content):]) {
				t.Errorf("%s %s: CMS layout differs from sign-file's\nours % x\nsf   % x", spec, h.name, replay, signed[len(content):])
			}
		}
	}
}

// TestSignECDSAOpenSSLVerifies: OpenSSL's `cms -verify` accepts our ECDSA
// (and RSA) signatures, and rejects them over tampered content.
func TestSignECDSAOpenSSLVerifies(t *testing.T) {
	openssl := fixture.Tool(t, "openssl")
	content, err := os.ReadFile(fixture.TestModule(t, "kmodtest_base"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	contentPath := filepath.Join(dir, "content")
	tamperedPath := filepath.Join(dir, "tampered")
	os.WriteFile(contentPath, content, 0o644)
	tampered := bytes.Clone(content)
	tampered[len(tampered)/2] ^= 1
	os.WriteFile(tamperedPath, tampered, 0o644)
	for _, k := range []*sigtest.Key{
		sigtest.OpenSSLKey(t, "ec:P-256"), sigtest.OpenSSLKey(t, "ec:P-384"),
		sigtest.GoKey(t, "ec:P-256"), sigtest.GoKey(t, "ec:P-384"), sigtest.GoKey(t, "rsa:2048"),
	} {
		for _, h := range hashes {
			name := k.Cert.Subject.CommonName + " " + h.name
			tail, err := modsig.Sign(content, k.Signer, k.Cert, h.hash)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			_, sig, err := modsig.Split(append(bytes.Clone(content), tail...))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if _, err := modsig.Verify(content, sig, certsOf(k)); err != nil {
				t.Errorf("%s: Verify: %v", name, err)
			}
			if _, err := modsig.Verify(tampered, sig, certsOf(k)); err == nil || !modsig.IsBadSignature(err) ||
				err.Error() != "signature does not verify (content modified or wrong key)" {
				t.Errorf("%s: Verify of tampered content: %v", name, err)
			}
			cms := filepath.Join(dir, "sig.der")
			os.WriteFile(cms, sig.Raw, 0o644)
			verify := func(data string) ([]byte, error) {
				return exec.Command(openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", cms,
					"-content", data, "-certfile", k.CertPath, "-CAfile", k.CertPath, "-purpose", "any", "-out", os.DevNull).CombinedOutput()
			}
			if out, err := verify(contentPath); err != nil {
				t.Errorf("%s: openssl cms -verify: %v\n%s", name, err, out)
			}
			if out, err := verify(tamperedPath); err == nil {
				t.Errorf("%s: openssl cms -verify accepted tampered content\n%s", name, out)
			}
		}
	}
}

// fixedSigner replays a signature value made elsewhere.
type fixedSigner struct {
	crypto.Signer
	sig []byte
}

func (f fixedSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) { return f.sig, nil }

func TestSignRefuses(t *testing.T) {
	k := sigtest.GoKey(t, "rsa:2048")
	other := sigtest.GoKey(t, "ec:P-256")
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		hash crypto.Hash
		want string
	}{
		{"sha1", k.Signer, crypto.SHA1, "hash sha1 is not supported for signing modules: use sha256, sha384 or sha512"},
		{"sha224", k.Signer, crypto.SHA224, "hash sha224 is not supported"},
		{"md5", k.Signer, crypto.MD5, "hash md5 is not supported"},
		{"none", k.Signer, 0, "hash 0 is not supported"},
		{"mismatch", other.Signer, crypto.SHA256, "private key does not match certificate"},
	} {
		_, err := modsig.Sign([]byte("\x7fELF"), tc.key, k.Cert, tc.hash)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
	p521 := sigtest.GoKey(t, "ec:P-521")
	if _, err := modsig.Sign([]byte("x"), p521.Signer, p521.Cert, crypto.SHA512); err == nil || !strings.Contains(err.Error(), "ECDSA curve P-521 is not supported") {
		t.Errorf("P-521: %v", err)
	}
	// Ed25519 (PKCS#8 from openssl) is refused by type.
	ed := edKey(t)
	if _, err := modsig.Sign([]byte("x"), ed.Signer, ed.Cert, crypto.SHA256); err == nil || !strings.Contains(err.Error(), "ed25519.PublicKey keys are not supported") {
		t.Errorf("ed25519: %v", err)
	}
}
