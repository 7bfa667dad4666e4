package modsig_test

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/sigtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// signed returns a test module signed by us, and its unsigned content.
func signed(t *testing.T) (module, content []byte, k *sigtest.Key) {
	t.Helper()
	content, err := os.ReadFile(fixture.TestModule(t, "kmodtest_base"))
	if err != nil {
		t.Fatal(err)
	}
	k = sigtest.GoKey(t, "rsa:2048")
	tail, err := modsig.Sign(content, k.Signer, k.Cert, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return append(bytes.Clone(content), tail...), content, k
}

func TestSplitUnsigned(t *testing.T) {
	for _, data := range [][]byte{nil, {}, []byte("\x7fELF"), []byte(modsig.Magic[1:]), []byte("x" + modsig.Magic[:len(modsig.Magic)-1])} {
		c, sig, err := modsig.Split(data)
		if err != nil || sig != nil || !bytes.Equal(c, data) {
			t.Errorf("Split(%q) = %d bytes, %v, %v; want data, nil, nil", data, len(c), sig, err)
		}
	}
}

// TestSplitTrailer: the trailer is validated like the kernel's
// mod_check_sig, with precise messages.
func TestSplitTrailer(t *testing.T) {
	mod, content, _ := signed(t)
	tr := len(mod) - len(modsig.Magic) - modsig.TrailerSize // struct offset
	sigLen := int(binary.BigEndian.Uint32(mod[tr+8:]))
	set := func(f func(b []byte)) []byte {
		b := bytes.Clone(mod)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"sig_len too large", set(func(b []byte) { binary.BigEndian.PutUint32(b[tr+8:], 99999999) }),
			"signature trailer: sig_len 99999999 exceeds module size "},
		{"sig_len covers the whole module", set(func(b []byte) { binary.BigEndian.PutUint32(b[tr+8:], uint32(tr)) }),
			"signature trailer: sig_len"},
		{"sig_len zero", set(func(b []byte) { binary.BigEndian.PutUint32(b[tr+8:], 0) }), "signature trailer: sig_len is 0"},
		{"id_type X.509", set(func(b []byte) { b[tr+2] = 1 }), "signature trailer: id_type 1 is not PKCS#7 (2)"},
		{"id_type PGP", set(func(b []byte) { b[tr+2] = 0 }), "signature trailer: id_type 0 is not PKCS#7 (2)"},
		{"algo", set(func(b []byte) { b[tr] = 1 }), "signature trailer: algo is 1, must be 0 for PKCS#7"},
		{"hash", set(func(b []byte) { b[tr+1] = 4 }), "signature trailer: hash is 4, must be 0 for PKCS#7"},
		{"signer_len", set(func(b []byte) { b[tr+3] = 9 }), "signature trailer: signer_len is 9"},
		{"key_id_len", set(func(b []byte) { b[tr+4] = 20 }), "signature trailer: key_id_len is 20"},
		{"reserved", set(func(b []byte) { b[tr+6] = 1 }), "signature trailer: reserved bytes are 00 01 00, must be zero"},
		{"magic only", []byte(modsig.Magic), "signature trailer: module of 28 bytes is too short"},
		{"struct only", append(make([]byte, 12), modsig.Magic...), "signature trailer: module of 40 bytes is too short"},
	} {
		c, sig, err := modsig.Split(tc.data)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || sig != nil || c != nil {
			t.Errorf("%s: Split = %d bytes, %v, %v; want error %q", tc.name, len(c), sig != nil, err, tc.want)
		}
	}
	// The kernel's length check is sig_len >= module - struct: the
	// largest accepted sig_len leaves one content byte.
	_, _, err := modsig.Split(set(func(b []byte) { binary.BigEndian.PutUint32(b[tr+8:], uint32(tr-1)) }))
	if err == nil || strings.HasPrefix(err.Error(), "signature trailer") {
		t.Errorf("sig_len = module-1: want a CMS error, got %v", err)
	}
	// A sig_len pointing into the module fails in the CMS, and still
	// returns the content the trailer delimits.
	c, sig, err := modsig.Split(set(func(b []byte) { binary.BigEndian.PutUint32(b[tr+8:], uint32(sigLen+3)) }))
	if err == nil || !strings.HasPrefix(err.Error(), "signature CMS: ") || sig != nil || len(c) != len(content)-3 {
		t.Errorf("sig_len+3: %d bytes, %v", len(c), err)
	}
	c, sig, err = modsig.Split(set(func(b []byte) { binary.BigEndian.PutUint32(b[tr+8:], uint32(sigLen-1)) }))
	if err == nil || !strings.HasPrefix(err.Error(), "signature CMS: ") || sig != nil || len(c) != len(content)+1 {
		t.Errorf("sig_len-1: %d bytes, %v", len(c), err)
	}
	// And the untouched one splits exactly.
	c, sig, err = modsig.Split(mod)
	if err != nil || sig == nil || !bytes.Equal(c, content) || len(sig.Raw) != sigLen {
		t.Fatalf("Split: %v", err)
	}
	if n, err := modsig.ContentLen(mod); err != nil || n != len(content) {
		t.Errorf("ContentLen = %d, %v", n, err)
	}
}

