package bundle

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/kmodctl/packer-plugin-kmod/internal/jsonstrict"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// Media types and annotations of the format (docs/bundles.mdx).
const (
	// ArtifactType is the artifactType of every bundle manifest and index.
	ArtifactType = "application/vnd.kmodctl.bundle.v1"
	// ConfigMediaType is the media type of the config blob (Config).
	ConfigMediaType = "application/vnd.kmodctl.bundle.config.v1+json"
	// ModuleMediaType is the media type of a module file layer (.ko,
	// .ko.xz, .ko.zst, .ko.gz, as installed).
	ModuleMediaType = "application/vnd.kmodctl.module.v1"
	// CertMediaType is the media type of a certificate layer (DER).
	CertMediaType = "application/pkix-cert"

	// AnnotationRelease holds the exact kernel release (a tag cannot:
	// see KernelTag).
	AnnotationRelease = "io.kmodctl.kernel.release"
	// AnnotationArch holds the architecture (GOARCH names: amd64, arm64).
	AnnotationArch = "io.kmodctl.arch"
	// AnnotationTitle names a layer's file (oras pull writes it there).
	AnnotationTitle = "org.opencontainers.image.title"
	// AnnotationCreated is the creation time: SOURCE_DATE_EPOCH or the
	// Unix epoch, so the same inputs give the same digest.
	AnnotationCreated = "org.opencontainers.image.created"
	// AnnotationVersion and AnnotationSource are set from the bundle's
	// Version and Source when present.
	AnnotationVersion = "org.opencontainers.image.version"
	AnnotationSource  = "org.opencontainers.image.source"

	// SchemaVersion is the Config schema this package reads and writes.
	SchemaVersion = 1
)

// Limits on what the package reads, by default (see WithLimits).
const (
	DefaultMaxManifest = 4 << 20
	DefaultMaxConfig   = 4 << 20
	DefaultMaxLayer    = 256 << 20
	DefaultMaxTotal    = 1 << 30
	// MaxFiles bounds the layers of one manifest and the entries of an
	// index.
	MaxFiles = 4096
)

// ErrInvalid is wrapped by every error about a malformed bundle: a config,
// manifest or index that breaks a rule of the format.
var ErrInvalid = errors.New("invalid bundle")

// Config is the config blob: what the image manifest of the provisioner
// records for each module, for one kernel release and architecture, and
// the load configuration that goes with them.
type Config struct {
	SchemaVersion int `json:"schemaVersion"`
	// Name and Version name the bundle (optional).
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	Kernel  Kernel `json:"kernel"`
	// Modules are in load order.
	Modules      []Module      `json:"modules"`
	Certificates []Certificate `json:"certificates"`
	Load         Load          `json:"load"`
}

// Kernel is the exact kernel release and architecture a bundle is for.
type Kernel struct {
	Release string `json:"release"`
	// Arch is a GOARCH name (amd64, arm64, ...), as in OCI platforms.
	Arch string `json:"arch"`
}

// Module describes one module file of the bundle.
type Module struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	// File is the layer's title: a plain file name ending in .ko, .ko.xz,
	// .ko.zst or .ko.gz.
	File string `json:"file"`
	// SHA256 is the hex SHA-256 of the file.
	SHA256     string `json:"sha256"`
	Srcversion string `json:"srcversion,omitempty"`
	Vermagic   string `json:"vermagic,omitempty"`
	Signer     string `json:"signer,omitempty"`
	SigKey     string `json:"sig_key,omitempty"`
	// CertSHA256 names the Certificate that verifies the signature.
	CertSHA256 string          `json:"cert_sha256"`
	Early      bool            `json:"early"`
	Load       bool            `json:"load"`
	Depends    []string        `json:"depends,omitempty"`
	Source     manifest.Source `json:"source,omitzero"`
}

// Certificate is a signing certificate carried as a layer (DER). It
// documents who signed; it is never trusted because the bundle carries it.
type Certificate struct {
	SHA256  string `json:"sha256"`
	Subject string `json:"subject"`
	File    string `json:"file"`
}

// Load is the load configuration of the modules: what the provisioner
// writes to modules-load.d and modprobe.d for them. A bundle never carries
// install commands.
type Load struct {
	// Order lists the modules to load at boot, in order.
	Order []string `json:"order"`
	// Options maps a module to its parameters ("param=value ...").
	Options map[string]string `json:"options,omitempty"`
	// Blacklist lists modules whose aliases must not load them.
	Blacklist []string `json:"blacklist,omitempty"`
	// Softdeps maps a module to its soft dependencies ("pre: a post: b").
	Softdeps map[string]string `json:"softdeps,omitempty"`
}

