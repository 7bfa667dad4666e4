//go:build cgo

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/catalog/devca"
	"github.com/kmodctl/packer-plugin-kmod/catalog/server"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/version"
)

type serveFlags struct {
	data, listen, raft       string
	advertise                string
	join                     []string
	cert, key, ca            string
	dev                      bool
	devDir                   string
	devHosts                 []string
	adminTokenFile           string
	rate                     float64
	burst, batch             int
	maxBody                  int64
	queryTimeout, tokenCache time.Duration
	readyTimeout             time.Duration
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve --data DIR --listen ADDR [--join ADDR,...]",
		Short: "Run a catalog node (the first node bootstraps; others --join it)",
		Long: `Runs one node: the HTTPS API on --listen, the dqlite node on --raft.
The first node of a cluster starts without --join; the others name the raft
address of one or more running nodes with --join (honoured on the first start
only: afterwards the data folder knows the cluster). Three nodes tolerate one
failure. SIGTERM or SIGINT hands leadership over, then stops.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return serve(cmd.Context(), &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.data, "data", "", "data folder (created; keep it: it is the node's database and identity)")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:8443", "address of the HTTPS API")
	fl.StringVar(&f.raft, "raft", "", "address of the dqlite node, stable across restarts (default: the --listen host, port+1)")
	fl.StringVar(&f.advertise, "advertise", "", "the API URL the other nodes reach this one at (default https://LISTEN)")
	fl.StringSliceVar(&f.join, "join", nil, "raft addresses of running nodes to join (first start only)")
	fl.StringVar(&f.cert, "tls-cert", "", "PEM certificate of this node (API and cluster; needs server and client use)")
	fl.StringVar(&f.key, "tls-key", "", "PEM key of --tls-cert")
	fl.StringVar(&f.ca, "tls-ca", "", "PEM CA that signs every node's certificate (cluster traffic is mutual TLS)")
	fl.BoolVar(&f.dev, "dev", false, "make a throwaway CA and certificate (in --dev-dir) instead of --tls-*; not for production")
	fl.StringVar(&f.devDir, "dev-dir", "", "folder of the --dev CA (default DATA/dev-ca; give nodes the same one to cluster them)")
	fl.StringSliceVar(&f.devHosts, "dev-host", nil, "extra names or addresses for the --dev certificate (127.0.0.1, ::1 and localhost are always in it)")
	fl.StringVar(&f.adminTokenFile, "admin-token-file", "", "admin token: read from this file, or made and written to it (0600) when it does not exist")
	fl.Float64Var(&f.rate, "rate", 10, "requests per second per token (429 beyond)")
	fl.IntVar(&f.burst, "burst", 20, "burst of requests per token")
	fl.IntVar(&f.batch, "batch", 128, "attestations committed in one transaction at most")
	fl.Int64Var(&f.maxBody, "max-body", 1<<20, "largest request body in bytes (413 beyond; imports excepted)")
	fl.DurationVar(&f.queryTimeout, "query-timeout", 10*time.Second, "deadline of each request on the database")
	fl.DurationVar(&f.tokenCache, "token-cache", 5*time.Second, "how long a node keeps a looked-up token (a revocation takes this long on other nodes)")
	fl.DurationVar(&f.readyTimeout, "ready-timeout", 5*time.Minute, "how long to wait for the node to join or find its cluster")
	return cmd
}

func (f *serveFlags) check() error {
	if f.data == "" {
		return errUsage{errors.New("--data is required")}
	}
	if f.dev == (f.cert != "") {
		return errUsage{errors.New("give either --tls-cert, --tls-key and --tls-ca, or --dev")}
	}
	if !f.dev && (f.key == "" || f.ca == "") {
		return errUsage{errors.New("--tls-cert needs --tls-key and --tls-ca")}
	}
	host, port, err := net.SplitHostPort(f.listen)
	if err != nil {
		return errUsage{fmt.Errorf("--listen %q: %w", f.listen, err)}
	}
	if f.raft == "" {
		p, err := strconv.Atoi(port)
		if err != nil || p == 0 || p >= 65535 {
			return errUsage{fmt.Errorf("--listen %q: give --raft (the default is the next port)", f.listen)}
		}
		f.raft = net.JoinHostPort(host, strconv.Itoa(p+1))
	}
	if h, _, err := net.SplitHostPort(f.raft); err != nil || h == "" || net.ParseIP(h) != nil && net.ParseIP(h).IsUnspecified() {
		return errUsage{fmt.Errorf("--raft %q: needs a host (the address other nodes dial) and a port", f.raft)}
	}
	return nil
}

// tlsFiles returns the node's certificate files, made for --dev.
func (f *serveFlags) tlsFiles() (cert, key, ca string, err error) {
	if !f.dev {
		return f.cert, f.key, f.ca, nil
	}
	dir := f.devDir
	if dir == "" {
		dir = filepath.Join(f.data, "dev-ca")
	}
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	for _, a := range []string{f.listen, f.raft} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" && !contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	for _, h := range f.devHosts {
		if !contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	name := "node-" + strings.NewReplacer(":", "-", "[", "", "]", "").Replace(f.raft)
	files, err := devca.Ensure(dir, name, hosts)
	if err != nil {
		return "", "", "", err
	}
	log.Printf("dev mode: CA %s (clients: --ca-file %s)", files.CA, files.CA)
	return files.Cert, files.Key, files.CA, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func serve(ctx context.Context, f *serveFlags) error {
	if err := f.check(); err != nil {
		return err
	}
	if err := os.MkdirAll(f.data, 0o700); err != nil {
		return fmt.Errorf("--data: %w", err)
	}
	certFile, keyFile, caFile, err := f.tlsFiles()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s: %w", certFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("TLS CA %s: no PEM certificate in it", caFile)
	}

	opts := []app.Option{app.WithAddress(f.raft), app.WithTLS(app.SimpleTLSConfig(cert, pool)),
		app.WithLogFunc(dqliteLog)}
	if len(f.join) > 0 {
		opts = append(opts, app.WithCluster(f.join))
	}
	nodeDir := filepath.Join(f.data, "dqlite")
	if err := os.MkdirAll(nodeDir, 0o700); err != nil {
		return fmt.Errorf("--data: %w", err)
	}
	// go-dqlite v1.11.5 names the node's internal abstract socket
	// "@dqlite-ID", and every bootstrap node has the same ID, so a second
	// catalog on the host (a test, a dev node beside a real one) fails to
	// bind. Its only knob is the snap instance name that it puts in the
	// socket's name: make it unique per raft address.
	os.Setenv("SNAP_INSTANCE_NAME", "kmod-catalog-"+strings.NewReplacer(":", "-", "[", "", "]", "").Replace(f.raft))
	node, err := app.New(nodeDir, opts...)
	if err != nil {
		return fmt.Errorf("dqlite node (data %s, raft %s): %w", f.data, f.raft, err)
	}
	// From here every path ends with a handover (when others can take
	// over) and Close.
	defer func() {
		hctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := node.Handover(hctx); err != nil {
			log.Printf("handover: %v", err)
		}
		if err := node.Close(); err != nil {
			log.Printf("close: %v", err)
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, f.readyTimeout)
	err = node.Ready(rctx)
	cancel()
	if err != nil {
		return fmt.Errorf("dqlite node %s not ready (joining %v): %w", f.raft, f.join, err)
	}
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	db, err := node.Open(octx, "catalog")
	cancel()
	if err != nil {
		return fmt.Errorf("open the catalog database: %w", err)
	}
	defer db.Close()
	// dqlite does not wait on a busy database: one connection serialises
	// the node's transactions (notes §7).
	db.SetMaxOpenConns(1)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	store, err := server.NewStore(sctx, db)
	if err != nil {
		return err
	}
	if f.adminTokenFile != "" {
		secret, err := adminSecret(f.adminTokenFile)
		if err != nil {
			return err
		}
		if err := store.Bootstrap(sctx, "admin", secret); err != nil {
			return fmt.Errorf("admin token: %w", err)
		}
	}
	advertise := f.advertise
	if advertise == "" {
		advertise = "https://" + f.listen
	}
	if err := store.RegisterNode(sctx, f.raft, advertise); err != nil {
		return fmt.Errorf("register the node: %w", err)
	}
	leader := newLeaderTracker(ctx, node, store, f.raft)
	forwardRT := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute, ResponseHeaderTimeout: f.queryTimeout + 5*time.Second}
	health := func(ctx context.Context) catalog.Health {
		h := catalog.Health{NodeID: node.ID(), Address: node.Address(), Version: version.PluginVersion.FormattedVersion()}
		if cli, err := node.Leader(ctx); err == nil {
			if li, err := cli.Leader(ctx); err == nil && li != nil {
				h.Leader = li.Address
			}
			if nodes, err := cli.Cluster(ctx); err == nil {
				for _, n := range nodes {
					h.Members = append(h.Members, catalog.Member{ID: n.ID, Address: n.Address, Role: n.Role.String()})
				}
			}
			cli.Close()
		}
		return h
	}
	srv, err := server.New(store, server.WithRate(f.rate, f.burst), server.WithBatch(f.batch), server.WithMaxBody(f.maxBody),
		server.WithQueryTimeout(f.queryTimeout), server.WithTokenCache(f.tokenCache), server.WithHealth(health),
		server.WithLeader(leader.get, forwardRT))
	if err != nil {
		return errUsage{err}
	}
	defer srv.Close()
	hs := &http.Server{Addr: f.listen, Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 5 * time.Minute, IdleTimeout: 2 * time.Minute,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()
	log.Printf("node %d ready: API https://%s, raft %s", node.ID(), f.listen, f.raft)
	select {
	case err := <-errc:
		return fmt.Errorf("API: %w", err)
	case <-ctx.Done():
	}
	log.Printf("stopping: handing over")
	shctx, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	_ = hs.Shutdown(shctx)
	return nil
}

// adminSecret reads the admin token from path, or makes one and writes it
// there (0600) when the file does not exist.
func adminSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if s == "" {
			return "", fmt.Errorf("--admin-token-file %s: empty", path)
		}
		return s, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	s := server.NewSecret()
	if err := atomicfile.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	log.Printf("admin token written to %s", path)
	return s, nil
}

func dqliteLog(l client.LogLevel, format string, a ...any) {
	if l >= client.LogWarn {
		log.Printf("dqlite: "+format, a...)
	}
}

// leaderTracker knows which node leads and its API URL, polled every
// 500 ms (a request must not wait for a leader lookup).
type leaderTracker struct {
	mu   sync.Mutex
	url  string
	self bool
}

func newLeaderTracker(ctx context.Context, node *app.App, store *server.Store, self string) *leaderTracker {
	t := &leaderTracker{}
	urls := map[string]string{}
	poll := func() {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		cli, err := node.Leader(pctx)
		if err != nil {
			t.set("", false)
			return
		}
		li, err := cli.Leader(pctx)
		cli.Close()
		if err != nil || li == nil {
			t.set("", false)
			return
		}
		if li.Address == self {
			t.set("", true)
			return
		}
		url, ok := urls[li.Address]
		if !ok {
			if url, err = store.NodeAPI(pctx, li.Address); err != nil {
				t.set("", false)
				return
			}
			if url != "" {
				urls[li.Address] = url
			}
		}
		t.set(url, false)
	}
	poll()
	go func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				poll()
			}
		}
	}()
	return t
}

func (t *leaderTracker) set(url string, self bool) {
	t.mu.Lock()
	t.url, t.self = url, self
	t.mu.Unlock()
}

func (t *leaderTracker) get() (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.url, t.self
}
