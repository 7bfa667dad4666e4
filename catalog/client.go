package catalog

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/capool"
)

// Client talks to a kmod-catalog node. Writes are retried (with the same id,
// so never duplicated) on network errors, 429 and 5xx answers, with
// exponential backoff, until the retries or the context run out.
type Client struct {
	base    *url.URL
	token   string
	http    *http.Client
	retries int
	backoff time.Duration
}

// Option configures a Client.
type Option func(*options) error

type options struct {
	token     string
	rootCAs   *x509.CertPool
	plainHTTP bool
	retries   int
	backoff   time.Duration
	timeout   time.Duration
	transport http.RoundTripper
}

// WithToken sets the bearer token.
func WithToken(token string) Option {
	return func(o *options) error {
		token = strings.TrimSpace(token)
		if token == "" {
			return errors.New("catalog token is empty")
		}
		o.token = token
		return nil
	}
}

// WithTokenFile reads the bearer token from a file (its first line).
func WithTokenFile(path string) Option {
	return func(o *options) error {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("catalog token file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		if strings.TrimSpace(line) == "" {
			return fmt.Errorf("catalog token file %s: empty", path)
		}
		o.token = strings.TrimSpace(line)
		return nil
	}
}

// WithCAFile trusts the PEM certificates in path for the catalog's TLS,
// besides the system's.
func WithCAFile(path string) Option {
	return func(o *options) error {
		pool, err := capool.Load(path)
		if err != nil {
			return fmt.Errorf("catalog CA file: %w", err)
		}
		o.rootCAs = pool
		return nil
	}
}

// WithPlainHTTP allows an http:// URL (refused otherwise: tokens travel in
// every request).
func WithPlainHTTP() Option {
	return func(o *options) error { o.plainHTTP = true; return nil }
}

// WithRetries sets how many times a failed request is retried (default 5).
func WithRetries(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("catalog retries: %d is negative", n)
		}
		o.retries = n
		return nil
	}
}

// WithBackoff sets the first retry's delay (default 250ms; doubled each
// time, with jitter, at most 30s).
func WithBackoff(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("catalog backoff: %v is not positive", d)
		}
		o.backoff = d
		return nil
	}
}

// WithTimeout bounds each attempt (default 30s); the caller's context
// bounds the whole call.
func WithTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("catalog timeout: %v is not positive", d)
		}
		o.timeout = d
		return nil
	}
}

// WithTransport replaces the HTTP transport (WithCAFile's TLS settings
// are then the caller's).
func WithTransport(t http.RoundTripper) Option {
	return func(o *options) error {
		if t == nil {
			return errors.New("catalog transport is nil")
		}
		o.transport = t
		return nil
	}
}

// New returns a client of the catalog at rawURL (https://host:port).
func New(rawURL string, opts ...Option) (*Client, error) {
	o := options{retries: 5, backoff: 250 * time.Millisecond, timeout: 30 * time.Second}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("catalog url %q: %w", rawURL, err)
	}
	switch {
	case u.Host == "":
		return nil, fmt.Errorf("catalog url %q: no host", rawURL)
	case u.Scheme == "http" && !o.plainHTTP:
		return nil, fmt.Errorf("catalog url %q: plain HTTP is not allowed (tokens would travel in the clear); use https", rawURL)
	case u.Scheme != "https" && u.Scheme != "http":
		return nil, fmt.Errorf("catalog url %q: scheme must be https", rawURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	t := o.transport
	if t == nil {
		ht := http.DefaultTransport.(*http.Transport).Clone()
		ht.TLSClientConfig = &tls.Config{RootCAs: o.rootCAs, MinVersion: tls.VersionTLS12}
		// No proxy: the catalog is reached directly (an instance's
		// environment may name a proxy meant for other traffic).
		ht.Proxy = nil
		t = ht
	}
	return &Client{base: u, token: o.token, http: &http.Client{Transport: t, Timeout: o.timeout},
		retries: o.retries, backoff: o.backoff}, nil
}

// NewID returns a random id for a write (keep it across retries).
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

// StatusError is an answer other than 2xx.
type StatusError struct {
	Method, Path string
	Code         int
	Message      string
	Field        string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if e.Field != "" && !strings.Contains(msg, e.Field) {
		msg = e.Field + ": " + msg
	}
	return fmt.Sprintf("catalog %s %s: %d %s: %s", e.Method, e.Path, e.Code, http.StatusText(e.Code), msg)
}

// retryable says whether an answer may succeed when sent again.
func retryable(code int) bool {
	return code == http.StatusTooManyRequests || code == http.StatusBadGateway ||
		code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout ||
		code == http.StatusInternalServerError
}

// do sends one request (with retries) and decodes a 2xx answer into out.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("catalog %s %s: %w", method, path, err)
		}
		body = b
	}
	u := *c.base
	u.Path += path
	if query != nil {
		u.RawQuery = query.Encode()
	}
	var last error
	for attempt := 0; ; attempt++ {
		retryAfter, err := c.once(ctx, method, u.String(), path, body, out)
		if err == nil {
			return nil
		}
		last = err
		var se *StatusError
		if errors.As(err, &se) && !retryable(se.Code) {
			return err
		}
		if ctx.Err() != nil || attempt >= c.retries {
			return last
		}
		d := time.Duration(float64(c.backoff) * math.Pow(2, float64(attempt)))
		d = min(d+time.Duration(mrand.Int64N(int64(d)/2+1)), 30*time.Second)
		d = max(d, retryAfter)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (giving up: %v)", last, ctx.Err())
		case <-time.After(d):
		}
	}
}

