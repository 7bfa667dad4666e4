// Package catalogtest runs real kmod-catalog nodes for tests: the binary
// built from this checkout with cgo against Debian's libdqlite, each node
// a process on 127.0.0.1 with free ports, its own data folder and TLS
// certificates from a CA the test makes (catalog/devca), stopped on every
// path. A missing libdqlite skips the test, or fails it in CI.
package catalogtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
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

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/catalog/devca"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
)

// Build builds cmd/kmod-catalog into a temporary folder of tb and returns
// its path (go's build cache makes repeated builds cheap).
func Build(tb testing.TB) string {
	tb.Helper()
	out := filepath.Join(tb.TempDir(), "kmod-catalog")
	if b, err := BuildBinary(fixture.RepoRoot(tb), out); err != nil {
		if bytes.Contains(b, []byte("dqlite.h")) || bytes.Contains(b, []byte("-ldqlite")) || bytes.Contains(b, []byte("raft.h")) {
			fixture.Missing(tb, "libdqlite-dev and libraft-dev (scripts/deps.sh)")
		}
		tb.Fatalf("go build ./cmd/kmod-catalog: %v\n%s", err, b)
	}
	return out
}

// BuildBinary builds cmd/kmod-catalog of the checkout at repo into out
// (cgo, -tags libsqlite3), returning the compiler's output.
func BuildBinary(repo, out string) ([]byte, error) {
	cmd := exec.Command("go", "build", "-tags", "libsqlite3", "-o", out, "./cmd/kmod-catalog")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "CGO_LDFLAGS_ALLOW=-Wl,-z,now")
	return cmd.CombinedOutput()
}

// Options shape a cluster.
type Options struct {
	// Hosts are extra names or addresses in the nodes' certificates.
	Hosts []string
	// Args are extra serve flags for every node.
	Args []string
}

// Cluster is a set of nodes sharing a CA.
type Cluster struct {
	Bin    string
	Dir    string
	CAFile string
	// AdminToken is the bootstrap admin token.
	AdminToken string
	Nodes      []*Node
	opts       Options
}

// Node is one kmod-catalog process.
type Node struct {
	Name string
	Dir  string
	API  string // 127.0.0.1:PORT
	Raft string // 127.0.0.1:PORT
	Log  *SyncBuffer
	// CertFile and KeyFile are the node's certificate (server and client
	// use), for a go-dqlite client of the cluster.
	CertFile, KeyFile string
	args              []string
	mu                sync.Mutex
	cmd               *exec.Cmd
	done              chan struct{}
	cluster           *Cluster
}

// SyncBuffer collects a process's output (one implementation for the
// test harnesses).
type SyncBuffer = registrytest.SyncBuffer

