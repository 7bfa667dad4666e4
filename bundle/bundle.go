package bundle

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// Bundle is one kernel's bundle: its config and the bytes of every file
// the config lists (modules and certificates). A Bundle returned by New,
// FromManifest or Fetch is consistent: Validate holds, every file is
// present with its sha256, and every module's signature verifies against
// the certificate its entry names.
type Bundle struct {
	Config Config
	// Created is the manifest's creation time (AnnotationCreated).
	Created time.Time
	// Annotations are extra manifest annotations
	// (org.opencontainers.image.* such as source, revision, description).
	Annotations map[string]string
	files       map[string][]byte
}

// File returns the content of the file called name.
func (b *Bundle) File(name string) ([]byte, bool) {
	d, ok := b.files[name]
	return d, ok
}

// FileNames lists the files: modules in config order, then certificates.
func (b *Bundle) FileNames() []string {
	var names []string
	for _, m := range b.Config.Modules {
		names = append(names, m.File)
	}
	for _, c := range b.Config.Certificates {
		names = append(names, c.File)
	}
	return names
}

// Certificates parses the bundle's certificates (for display; they are
// never a trust anchor).
func (b *Bundle) Certificates() ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, c := range b.Config.Certificates {
		cert, err := x509.ParseCertificate(b.files[c.File])
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", c.File, err)
		}
		out = append(out, cert)
	}
	return out, nil
}

// ModuleInput is one module file for New.
type ModuleInput struct {
	// File is the file name the module is installed under (a plain name
	// ending in .ko, .ko.xz, .ko.zst or .ko.gz).
	File string
	// Data is the file as installed (signed; compressed when installed
	// so).
	Data []byte
	// Early: loaded from the initramfs. Load: listed in modules-load.d.
	Early, Load bool
	Source      manifest.Source
}

// CreateOption configures New and FromManifest.
type CreateOption func(*createOptions) error

type createOptions struct {
	name, version string
	created       time.Time
	createdSet    bool
	load          *Load
	annotations   map[string]string
}

// WithName and WithVersion name the bundle (Config.Name, Config.Version;
// the version also goes to org.opencontainers.image.version).
func WithName(name string) CreateOption {
	return func(o *createOptions) error {
		if err := checkString("name", name); err != nil {
			return err
		}
		o.name = name
		return nil
	}
}

// WithVersion sets the bundle's version.
func WithVersion(version string) CreateOption {
	return func(o *createOptions) error {
		if err := checkString("version", version); err != nil {
			return err
		}
		o.version = version
		return nil
	}
}

// WithCreated sets the creation time. Without it, New takes
// SOURCE_DATE_EPOCH from the environment, else the Unix epoch, so the same
// inputs give the same digest.
func WithCreated(t time.Time) CreateOption {
	return func(o *createOptions) error { o.created, o.createdSet = t.UTC(), true; return nil }
}

// WithLoad sets the load configuration. Without it, Order lists the
// modules whose Load is set, in the order given.
func WithLoad(l Load) CreateOption {
	return func(o *createOptions) error { o.load = &l; return nil }
}

// WithAnnotations adds manifest annotations. Only
// org.opencontainers.image.* keys other than title and created are taken:
// the format's own annotations are the package's.
func WithAnnotations(a map[string]string) CreateOption {
	return func(o *createOptions) error {
		for k, v := range a {
			if !strings.HasPrefix(k, "org.opencontainers.image.") || k == AnnotationTitle || k == AnnotationCreated {
				return fmt.Errorf("annotation %q: only org.opencontainers.image.* other than title and created", k)
			}
			if err := checkString("annotation "+k, v); err != nil {
				return err
			}
			if o.annotations == nil {
				o.annotations = map[string]string{}
			}
			o.annotations[k] = v
		}
		return nil
	}
}

// SourceDateEpoch is the time SOURCE_DATE_EPOCH names, or the Unix epoch
// when it is unset. A malformed value is an error.
func SourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds", v)
	}
	return time.Unix(n, 0).UTC(), nil
}

