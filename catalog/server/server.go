// Package server is kmod-catalog's HTTP API over a Store. It is pure Go;
// cmd/kmod-catalog runs it on a go-dqlite node. See catalog for the types
// and docs/catalog.mdx for the API.
package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// Server is the catalog's HTTP handler.
type Server struct {
	store *Store
	o     options

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
	tokens   map[string]cachedToken

	attest chan *attestReq
	done   chan struct{}
	wg     sync.WaitGroup
}

// Option configures a Server.
type Option func(*options) error

type options struct {
	maxBody      int64
	maxImport    int64
	rate         rate.Limit
	burst        int
	queryTimeout time.Duration
	tokenTTL     time.Duration
	batch        int
	health       func(ctx context.Context) catalog.Health
	logf         func(format string, args ...any)
	leader       func() (apiURL string, self bool)
	forwardRT    http.RoundTripper
}

// WithMaxBody limits request bodies (default 1 MiB; 413 beyond).
func WithMaxBody(n int64) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("max body: %d is not positive", n)
		}
		o.maxBody = n
		return nil
	}
}

// WithMaxImport limits an import's body (default 1 GiB).
func WithMaxImport(n int64) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("max import: %d is not positive", n)
		}
		o.maxImport = n
		return nil
	}
}

// WithRate sets each token's request rate (per second) and burst
// (default 10/s, burst 20; 429 beyond).
func WithRate(perSecond float64, burst int) Option {
	return func(o *options) error {
		if perSecond <= 0 || burst <= 0 {
			return fmt.Errorf("rate %v burst %d: both must be positive", perSecond, burst)
		}
		o.rate, o.burst = rate.Limit(perSecond), burst
		return nil
	}
}

// WithQueryTimeout is every request's deadline on the database
// (default 10s).
func WithQueryTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("query timeout: %v is not positive", d)
		}
		o.queryTimeout = d
		return nil
	}
}

// WithTokenCache keeps looked-up tokens for d (default 5s): a revoked
// token works at most that long on a node that saw it.
func WithTokenCache(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("token cache: %v is negative", d)
		}
		o.tokenTTL = d
		return nil
	}
}

// WithBatch sets how many attestations one transaction commits at most
// (default 128): concurrent attestations share a commit.
func WithBatch(n int) Option {
	return func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("batch: %d is not positive", n)
		}
		o.batch = n
		return nil
	}
}

// WithHealth sets what /v1/health reports (the node's id and leader).
func WithHealth(f func(ctx context.Context) catalog.Health) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("health function is nil")
		}
		o.health = f
		return nil
	}
}

// WithLeader tells the server where the leader's API is (and whether
// this node leads), with the transport to reach it: attestations a
// follower receives are then forwarded to the leader, whose writer
// commits them in batches. (Every node's SQL runs on the leader anyway;
// batches from several nodes contend there for the one write
// transaction, which dqlite does not queue: forwarding keeps one writer.)
func WithLeader(leader func() (apiURL string, self bool), rt http.RoundTripper) Option {
	return func(o *options) error {
		if leader == nil || rt == nil {
			return errors.New("leader function or transport is nil")
		}
		o.leader, o.forwardRT = leader, rt
		return nil
	}
}

// forwardedHeader marks a request a follower forwarded: never forwarded
// again.
const forwardedHeader = "X-Kmod-Catalog-Forwarded"

// forward sends a write to the leader when this node does not lead and
// copies the answer back; false when the write is to be done here (this
// node leads, no leader is known, or the leader cannot be reached: the
// local write then goes through dqlite to whichever node leads).
func (s *Server) forward(w http.ResponseWriter, r *http.Request, path string, body []byte) bool {
	if s.o.leader == nil || r.Header.Get(forwardedHeader) != "" {
		return false
	}
	url, self := s.o.leader()
	if self || url == "" {
		return false
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, url+path, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Authorization", r.Header.Get("Authorization"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(forwardedHeader, "1")
	resp, err := s.o.forwardRT.RoundTrip(req)
	if err != nil {
		s.o.logf("forward to the leader %s: %v (writing here)", url, err)
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway {
		// The leader is going away: write here.
		_, _ = io.Copy(io.Discard, resp.Body)
		return false
	}
	for _, h := range []string{"Content-Type", "Retry-After"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
	return true
}

// WithLogf logs server errors (default: the log package).
func WithLogf(f func(format string, args ...any)) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("log function is nil")
		}
		o.logf = f
		return nil
	}
}

