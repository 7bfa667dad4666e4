package bundle

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kmodctl/packer-plugin-kmod/internal/capool"
)

// Option configures registry access, verification and limits. Like
// go-containerregistry's remote options, an option returns an error when
// its argument is unusable.
type Option func(*options) error

type options struct {
	auth       authn.Authenticator
	keychain   authn.Keychain
	rootCAs    *x509.CertPool
	plainHTTP  bool
	trusted    []*x509.Certificate
	progress   func(Progress)
	jobs       int
	userAgent  string
	retries    int
	limits     Limits
	kernelTags bool
	merge      bool
	transport  http.RoundTripper
}

// Limits bound what is read from a registry or a layout; anything above
// is refused before it is read whole.
type Limits struct {
	// Manifest, Config and Layer bound one document or blob, in bytes;
	// Total bounds all the files of one kernel's bundle.
	Manifest, Config, Layer, Total int64
}

// DefaultLimits are the limits without WithLimits.
var DefaultLimits = Limits{Manifest: DefaultMaxManifest, Config: DefaultMaxConfig, Layer: DefaultMaxLayer, Total: DefaultMaxTotal}

// Progress reports a transfer: bytes done of total (total is 0 when not
// known yet).
type Progress struct {
	Done, Total int64
}

func makeOptions(opts []Option) (*options, error) {
	o := &options{limits: DefaultLimits, jobs: 8, retries: 5, kernelTags: true}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// WithBasicAuth authenticates with a username and password.
func WithBasicAuth(username, password string) Option {
	return func(o *options) error {
		if username == "" {
			return errors.New("registry username is empty")
		}
		o.auth = &authn.Basic{Username: username, Password: password}
		return nil
	}
}

// WithToken authenticates with a registry token, sent as a bearer token
// (for registries that take a personal access token as a password, use
// WithBasicAuth instead).
func WithToken(token string) Option {
	return func(o *options) error {
		if token == "" {
			return errors.New("registry token is empty")
		}
		o.auth = authn.FromConfig(authn.AuthConfig{RegistryToken: token})
		return nil
	}
}

// WithAuth authenticates with any go-containerregistry authenticator.
func WithAuth(a authn.Authenticator) Option {
	return func(o *options) error {
		if a == nil {
			return errors.New("registry authenticator is nil")
		}
		o.auth = a
		return nil
	}
}

// WithKeychain takes credentials from a keychain. The default, when no
// authentication option is given, is authn.DefaultKeychain: the Docker
// config ($DOCKER_CONFIG/config.json, ~/.docker/config.json), its
// credential helpers, and $REGISTRY_AUTH_FILE / podman's auth.json.
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) error {
		if k == nil {
			return errors.New("registry keychain is nil")
		}
		o.keychain = k
		return nil
	}
}

// WithAuthFile takes credentials from a Docker-style auth file (a
// config.json with "auths" or "credHelpers").
func WithAuthFile(path string) Option {
	return func(o *options) error {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("registry auth file: %w", err)
		}
		f.Close()
		o.keychain = authFileKeychain{path: path}
		return nil
	}
}

// WithCAFile trusts the PEM certificates in path for the registry's TLS,
// besides the system's.
func WithCAFile(path string) Option {
	return func(o *options) error {
		pool, err := capool.Load(path)
		if err != nil {
			return fmt.Errorf("CA file: %w", err)
		}
		o.rootCAs = pool
		return nil
	}
}

// WithPlainHTTP allows plain HTTP to the registry. Without it every
// request goes over TLS, loopback and private addresses included (where
// go-containerregistry alone would fall back to HTTP).
func WithPlainHTTP() Option {
	return func(o *options) error { o.plainHTTP = true; return nil }
}

// WithTrustedCerts gives the certificates module signatures must verify
// against (Fetch requires at least one).
func WithTrustedCerts(certs ...*x509.Certificate) Option {
	return func(o *options) error {
		for _, c := range certs {
			if c == nil {
				return errors.New("nil trusted certificate")
			}
		}
		o.trusted = append(o.trusted, certs...)
		return nil
	}
}

// WithProgress calls f as bytes move (from one goroutine at a time).
// Without it nothing is reported.
func WithProgress(f func(Progress)) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("progress function is nil")
		}
		o.progress = f
		return nil
	}
}

// WithJobs sets how many blobs move at once (default 8: module files are
// small, so round trips, not bandwidth, bound a transfer).
func WithJobs(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("jobs %d: want at least 1", n)
		}
		o.jobs = n
		return nil
	}
}

// WithRetries sets how many times a request is retried on 408, 429, 5xx
// and dropped or refused connections, with exponential backoff from
// 250 ms (default 5).
func WithRetries(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("retries %d: want 0 or more", n)
		}
		o.retries = n
		return nil
	}
}

// WithUserAgent sets the User-Agent's product.
func WithUserAgent(ua string) Option {
	return func(o *options) error {
		if ua == "" || strings.ContainsFunc(ua, unicode.IsControl) {
			return fmt.Errorf("user agent %q: want a non-empty product without control characters", ua)
		}
		o.userAgent = ua
		return nil
	}
}

