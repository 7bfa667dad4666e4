// Package registrytest runs Debian's docker-registry (distribution 2.8.2)
// for tests: on 127.0.0.1, on a free port, with its own config and storage
// in the test's temporary folder, over TLS with a CA the test makes and
// htpasswd authentication, or anonymous over plain HTTP. The registry is
// stopped and its data removed when the test ends, whatever the outcome.
package registrytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// Binary is Debian's registry program.
const Binary = "/usr/bin/docker-registry"

// Options choose the registry's security.
type Options struct {
	// TLS serves HTTPS with a certificate for 127.0.0.1 and localhost
	// signed by a CA made for the test (CAFile).
	TLS bool
	// Auth requires htpasswd basic authentication (Username, Password).
	Auth bool
	// IPs are more addresses the TLS certificate is for (a QEMU guest
	// reaches the registry through a guestfwd address).
	IPs []net.IP
}

// Registry is a running registry.
type Registry struct {
	// Host is 127.0.0.1:PORT.
	Host string
	// CAFile is the PEM CA that signed the TLS certificate (TLS only);
	// CA is the same certificate.
	CAFile string
	CA     *x509.Certificate
	// Username and Password are the htpasswd user (Auth only).
	Username, Password string
	// Dir holds the config, certificates and storage.
	Dir string
	// Log collects the registry's output.
	Log *SyncBuffer

	opts Options
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// SyncBuffer is a goroutine-safe output buffer.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start starts a registry for the test; it is killed and its folder
// removed by t.Cleanup. A missing docker-registry skips the test, or fails
// it in CI.
func Start(t testing.TB, o Options) *Registry {
	t.Helper()
	fixture.Tool(t, Binary)
	r, err := New(t.TempDir(), o)
	if r != nil {
		t.Cleanup(r.Stop)
	}
	if err != nil {
		log := ""
		if r != nil {
			log = r.Log.String()
		}
		t.Fatalf("%v\n%s", err, log)
	}
	return r
}

// New starts a registry whose config, certificates and storage live in
// dir (for programs other than tests: the caller stops it and removes
// dir).
func New(dir string, o Options) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	r := &Registry{Dir: dir, Log: &SyncBuffer{}, opts: o}
	if o.TLS {
		if err := r.makeTLS(); err != nil {
			return nil, err
		}
	}
	if o.Auth {
		r.Username = "kmodctl"
		pw := make([]byte, 12)
		rand.Read(pw)
		r.Password = hex.EncodeToString(pw)
		hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(r.Dir, "htpasswd"), []byte(r.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	// The port is free when chosen; another process may take it before
	// the registry binds it, so try a few.
	var err error
	for i := 0; i < 5; i++ {
		if r.Host, err = freeHost(); err != nil {
			return r, err
		}
		if err = r.start(); err == nil {
			return r, nil
		}
	}
	return r, fmt.Errorf("docker-registry did not start: %w", err)
}

func freeHost() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Restart starts the registry again on the same address and storage after
// Kill or Stop.
func (r *Registry) Restart(t testing.TB) {
	t.Helper()
	var err error
	for i := 0; i < 20; i++ {
		if err = r.start(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("docker-registry did not restart on %s: %v\n%s", r.Host, err, r.Log)
}

func (r *Registry) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n")
	fmt.Fprintf(&b, "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n", filepath.Join(r.Dir, "data"))
	fmt.Fprintf(&b, "  maintenance:\n    uploadpurging:\n      enabled: false\n")
	fmt.Fprintf(&b, "http:\n  addr: %s\n  secret: kmodctl-registrytest\n", r.Host)
	if r.opts.TLS {
		fmt.Fprintf(&b, "  tls:\n    certificate: %s\n    key: %s\n", filepath.Join(r.Dir, "server.pem"), filepath.Join(r.Dir, "server-key.pem"))
	}
	if r.opts.Auth {
		fmt.Fprintf(&b, "auth:\n  htpasswd:\n    realm: kmodctl-registrytest\n    path: %s\n", filepath.Join(r.Dir, "htpasswd"))
	}
	return b.String()
}

func (r *Registry) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg := filepath.Join(r.Dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(r.config()), 0o600); err != nil {
		return err
	}
	cmd := exec.Command(Binary, "serve", cfg)
	cmd.Stdout, cmd.Stderr = r.Log, r.Log
	// Its own process group, killed with the test binary if that dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	client := r.client()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("docker-registry exited: %v", cmd.ProcessState)
		default:
		}
		resp, err := client.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.killLocked()
	return fmt.Errorf("docker-registry on %s did not answer in 15 s", r.Host)
}

// client is an HTTP client that trusts the registry's CA.
func (r *Registry) client() *http.Client {
	t := &http.Transport{}
	if r.CA != nil {
		pool := x509.NewCertPool()
		pool.AddCert(r.CA)
		t.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	return &http.Client{Transport: t, Timeout: 5 * time.Second}
}

// URL is the registry's base URL.
func (r *Registry) URL() string {
	if r.opts.TLS {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// Ref is a reference to repo:tag in this registry.
func (r *Registry) Ref(repoTag string) string { return r.Host + "/" + repoTag }

// Kill stops the registry with SIGKILL (its storage stays).
func (r *Registry) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.killLocked()
}

func (r *Registry) killLocked() {
	if r.cmd == nil {
		return
	}
	syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	<-r.done
	r.cmd = nil
}

// Stop kills the registry if it runs (t.Cleanup calls it; the folder goes
// with t.TempDir).
func (r *Registry) Stop() { r.Kill() }

// makeTLS writes a CA and a server certificate for 127.0.0.1 and
// localhost signed by it.
func (r *Registry) makeTLS() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kmodctl registrytest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	if r.CA, err = x509.ParseCertificate(caDER); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1)}, r.opts.IPs...), DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.CA, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	r.CAFile = filepath.Join(r.Dir, "ca.pem")
	for path, block := range map[string]*pem.Block{
		r.CAFile:                               {Type: "CERTIFICATE", Bytes: caDER},
		filepath.Join(r.Dir, "server.pem"):     {Type: "CERTIFICATE", Bytes: der},
		filepath.Join(r.Dir, "server-key.pem"): {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	return nil
}
