// Package manifest reads and writes the manifest the kmod provisioner
// leaves in an image (Path): the kernel modules it installed, per
// kernel, with their checksums and signatures, and the certificates that
// verify them. The first-boot agent reads it back to check the image.
package manifest

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/kmodctl/packer-plugin-kmod/internal/jsonstrict"
)

// Path is where the manifest is in an image.
const Path = "/usr/lib/kmodctl/manifest.json"

// Version is the manifest format this package reads and writes.
const Version = 1

// Limits Unmarshal enforces.
const (
	// MaxSize is the largest manifest accepted, in bytes.
	MaxSize = 16 << 20
	// MaxCertificates, MaxKernels and MaxModules (per kernel) bound the
	// lists.
	MaxCertificates = 256
	MaxKernels      = 64
	MaxModules      = 8192
	// MaxString bounds every string field, in bytes.
	MaxString = 4096
	// MaxDER bounds a certificate's DER encoding.
	MaxDER = 64 << 10
	// maxDepth bounds the nesting of the JSON document.
	maxDepth = 8
)

// Manifest is the content of Path.
type Manifest struct {
	Version      int           `json:"version"`
	Generator    string        `json:"generator,omitempty"`
	Certificates []Certificate `json:"certificates"`
	// Kernels are sorted by release (kernel version order) by Marshal.
	Kernels []Kernel `json:"kernels"`
	// Bundles are the OCI bundles the build published (optional; an
	// addition to version 1 that readers of version 1 without it ignore
	// by its absence).
	Bundles []Bundle `json:"bundles,omitempty"`
}

// Bundle is one kernel's bundle as published: the manifest that holds the
// kernel's signed modules in a registry.
type Bundle struct {
	Release string `json:"release"`
	Arch    string `json:"arch"`
	// Reference names the manifest by digest (registry/repo@sha256:...).
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
}

// Certificate is an X.509 certificate modules are signed with.
type Certificate struct {
	// SHA256 is the hex SHA-256 of DER.
	SHA256  string `json:"sha256"`
	Subject string `json:"subject"`
	// DER is the certificate (base64 in JSON).
	DER []byte `json:"der"`
}

// Kernel lists the modules installed for one kernel release.
type Kernel struct {
	Release string `json:"release"`
	// Modules are in load order.
	Modules []Module `json:"modules"`
	// Initramfs is the kernel's initramfs file as the build left it, once
	// the early modules' copies (Module.InitramfsSHA256) were put in
	// (optional; an addition to version 1 like Bundles). A file of that
	// path and SHA-256 holds exactly those copies, so the first-boot agent
	// decodes the image only when the file differs; without it, always.
	Initramfs *Initramfs `json:"initramfs,omitempty"`
}

// Initramfs is an initramfs image file: its path in the image, its length
// and the hex SHA-256 of its bytes.
type Initramfs struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Module is one installed module file.
type Module struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	// Path is the file's absolute path in the image.
	Path string `json:"path"`
	// SHA256 is the hex SHA-256 of the file as installed (compressed, if
	// it is).
	SHA256     string `json:"sha256"`
	Srcversion string `json:"srcversion,omitempty"`
	Vermagic   string `json:"vermagic,omitempty"`
	// Signer and SigKey are modinfo's signer and sig_key.
	Signer string `json:"signer,omitempty"`
	SigKey string `json:"sig_key,omitempty"`
	// CertSHA256 is the SHA256 of the Certificate that verifies the
	// signature.
	CertSHA256 string `json:"cert_sha256,omitempty"`
	// InitramfsSHA256 is the hex SHA-256 of the module's copy in the
	// initramfs, when it is there.
	InitramfsSHA256 string `json:"initramfs_sha256,omitempty"`
	// Early: the module is loaded from the initramfs. Load: it is listed
	// in modules-load.d.
	Early  bool   `json:"early"`
	Load   bool   `json:"load"`
	Source Source `json:"source,omitzero"`
}

// Source says where a module came from.
type Source struct {
	// Kind is SourceBuilt, SourcePackage or SourcePrebuilt.
	Kind    string `json:"kind"`
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	// Digest identifies the input (a checksum of the source tree, the
	// package or the prebuilt file), as "algorithm:hex".
	Digest string `json:"digest,omitempty"`
}

// Source kinds.
const (
	SourceBuilt    = "source"
	SourcePackage  = "package"
	SourcePrebuilt = "prebuilt"
)

// Errors of Unmarshal; the returned errors wrap them.
var (
	// ErrVersion: the manifest is of a version this package does not
	// read.
	ErrVersion = errors.New("unsupported manifest version")
	// ErrInvalid: the manifest is not valid JSON of the expected shape,
	// or breaks a rule of the format or a limit.
	ErrInvalid = errors.New("invalid manifest")
)