// WithLimits replaces the default limits; a zero field keeps its default.
func WithLimits(l Limits) Option {
	return func(o *options) error {
		for _, v := range []int64{l.Manifest, l.Config, l.Layer, l.Total} {
			if v < 0 {
				return fmt.Errorf("limit %d: want 0 (default) or more", v)
			}
		}
		if l.Manifest > 0 {
			o.limits.Manifest = l.Manifest
		}
		if l.Config > 0 {
			o.limits.Config = l.Config
		}
		if l.Layer > 0 {
			o.limits.Layer = l.Layer
		}
		if l.Total > 0 {
			o.limits.Total = l.Total
		}
		return nil
	}
}

// WithoutKernelTags makes Push tag only the index, not each kernel's
// manifest.
func WithoutKernelTags() Option {
	return func(o *options) error { o.kernelTags = false; return nil }
}

// WithMerge makes Push keep the kernels of the index already at the
// location's tag that it does not replace (same release and arch), so a
// bundle can grow one kernel at a time.
func WithMerge() Option {
	return func(o *options) error { o.merge = true; return nil }
}

// WithTransport replaces the base HTTP transport (TLS settings of
// WithCAFile are then the caller's).
func WithTransport(t http.RoundTripper) Option {
	return func(o *options) error {
		if t == nil {
			return errors.New("registry transport is nil")
		}
		o.transport = t
		return nil
	}
}

// baseTransport is the HTTP transport under everything: TLS with the
// extra CAs, and the guard (no plain HTTP unless allowed, manifest size
// limit).
func (o *options) baseTransport() http.RoundTripper {
	base := o.transport
	if base == nil {
		t := remote.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: o.rootCAs, MinVersion: tls.VersionTLS12}
		base = t
	}
	return &guard{next: base, plainHTTP: o.plainHTTP, maxManifest: o.limits.Manifest}
}

func (o *options) backoff() remote.Backoff {
	return remote.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: o.retries + 1}
}

func (o *options) ua() string {
	if o.userAgent != "" {
		return o.userAgent
	}
	return "kmodctl-bundle"
}

// retryStatusCodes are retried with backoff (go-containerregistry's list).
var retryStatusCodes = []int{http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
	http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout}

// remoteOptions turns o into go-containerregistry remote options.
func (o *options) remoteOptions() []remote.Option {
	ro := []remote.Option{
		remote.WithTransport(o.baseTransport()),
		remote.WithJobs(o.jobs),
		remote.WithRetryBackoff(o.backoff()),
		remote.WithRetryPredicate(retryable),
		remote.WithRetryStatusCodes(retryStatusCodes...),
		remote.WithUserAgent(o.ua()),
	}
	switch {
	case o.auth != nil:
		ro = append(ro, remote.WithAuth(o.auth))
	case o.keychain != nil:
		ro = append(ro, remote.WithAuthFromKeychain(o.keychain))
	default:
		ro = append(ro, remote.WithAuthFromKeychain(authn.DefaultKeychain))
	}
	return ro
}

// retryable: go-containerregistry's temporary errors plus dropped and
// refused connections (a registry restarting).
func retryable(err error) bool {
	if err == nil {
		return false
	}
	var te *transport.Error
	if errors.As(err, &te) {
		return te.Temporary()
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, net.ErrClosed) ||
		isTimeout(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// guard is the bottom transport: it refuses plain HTTP unless allowed and
// cuts manifest responses at the limit (go-containerregistry reads them
// whole).
type guard struct {
	next        http.RoundTripper
	plainHTTP   bool
	maxManifest int64
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.plainHTTP {
		return nil, &plainHTTPError{host: req.URL.Host}
	}
	resp, err := g.next.RoundTrip(req)
	if err != nil || resp == nil {
		return resp, err
	}
	if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/manifests/") {
		if resp.ContentLength > g.maxManifest {
			resp.Body.Close()
			return nil, &limitError{what: "manifest " + req.URL.Path, size: resp.ContentLength, limit: g.maxManifest}
		}
		resp.Body = &limitedBody{rc: resp.Body, left: g.maxManifest, what: "manifest " + req.URL.Path, limit: g.maxManifest}
	}
	return resp, nil
}

type plainHTTPError struct{ host string }

func (e *plainHTTPError) Error() string {
	return fmt.Sprintf("%s: plain HTTP refused (TLS failed or the registry speaks HTTP only; allow it with plain_http / --plain-http)", e.host)
}

// limitError is a size above a limit.
type limitError struct {
	what        string
	size, limit int64
}

func (e *limitError) Error() string {
	if e.size < 0 {
		return fmt.Sprintf("%s: more than %d bytes, the limit", e.what, e.limit)
	}
	return fmt.Sprintf("%s: %d bytes, the limit is %d", e.what, e.size, e.limit)
}

// ErrTooLarge is wrapped by errors about sizes above a limit.
var ErrTooLarge = errors.New("above the size limit")

func (e *limitError) Unwrap() error { return ErrTooLarge }

type limitedBody struct {
	rc          io.ReadCloser
	left, limit int64
	what        string
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		// One byte more tells a body at the limit from one above it.
		var one [1]byte
		if n, _ := l.rc.Read(one[:]); n > 0 {
			return 0, &limitError{what: l.what, size: -1, limit: l.limit}
		}
		return l.rc.Read(p)
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.rc.Read(p)
	l.left -= int64(n)
	return n, err
}

func (l *limitedBody) Close() error { return l.rc.Close() }