// Start starts n nodes (see New) for tb, stopped when it ends.
func Start(tb testing.TB, n int, o Options) *Cluster {
	tb.Helper()
	c, err := New(tb.TempDir(), Build(tb), n, o)
	if c != nil {
		tb.Cleanup(c.StopAll)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// New starts n nodes of bin with their data and certificates under dir:
// the first bootstraps, the others join it; it returns when every node
// answers and the cluster has min(n, 3) voters. The caller stops them
// (StopAll), also after an error.
func New(dir, bin string, n int, o Options) (*Cluster, error) {
	c := &Cluster{Bin: bin, Dir: dir, opts: o}
	for i := 0; i < n; i++ {
		node, err := c.newNode(fmt.Sprintf("n%d", i+1))
		if err != nil {
			return c, err
		}
		if i > 0 {
			node.args = append(node.args, "--join", c.Nodes[0].Raft)
		}
		if err := node.start(); err != nil {
			return c, err
		}
	}
	if _, err := c.waitVoters(min(n, 3)); err != nil {
		return c, err
	}
	b, err := os.ReadFile(filepath.Join(c.Dir, "admin-token"))
	if err != nil {
		return c, err
	}
	c.AdminToken = strings.TrimSpace(string(b))
	return c, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (c *Cluster) newNode(name string) (*Node, error) {
	hosts := append([]string{"127.0.0.1", "localhost"}, c.opts.Hosts...)
	files, err := devca.Ensure(filepath.Join(c.Dir, "ca"), name, hosts)
	if err != nil {
		return nil, err
	}
	c.CAFile = files.CA
	api, err := freePort()
	if err != nil {
		return nil, err
	}
	raft, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &Node{Name: name, Dir: filepath.Join(c.Dir, name), API: api, Raft: raft, Log: &SyncBuffer{}, cluster: c,
		CertFile: files.Cert, KeyFile: files.Key}
	n.args = append([]string{"serve", "--data", n.Dir, "--listen", n.API, "--raft", n.Raft,
		"--tls-cert", files.Cert, "--tls-key", files.Key, "--tls-ca", files.CA,
		"--admin-token-file", filepath.Join(c.Dir, "admin-token")}, c.opts.Args...)
	c.Nodes = append(c.Nodes, n)
	return n, nil
}

// URL is the node's API.
func (n *Node) URL() string { return "https://" + n.API }

// Start starts the node's process (again, after Kill or Stop: from its
// data folder) and waits until it answers /v1/health.
func (n *Node) Start(tb testing.TB) {
	tb.Helper()
	if err := n.start(); err != nil {
		tb.Fatal(err)
	}
}

func (n *Node) start() error {
	n.mu.Lock()
	cmd := exec.Command(n.cluster.Bin, n.args...)
	cmd.Stdout, cmd.Stderr = n.Log, n.Log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	cli, err := n.NewClient("")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			n.mu.Lock()
			n.cmd = nil
			n.mu.Unlock()
			return fmt.Errorf("kmod-catalog %s exited: %v\n%s", n.Name, cmd.ProcessState, n.Log)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Health(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("kmod-catalog %s did not answer in 60 s\n%s", n.Name, n.Log)
}

// Kill sends SIGKILL and waits for the process to end.
func (n *Node) Kill() { n.signal(syscall.SIGKILL) }

// Stop sends SIGTERM (leadership handed over) and waits.
func (n *Node) Stop() { n.signal(syscall.SIGTERM) }

func (n *Node) signal(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, sig)
	select {
	case <-n.done:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
	n.cmd = nil
}

// Running reports whether the node's process runs.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// Client is a catalog client of this node with token (none when "").
func (n *Node) Client(tb testing.TB, token string, opts ...catalog.Option) *catalog.Client {
	tb.Helper()
	cli, err := n.NewClient(token, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return cli
}

// NewClient is Client without a test: no retries unless opts ask.
func (n *Node) NewClient(token string, opts ...catalog.Option) (*catalog.Client, error) {
	o := []catalog.Option{catalog.WithCAFile(n.cluster.CAFile), catalog.WithRetries(0)}
	if token != "" {
		o = append(o, catalog.WithToken(token))
	}
	return catalog.New(n.URL(), append(o, opts...)...)
}

// StopAll stops every node (SIGTERM, then SIGKILL after 60 s).
func (c *Cluster) StopAll() {
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.Stop() }()
	}
	wg.Wait()
}

// Leader returns the node that leads (by its raft address).
func (c *Cluster) Leader(tb testing.TB) *Node {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			h, err := n.Client(tb, "").Health(ctx)
			cancel()
			if err != nil || h.Leader == "" {
				continue
			}
			for _, m := range c.Nodes {
				if m.Raft == h.Leader && m.Running() {
					return m
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	tb.Fatal("no leader in 30 s")
	return nil
}

// WaitVoters waits until the cluster has n voters.
func (c *Cluster) WaitVoters(tb testing.TB, n int) catalog.Health {
	tb.Helper()
	h, err := c.waitVoters(n)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

func (c *Cluster) waitVoters(n int) (catalog.Health, error) {
	deadline := time.Now().Add(60 * time.Second)
	var last catalog.Health
	for time.Now().Before(deadline) {
		for _, node := range c.Nodes {
			if !node.Running() {
				continue
			}
			cli, err := node.NewClient("")
			if err != nil {
				return last, err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			h, err := cli.Health(ctx)
			cancel()
			if err != nil {
				continue
			}
			last = *h
			v := 0
			for _, m := range h.Members {
				if m.Role == "voter" {
					v++
				}
			}
			if v >= n && h.Leader != "" {
				return *h, nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last, fmt.Errorf("cluster did not reach %d voters in 60 s: %+v", n, last)
}

// HTTPClient is a plain HTTP client that trusts the cluster's CA, for
// requests the catalog client would not send.
func HTTPClient(tb testing.TB, c *Cluster) *http.Client {
	tb.Helper()
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// Token creates a token through the admin token and returns its secret.
func (c *Cluster) Token(tb testing.TB, name string, role catalog.Role, instanceID string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var node *Node
	for _, n := range c.Nodes {
		if n.Running() {
			node = n
			break
		}
	}
	if node == nil {
		tb.Fatal("no node runs")
	}
	tk, err := node.Client(tb, c.AdminToken).CreateToken(ctx, catalog.TokenRequest{Name: name, Role: role, InstanceID: instanceID})
	if err != nil {
		tb.Fatal(err)
	}
	return tk.Secret
}