func (c *Client) once(ctx context.Context, method, rawURL, path string, body []byte, out any) (time.Duration, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, rawURL, r)
	if err != nil {
		return 0, fmt.Errorf("catalog %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("catalog %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return time.Duration(ra) * time.Second, &StatusError{Method: method, Path: path, Code: resp.StatusCode, Message: e.Error, Field: e.Field}
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return 0, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return 0, fmt.Errorf("catalog %s %s: answer: %w", method, path, err)
	}
	return 0, nil
}

// RecordBuild records a build; b.ID is set to a new id when empty.
func (c *Client) RecordBuild(ctx context.Context, b *Build) (*Build, error) {
	if b.ID == "" {
		b.ID = NewID()
	}
	var out Build
	return &out, c.do(ctx, http.MethodPost, "/v1/builds", nil, b, &out)
}

// Builds lists recorded builds, newest first; image filters by image name.
func (c *Client) Builds(ctx context.Context, image string) ([]Build, error) {
	q := url.Values{}
	if image != "" {
		q.Set("image", image)
	}
	var out []Build
	return out, c.do(ctx, http.MethodGet, "/v1/builds", q, nil, &out)
}

// Approve approves a module digest for a kernel; a.ID is set when empty.
func (c *Client) Approve(ctx context.Context, a *Approval) (*Approval, error) {
	if a.ID == "" {
		a.ID = NewID()
	}
	var out Approval
	return &out, c.do(ctx, http.MethodPost, "/v1/approvals", nil, a, &out)
}

// Approvals lists approvals; kernel filters by kernel release.
func (c *Client) Approvals(ctx context.Context, kernel string) ([]Approval, error) {
	q := url.Values{}
	if kernel != "" {
		q.Set("kernel", kernel)
	}
	var out []Approval
	return out, c.do(ctx, http.MethodGet, "/v1/approvals", q, nil, &out)
}

// Attest posts an attestation; a.ID must be set (see AttestationID).
func (c *Client) Attest(ctx context.Context, a *Attestation) (*Attestation, error) {
	if a.ID == "" {
		return nil, errors.New("catalog attestation: id is empty")
	}
	var out Attestation
	return &out, c.do(ctx, http.MethodPost, "/v1/attestations", nil, a, &out)
}

// Instances lists the latest attestation of every instance.
func (c *Client) Instances(ctx context.Context) ([]Instance, error) {
	var out []Instance
	return out, c.do(ctx, http.MethodGet, "/v1/instances", nil, nil, &out)
}

// Drift lists loaded modules no approval covers.
func (c *Client) Drift(ctx context.Context) ([]Drift, error) {
	var out []Drift
	return out, c.do(ctx, http.MethodGet, "/v1/drift", nil, nil, &out)
}

// Uncovered lists running kernels no recorded bundle covers.
func (c *Client) Uncovered(ctx context.Context) ([]Uncovered, error) {
	var out []Uncovered
	return out, c.do(ctx, http.MethodGet, "/v1/uncovered", nil, nil, &out)
}

// WhoRuns lists instances that load module (optionally only the given
// version or sha256).
func (c *Client) WhoRuns(ctx context.Context, module, version, sha256 string) ([]Running, error) {
	q := url.Values{"module": {module}}
	if version != "" {
		q.Set("version", version)
	}
	if sha256 != "" {
		q.Set("sha256", sha256)
	}
	var out []Running
	return out, c.do(ctx, http.MethodGet, "/v1/who-runs", q, nil, &out)
}

// CreateToken creates a token (admin); the answer carries its secret.
func (c *Client) CreateToken(ctx context.Context, r TokenRequest) (*Token, error) {
	var out Token
	return &out, c.do(ctx, http.MethodPost, "/v1/tokens", nil, r, &out)
}

// Tokens lists tokens without secrets (admin).
func (c *Client) Tokens(ctx context.Context) ([]Token, error) {
	var out []Token
	return out, c.do(ctx, http.MethodGet, "/v1/tokens", nil, nil, &out)
}

// RevokeToken revokes a token by name (admin).
func (c *Client) RevokeToken(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(name), nil, nil, nil)
}

// Export reads the whole catalog (admin).
func (c *Client) Export(ctx context.Context) (*Export, error) {
	var out Export
	return &out, c.do(ctx, http.MethodGet, "/v1/export", nil, nil, &out)
}

// Import loads an export into an empty catalog (admin).
func (c *Client) Import(ctx context.Context, e *Export) error {
	return c.do(ctx, http.MethodPost, "/v1/import", nil, e, nil)
}

// Health reads a node's status (no token needed).
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var out Health
	return &out, c.do(ctx, http.MethodGet, "/v1/health", nil, nil, &out)
}
