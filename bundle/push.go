package bundle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Pushed is one kernel's manifest as pushed.
type Pushed struct {
	Release string `json:"release"`
	Arch    string `json:"arch"`
	// Tag is the kernel's own tag (KernelTag; empty with
	// WithoutKernelTags or PushOne).
	Tag    string  `json:"tag,omitempty"`
	Digest v1.Hash `json:"digest"`
	// Reference names the manifest by digest.
	Reference string `json:"reference"`
}

// PushResult is what Push wrote.
type PushResult struct {
	Kernels []Pushed `json:"kernels"`
	// Index is the digest of the index at the location's tag; Reference
	// names it by digest.
	Index     v1.Hash `json:"index"`
	Reference string  `json:"reference"`
}

// Push writes the bundles (one per kernel and architecture) to loc: each
// kernel's manifest (tagged KernelTag unless WithoutKernelTags), then an
// index listing them at loc's tag (platform linux/ARCH and the kernel
// annotations on each entry). Blobs already there are not sent again, so
// the same inputs pushed twice send no blob and give the same digests.
func Push(ctx context.Context, loc Location, bundles []*Bundle, opts ...Option) (*PushResult, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	if loc.Digest != "" {
		return nil, fmt.Errorf("%s: push needs a tag, not a digest", loc)
	}
	if len(bundles) == 0 {
		return nil, fmt.Errorf("%s: nothing to push", loc)
	}
	seen := map[string]bool{}
	for _, b := range bundles {
		k := b.Config.Kernel.Release + "/" + b.Config.Kernel.Arch
		if seen[k] {
			return nil, fmt.Errorf("%s: two bundles for kernel %s", loc, k)
		}
		seen[k] = true
	}
	w, err := newWriter(ctx, loc, o)
	if err != nil {
		return nil, err
	}
	res := &PushResult{}
	var descs []v1.Descriptor
	images := map[v1.Hash]v1.Image{}
	created := time.Unix(0, 0).UTC()
	for _, b := range bundles {
		img, err := b.Image()
		if err != nil {
			return nil, err
		}
		tag := ""
		if o.kernelTags {
			tag = KernelTag(b.Config.Kernel.Release, b.Config.Kernel.Arch)
		}
		d, err := w.writeImage(ctx, img, tag)
		if err != nil {
			return nil, fmt.Errorf("push %s (kernel %s/%s): %w", loc, b.Config.Kernel.Release, b.Config.Kernel.Arch, err)
		}
		images[d.Digest] = img
		res.Kernels = append(res.Kernels, Pushed{Release: b.Config.Kernel.Release, Arch: b.Config.Kernel.Arch, Tag: tag,
			Digest: d.Digest, Reference: loc.WithDigest(d.Digest).String()})
		d.ArtifactType = ArtifactType
		d.Platform = &v1.Platform{OS: "linux", Architecture: b.Config.Kernel.Arch}
		d.Annotations = map[string]string{AnnotationRelease: b.Config.Kernel.Release, AnnotationArch: b.Config.Kernel.Arch}
		descs = append(descs, d)
		if b.Created.After(created) {
			created = b.Created.UTC()
		}
	}
	var fallback func(v1.Hash) (v1.Image, error)
	if o.merge {
		kept, fb, err := w.existing(ctx, loc, seen)
		if err != nil {
			return nil, err
		}
		descs, fallback = append(descs, kept...), fb
	}
	slices.SortStableFunc(descs, func(a, b v1.Descriptor) int {
		return compareEntries(Entry{Release: a.Annotations[AnnotationRelease], Arch: a.Annotations[AnnotationArch]},
			Entry{Release: b.Annotations[AnnotationRelease], Arch: b.Annotations[AnnotationArch]})
	})
	idx, err := newIndex(descs, images, indexAnnotations(bundles, created))
	if err != nil {
		return nil, err
	}
	idx.fallback = fallback
	d, err := w.writeIndex(ctx, idx, loc.Tag)
	if err != nil {
		return nil, fmt.Errorf("push %s (index): %w", loc, err)
	}
	res.Index, res.Reference = d.Digest, loc.WithDigest(d.Digest).String()
	return res, nil
}

// PushOne writes one kernel's bundle as a lone manifest at loc's tag (no
// index, no kernel tag): for caches keyed by tag.
func PushOne(ctx context.Context, loc Location, b *Bundle, opts ...Option) (*Pushed, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	if loc.Digest != "" {
		return nil, fmt.Errorf("%s: push needs a tag, not a digest", loc)
	}
	w, err := newWriter(ctx, loc, o)
	if err != nil {
		return nil, err
	}
	img, err := b.Image()
	if err != nil {
		return nil, err
	}
	d, err := w.writeImage(ctx, img, loc.Tag)
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", loc, err)
	}
	return &Pushed{Release: b.Config.Kernel.Release, Arch: b.Config.Kernel.Arch, Digest: d.Digest, Reference: loc.WithDigest(d.Digest).String()}, nil
}

func indexAnnotations(bundles []*Bundle, created time.Time) map[string]string {
	a := map[string]string{AnnotationCreated: created.Format(time.RFC3339)}
	v := bundles[0].Config.Version
	for _, b := range bundles {
		if b.Config.Version != v {
			v = ""
		}
	}
	if v != "" {
		a[AnnotationVersion] = v
	}
	return a
}

// writer writes images and indexes to a registry or a layout.
type writer struct {
	loc Location
	o   *options
	ro  []remote.Option
	// pusher puts manifests; up uploads blobs (see uploader). One
	// transport and token for every request.
	pusher *remote.Pusher
	up     *uploader
	p      layout.Path
}