// New creates the bundle of one kernel from its module files. Each module
// must be signed by one of certs (re-signing is not this package's job);
// the certificates that sign at least one module are carried as layers.
// Errors name the file.
func New(release, arch string, mods []ModuleInput, certs []*x509.Certificate, opts ...CreateOption) (*Bundle, error) {
	var o createOptions
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if !o.createdSet {
		t, err := SourceDateEpoch()
		if err != nil {
			return nil, err
		}
		o.created = t
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("bundle for %s: no modules", release)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("bundle for %s: no certificates: every module must be signed by one", release)
	}
	b := &Bundle{
		Config:      Config{SchemaVersion: SchemaVersion, Name: o.name, Version: o.version, Kernel: Kernel{Release: release, Arch: arch}},
		Created:     o.created,
		Annotations: o.annotations,
		files:       map[string][]byte{},
	}
	used := map[string]*x509.Certificate{}
	for _, in := range mods {
		if err := CheckFileName(in.File); err != nil || !IsModuleFile(in.File) {
			return nil, fmt.Errorf("module file %q: want a plain file name ending in .ko, .ko.xz, .ko.zst or .ko.gz", in.File)
		}
		if _, dup := b.files[in.File]; dup {
			return nil, fmt.Errorf("module file %s given twice", in.File)
		}
		m, cert, err := describe(in, certs)
		if err != nil {
			return nil, err
		}
		used[m.CertSHA256] = cert
		b.Config.Modules = append(b.Config.Modules, m)
		b.files[in.File] = in.Data
	}
	for _, sum := range slices.Sorted(maps.Keys(used)) {
		c := used[sum]
		file := "cert-" + sum[:16] + ".der"
		b.Config.Certificates = append(b.Config.Certificates, Certificate{SHA256: sum, Subject: c.Subject.String(), File: file})
		b.files[file] = c.Raw
	}
	if o.load != nil {
		b.Config.Load = *o.load
	} else {
		for _, m := range b.Config.Modules {
			if m.Load {
				b.Config.Load.Order = append(b.Config.Load.Order, m.Name)
			}
		}
	}
	if err := b.Config.Validate(); err != nil {
		return nil, err
	}
	return b, nil
}

// describe makes the config entry of a module file and returns the
// certificate that verifies it.
func describe(in ModuleInput, certs []*x509.Certificate) (Module, *x509.Certificate, error) {
	km, err := kmod.Parse(in.Data, kmod.InfoOnly())
	if err != nil {
		return Module{}, nil, fmt.Errorf("module %s: %w", in.File, err)
	}
	if km.Signature == nil {
		return Module{}, nil, fmt.Errorf("module %s: not signed", in.File)
	}
	res, err := kmod.VerifyBytes(in.Data, certs)
	if err != nil {
		return Module{}, nil, fmt.Errorf("module %s: signature: %w", in.File, err)
	}
	sum := sha256.Sum256(in.Data)
	csum := sha256.Sum256(res.Certificate.Raw)
	m := Module{
		Name:       km.Name(),
		File:       in.File,
		SHA256:     hex.EncodeToString(sum[:]),
		Vermagic:   km.Vermagic(),
		Signer:     res.Signer,
		SigKey:     res.SigKey,
		CertSHA256: hex.EncodeToString(csum[:]),
		Early:      in.Early,
		Load:       in.Load,
		Depends:    km.Depends(),
		Source:     in.Source,
	}
	if m.Name == "" {
		m.Name = kmod.ModuleNameFromPath(in.File)
	}
	m.Version, _ = km.Get("version")
	m.Srcversion, _ = km.Get("srcversion")
	return m, res.Certificate, nil
}

// FromManifest creates the bundle of one kernel of an image manifest (the
// provisioner's): every module the manifest lists for release, read with
// readFile (by the path the manifest records), with its early, load and
// source settings; the certificates come from the manifest. Options as for
// New (WithLoad gives the load configuration the provisioner wrote).
func FromManifest(m *manifest.Manifest, release, arch string, readFile func(path string) ([]byte, error), opts ...CreateOption) (*Bundle, error) {
	k, ok := m.Kernel(release)
	if !ok {
		var have []string
		for _, k := range m.Kernels {
			have = append(have, k.Release)
		}
		return nil, fmt.Errorf("the manifest has no kernel %s (it has: %s)", release, strings.Join(have, ", "))
	}
	var certs []*x509.Certificate
	for _, c := range m.Certificates {
		cert, err := x509.ParseCertificate(c.DER)
		if err != nil {
			return nil, fmt.Errorf("manifest certificate %s: %w", c.Subject, err)
		}
		certs = append(certs, cert)
	}
	var mods []ModuleInput
	for _, mm := range k.Modules {
		data, err := readFile(mm.Path)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", mm.Name, err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != mm.SHA256 {
			return nil, fmt.Errorf("module %s: %s does not match the manifest's sha256 %s", mm.Name, mm.Path, mm.SHA256)
		}
		mods = append(mods, ModuleInput{File: path.Base(mm.Path), Data: data, Early: mm.Early, Load: mm.Load, Source: mm.Source})
	}
	return New(release, arch, mods, certs, opts...)
}

// configBlob is the config as pushed.
func (b *Bundle) configBlob() ([]byte, error) { return b.Config.Marshal() }

