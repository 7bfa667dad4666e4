package catalog_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/canonical/go-dqlite/client"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
)

// writer posts attestations with ids w<i>-<seq>, one at a time, each
// until acknowledged: on an error it tries the next running node with the
// same id (writes are idempotent). acked holds the acknowledged ids.
type writer struct {
	i       int
	clients []*catalog.Client
	nodes   []*catalogtest.Node
	mu      sync.Mutex
	acked   []string
	retries int
}

func (w *writer) run(ctx context.Context, t *testing.T, total *atomic.Int64) {
	next := w.i
	for seq := 0; ctx.Err() == nil; seq++ {
		a := &catalog.Attestation{ID: fmt.Sprintf("w%d-%d", w.i, seq), InstanceID: fmt.Sprintf("inst-%d", w.i), BootID: fmt.Sprintf("boot-%d", seq),
			Kernel: "6.1.0-99-amd64", Arch: "amd64", Status: "ok", GeneratedAt: time.Unix(int64(1_800_000_000+seq), 0).UTC(),
			Modules: []catalog.AttestedModule{{Name: "kma", SHA256: sum(fmt.Sprint(seq)), Loaded: true, Verified: true}}}
		for ctx.Err() == nil {
			node := next % len(w.clients)
			if !w.nodes[node].Running() {
				next++
				continue
			}
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := w.clients[node].Attest(actx, a)
			cancel()
			if err == nil {
				w.mu.Lock()
				w.acked = append(w.acked, a.ID)
				w.mu.Unlock()
				total.Add(1)
				break
			}
			var se *catalog.StatusError
			if errors.As(err, &se) && se.Code < 500 && se.Code != 429 {
				t.Errorf("writer %d: %v", w.i, err)
				return
			}
			w.retries++
			next++
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// present returns the attestation ids the catalog holds, read through node.
func present(t *testing.T, n *catalogtest.Node, admin string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var exp *catalog.Export
	var err error
	for i := 0; i < 20; i++ {
		if exp, err = n.Client(t, admin).Export(ctx); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("export through %s: %v", n.Name, err)
	}
	ids := map[string]bool{}
	for _, a := range exp.Attestations {
		ids[a.ID] = true
	}
	return ids
}

func missing(acked []string, have map[string]bool) []string {
	var out []string
	for _, id := range acked {
		if !have[id] {
			out = append(out, id)
		}
	}
	return out
}

// TestClusterKillLeader: three nodes under a write load from several
// clients, the leader killed with SIGKILL in the middle. Every
// acknowledged write is there afterwards, writes resume, the killed node
// catches up from its data folder, and all three restart from theirs.
func TestClusterKillLeader(t *testing.T) {
	c := catalogtest.Start(t, 3, catalogtest.Options{Args: []string{"--rate", "100000", "--burst", "100000"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	admin := c.Nodes[0].Client(t, c.AdminToken)
	const writers = 4
	ws := make([]*writer, writers)
	for i := range ws {
		tk, err := admin.CreateToken(ctx, catalog.TokenRequest{Name: fmt.Sprintf("inst-%d", i), Role: catalog.RoleInstance, InstanceID: fmt.Sprintf("inst-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		w := &writer{i: i, nodes: c.Nodes}
		for _, n := range c.Nodes {
			w.clients = append(w.clients, n.Client(t, tk.Secret))
		}
		ws[i] = w
	}
	var total atomic.Int64
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(wctx, t, &total) }()
	}
	waitFor := func(n int64, what string) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for total.Load() < n {
			if time.Now().After(deadline) {
				stop()
				wg.Wait()
				t.Fatalf("%s: %d writes acknowledged, waiting for %d", what, total.Load(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(200, "before the kill")
	leader := c.Leader(t)
	atKill := total.Load()
	leader.Kill()
	t.Logf("killed the leader %s (raft %s) after %d acknowledged writes", leader.Name, leader.Raft, atKill)
	waitFor(atKill+200, "after the kill (writes must resume)")
	stop()
	wg.Wait()
	var acked []string
	retries := 0
	for _, w := range ws {
		acked = append(acked, w.acked...)
		retries += w.retries
	}
	var survivor *catalogtest.Node
	for _, n := range c.Nodes {
		if n.Running() {
			survivor = n
			break
		}
	}
	have := present(t, survivor, c.AdminToken)
	if m := missing(acked, have); len(m) > 0 {
		t.Fatalf("%d of %d acknowledged writes are missing after the kill: %v", len(m), len(acked), m[:min(len(m), 10)])
	}
	t.Logf("%d writes acknowledged (%d after the kill, %d attempts retried on another node), all %d present; %d records in all",
		len(acked), int64(len(acked))-atKill, retries, len(acked), len(have))

	// The killed node restarts from its data folder and catches up: made
	// leader (raft hands leadership only to a node that has the log), it
	// answers every acknowledged write from its own copy.
	leader.Start(t)
	c.WaitVoters(t, 3)
	transfer(t, c, leader)
	if got := c.Leader(t); got != leader {
		t.Fatalf("leadership went to %s, not the restarted %s", got.Name, leader.Name)
	}
	if m := missing(acked, present(t, leader, c.AdminToken)); len(m) > 0 {
		t.Fatalf("the restarted node misses %d acknowledged writes: %v", len(m), m[:min(len(m), 10)])
	}

	// All three stopped and restarted from their data folders.
	c.StopAll()
	var swg sync.WaitGroup
	for _, n := range c.Nodes {
		swg.Add(1)
		go func() { defer swg.Done(); n.Start(t) }()
	}
	swg.Wait()
	c.WaitVoters(t, 3)
	after := present(t, c.Nodes[2], c.AdminToken)
	if m := missing(acked, after); len(m) > 0 {
		t.Fatalf("after restarting all three, %d acknowledged writes are missing: %v", len(m), m[:min(len(m), 10)])
	}
	if _, err := ws[0].clients[1].Attest(ctx, &catalog.Attestation{ID: "after-restart", InstanceID: "inst-0", BootID: "b", Kernel: "6.1.0-99-amd64",
		Arch: "amd64", Status: "ok", GeneratedAt: time.Now().UTC()}); err != nil {
		t.Fatalf("write after restarting all three: %v", err)
	}
}

// transfer makes n the leader with go-dqlite's client (mutual TLS with a
// node's certificate).
func transfer(t *testing.T, c *catalogtest.Cluster, n *catalogtest.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cert, err := tls.LoadX509KeyPair(c.Nodes[0].CertFile, c.Nodes[0].KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(c.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	dial := client.DialFuncWithTLS(client.DefaultDialFunc, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12})
	h := c.WaitVoters(t, 3)
	var id uint64
	for _, m := range h.Members {
		if m.Address == n.Raft {
			id = m.ID
		}
	}
	if id == 0 {
		t.Fatalf("%s (%s) is not a member: %+v", n.Name, n.Raft, h.Members)
	}
	var last error
	for i := 0; i < 20; i++ {
		cli, err := client.New(ctx, c.Leader(t).Raft, client.WithDialFunc(dial))
		if err == nil {
			err = cli.Transfer(ctx, id)
			cli.Close()
		}
		if err == nil {
			return
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("transfer leadership to %s: %v", n.Name, last)
}