// TestParseSignedData checks the fields Parse reports for our own and
// OpenSSL-made CMS variants the kernel accepts or rejects.
func TestParseSignedData(t *testing.T) {
	openssl := fixture.Tool(t, "openssl")
	content, err := os.ReadFile(fixture.TestModule(t, "kmodtest_dep"))
	if err != nil {
		t.Fatal(err)
	}
	k := sigtest.OpenSSLKey(t, "rsa:2048")
	dir := t.TempDir()
	in := filepath.Join(dir, "content")
	os.WriteFile(in, content, 0o644)
	cms := func(args ...string) *modsig.Signature {
		t.Helper()
		out := filepath.Join(dir, "out.der")
		args = append([]string{"cms", "-sign", "-binary", "-in", in, "-signer", k.CertPath, "-inkey", k.KeyPath, "-outform", "DER", "-out", out}, args...)
		if b, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, b)
		}
		der, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		// As a module trailer, to go through Split too.
		mod := modsig.AppendTrailer(append(bytes.Clone(content), der...), len(der))
		c, sig, err := modsig.Split(mod)
		if err != nil {
			t.Fatalf("openssl %v: Split: %v", args, err)
		}
		if !bytes.Equal(c, content) {
			t.Fatal("content")
		}
		return sig
	}
	certs := certsOf(k)

	// Like sign-file: verifies.
	sig := cms("-nocerts", "-noattr", "-md", "sha384")
	if !sig.Detached || sig.HasCertificates || sig.Signers[0].HasSignedAttrs || sig.Signers[0].HashName != "sha384" || sig.Signers[0].SignatureAlgorithm != "rsaEncryption" || sig.Version != 1 {
		t.Errorf("plain: %+v", sig)
	}
	if _, err := modsig.Verify(content, sig, certs); err != nil {
		t.Errorf("plain: %v", err)
	}

	// Signed attributes: parsed, refused by Verify as by the kernel.
	sig = cms("-nocerts")
	if !sig.Signers[0].HasSignedAttrs {
		t.Errorf("attrs: HasSignedAttrs false")
	}
	if _, err := modsig.Verify(content, sig, certs); err == nil || !strings.HasPrefix(err.Error(), "invalid module signature (has authattrs)") {
		t.Errorf("attrs: %v", err)
	}

	// Embedded content: refused.
	sig = cms("-nocerts", "-noattr", "-nodetach")
	if sig.Detached {
		t.Errorf("nodetach: Detached")
	}
	if _, err := modsig.Verify(content, sig, certs); err == nil || !strings.HasPrefix(err.Error(), "PKCS#7 signature with non-detached data") {
		t.Errorf("nodetach: %v", err)
	}

	// Certificates inside: noted, ignored (not used to verify).
	sig = cms("-noattr")
	if !sig.HasCertificates {
		t.Errorf("certs: HasCertificates false")
	}
	if _, err := modsig.Verify(content, sig, nil); err == nil || !strings.HasPrefix(err.Error(), "no certificate matches signer (issuer CN=kmodctl test rsa:2048, serial ") {
		t.Errorf("certs, no trusted: %v", err)
	}
	if _, err := modsig.Verify(content, sig, certs); err != nil {
		t.Errorf("certs: %v", err)
	}

	// Subject key identifier (sign-file -k): v3, verifies by SKID.
	sig = cms("-nocerts", "-noattr", "-keyid")
	si := sig.Signers[0]
	if si.SubjectKeyID == nil || si.Serial != nil || si.IssuerRaw != nil || si.Version != 3 || sig.Version != 3 {
		t.Errorf("keyid: %+v", si)
	}
	if !bytes.Equal(si.SubjectKeyID, k.Cert.SubjectKeyId) {
		t.Errorf("keyid: %x != %x", si.SubjectKeyID, k.Cert.SubjectKeyId)
	}
	if _, err := modsig.Verify(content, sig, certs); err != nil {
		t.Errorf("keyid: %v", err)
	}

	// SHA-1, still accepted by the kernel.
	sig = cms("-nocerts", "-noattr", "-md", "sha1")
	if sig.Signers[0].HashName != "sha1" || sig.Signers[0].Hash != crypto.SHA1 {
		t.Errorf("sha1: %+v", sig.Signers[0])
	}
	if _, err := modsig.Verify(content, sig, certs); err != nil {
		t.Errorf("sha1: %v", err)
	}

	// Wrong certificate with the same issuer name and serial: a bad
	// signature, not a missing certificate.
	other := sigtest.OpenSSLKey(t, "rsa:4096")
	if _, err := modsig.Verify(content, cms("-nocerts", "-noattr"), certsOf(other)); err == nil || !strings.HasPrefix(err.Error(), "no certificate matches signer") {
		t.Errorf("other cert: %v", err)
	}
}