// Marshal encodes m: indented, with a trailing newline, kernels sorted by
// release, everything else in its order, so equal manifests give equal
// bytes. m itself is not changed. A zero Version is written as Version.
// It fails when m breaks a rule Unmarshal enforces.
func (m *Manifest) Marshal() ([]byte, error) {
	c := *m
	if c.Version == 0 {
		c.Version = Version
	}
	c.Kernels = slices.Clone(m.Kernels)
	slices.SortStableFunc(c.Kernels, func(a, b Kernel) int { return CompareReleases(a.Release, b.Release) })
	if c.Certificates == nil {
		c.Certificates = []Certificate{}
	}
	if c.Kernels == nil {
		c.Kernels = []Kernel{}
	}
	for i := range c.Kernels {
		if c.Kernels[i].Modules == nil {
			c.Kernels[i].Modules = []Module{}
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return jsonstrict.Encode(&c)
}

// Unmarshal decodes a manifest strictly: the version must be Version
// (ErrVersion names the one found), unknown or duplicate fields, wrong
// types, trailing data, a document over MaxSize and lists over their
// limits are refused, and so is a manifest that breaks a rule of the
// format: malformed checksums, a certificate whose SHA256 is not that of
// its DER, a module path that is not absolute and clean, a module whose
// CertSHA256 names no listed certificate, two kernels of one release or
// two modules of one name in a kernel. Errors wrap ErrVersion or
// ErrInvalid.
func Unmarshal(data []byte) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrInvalid, len(data), MaxSize)
	}
	if err := checkKeys(data); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	// The version first, so a newer manifest is reported as such rather
	// than for the fields it added.
	var head struct {
		Version *json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if head.Version == nil {
		return nil, fmt.Errorf("%w: no version", ErrInvalid)
	}
	var v int
	if err := json.Unmarshal(*head.Version, &v); err != nil {
		return nil, fmt.Errorf("%w: version %s is not an integer", ErrVersion, *head.Version)
	}
	if v != Version {
		return nil, fmt.Errorf("%w %d (this program reads version %d)", ErrVersion, v, Version)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the manifest", ErrInvalid)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Kernel returns the kernel entry of release.
func (m *Manifest) Kernel(release string) (*Kernel, bool) {
	for i := range m.Kernels {
		if m.Kernels[i].Release == release {
			return &m.Kernels[i], true
		}
	}
	return nil, false
}

// NewCertificate describes cert.
func NewCertificate(cert *x509.Certificate) Certificate {
	sum := sha256.Sum256(cert.Raw)
	return Certificate{
		SHA256:  hex.EncodeToString(sum[:]),
		Subject: cert.Subject.String(),
		DER:     bytes.Clone(cert.Raw),
	}
}

// checkKeys refuses duplicate keys in an object, keys that are not
// lower-case snake_case (encoding/json would match "Version" to
// "version"), and nesting deeper than maxDepth.
func checkKeys(data []byte) error {
	return jsonstrict.CheckKeys(data, maxDepth, func(key string) error {
		if !keyRE.MatchString(key) {
			return fmt.Errorf("field name %q is not lower-case snake_case", key)
		}
		return nil
	})
}

var (
	keyRE     = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	hexSumRE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	nameRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,55}$`)
	releaseRE = regexp.MustCompile(`^[A-Za-z0-9._+~-]+$`)
	digestRE  = regexp.MustCompile(`^[a-z0-9]+:[0-9a-f]+$`)
	archRE    = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// checkString bounds a string field and keeps control characters out.
func checkString(field, s string) error {
	if err := jsonstrict.CheckText(s, MaxString); err != nil {
		return invalid("%s %q %v", field, s, err)
	}
	return nil
}

func (m *Manifest) validate() error {
	if m.Version != Version {
		return fmt.Errorf("%w %d (this program writes version %d)", ErrVersion, m.Version, Version)
	}
	if err := checkString("generator", m.Generator); err != nil {
		return err
	}
	if len(m.Certificates) > MaxCertificates {
		return invalid("%d certificates, the limit is %d", len(m.Certificates), MaxCertificates)
	}
	certs := map[string]bool{}
	for i, c := range m.Certificates {
		field := fmt.Sprintf("certificates[%d]", i)
		if !hexSumRE.MatchString(c.SHA256) {
			return invalid("%s: sha256 %q is not 64 lower-case hex digits", field, c.SHA256)
		}
		if len(c.DER) == 0 || len(c.DER) > MaxDER {
			return invalid("%s: der of %d bytes (1 to %d)", field, len(c.DER), MaxDER)
		}
		if sum := sha256.Sum256(c.DER); hex.EncodeToString(sum[:]) != c.SHA256 {
			return invalid("%s: sha256 %s is not the SHA-256 of der (%x)", field, c.SHA256, sum)
		}
		if err := checkString(field+".subject", c.Subject); err != nil {
			return err
		}
		if certs[c.SHA256] {
			return invalid("%s: certificate %s is listed twice", field, c.SHA256)
		}
		certs[c.SHA256] = true
	}
	if len(m.Kernels) > MaxKernels {
		return invalid("%d kernels, the limit is %d", len(m.Kernels), MaxKernels)
	}
	if len(m.Bundles) > MaxKernels {
		return invalid("%d bundles, the limit is %d", len(m.Bundles), MaxKernels)
	}
	for i, b := range m.Bundles {
		field := fmt.Sprintf("bundles[%d]", i)
		if len(b.Release) > 256 || !releaseRE.MatchString(b.Release) {
			return invalid("%s: invalid release %q", field, b.Release)
		}
		if !archRE.MatchString(b.Arch) {
			return invalid("%s: invalid arch %q", field, b.Arch)
		}
		if !digestRE.MatchString(b.Digest) || !strings.HasSuffix(b.Reference, "@"+b.Digest) {
			return invalid("%s: reference %q does not name digest %q", field, b.Reference, b.Digest)
		}
		if err := checkString(field+".reference", b.Reference); err != nil {
			return err
		}
	}
	releases := map[string]bool{}
	for i, k := range m.Kernels {
		field := fmt.Sprintf("kernels[%d]", i)
		if len(k.Release) > 256 || !releaseRE.MatchString(k.Release) || k.Release == "." || k.Release == ".." {
			return invalid("%s: invalid release %q", field, k.Release)
		}
		if releases[k.Release] {
			return invalid("%s: kernel %s is listed twice", field, k.Release)
		}
		releases[k.Release] = true
		if in := k.Initramfs; in != nil {
			if err := checkImagePath(in.Path); err != nil {
				return invalid("%s (%s): initramfs path: %v", field, k.Release, err)
			}
			if in.Size < 0 {
				return invalid("%s (%s): initramfs size %d is negative", field, k.Release, in.Size)
			}
			if !hexSumRE.MatchString(in.SHA256) {
				return invalid("%s (%s): initramfs sha256 %q is not 64 lower-case hex digits", field, k.Release, in.SHA256)
			}
		}
		if len(k.Modules) > MaxModules {
			return invalid("%s: %d modules, the limit is %d", field, len(k.Modules), MaxModules)
		}
		names := map[string]bool{}
		for j, mod := range k.Modules {
			if err := mod.validate(fmt.Sprintf("%s (%s) modules[%d]", field, k.Release, j), certs); err != nil {
				return err
			}
			n := strings.ReplaceAll(mod.Name, "-", "_")
			if names[n] {
				return invalid("%s (%s): module %s is listed twice", field, k.Release, mod.Name)
			}
			names[n] = true
		}
	}
	return nil
}

func (mod *Module) validate(field string, certs map[string]bool) error {
	if !nameRE.MatchString(mod.Name) {
		return invalid("%s: invalid module name %q", field, mod.Name)
	}
	field += " (" + mod.Name + ")"
	if err := checkImagePath(mod.Path); err != nil {
		return invalid("%s: path: %v", field, err)
	}
	if !hexSumRE.MatchString(mod.SHA256) {
		return invalid("%s: sha256 %q is not 64 lower-case hex digits", field, mod.SHA256)
	}
	for _, f := range []struct{ name, value string }{
		{"cert_sha256", mod.CertSHA256}, {"initramfs_sha256", mod.InitramfsSHA256},
	} {
		if f.value != "" && !hexSumRE.MatchString(f.value) {
			return invalid("%s: %s %q is not 64 lower-case hex digits", field, f.name, f.value)
		}
	}
	if mod.CertSHA256 != "" && !certs[mod.CertSHA256] {
		return invalid("%s: cert_sha256 %s is not a listed certificate", field, mod.CertSHA256)
	}
	for _, f := range []struct{ name, value string }{
		{"version", mod.Version}, {"srcversion", mod.Srcversion}, {"vermagic", mod.Vermagic},
		{"signer", mod.Signer}, {"sig_key", mod.SigKey},
		{"source.name", mod.Source.Name}, {"source.version", mod.Source.Version},
	} {
		if err := checkString(field+"."+f.name, f.value); err != nil {
			return err
		}
	}
	s := mod.Source
	switch s.Kind {
	case SourceBuilt, SourcePackage, SourcePrebuilt:
	case "":
		if s != (Source{}) {
			return invalid("%s: source without a kind", field)
		}
	default:
		return invalid("%s: source kind %q (want %s, %s or %s)", field, s.Kind, SourceBuilt, SourcePackage, SourcePrebuilt)
	}
	if s.Digest != "" && (len(s.Digest) > 200 || !digestRE.MatchString(s.Digest)) {
		return invalid("%s: source digest %q is not algorithm:hex", field, s.Digest)
	}
	return nil
}

// checkImagePath accepts an absolute, clean path of at most MaxString
// bytes with no control characters.
func checkImagePath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%q is not absolute", p)
	}
	if path.Clean(p) != p || p == "/" {
		return fmt.Errorf("%q is not a clean file path", p)
	}
	if len(p) > MaxString || !utf8.ValidString(p) || strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%q is too long or has control characters or invalid UTF-8", p)
	}
	return nil
}