// New returns a Server on store; Close stops its writer.
func New(store *Store, opts ...Option) (*Server, error) {
	o := options{maxBody: 1 << 20, maxImport: 1 << 30, rate: 10, burst: 20, queryTimeout: 10 * time.Second,
		tokenTTL: 5 * time.Second, batch: 128, logf: log.Printf}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	s := &Server{store: store, o: o, limiters: map[string]*rate.Limiter{}, tokens: map[string]cachedToken{},
		attest: make(chan *attestReq, 4*o.batch), done: make(chan struct{})}
	s.wg.Add(1)
	go s.attestWriter()
	return s, nil
}

// Close stops the attestation writer after the queued ones are written.
func (s *Server) Close() {
	close(s.done)
	s.wg.Wait()
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", s.handleHealth)
	route := func(pattern string, roles []catalog.Role, h func(w http.ResponseWriter, r *http.Request, who *principal) error) {
		mux.HandleFunc(pattern, s.authed(roles, h))
	}
	readers := []catalog.Role{catalog.RoleAuditor, catalog.RoleApprover, catalog.RoleAdmin}
	route("POST /v1/builds", []catalog.Role{catalog.RoleBuilder}, s.postBuild)
	route("GET /v1/builds", append([]catalog.Role{catalog.RoleBuilder}, readers...), s.getBuilds)
	route("POST /v1/approvals", []catalog.Role{catalog.RoleApprover}, s.postApproval)
	route("GET /v1/approvals", append([]catalog.Role{catalog.RoleBuilder}, readers...), s.getApprovals)
	route("POST /v1/attestations", []catalog.Role{catalog.RoleInstance}, s.postAttestation)
	route("GET /v1/instances", readers, s.getInstances)
	route("GET /v1/drift", readers, s.getDrift)
	route("GET /v1/uncovered", readers, s.getUncovered)
	route("GET /v1/who-runs", readers, s.getWhoRuns)
	admin := []catalog.Role{catalog.RoleAdmin}
	route("POST /v1/tokens", admin, s.postToken)
	route("GET /v1/tokens", admin, s.getTokens)
	route("DELETE /v1/tokens/{name}", admin, s.deleteToken)
	route("GET /v1/export", admin, s.getExport)
	route("POST /v1/import", admin, s.postImport)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{code: http.StatusNotFound, msg: fmt.Sprintf("no such API: %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := catalog.Health{}
	if s.o.health != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		h = s.o.health(ctx)
		cancel()
	}
	writeJSON(w, http.StatusOK, h)
}

// apiError is an error answer.
type apiError struct {
	code  int
	msg   string
	field string
}

func (e *apiError) Error() string { return e.msg }

func badField(field, format string, args ...any) *apiError {
	return &apiError{code: http.StatusBadRequest, field: field, msg: field + ": " + fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.code == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.code, catalog.Error{Error: e.msg, Field: e.field})
}

// principal is the caller, from its token.
type principal struct {
	secretSHA256 string
	name         string
	role         catalog.Role
	instanceID   string
}

type cachedToken struct {
	p       *principal
	expires time.Time
}

// authed checks the bearer token, its role and its rate, then runs h
// with a deadline on everything it does.
func (s *Server) authed(roles []catalog.Role, h func(http.ResponseWriter, *http.Request, *principal) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), s.o.queryTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		who, err := s.authenticate(r)
		if err == nil {
			err = allowed(who, roles)
		}
		if err == nil && !s.limiter(who.secretSHA256).Allow() {
			err = &apiError{code: http.StatusTooManyRequests, msg: fmt.Sprintf("token %q: rate limit of %v requests/s (burst %d) exceeded", who.name, float64(s.o.rate), s.o.burst)}
		}
		if err == nil {
			err = h(w, r, who)
		}
		if err != nil {
			var ae *apiError
			switch {
			case errors.As(err, &ae):
			case errors.Is(err, context.DeadlineExceeded):
				ae = &apiError{code: http.StatusServiceUnavailable, msg: "catalog: deadline exceeded (no leader?): " + err.Error()}
			default:
				s.o.logf("%s %s: %v", r.Method, r.URL.Path, err)
				code := http.StatusInternalServerError
				if retryable(err) {
					code = http.StatusServiceUnavailable
				}
				ae = &apiError{code: code, msg: "catalog: " + err.Error()}
			}
			writeError(w, ae)
		}
	}
}