// TestSignFileKeyID: sign-file -k (SKID, v3) output parses and verifies.
func TestSignFileKeyID(t *testing.T) {
	content, err := os.ReadFile(fixture.TestModule(t, "kmodtest_marker"))
	if err != nil {
		t.Fatal(err)
	}
	k := sigtest.OpenSSLKey(t, "rsa:2048")
	p := filepath.Join(t.TempDir(), "m.ko")
	os.WriteFile(p, content, 0o644)
	if out, err := exec.Command(fixture.SignFile(t), "-k", "sha256", k.KeyPath, k.CertPath, p).CombinedOutput(); err != nil {
		t.Fatalf("sign-file -k: %v\n%s", err, out)
	}
	mod, _ := os.ReadFile(p)
	c, sig, err := modsig.Split(mod)
	if err != nil {
		t.Fatal(err)
	}
	if sig.Version != 3 || sig.Signers[0].Version != 3 || !bytes.Equal(sig.Signers[0].SubjectKeyID, k.Cert.SubjectKeyId) {
		t.Errorf("sign-file -k: %+v", sig.Signers[0])
	}
	if _, err := modsig.Verify(c, sig, certsOf(k)); err != nil {
		t.Error(err)
	}
}

// TestHashNames: digest OIDs map to modinfo's names; unknown ones to the
// dotted OID.
func TestHashNames(t *testing.T) {
	mod, content, k := signed(t)
	sha256OID := []byte{0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01}
	for last, want := range map[byte]struct {
		name string
		hash crypto.Hash
	}{
		1: {"sha256", crypto.SHA256}, 2: {"sha384", crypto.SHA384}, 3: {"sha512", crypto.SHA512},
		4: {"sha224", crypto.SHA224}, 8: {"sha3-256", crypto.SHA3_256}, 99: {"2.16.840.1.101.3.4.2.99", 0},
	} {
		b := bytes.ReplaceAll(mod, sha256OID, append(bytes.Clone(sha256OID[:10]), last))
		_, sig, err := modsig.Split(b)
		if err != nil {
			t.Fatal(err)
		}
		si := sig.Signers[0]
		if si.HashName != want.name || si.Hash != want.hash || sig.DigestAlgorithms[0] != want.name {
			t.Errorf("OID ...%d: %s %v %v", last, si.HashName, si.Hash, sig.DigestAlgorithms)
		}
		_, err = modsig.Verify(content, sig, certsOf(k))
		switch {
		case last == 1 && err != nil:
			t.Errorf("sha256: %v", err)
		case last == 99 && (err == nil || err.Error() != "digest 2.16.840.1.101.3.4.2.99 is not supported"):
			t.Errorf("unknown digest: %v", err)
		case last != 1 && last != 99 && !modsig.IsBadSignature(err):
			t.Errorf("%s: %v", want.name, err)
		}
	}
}