func newWriter(ctx context.Context, loc Location, o *options) (*writer, error) {
	w := &writer{loc: loc, o: o}
	if !loc.IsLayout() {
		w.ro = o.remoteOptions()
		var err error
		if w.pusher, err = remote.NewPusher(w.ro...); err != nil {
			return nil, err
		}
		if w.up, err = newUploader(ctx, *loc.Repo, o); err != nil {
			return nil, fmt.Errorf("%s: %w", loc.where(), err)
		}
		return w, nil
	}
	p, err := layout.FromPath(loc.Dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("layout %s: %w", loc.Dir, err)
		}
		if p, err = layout.Write(loc.Dir, empty.Index); err != nil {
			return nil, fmt.Errorf("layout %s: %w", loc.Dir, err)
		}
	}
	w.p = p
	return w, nil
}

func descriptorOf(img interface {
	Digest() (v1.Hash, error)
	Size() (int64, error)
}, mt types.MediaType) (v1.Descriptor, error) {
	d, err := img.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	n, err := img.Size()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: d, Size: n}, nil
}

func (w *writer) writeImage(ctx context.Context, img v1.Image, tag string) (v1.Descriptor, error) {
	d, err := descriptorOf(img, types.OCIManifestSchema1)
	if err != nil {
		return d, err
	}
	if w.loc.IsLayout() {
		if err := w.p.WriteImage(img); err != nil {
			return d, err
		}
		if tag != "" {
			err = w.p.ReplaceImage(img, match.Annotation(refNameAnnotation, tag), layout.WithAnnotations(map[string]string{refNameAnnotation: tag}))
		}
		return d, err
	}
	var ref name.Reference = w.loc.Repo.Digest(d.Digest.String())
	if tag != "" {
		ref = w.loc.Repo.Tag(tag)
	}
	if err := w.up.uploadImage(ctx, img); err != nil {
		return d, err
	}
	return d, w.pusher.Put(ctx, ref, img)
}

func (w *writer) writeIndex(ctx context.Context, idx v1.ImageIndex, tag string) (v1.Descriptor, error) {
	d, err := descriptorOf(idx, types.OCIImageIndex)
	if err != nil {
		return d, err
	}
	if w.loc.IsLayout() {
		return d, w.p.ReplaceIndex(idx, match.Annotation(refNameAnnotation, tag), layout.WithAnnotations(map[string]string{refNameAnnotation: tag}))
	}
	// The index's manifests are there already (pushed before, or kept
	// from the index it replaces).
	return d, w.pusher.Put(ctx, w.loc.Repo.Tag(tag), idx)
}

// existing returns the entries of the index at loc's tag whose kernel is
// not in replaced, and a way to get their images (already in the
// location). No index there: none.
func (w *writer) existing(ctx context.Context, loc Location, replaced map[string]bool) ([]v1.Descriptor, func(v1.Hash) (v1.Image, error), error) {
	r, err := resolve(ctx, loc, w.o)
	if err != nil {
		if isNotFound(err) {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("merge with %s: %w", loc, err)
	}
	if !r.index {
		return nil, nil, fmt.Errorf("merge with %s: it is a lone manifest, not an index", loc)
	}
	im, _, err := ParseIndex(r.raw, w.o.limits)
	if err != nil {
		return nil, nil, fmt.Errorf("merge with %s: %w", loc, err)
	}
	var kept []v1.Descriptor
	for _, d := range im.Manifests {
		key := d.Annotations[AnnotationRelease] + "/" + d.Annotations[AnnotationArch]
		if !replaced[key] {
			kept = append(kept, d)
		}
	}
	fb := func(h v1.Hash) (v1.Image, error) {
		if w.loc.IsLayout() {
			return blobImage(w.p, h)
		}
		return remote.Image(w.loc.Repo.Digest(h.String()), append(w.ro, remote.WithContext(ctx))...)
	}
	return kept, fb, nil
}

// isNotFound: the tag or manifest does not exist.
func isNotFound(err error) bool {
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return true
	}
	return errors.Is(err, errNoSuchTag)
}

// index is a v1.ImageIndex over bytes in memory.
type index struct {
	raw    []byte
	mf     *v1.IndexManifest
	images map[v1.Hash]v1.Image
	// fallback gives images the index lists but does not hold.
	fallback func(v1.Hash) (v1.Image, error)
}

func newIndex(descs []v1.Descriptor, images map[v1.Hash]v1.Image, annotations map[string]string) (*index, error) {
	mf := &v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		ArtifactType:  ArtifactType,
		Manifests:     descs,
		Annotations:   annotations,
	}
	raw, err := json.Marshal(mf)
	if err != nil {
		return nil, err
	}
	return &index{raw: raw, mf: mf, images: images}, nil
}

func (i *index) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }
func (i *index) Digest() (v1.Hash, error) {
	sum := sha256.Sum256(i.raw)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, nil
}
func (i *index) Size() (int64, error)                      { return int64(len(i.raw)), nil }
func (i *index) IndexManifest() (*v1.IndexManifest, error) { return i.mf, nil }
func (i *index) RawManifest() ([]byte, error)              { return i.raw, nil }
func (i *index) Image(h v1.Hash) (v1.Image, error) {
	if img, ok := i.images[h]; ok {
		return img, nil
	}
	if i.fallback != nil {
		return i.fallback(h)
	}
	return nil, fmt.Errorf("no image %s in the index", h)
}
func (i *index) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	return nil, fmt.Errorf("no index %s in the index", h)
}
