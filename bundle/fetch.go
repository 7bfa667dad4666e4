package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// Entry is one kernel's manifest under a location.
type Entry struct {
	Release string `json:"release"`
	Arch    string `json:"arch"`
	// Digest and Size describe the kernel's image manifest.
	Digest v1.Hash `json:"digest"`
	Size   int64   `json:"size"`
}

func (e Entry) String() string { return e.Release + "/" + e.Arch }

// Fetched is a bundle Fetch verified, with where it came from.
type Fetched struct {
	*Bundle
	// Location is where it was fetched from; Reference names the kernel's
	// manifest by digest there.
	Location  Location
	Reference string
	Digest    v1.Hash
	// Index is the digest of the index it was selected from (zero when
	// the location named the manifest itself).
	Index v1.Hash
}

// ParseManifest decodes and checks a bundle's image manifest: an OCI image
// manifest with the bundle's artifact type (or, without one, the bundle's
// config media type), the kernel annotations, and layers that are module
// files or certificates with plain, unique titles within the limits. It
// does not read the config or the layers.
func ParseManifest(data []byte, l Limits) (*v1.Manifest, error) {
	if int64(len(data)) > l.Manifest {
		return nil, invalid("manifest: %d bytes, the limit is %d", len(data), l.Manifest)
	}
	var mf v1.Manifest
	if err := json.Unmarshal(data, &mf); err != nil {
		return nil, invalid("manifest: %v", err)
	}
	if mf.SchemaVersion != 2 {
		return nil, invalid("manifest: schemaVersion %d, want 2", mf.SchemaVersion)
	}
	if mf.MediaType != "" && mf.MediaType != types.OCIManifestSchema1 {
		return nil, invalid("manifest: media type %s is not an OCI image manifest", mf.MediaType)
	}
	if mf.Config.MediaType != ConfigMediaType {
		return nil, invalid("manifest: config media type %q, want %s", mf.Config.MediaType, ConfigMediaType)
	}
	if mf.ArtifactType != "" && mf.ArtifactType != ArtifactType {
		return nil, invalid("manifest: artifactType %q, want %s", mf.ArtifactType, ArtifactType)
	}
	if mf.Config.Size < 0 || mf.Config.Size > l.Config {
		return nil, invalid("manifest: config of %d bytes, the limit is %d", mf.Config.Size, l.Config)
	}
	if err := CheckRelease(mf.Annotations[AnnotationRelease]); err != nil {
		return nil, invalid("manifest: annotation %s: %v", AnnotationRelease, err)
	}
	if err := CheckArch(mf.Annotations[AnnotationArch]); err != nil {
		return nil, invalid("manifest: annotation %s: %v", AnnotationArch, err)
	}
	if len(mf.Layers) > MaxFiles {
		return nil, invalid("manifest: %d layers, the limit is %d", len(mf.Layers), MaxFiles)
	}
	titles := map[string]bool{}
	var total int64
	for i, d := range mf.Layers {
		title := d.Annotations[AnnotationTitle]
		if err := CheckFileName(title); err != nil {
			return nil, invalid("manifest: layer %d (%s): title: %v", i, d.Digest, err)
		}
		if titles[title] {
			return nil, invalid("manifest: two layers are titled %q", title)
		}
		titles[title] = true
		switch d.MediaType {
		case ModuleMediaType, CertMediaType:
		default:
			return nil, invalid("manifest: layer %q has media type %q (want %s or %s)", title, d.MediaType, ModuleMediaType, CertMediaType)
		}
		if d.Size < 0 || d.Size > l.Layer {
			return nil, fmt.Errorf("%w: manifest: layer %q: %d bytes, the limit is %d", ErrTooLarge, title, d.Size, l.Layer)
		}
		total += d.Size
		if total > l.Total {
			return nil, fmt.Errorf("%w: manifest: layers of more than %d bytes in all", ErrTooLarge, l.Total)
		}
	}
	return &mf, nil
}

