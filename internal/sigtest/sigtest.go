// Package sigtest provides signing keys, certificates and the kernel's
// sign-file to the tests of module signing. It is for tests only.
package sigtest

import (
	"bytes"
	"io"

	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"github.com/kmodctl/packer-plugin-kmod/compress"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// Key is a signing key with its certificate, in memory and as PEM files.
type Key struct {
	Signer crypto.Signer
	Cert   *x509.Certificate
	// KeyPEM and CertPEM are the PEM encodings; KeyPath and CertPath are
	// files holding them in the test's temporary folder.
	KeyPEM, CertPEM   []byte
	KeyPath, CertPath string
}

var (
	mu    sync.Mutex
	cache = map[string][2][]byte{}
)

// OpenSSLKey returns a key and self-signed certificate made by
// `openssl req -x509 -newkey ...`, as a user following the kernel's
// module-signing documentation would. spec is "rsa:2048", "rsa:4096",
// "ec:P-256" or "ec:P-384". Keys are generated once per test binary.
func OpenSSLKey(t testing.TB, spec string) *Key {
	t.Helper()
	openssl := fixture.Tool(t, "openssl")
	mu.Lock()
	pems, ok := cache["openssl "+spec]
	mu.Unlock()
	if !ok {
		dir := t.TempDir()
		args := []string{"req", "-x509", "-nodes", "-days", "36500", "-subj", "/CN=kmodctl test " + spec + "/O=kmodctl tests/emailAddress=test@example.invalid",
			"-keyout", filepath.Join(dir, "key.pem"), "-out", filepath.Join(dir, "cert.pem")}
		switch {
		case strings.HasPrefix(spec, "rsa:"):
			args = append(args, "-newkey", spec)
		case strings.HasPrefix(spec, "ec:"):
			args = append(args, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:"+strings.TrimPrefix(spec, "ec:"))
		default:
			t.Fatalf("sigtest: unknown key spec %q", spec)
		}
		if out, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl req: %v\n%s", err, out)
		}
		k, err := os.ReadFile(filepath.Join(dir, "key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := os.ReadFile(filepath.Join(dir, "cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		pems = [2][]byte{k, c}
		mu.Lock()
		cache["openssl "+spec] = pems
		mu.Unlock()
	}
	return load(t, pems[0], pems[1])
}

// GoKey returns a key and self-signed certificate made with Go's crypto.
// The certificate has a serial number whose top bit is set (so its DER
// needs a leading zero byte) and an issuer of several RDNs in
// PrintableString.
func GoKey(t testing.TB, spec string) *Key {
	t.Helper()
	mu.Lock()
	pems, ok := cache["go "+spec]
	mu.Unlock()
	if !ok {
		var key crypto.Signer
		var err error
		switch spec {
		case "rsa:2048":
			key, err = rsa.GenerateKey(rand.Reader, 2048)
		case "rsa:3072":
			key, err = rsa.GenerateKey(rand.Reader, 3072)
		case "rsa:4096":
			key, err = rsa.GenerateKey(rand.Reader, 4096)
		case "ec:P-256":
			key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		case "ec:P-384":
			key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		case "ec:P-521":
			key, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		default:
			t.Fatalf("sigtest: unknown key spec %q", spec)
		}
		if err != nil {
			t.Fatal(err)
		}
		serial := new(big.Int).Lsh(big.NewInt(1), 151)
		serial.Add(serial, big.NewInt(0x1234567))
		tmpl := &x509.Certificate{
			SerialNumber: serial,
			Subject: pkix.Name{
				Country:      []string{"XX"},
				Organization: []string{"kmodctl Go tests"},
				CommonName:   "kmodctl Go " + spec,
			},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(100 * 365 * 24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
			BasicConstraintsValid: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		pems = [2][]byte{
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
			pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		}
		mu.Lock()
		cache["go "+spec] = pems
		mu.Unlock()
	}
	return load(t, pems[0], pems[1])
}

func load(t testing.TB, keyPEM, certPEM []byte) *Key {
	t.Helper()
	k, err := modsig.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := modsig.ParseCertificates(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := &Key{Signer: k, Cert: certs[0], KeyPEM: keyPEM, CertPEM: certPEM,
		KeyPath: filepath.Join(dir, "key.pem"), CertPath: filepath.Join(dir, "cert.pem")}
	if err := os.WriteFile(out.KeyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out.CertPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// SignFile runs the kernel's scripts/sign-file on a copy of module and
// returns the signed result.
func SignFile(t testing.TB, hash string, k *Key, module []byte) []byte {
	t.Helper()
	sf := fixture.SignFile(t)
	p := filepath.Join(t.TempDir(), "m.ko")
	if err := os.WriteFile(p, module, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sf, hash, k.KeyPath, k.CertPath, p).CombinedOutput(); err != nil {
		t.Fatalf("sign-file %s: %v\n%s", hash, err, out)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Unsigned returns the content of a module file without its signature
// (repeatedly stripped), failing the test on a bad trailer.
func Unsigned(t testing.TB, data []byte) []byte {
	t.Helper()
	for {
		c, sig, err := modsig.Split(data)
		if err != nil {
			t.Fatal(err)
		}
		if sig == nil {
			return c
		}
		data = c
	}
}

// InTreeModules returns up to n Debian-signed modules of the fixture
// kernel, picked from fixed relative paths that exist, then any others.
func InTreeModules(t testing.TB, n int) []string {
	t.Helper()
	root := fixture.ModulesDir(t)
	var out []string
	for _, rel := range []string{
		"kernel/drivers/net/dummy.ko",
		"kernel/fs/fat/fat.ko",
		"kernel/net/key/af_key.ko",
		"kernel/drivers/block/loop.ko",
		"kernel/fs/ext4/ext4.ko",
		"kernel/lib/crc-itu-t.ko",
	} {
		p := filepath.Join(root, rel)
		if _, err := os.Stat(p); err == nil && len(out) < n {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		fixture.Missing(t, fmt.Sprintf("in-tree modules under %s", root))
	}
	return out
}

var (
	kernelCertsOnce sync.Once
	kernelCerts     []*x509.Certificate
	kernelCertsErr  error
)

// KernelCerts returns the X.509 certificates built into the fixture
// kernel's vmlinuz (its system keyring: Debian's "Build time autogenerated
// kernel key" that signed the in-tree modules, and any others), found by
// decompressing the image and scanning it for DER certificates.
func KernelCerts(t testing.TB) []*x509.Certificate {
	t.Helper()
	vmlinuz := fixture.Path(t, filepath.Join("kernel/root/boot", "vmlinuz-"+fixture.KVER(t)))
	xz := fixture.Tool(t, "xz")
	kernelCertsOnce.Do(func() {
		kernelCerts, kernelCertsErr = scanKernelCerts(vmlinuz, xz)
	})
	if kernelCertsErr != nil {
		t.Fatal(kernelCertsErr)
	}
	return kernelCerts
}

func scanKernelCerts(vmlinuz, xz string) ([]*x509.Certificate, error) {
	img, err := os.ReadFile(vmlinuz)
	if err != nil {
		return nil, err
	}
	var vmlinux []byte
	for _, f := range []compress.Format{compress.XZ, compress.Zstd, compress.Gzip} {
		magic := map[compress.Format][]byte{compress.XZ: {0xfd, '7', 'z', 'X', 'Z', 0}, compress.Zstd: {0x28, 0xb5, 0x2f, 0xfd}, compress.Gzip: {0x1f, 0x8b, 0x08}}[f]
		i := bytes.Index(img, magic)
		if i < 0 {
			continue
		}
		if f == compress.XZ {
			// The kernel's xz payload uses the x86 BCJ filter, which Go's
			// xz package lacks; --single-stream ignores the bzImage data
			// after the stream.
			cmd := exec.Command(xz, "-dc", "--single-stream")
			cmd.Stdin = bytes.NewReader(img[i:])
			if vmlinux, err = cmd.Output(); err != nil {
				return nil, fmt.Errorf("%s: xz: %w", vmlinuz, err)
			}
		} else {
			r, err := compress.NewReader(bytes.NewReader(img[i:]), f)
			if err != nil {
				continue
			}
			// The payload is followed by bzImage data that is not part
			// of the stream: keep what decompressed before the error.
			vmlinux, _ = io.ReadAll(r)
			r.Close()
		}
		if len(vmlinux) > 1<<20 {
			break
		}
	}
	if len(vmlinux) == 0 {
		return nil, fmt.Errorf("%s: no compressed kernel payload found", vmlinuz)
	}
	var certs []*x509.Certificate
	pat := []byte{0x30, 0x82}
	for off := 0; ; {
		i := bytes.Index(vmlinux[off:], pat)
		if i < 0 {
			break
		}
		p := off + i
		off = p + 1
		if p+8 > len(vmlinux) || vmlinux[p+4] != 0x30 || vmlinux[p+5] != 0x82 {
			continue
		}
		n := int(vmlinux[p+2])<<8 | int(vmlinux[p+3])
		if n < 200 || p+4+n > len(vmlinux) {
			continue
		}
		c, err := x509.ParseCertificate(vmlinux[p : p+4+n])
		if err != nil {
			continue
		}
		certs = append(certs, c)
		off = p + 4 + n
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no X.509 certificate in the kernel image", vmlinuz)
	}
	return certs, nil
}