func allowed(who *principal, roles []catalog.Role) error {
	for _, r := range roles {
		if who.role == r {
			return nil
		}
	}
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}
	return &apiError{code: http.StatusForbidden, msg: fmt.Sprintf("token %q has role %s; this needs %s", who.name, who.role, strings.Join(names, " or "))}
}

func secretHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func (s *Server) authenticate(r *http.Request) (*principal, error) {
	h := r.Header.Get("Authorization")
	secret, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || strings.TrimSpace(secret) == "" {
		return nil, &apiError{code: http.StatusUnauthorized, msg: "no bearer token (Authorization: Bearer ...)"}
	}
	hash := secretHash(strings.TrimSpace(secret))
	s.mu.Lock()
	c, ok := s.tokens[hash]
	s.mu.Unlock()
	if ok && time.Now().Before(c.expires) {
		return c.p, nil
	}
	p := &principal{secretSHA256: hash}
	var revoked int
	err := s.store.read(r.Context(), func(tx *sqlTx) error {
		return tx.QueryRowContext(r.Context(), `SELECT name, role, instance_id, revoked FROM tokens WHERE secret_sha256 = ?`, hash).
			Scan(&p.name, &p.role, &p.instanceID, &revoked)
	})
	if errors.Is(err, errNoRows) || (err == nil && revoked != 0) {
		return nil, &apiError{code: http.StatusUnauthorized, msg: "unknown or revoked token"}
	}
	if err != nil {
		return nil, err
	}
	s.cacheToken(p)
	return p, nil
}

func (s *Server) cacheToken(p *principal) {
	if s.o.tokenTTL == 0 {
		return
	}
	s.mu.Lock()
	s.tokens[p.secretSHA256] = cachedToken{p: p, expires: time.Now().Add(s.o.tokenTTL)}
	s.mu.Unlock()
}

func (s *Server) forgetToken(hash string) {
	s.mu.Lock()
	delete(s.tokens, hash)
	s.mu.Unlock()
}

func (s *Server) limiter(key string) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.limiters[key]
	if !ok {
		l = rate.NewLimiter(s.o.rate, s.o.burst)
		s.limiters[key] = l
	}
	return l
}

// decode reads a JSON body into v, strictly: an unknown field, a wrong
// type or trailing data is a 400 naming the field; a body over limit 413.
func decode(w http.ResponseWriter, r *http.Request, limit int64, v any) ([]byte, error) {
	body, err := readBody(w, r, limit)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return nil, jsonError(err)
	}
	if dec.More() {
		return nil, &apiError{code: http.StatusBadRequest, msg: "malformed JSON: data after the object"}
	}
	return body, nil
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	rd := http.MaxBytesReader(w, r.Body, limit)
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := rd.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, &apiError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body over the limit of %d bytes", limit)}
			}
			if err.Error() == "EOF" {
				return []byte(b.String()), nil
			}
			return nil, &apiError{code: http.StatusBadRequest, msg: "reading body: " + err.Error()}
		}
	}
}

func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return &apiError{code: http.StatusBadRequest, msg: fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, err)}
	case errors.As(err, &te):
		return badField(te.Field, "is a JSON %s, want %s", te.Value, te.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		return badField(f, "unknown field")
	case err.Error() == "EOF" || err.Error() == "unexpected EOF":
		return &apiError{code: http.StatusBadRequest, msg: "malformed JSON: empty or truncated body"}
	}
	return &apiError{code: http.StatusBadRequest, msg: "malformed JSON: " + err.Error()}
}

func bodyHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