// matchConfig checks that the config describes exactly the layers of mf:
// the same kernel as its annotations, and one entry per layer, by title,
// of the right kind and with the layer's digest.
func matchConfig(mf *v1.Manifest, c *Config) error {
	if r := mf.Annotations[AnnotationRelease]; r != c.Kernel.Release {
		return invalid("the manifest is for kernel %s, its config for %s", r, c.Kernel.Release)
	}
	if a := mf.Annotations[AnnotationArch]; a != c.Kernel.Arch {
		return invalid("the manifest is for architecture %s, its config for %s", a, c.Kernel.Arch)
	}
	layers := map[string]v1.Descriptor{}
	for _, d := range mf.Layers {
		layers[d.Annotations[AnnotationTitle]] = d
	}
	want := func(file, sum string, mt types.MediaType) error {
		d, ok := layers[file]
		if !ok {
			return invalid("the config lists %s, no layer is titled so", file)
		}
		if d.MediaType != mt {
			return invalid("layer %s has media type %s, the config lists it as %s", file, d.MediaType, mt)
		}
		if d.Digest.Algorithm != "sha256" || d.Digest.Hex != sum {
			return invalid("layer %s has digest %s, the config says sha256:%s", file, d.Digest, sum)
		}
		delete(layers, file)
		return nil
	}
	for _, m := range c.Modules {
		if err := want(m.File, m.SHA256, ModuleMediaType); err != nil {
			return err
		}
	}
	for _, ct := range c.Certificates {
		if err := want(ct.File, ct.SHA256, CertMediaType); err != nil {
			return err
		}
	}
	for title := range layers {
		return invalid("layer %s is not listed in the config", title)
	}
	return nil
}

// ParseIndex decodes a bundle index and lists its kernels. Entries must
// name OCI image manifests with the kernel annotations; an
// architecture from the platform is taken when the annotation is absent.
func ParseIndex(data []byte, l Limits) (*v1.IndexManifest, []Entry, error) {
	if int64(len(data)) > l.Manifest {
		return nil, nil, invalid("index: %d bytes, the limit is %d", len(data), l.Manifest)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(data))
	if err != nil {
		return nil, nil, invalid("index: %v", err)
	}
	if im.SchemaVersion != 2 {
		return nil, nil, invalid("index: schemaVersion %d, want 2", im.SchemaVersion)
	}
	if len(im.Manifests) > MaxFiles {
		return nil, nil, invalid("index: %d entries, the limit is %d", len(im.Manifests), MaxFiles)
	}
	var out []Entry
	for i, d := range im.Manifests {
		if d.MediaType != types.OCIManifestSchema1 {
			continue
		}
		e := Entry{Release: d.Annotations[AnnotationRelease], Arch: d.Annotations[AnnotationArch], Digest: d.Digest, Size: d.Size}
		if e.Arch == "" && d.Platform != nil {
			e.Arch = d.Platform.Architecture
		}
		if e.Release == "" {
			// Not a kernel's bundle (another artifact in the index).
			continue
		}
		if err := CheckRelease(e.Release); err != nil {
			return nil, nil, invalid("index: entry %d: %v", i, err)
		}
		if err := CheckArch(e.Arch); err != nil {
			return nil, nil, invalid("index: entry %d (%s): %v", i, e.Release, err)
		}
		if d.Platform != nil && d.Platform.Architecture != "" && d.Platform.Architecture != e.Arch {
			return nil, nil, invalid("index: entry %d (%s): platform %s, annotation %s", i, e.Release, d.Platform.Architecture, e.Arch)
		}
		out = append(out, e)
	}
	return im, out, nil
}

// resolved is what a location names: one kernel's manifest, or an index.
type resolved struct {
	st      store
	desc    v1.Descriptor
	raw     []byte
	index   bool
	entries []Entry
}

func resolve(ctx context.Context, loc Location, o *options) (*resolved, error) {
	st, err := openStore(loc, o)
	if err != nil {
		return nil, err
	}
	d, raw, err := st.root(ctx)
	if err != nil {
		return nil, err
	}
	r := &resolved{st: st, desc: d, raw: raw}
	mt := d.MediaType
	if mt == "" {
		var probe struct {
			MediaType types.MediaType `json:"mediaType"`
		}
		_ = json.Unmarshal(raw, &probe)
		mt = probe.MediaType
	}
	switch mt {
	case types.OCIImageIndex:
		r.index = true
		if _, r.entries, err = ParseIndex(raw, o.limits); err != nil {
			return nil, fmt.Errorf("%s: %w", loc, err)
		}
	case types.OCIManifestSchema1:
		mf, err := ParseManifest(raw, o.limits)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", loc, err)
		}
		r.entries = []Entry{{Release: mf.Annotations[AnnotationRelease], Arch: mf.Annotations[AnnotationArch], Digest: d.Digest, Size: d.Size}}
	default:
		return nil, fmt.Errorf("%s: %w: media type %q is neither an OCI image manifest nor an index", loc, ErrInvalid, mt)
	}
	return r, nil
}

// List returns the kernels under a location: an index's entries, or the
// one kernel of a manifest, sorted by release and architecture.
func List(ctx context.Context, loc Location, opts ...Option) ([]Entry, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	r, err := resolve(ctx, loc, o)
	if err != nil {
		return nil, err
	}
	es := slices.Clone(r.entries)
	sortEntries(es)
	return es, nil
}