// TestDebianModules: Debian's signed in-tree modules parse as modinfo
// reports them, and verify against the certificate built into the
// fixture kernel.
func TestDebianModules(t *testing.T) {
	modinfo := fixture.Tool(t, "modinfo")
	kcerts := sigtest.KernelCerts(t)
	for _, p := range sigtest.InTreeModules(t, 6) {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		c, sig, err := modsig.Split(data)
		if err != nil || sig == nil {
			t.Fatalf("%s: %v", p, err)
		}
		si := sig.Signers[0]
		field := func(f string) string {
			out, err := exec.Command(modinfo, "-F", f, p).Output()
			if err != nil {
				t.Fatalf("modinfo: %v", err)
			}
			if f == "signature" { // wrapped over several lines
				return strings.Join(strings.Fields(string(out)), "")
			}
			return strings.TrimSpace(string(out))
		}
		if si.IssuerCN != field("signer") || si.IssuerCN != "Build time autogenerated kernel key" {
			t.Errorf("%s: signer %q", p, si.IssuerCN)
		}
		if modsig.FormatSerial(si.Serial) != field("sig_key") {
			t.Errorf("%s: sig_key %s vs %s", p, modsig.FormatSerial(si.Serial), field("sig_key"))
		}
		if si.HashName != field("sig_hashalgo") {
			t.Errorf("%s: sig_hashalgo %s", p, si.HashName)
		}
		if hexColon(si.SignatureBytes) != field("signature") {
			t.Errorf("%s: signature differs from modinfo's", p)
		}
		if !sig.Detached || sig.HasCertificates || si.HasSignedAttrs || si.KeyAlgorithm != "rsa" {
			t.Errorf("%s: %+v", p, sig)
		}
		cert, err := modsig.Verify(c, sig, kcerts)
		if err != nil {
			t.Errorf("%s: Verify with the kernel's certificates: %v", p, err)
		} else if cert.Subject.CommonName != "Build time autogenerated kernel key" {
			t.Errorf("%s: verified by %s", p, cert.Subject)
		}
		// A foreign certificate does not match.
		_, err = modsig.Verify(c, sig, certsOf(sigtest.GoKey(t, "rsa:2048")))
		if want := "no certificate matches signer (issuer CN=Build time autogenerated kernel key, serial " + field("sig_key") + ")"; err == nil || err.Error() != want {
			t.Errorf("%s: %v, want %q", p, err, want)
		}
		// One flipped byte in the content.
		c2 := bytes.Clone(c)
		c2[len(c2)/3] ^= 0x40
		if _, err := modsig.Verify(c2, sig, kcerts); !modsig.IsBadSignature(err) {
			t.Errorf("%s: tampered: %v", p, err)
		}
	}
}

func hexColon(b []byte) string {
	var sb strings.Builder
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		const hx = "0123456789ABCDEF"
		sb.WriteByte(hx[x>>4])
		sb.WriteByte(hx[x&15])
	}
	return sb.String()
}

// TestParseBER: indefinite-length BER, which the kernel's decoder accepts,
// parses to the same signature and verifies.
func TestParseBER(t *testing.T) {
	mod, content, k := signed(t)
	_, sig, err := modsig.Split(mod)
	if err != nil {
		t.Fatal(err)
	}
	ber := toBER(t, sig.Raw)
	if bytes.Equal(ber, sig.Raw) {
		t.Fatal("no change")
	}
	bsig, err := modsig.Parse(ber)
	if err != nil {
		t.Fatal(err)
	}
	a, b := sig.Signers[0], bsig.Signers[0]
	if a.IssuerCN != b.IssuerCN || a.Serial.Cmp(b.Serial) != 0 || !bytes.Equal(a.SignatureBytes, b.SignatureBytes) || a.HashName != b.HashName {
		t.Errorf("BER parse differs: %+v vs %+v", a, b)
	}
	// The issuer Name is matched by its encoding, as the kernel does: the
	// BER Name no longer matches the certificate's DER.
	if _, err := modsig.Verify(content, bsig, certsOf(k)); err == nil || !strings.HasPrefix(err.Error(), "no certificate matches signer") {
		t.Errorf("BER Verify: %v", err)
	}
	// Hostile: truncated, and nesting deeper than the limit.
	for i := 1; i < len(ber); i += 97 {
		if _, err := modsig.Parse(ber[:i]); err == nil {
			t.Fatalf("truncated at %d parsed", i)
		}
	}
	deep := bytes.Repeat([]byte{0x30, 0x80}, 100)
	deep = append(deep, bytes.Repeat([]byte{0, 0}, 100)...)
	if _, err := modsig.Parse(deep); err == nil || !strings.Contains(err.Error(), "nesting deeper than") {
		t.Errorf("deep: %v", err)
	}
}
