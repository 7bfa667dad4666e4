package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/catalog/server"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
)

// benchCatalog measures attestations through the HTTP API of a
// three-node kmod-catalog cluster (clients each on its own instance
// token, spread over the nodes) against raw go-dqlite inserts of the same
// rows on the same cluster in the same run (one transaction per
// attestation, as a client of the database would write them, through the
// one connection dqlite needs for writes): the API at saturation, and
// offered the raw rate (open loop) with its latency.
func benchCatalog(bin string, clients, total, modules int) {
	fmt.Printf("\n== catalog: %d attestations of %d modules each, three-node cluster, %d API clients\n", total, modules, clients)
	work, err := os.MkdirTemp("", "kmodctl-bench-catalog-")
	must(err)
	defer os.RemoveAll(work)
	c, err := catalogtest.New(work, bin, 3, catalogtest.Options{Args: []string{"--rate", "1000000", "--burst", "1000000"}})
	if c != nil {
		defer c.StopAll()
	}
	must(err)
	ctx := context.Background()
	admin, err := c.Nodes[0].NewClient(c.AdminToken)
	must(err)

	attestation := func(id string, inst, seq int) *catalog.Attestation {
		a := &catalog.Attestation{ID: id, InstanceID: fmt.Sprintf("i-%05d", inst), BootID: fmt.Sprintf("boot-%d", seq),
			Kernel: "6.1.0-99-amd64", Arch: "amd64", Status: "ok", Covered: true,
			GeneratedAt: time.Unix(int64(1_800_000_000+seq), 0).UTC()}
		for m := 0; m < modules; m++ {
			sum := sha256.Sum256([]byte(fmt.Sprint(id, m)))
			a.Modules = append(a.Modules, catalog.AttestedModule{Name: fmt.Sprintf("mod%02d", m), SHA256: hex.EncodeToString(sum[:]),
				Srcversion: "0123456789ABCDEF0123456", Loaded: true, Verified: true})
		}
		return a
	}

	tokens := make([]string, clients)
	clis := make([]*catalog.Client, clients)
	for i := range tokens {
		tk, err := admin.CreateToken(ctx, catalog.TokenRequest{Name: fmt.Sprintf("bench-%d", i), Role: catalog.RoleInstance, InstanceID: fmt.Sprintf("i-%05d", i)})
		must(err)
		// Clients spread over the three nodes.
		clis[i], err = c.Nodes[i%3].NewClient(tk.Secret, catalog.WithRetries(3))
		must(err)
	}

	// The anchor: raw go-dqlite inserts of the same rows, into a database
	// of the same schema on the same cluster, one transaction each.
	cert, err := tls.LoadX509KeyPair(c.Nodes[0].CertFile, c.Nodes[0].KeyFile)
	must(err)
	pem, err := os.ReadFile(c.CAFile)
	must(err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	store := client.NewInmemNodeStore()
	var infos []client.NodeInfo
	for _, n := range c.Nodes {
		infos = append(infos, client.NodeInfo{Address: n.Raft})
	}
	must(store.Set(ctx, infos))
	drv, err := driver.New(store, driver.WithDialFunc(client.DialFuncWithTLS(client.DefaultDialFunc,
		&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12})))
	must(err)
	sql.Register("dqlite-bench", drv)
	db, err := sql.Open("dqlite-bench", "bench-raw")
	must(err)
	defer db.Close()
	db.SetMaxOpenConns(1)
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = server.NewStore(sctx, db)
	cancel()
	must(err)
	var rawLat []time.Duration
	rawStart := time.Now()
	for j := 0; j < total/2; j++ {
		a := attestation(fmt.Sprintf("raw-%d", j), j%clients, j)
		t0 := time.Now()
		must(rawInsert(ctx, db, a))
		rawLat = append(rawLat, time.Since(t0))
	}
	rawRate := float64(len(rawLat)) / time.Since(rawStart).Seconds()
	sortDur(rawLat)

	// The API at saturation: every client posts its next attestation as
	// soon as the last is acknowledged.
	var mu sync.Mutex
	var satLat []time.Duration
	failed := 0
	var firstErr error
	post := func(i int, id string, seq int, since time.Time) {
		_, err := clis[i].Attest(ctx, attestation(id, i, seq))
		d := time.Since(since)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
			return
		}
		satLat = append(satLat, d)
	}
	var wg sync.WaitGroup
	satStart := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < total/clients; j++ {
				post(i, fmt.Sprintf("sat-%d-%d", i, j), j, time.Now())
			}
		}()
	}
	wg.Wait()
	satRate := float64(len(satLat)) / time.Since(satStart).Seconds()
	sortDur(satLat)
	sat := satLat

	// The API offered the raw rate (open loop: each attestation is sent at
	// its scheduled time, whatever the earlier ones do; latency counts
	// from that time).
	satLat = nil
	n := int(rawRate * 10) // ten seconds
	interval := time.Duration(float64(time.Second) / rawRate)
	offStart := time.Now()
	for k := 0; k < n; k++ {
		at := offStart.Add(time.Duration(k) * interval)
		time.Sleep(time.Until(at))
		wg.Add(1)
		go func() { defer wg.Done(); post(k%clients, fmt.Sprintf("off-%d", k), 1000+k/clients, at) }()
	}
	wg.Wait()
	offRate := float64(len(satLat)) / time.Since(offStart).Seconds()
	sortDur(satLat)

	if firstErr != nil {
		fmt.Printf("  %d failed; the first: %v\n", failed, firstErr)
	}
	ms := func(l []time.Duration, p float64) string {
		if len(l) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f ms", float64(l[int(float64(len(l)-1)*p)])/float64(time.Millisecond))
	}
	report("raw go-dqlite inserts/s (anchor)", fmt.Sprintf("%.0f/s", rawRate), fmt.Sprintf("p50 %s, p99 %s", ms(rawLat, 0.5), ms(rawLat, 0.99)))
	report("catalog API at saturation", fmt.Sprintf("%.0f/s", satRate), fmt.Sprintf("%.2fx raw; p50 %s, p99 %s (%d clients)", satRate/rawRate, ms(sat, 0.5), ms(sat, 0.99), clients))
	report("catalog API offered the raw rate", fmt.Sprintf("%.0f/s", offRate), fmt.Sprintf("%.2fx raw; p50 %s, p99 %s", offRate/rawRate, ms(satLat, 0.5), ms(satLat, 0.99)))
	report("catalog goal: >= 0.5x raw with p99 < 100 ms", fmt.Sprintf("%.2fx", offRate/rawRate), "p99 "+ms(satLat, 0.99)+" at the raw rate")
	if os.Getenv("BENCH_CATALOG_LOGS") != "" {
		for _, n := range c.Nodes {
			fmt.Printf("--- %s log:\n%s\n", n.Name, n.Log)
		}
	}
}