// Image returns the bundle as an OCI image manifest (go-containerregistry
// v1.Image): the config blob, one layer per file with its title, and the
// manifest annotations.
func (b *Bundle) Image() (v1.Image, error) {
	cfg, err := b.configBlob()
	if err != nil {
		return nil, err
	}
	cfgSum := sha256.Sum256(cfg)
	img := &image{config: cfg, layers: map[v1.Hash]v1.Layer{}}
	mf := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  ArtifactType,
		Config: v1.Descriptor{
			MediaType: ConfigMediaType,
			Size:      int64(len(cfg)),
			Digest:    v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(cfgSum[:])},
		},
		Layers:      []v1.Descriptor{},
		Annotations: b.manifestAnnotations(),
	}
	for _, name := range b.FileNames() {
		mt := types.MediaType(ModuleMediaType)
		if !IsModuleFile(name) {
			mt = CertMediaType
		}
		data := b.files[name]
		l := static.NewLayer(data, mt)
		d, err := l.Digest()
		if err != nil {
			return nil, err
		}
		img.layers[d] = l
		mf.Layers = append(mf.Layers, v1.Descriptor{MediaType: mt, Size: int64(len(data)), Digest: d, Annotations: map[string]string{AnnotationTitle: name}})
	}
	if img.manifest, err = json.Marshal(&mf); err != nil {
		return nil, err
	}
	return partial.CompressedToImage(img)
}

func (b *Bundle) manifestAnnotations() map[string]string {
	a := maps.Clone(b.Annotations)
	if a == nil {
		a = map[string]string{}
	}
	a[AnnotationRelease] = b.Config.Kernel.Release
	a[AnnotationArch] = b.Config.Kernel.Arch
	a[AnnotationCreated] = b.Created.UTC().Format(time.RFC3339)
	if b.Config.Version != "" {
		a[AnnotationVersion] = b.Config.Version
	}
	return a
}

// image is a v1.Image core over bytes in memory.
type image struct {
	manifest, config []byte
	layers           map[v1.Hash]v1.Layer
}

func (i *image) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i *image) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := i.layers[h]; ok {
		return l, nil
	}
	if sum := sha256.Sum256(i.config); h.Hex == hex.EncodeToString(sum[:]) {
		return static.NewLayer(i.config, ConfigMediaType), nil
	}
	return nil, fmt.Errorf("no blob %s in the bundle", h)
}

// verifyFiles checks the files against the config: the same set of names,
// each sha256, certificates that parse and hash to their entry, and each
// module's name and signature against the certificate its entry names,
// which must be one of trusted.
func (b *Bundle) verifyFiles(trusted []*x509.Certificate) error {
	want := map[string]bool{}
	for _, n := range b.FileNames() {
		want[n] = true
		if _, ok := b.files[n]; !ok {
			return fmt.Errorf("%w: file %s: listed in the config but not present", ErrInvalid, n)
		}
	}
	for n := range b.files {
		if !want[n] {
			return fmt.Errorf("%w: file %s: present but not listed in the config", ErrInvalid, n)
		}
	}
	bySum := map[string]*x509.Certificate{}
	for _, t := range trusted {
		s := sha256.Sum256(t.Raw)
		bySum[hex.EncodeToString(s[:])] = t
	}
	for _, c := range b.Config.Certificates {
		s := sha256.Sum256(b.files[c.File])
		if hex.EncodeToString(s[:]) != c.SHA256 {
			return fmt.Errorf("%w: certificate %s: sha256 %x, the config says %s", ErrInvalid, c.File, s, c.SHA256)
		}
		if _, err := x509.ParseCertificate(b.files[c.File]); err != nil {
			return fmt.Errorf("%w: certificate %s: %v", ErrInvalid, c.File, err)
		}
	}
	for _, m := range b.Config.Modules {
		data := b.files[m.File]
		s := sha256.Sum256(data)
		if hex.EncodeToString(s[:]) != m.SHA256 {
			return fmt.Errorf("%w: module %s: file %s has sha256 %x, the config says %s", ErrInvalid, m.Name, m.File, s, m.SHA256)
		}
		km, err := kmod.Parse(data, kmod.InfoOnly())
		if err != nil {
			return fmt.Errorf("module %s: file %s: %w", m.Name, m.File, err)
		}
		if name := km.Name(); name != "" && strings.ReplaceAll(name, "-", "_") != strings.ReplaceAll(m.Name, "-", "_") {
			return fmt.Errorf("%w: module %s: file %s is module %s", ErrInvalid, m.Name, m.File, name)
		}
		if len(trusted) == 0 {
			continue
		}
		if _, err := kmod.VerifyBytes(data, trusted); err != nil {
			return &SignatureError{Module: m.Name, File: m.File, Signer: m.Signer, Err: err}
		}
	}
	return nil
}

// SignatureError is a module whose signature none of the trusted
// certificates verifies.
type SignatureError struct {
	Module, File, Signer string
	Err                  error
}

func (e *SignatureError) Error() string {
	signer := ""
	if e.Signer != "" {
		signer = fmt.Sprintf(" (signed by %q)", e.Signer)
	}
	return fmt.Sprintf("module %s: file %s%s: signature not verified by the trusted certificates: %v", e.Module, e.File, signer, e.Err)
}

func (e *SignatureError) Unwrap() error { return e.Err }

// ErrUntrusted is wrapped when no trusted certificate was given to a
// function that verifies signatures.
var ErrUntrusted = errors.New("no trusted certificates given: a bundle's own certificate never makes it trusted")