func sortEntries(es []Entry) { slices.SortStableFunc(es, compareEntries) }

// compareEntries orders by kernel release (version order), then arch.
func compareEntries(a, b Entry) int {
	if c := manifest.CompareReleases(a.Release, b.Release); c != 0 {
		return c
	}
	return strings.Compare(a.Arch, b.Arch)
}

// select picks the entry for release and arch. An empty release picks the
// only entry.
func (r *resolved) pick(loc Location, release, arch string) (Entry, error) {
	var match []Entry
	for _, e := range r.entries {
		if (release == "" || e.Release == release) && (arch == "" || e.Arch == arch) {
			match = append(match, e)
		}
	}
	if len(match) == 1 {
		return match[0], nil
	}
	var have []string
	for _, e := range r.entries {
		have = append(have, e.String())
	}
	want := release
	if want == "" {
		want = "any kernel"
	}
	if arch != "" {
		want += "/" + arch
	}
	if len(match) == 0 {
		return Entry{}, &NoKernelError{Location: loc.String(), Want: want, Have: have}
	}
	return Entry{}, fmt.Errorf("%s has %d bundles for %s (%s): name the kernel", loc, len(match), want, strings.Join(have, ", "))
}

// NoKernelError: the location has no bundle for the kernel asked for.
type NoKernelError struct {
	Location, Want string
	Have           []string
}

func (e *NoKernelError) Error() string {
	have := "none"
	if len(e.Have) > 0 {
		have = strings.Join(e.Have, ", ")
	}
	return fmt.Sprintf("%s has no bundle for kernel %s (it has: %s)", e.Location, e.Want, have)
}

// manifestOf returns the raw manifest of entry e.
func (r *resolved) manifestOf(ctx context.Context, e Entry) ([]byte, error) {
	if !r.index {
		return r.raw, nil
	}
	return r.st.get(ctx, v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: e.Digest, Size: e.Size})
}

// Inspected is a kernel's bundle as Inspect reads it: its manifest and
// config, no file read and no signature checked.
type Inspected struct {
	Entry
	Manifest *v1.Manifest
	Config   *Config
	// Index is the digest of the index the entry is in (zero if none).
	Index v1.Hash
}

// Inspect reads the manifest and config of one kernel's bundle (release
// and arch select it in an index; empty picks the only one).
func Inspect(ctx context.Context, loc Location, release, arch string, opts ...Option) (*Inspected, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	r, e, mf, cfg, err := selectBundle(ctx, loc, release, arch, o)
	if err != nil {
		return nil, err
	}
	in := &Inspected{Entry: e, Manifest: mf, Config: cfg}
	if r.index {
		in.Index = r.desc.Digest
	}
	return in, nil
}

// selectBundle resolves loc, picks the kernel's entry and reads its
// manifest and config.
func selectBundle(ctx context.Context, loc Location, release, arch string, o *options) (*resolved, Entry, *v1.Manifest, *Config, error) {
	r, err := resolve(ctx, loc, o)
	if err != nil {
		return nil, Entry{}, nil, nil, err
	}
	e, err := r.pick(loc, release, arch)
	if err != nil {
		return nil, Entry{}, nil, nil, err
	}
	mf, cfg, err := r.configOf(ctx, loc, e, o)
	if err != nil {
		return nil, Entry{}, nil, nil, err
	}
	return r, e, mf, cfg, nil
}

func (r *resolved) configOf(ctx context.Context, loc Location, e Entry, o *options) (*v1.Manifest, *Config, error) {
	raw, err := r.manifestOf(ctx, e)
	if err != nil {
		return nil, nil, err
	}
	mf, err := ParseManifest(raw, o.limits)
	if err != nil {
		return nil, nil, fmt.Errorf("%s (%s): %w", loc, e, err)
	}
	if mf.Annotations[AnnotationRelease] != e.Release || mf.Annotations[AnnotationArch] != e.Arch {
		return nil, nil, fmt.Errorf("%s: %w: the index lists %s, its manifest is for %s/%s", loc, ErrInvalid, e, mf.Annotations[AnnotationRelease], mf.Annotations[AnnotationArch])
	}
	cb, err := r.st.get(ctx, mf.Config)
	if err != nil {
		return nil, nil, fmt.Errorf("%s (%s): config: %w", loc, e, err)
	}
	cfg, err := ParseConfig(cb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s (%s): %w", loc, e, err)
	}
	if err := matchConfig(mf, cfg); err != nil {
		return nil, nil, fmt.Errorf("%s (%s): %w", loc, e, err)
	}
	return mf, cfg, nil
}