func sortDur(l []time.Duration) { sort.Slice(l, func(i, j int) bool { return l[i] < l[j] }) }

// rawInsert writes one attestation's rows in one transaction, as the API
// does (the same tables and statements), retrying what dqlite asks to.
func rawInsert(ctx context.Context, db *sql.DB, a *catalog.Attestation) error {
	for attempt := 0; ; attempt++ {
		err := func() error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			gen := a.GeneratedAt.UTC().Format("2006-01-02T15:04:05.000000000Z07:00")
			now := time.Now().UTC().Format("2006-01-02T15:04:05.000000000Z07:00")
			if _, err := tx.ExecContext(ctx, `INSERT INTO attestations (id, body_sha256, instance_id, boot_id, kernel, arch, status, covered, pulled, generated_at, recorded_at, report)
				VALUES (?, '', ?, ?, ?, ?, ?, 1, 0, ?, ?, '') ON CONFLICT (id) DO NOTHING`, a.ID, a.InstanceID, a.BootID, a.Kernel, a.Arch, a.Status, gen, now); err != nil {
				return err
			}
			for _, m := range a.Modules {
				if _, err := tx.ExecContext(ctx, `INSERT INTO attested_modules (attestation_id, name, sha256, srcversion, loaded, verified)
					VALUES (?, ?, ?, ?, 1, 1) ON CONFLICT DO NOTHING`, a.ID, m.Name, m.SHA256, m.Srcversion); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO instances (instance_id, attestation_id, generated_at) VALUES (?, ?, ?)
				ON CONFLICT (instance_id) DO UPDATE SET attestation_id = excluded.attestation_id, generated_at = excluded.generated_at
				WHERE excluded.generated_at > instances.generated_at`, a.InstanceID, a.ID, gen); err != nil {
				return err
			}
			return tx.Commit()
		}()
		if err == nil || attempt > 50 {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