// Module returns the module entry of name.
func (c *Config) Module(name string) (*Module, bool) {
	for i := range c.Modules {
		if c.Modules[i].Name == name {
			return &c.Modules[i], true
		}
	}
	return nil, false
}

// Marshal encodes c (indented, trailing newline) after checking it.
// Equal configs give equal bytes.
func (c *Config) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cc := *c
	if cc.Modules == nil {
		cc.Modules = []Module{}
	}
	if cc.Certificates == nil {
		cc.Certificates = []Certificate{}
	}
	if cc.Load.Order == nil {
		cc.Load.Order = []string{}
	}
	return jsonstrict.Encode(&cc)
}

// ParseConfig decodes a config blob strictly: the schema version must be
// SchemaVersion, unknown or duplicate fields, trailing data and documents
// over DefaultMaxConfig are refused, and so is a config that breaks a
// rule of the format (Validate).
func ParseConfig(data []byte) (*Config, error) {
	if len(data) > DefaultMaxConfig {
		return nil, invalid("config: %d bytes, the limit is %d", len(data), DefaultMaxConfig)
	}
	if err := jsonstrict.CheckKeys(data, 16, nil); err != nil {
		return nil, invalid("config: %v", err)
	}
	var head struct {
		SchemaVersion *int `json:"schemaVersion"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, invalid("config: %v", err)
	}
	if head.SchemaVersion == nil || *head.SchemaVersion != SchemaVersion {
		v := "none"
		if head.SchemaVersion != nil {
			v = fmt.Sprint(*head.SchemaVersion)
		}
		return nil, invalid("config: schemaVersion %s (this program reads %d)", v, SchemaVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, invalid("config: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalid("config: data after the document")
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

var (
	hexSumRE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
	moduleNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,55}$`)
	releaseRE    = regexp.MustCompile(`^[A-Za-z0-9._+~-]{1,256}$`)
	archRE       = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
	digestRE     = regexp.MustCompile(`^[a-z0-9]+:[0-9a-f]+$`)
	moduleExts   = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}
)

const maxString = 4096

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// CheckFileName refuses a layer title that is not a plain file name: empty,
// ".", "..", with '/', '\' or NUL, control characters, or longer than 255
// bytes.
func CheckFileName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("file name %q is not a plain file name", name)
	case strings.ContainsAny(name, "/\\\x00"):
		return fmt.Errorf("file name %q contains '/', '\\' or NUL", name)
	case strings.Contains(name, ".."):
		return fmt.Errorf("file name %q contains \"..\"", name)
	case len(name) > 255 || !utf8.ValidString(name):
		return fmt.Errorf("file name %q is longer than 255 bytes or not UTF-8", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("file name %q contains control character %U", name, r)
		}
	}
	return nil
}

// IsModuleFile says whether name ends like a module file.
func IsModuleFile(name string) bool {
	for _, e := range moduleExts {
		if strings.HasSuffix(name, e) && len(name) > len(e) {
			return true
		}
	}
	return false
}

func checkString(field, s string) error {
	if err := jsonstrict.CheckText(s, maxString); err != nil {
		return invalid("%s %q %v", field, s, err)
	}
	return nil
}

// CheckRelease refuses a kernel release that cannot be one.
func CheckRelease(release string) error {
	if !releaseRE.MatchString(release) {
		return fmt.Errorf("kernel release %q: want letters, digits and . _ + ~ -", release)
	}
	return nil
}

// CheckArch refuses an architecture name that is not a GOARCH-like word.
func CheckArch(arch string) error {
	if !archRE.MatchString(arch) {
		return fmt.Errorf("architecture %q: want a GOARCH name such as amd64 or arm64", arch)
	}
	return nil
}