// Fetch reads and verifies the bundle of kernel release for arch (in an
// index, selected by its annotations, never by position; a location that
// names one manifest must be for that kernel): the manifest's rules
// (ParseManifest), the config (ParseConfig) describing exactly the layers
// present, every blob's size and digest, every file's sha256, every
// certificate, and every module's name and signature against the trusted
// certificates of WithTrustedCerts, of which there must be at least one.
// Nothing is written anywhere; WriteDir writes the result.
func Fetch(ctx context.Context, loc Location, release, arch string, opts ...Option) (*Fetched, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	if len(o.trusted) == 0 {
		return nil, fmt.Errorf("%s: %w", loc, ErrUntrusted)
	}
	if release == "" || arch == "" {
		return nil, fmt.Errorf("%s: fetch needs the kernel release and architecture", loc)
	}
	r, e, mf, cfg, err := selectBundle(ctx, loc, release, arch, o)
	if err != nil {
		return nil, err
	}
	files, err := fetchLayers(ctx, r.st, mf, o)
	if err != nil {
		return nil, fmt.Errorf("%s (%s): %w", loc, e, err)
	}
	b := &Bundle{Config: *cfg, files: files, Annotations: map[string]string{}}
	for k, v := range mf.Annotations {
		switch k {
		case AnnotationRelease, AnnotationArch, AnnotationCreated:
		default:
			if strings.HasPrefix(k, "org.opencontainers.image.") {
				b.Annotations[k] = v
			}
		}
	}
	if err := b.verifyFiles(o.trusted); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", loc, e, err)
	}
	f := &Fetched{Bundle: b, Location: loc, Digest: e.Digest, Reference: loc.WithDigest(e.Digest).String()}
	if r.index {
		f.Index = r.desc.Digest
	}
	return f, nil
}

// fetchLayers reads every layer, o.jobs at a time, checking each.
func fetchLayers(ctx context.Context, st store, mf *v1.Manifest, o *options) (map[string][]byte, error) {
	var total int64
	for _, d := range mf.Layers {
		total += d.Size
	}
	var mu sync.Mutex
	var done int64
	count := func(n int64) {
		if o.progress == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		done += n
		o.progress(Progress{Done: done, Total: total})
	}
	switch s := st.(type) {
	case *remoteStore:
		s.counted = count
	case *layoutStore:
		s.counted = count
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	files := make(map[string][]byte, len(mf.Layers))
	sem := make(chan struct{}, o.jobs)
	var wg sync.WaitGroup
	var firstErr error
	for _, d := range mf.Layers {
		wg.Add(1)
		sem <- struct{}{}
		go func(d v1.Descriptor) {
			defer wg.Done()
			defer func() { <-sem }()
			data, err := st.get(ctx, d)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("layer %s: %w", d.Annotations[AnnotationTitle], err)
					cancel()
				}
				return
			}
			files[d.Annotations[AnnotationTitle]] = data
		}(d)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return files, nil
}

// Pull fetches and verifies the bundle of kernel release for arch (see
// Fetch) and writes its files into dir at once (see WriteDir). On any
// failure dir is as it was.
func Pull(ctx context.Context, loc Location, release, arch, dir string, opts ...Option) (*Fetched, error) {
	f, err := Fetch(ctx, loc, release, arch, opts...)
	if err != nil {
		return nil, err
	}
	if err := f.WriteDir(dir, 0o644); err != nil {
		return nil, err
	}
	return f, nil
}

// Verified is one kernel's result of Verify.
type Verified struct {
	Entry
	Reference string `json:"reference"`
	// Modules is how many modules verified; Err why the bundle did not.
	Modules int   `json:"modules"`
	Err     error `json:"-"`
}

// Verify fetches and verifies, as Fetch does, every kernel's bundle under
// loc (or only release and arch where given), writing nothing. The error
// is about the location itself; each kernel's outcome is in its result.
func Verify(ctx context.Context, loc Location, release, arch string, opts ...Option) ([]Verified, error) {
	es, err := List(ctx, loc, opts...)
	if err != nil {
		return nil, err
	}
	var out []Verified
	for _, e := range es {
		if release != "" && e.Release != release || arch != "" && e.Arch != arch {
			continue
		}
		v := Verified{Entry: e, Reference: loc.WithDigest(e.Digest).String()}
		f, err := Fetch(ctx, loc, e.Release, e.Arch, opts...)
		if err != nil {
			v.Err = err
		} else {
			v.Modules = len(f.Config.Modules)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		var have []string
		for _, e := range es {
			have = append(have, e.String())
		}
		want := release
		if arch != "" {
			want += "/" + arch
		}
		return nil, &NoKernelError{Location: loc.String(), Want: want, Have: have}
	}
	return out, nil
}
