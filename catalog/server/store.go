package server

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	dqdriver "github.com/canonical/go-dqlite/driver"
)

// schema is applied at every start (idempotent). Times are RFC 3339 UTC
// text, so they sort as text. Module files are not stored, only digests:
// dqlite keeps the database in memory.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS tokens (
		secret_sha256 TEXT PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		role TEXT NOT NULL,
		instance_id TEXT NOT NULL DEFAULT '',
		created_at TEXT NOT NULL,
		created_by TEXT NOT NULL,
		revoked INTEGER NOT NULL DEFAULT 0)`,
	`CREATE TABLE IF NOT EXISTS builds (
		id TEXT PRIMARY KEY,
		body_sha256 TEXT NOT NULL,
		recorded_at TEXT NOT NULL,
		recorded_by TEXT NOT NULL,
		build_name TEXT NOT NULL,
		image_name TEXT NOT NULL,
		image_id TEXT NOT NULL,
		manifest TEXT NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS builds_image ON builds(image_name, recorded_at)`,
	`CREATE TABLE IF NOT EXISTS build_modules (
		build_id TEXT NOT NULL REFERENCES builds(id),
		kernel TEXT NOT NULL,
		name TEXT NOT NULL,
		version TEXT NOT NULL,
		path TEXT NOT NULL,
		sha256 TEXT NOT NULL,
		srcversion TEXT NOT NULL,
		signer TEXT NOT NULL,
		cert_sha256 TEXT NOT NULL,
		PRIMARY KEY (build_id, kernel, path))`,
	`CREATE INDEX IF NOT EXISTS build_modules_sha ON build_modules(sha256)`,
	`CREATE TABLE IF NOT EXISTS build_bundles (
		build_id TEXT NOT NULL REFERENCES builds(id),
		kernel TEXT NOT NULL,
		arch TEXT NOT NULL,
		reference TEXT NOT NULL,
		digest TEXT NOT NULL,
		PRIMARY KEY (build_id, kernel, arch))`,
	`CREATE INDEX IF NOT EXISTS build_bundles_kernel ON build_bundles(kernel, arch)`,
	`CREATE TABLE IF NOT EXISTS approvals (
		id TEXT PRIMARY KEY,
		body_sha256 TEXT NOT NULL,
		kernel TEXT NOT NULL,
		module TEXT NOT NULL,
		sha256 TEXT NOT NULL,
		note TEXT NOT NULL,
		approved_at TEXT NOT NULL,
		approved_by TEXT NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS approvals_key ON approvals(kernel, sha256)`,
	`CREATE TABLE IF NOT EXISTS attestations (
		id TEXT PRIMARY KEY,
		body_sha256 TEXT NOT NULL,
		instance_id TEXT NOT NULL,
		boot_id TEXT NOT NULL,
		kernel TEXT NOT NULL,
		arch TEXT NOT NULL,
		status TEXT NOT NULL,
		covered INTEGER NOT NULL,
		pulled INTEGER NOT NULL,
		generated_at TEXT NOT NULL,
		recorded_at TEXT NOT NULL,
		report TEXT NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS attestations_instance ON attestations(instance_id, generated_at)`,
	`CREATE TABLE IF NOT EXISTS attested_modules (
		attestation_id TEXT NOT NULL REFERENCES attestations(id),
		name TEXT NOT NULL,
		sha256 TEXT NOT NULL,
		srcversion TEXT NOT NULL,
		loaded INTEGER NOT NULL,
		verified INTEGER NOT NULL,
		PRIMARY KEY (attestation_id, name))`,
	`CREATE INDEX IF NOT EXISTS attested_modules_name ON attested_modules(name, sha256)`,
	// instances holds the latest attestation of each instance (by the
	// report's own time), so the queries read one row per instance.
	// nodes maps each node's raft address to its API, for forwarding.
	`CREATE TABLE IF NOT EXISTS nodes (
		raft_address TEXT PRIMARY KEY,
		api_url TEXT NOT NULL,
		updated_at TEXT NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS instances (
		instance_id TEXT PRIMARY KEY,
		attestation_id TEXT NOT NULL,
		generated_at TEXT NOT NULL)`,
}

// Store is the catalog's database: a *sql.DB on dqlite (or any SQLite
// driver with the same dialect).
type Store struct {
	db *sql.DB
}

// NewStore applies the schema (retrying like every write) and returns the
// store. db should allow one open connection: dqlite does not wait on a
// busy database, so concurrent write transactions fail at once.
func NewStore(ctx context.Context, db *sql.DB) (*Store, error) {
	s := &Store{db: db}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for _, q := range schema {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("schema: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// tx runs fn in a transaction and commits, retrying the whole transaction
// while the error is one a retry can cure (leader change, lost
// connection, busy database) and ctx lasts. fn must only touch the
// database: it may run more than once. A commit that failed with a lost
// connection may still have been applied, which is why every write is
// idempotent (keyed by id, INSERT ... ON CONFLICT).
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := s.txOnce(ctx, fn)
		if err == nil || !retryable(err) {
			return err
		}
		// Busy (another node's transaction holds the leader's database)
		// clears in milliseconds; a leader change takes seconds: start
		// short and back off, with jitter so nodes do not retry in step.
		d := min(time.Millisecond<<min(attempt, 7), 100*time.Millisecond)
		d += time.Duration(rand.Int64N(int64(d)))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (retried %d times until: %v)", err, attempt+1, ctx.Err())
		case <-time.After(d):
		}
	}
}

func (s *Store) txOnce(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// read runs a read-only query function, retried like tx.
func (s *Store) read(ctx context.Context, fn func(*sql.Tx) error) error {
	return s.tx(ctx, fn)
}

// retryable: the error is one a new attempt may cure.
func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var de dqdriver.Error // a value type: errors.As needs a value target
	if errors.As(err, &de) {
		return de.Code&0xff == dqdriver.ErrBusy || de.Code&0xff == 6 // SQLITE_LOCKED
	}
	if errors.Is(err, dqdriver.ErrNoAvailableLeader) {
		return true
	}
	// database/sql turns dqlite's not-leader and network errors into
	// driver.ErrBadConn before a statement is sent, and returns "driver:
	// bad connection" inside a transaction.
	msg := err.Error()
	return strings.Contains(msg, "bad connection") || strings.Contains(msg, "not leader") ||
		strings.Contains(msg, "leadership lost") || strings.Contains(msg, "no available dqlite leader")
}

// timeFormat has a fixed width, so stored times sort as text.
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

func now() string { return fmtTime(time.Now()) }

func fmtTime(t time.Time) string { return t.UTC().Format(timeFormat) }

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Short names for the database/sql types the handlers use.
type sqlTx = sql.Tx

var errNoRows = sql.ErrNoRows

// RegisterNode records the API URL of the node at raftAddress (each node
// does at start).
func (s *Store) RegisterNode(ctx context.Context, raftAddress, apiURL string) error {
	return s.tx(ctx, func(tx *sqlTx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO nodes (raft_address, api_url, updated_at) VALUES (?, ?, ?)
			ON CONFLICT (raft_address) DO UPDATE SET api_url = excluded.api_url, updated_at = excluded.updated_at`, raftAddress, apiURL, now())
		return err
	})
}

// NodeAPI is the API URL the node at raftAddress registered ("" when none).
func (s *Store) NodeAPI(ctx context.Context, raftAddress string) (string, error) {
	var url string
	err := s.read(ctx, func(tx *sqlTx) error {
		err := tx.QueryRowContext(ctx, `SELECT api_url FROM nodes WHERE raft_address = ?`, raftAddress).Scan(&url)
		if err == errNoRows {
			url, err = "", nil
		}
		return err
	})
	return url, err
}