// Validate checks every rule of the format: the kernel, file names (plain,
// unique, module files with a module extension, certificates ending in
// .der), module names (unique), checksums, each module's certificate
// listed, the load order naming bundle modules only, and string fields
// without control characters.
func (c *Config) Validate() error {
	if c.SchemaVersion != SchemaVersion {
		return invalid("config: schemaVersion %d (this program writes %d)", c.SchemaVersion, SchemaVersion)
	}
	for f, s := range map[string]string{"name": c.Name, "version": c.Version} {
		if err := checkString(f, s); err != nil {
			return err
		}
	}
	if err := CheckRelease(c.Kernel.Release); err != nil {
		return invalid("config: %v", err)
	}
	if err := CheckArch(c.Kernel.Arch); err != nil {
		return invalid("config: %v", err)
	}
	if len(c.Modules)+len(c.Certificates) > MaxFiles {
		return invalid("config: %d files, the limit is %d", len(c.Modules)+len(c.Certificates), MaxFiles)
	}
	files := map[string]bool{}
	certs := map[string]bool{}
	for i, ct := range c.Certificates {
		where := fmt.Sprintf("certificates[%d]", i)
		if !hexSumRE.MatchString(ct.SHA256) {
			return invalid("%s: sha256 %q is not 64 lower-case hex digits", where, ct.SHA256)
		}
		if certs[ct.SHA256] {
			return invalid("%s: certificate %s listed twice", where, ct.SHA256)
		}
		certs[ct.SHA256] = true
		if err := CheckFileName(ct.File); err != nil {
			return invalid("%s: %v", where, err)
		}
		if !strings.HasSuffix(ct.File, ".der") {
			return invalid("%s: file %q does not end in .der", where, ct.File)
		}
		if files[ct.File] {
			return invalid("%s: file %q listed twice", where, ct.File)
		}
		files[ct.File] = true
		if err := checkString(where+".subject", ct.Subject); err != nil {
			return err
		}
	}
	names := map[string]bool{}
	for i, m := range c.Modules {
		where := fmt.Sprintf("modules[%d]", i)
		if !moduleNameRE.MatchString(m.Name) {
			return invalid("%s: name %q is not a module name", where, m.Name)
		}
		where = fmt.Sprintf("module %s", m.Name)
		norm := strings.ReplaceAll(m.Name, "-", "_")
		if names[norm] {
			return invalid("%s: listed twice", where)
		}
		names[norm] = true
		if err := CheckFileName(m.File); err != nil {
			return invalid("%s: %v", where, err)
		}
		if !IsModuleFile(m.File) {
			return invalid("%s: file %q does not end in .ko, .ko.xz, .ko.zst or .ko.gz", where, m.File)
		}
		if files[m.File] {
			return invalid("%s: file %q listed twice", where, m.File)
		}
		files[m.File] = true
		if !hexSumRE.MatchString(m.SHA256) {
			return invalid("%s: sha256 %q is not 64 lower-case hex digits", where, m.SHA256)
		}
		if !certs[m.CertSHA256] {
			return invalid("%s: cert_sha256 %q names no listed certificate", where, m.CertSHA256)
		}
		for f, s := range map[string]string{"version": m.Version, "srcversion": m.Srcversion, "vermagic": m.Vermagic,
			"signer": m.Signer, "sig_key": m.SigKey, "source.name": m.Source.Name, "source.version": m.Source.Version} {
			if err := checkString(where+"."+f, s); err != nil {
				return err
			}
		}
		for _, d := range m.Depends {
			if !moduleNameRE.MatchString(d) {
				return invalid("%s: depends %q is not a module name", where, d)
			}
		}
		switch m.Source.Kind {
		case "", manifest.SourceBuilt, manifest.SourcePackage, manifest.SourcePrebuilt:
		default:
			return invalid("%s: source kind %q (want %s, %s or %s)", where, m.Source.Kind, manifest.SourceBuilt, manifest.SourcePackage, manifest.SourcePrebuilt)
		}
		if m.Source.Digest != "" && !digestRE.MatchString(m.Source.Digest) {
			return invalid("%s: source digest %q is not algorithm:hex", where, m.Source.Digest)
		}
	}
	seen := map[string]bool{}
	for _, n := range c.Load.Order {
		norm := strings.ReplaceAll(n, "-", "_")
		if !names[norm] {
			return invalid("load.order: %q is not a module of the bundle", n)
		}
		if seen[norm] {
			return invalid("load.order: %q listed twice", n)
		}
		seen[norm] = true
	}
	for _, n := range c.Load.Blacklist {
		if !moduleNameRE.MatchString(n) {
			return invalid("load.blacklist: %q is not a module name", n)
		}
	}
	for _, kv := range []struct {
		field string
		m     map[string]string
	}{{"load.options", c.Load.Options}, {"load.softdeps", c.Load.Softdeps}} {
		keys := make([]string, 0, len(kv.m))
		for k := range kv.m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !moduleNameRE.MatchString(k) {
				return invalid("%s: %q is not a module name", kv.field, k)
			}
			if err := checkString(kv.field+"."+k, kv.m[k]); err != nil {
				return err
			}
		}
	}
	return nil
}
