package bundle

import (
	"bytes"
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Copy copies what src names (a bundle index with every kernel's
// manifest, or one kernel's manifest) to dst unchanged, so digests stay
// the same: from an image layout to a registry and back, for air-gapped
// transfer. Every kernel's bundle is read and checked first as Fetch
// checks it, module signatures included when WithTrustedCerts gives
// certificates (without them, sizes, digests and the config are checked).
// Kernel manifests get their kernel tags at dst (unless
// WithoutKernelTags); the index gets dst's tag.
func Copy(ctx context.Context, src, dst Location, opts ...Option) (*PushResult, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	if dst.Digest != "" {
		return nil, fmt.Errorf("%s: copy needs a tag, not a digest", dst)
	}
	r, err := resolve(ctx, src, o)
	if err != nil {
		return nil, err
	}
	if len(r.entries) == 0 {
		return nil, fmt.Errorf("%s: no kernel's bundle in it", src)
	}
	for _, e := range r.entries {
		mf, cfg, err := r.configOf(ctx, src, e, o)
		if err != nil {
			return nil, err
		}
		files, err := fetchLayers(ctx, r.st, mf, o)
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", src, e, err)
		}
		b := &Bundle{Config: *cfg, files: files}
		if err := b.verifyFiles(o.trusted); err != nil {
			return nil, fmt.Errorf("%s (%s): %w", src, e, err)
		}
	}
	w, err := newWriter(ctx, dst, o)
	if err != nil {
		return nil, err
	}
	res := &PushResult{}
	images := map[v1.Hash]v1.Image{}
	for _, e := range r.entries {
		img, err := sourceImage(ctx, src, e.Digest, o)
		if err != nil {
			return nil, err
		}
		tag := ""
		switch {
		case !r.index:
			tag = dst.Tag
		case o.kernelTags:
			tag = KernelTag(e.Release, e.Arch)
		}
		d, err := w.writeImage(ctx, img, tag)
		if err != nil {
			return nil, fmt.Errorf("copy to %s (kernel %s): %w", dst, e, err)
		}
		images[d.Digest] = img
		res.Kernels = append(res.Kernels, Pushed{Release: e.Release, Arch: e.Arch, Tag: tag, Digest: d.Digest, Reference: dst.WithDigest(d.Digest).String()})
	}
	if !r.index {
		res.Index, res.Reference = res.Kernels[0].Digest, res.Kernels[0].Reference
		return res, nil
	}
	im, _, err := ParseIndex(r.raw, o.limits)
	if err != nil {
		return nil, err
	}
	// The index as it was: same bytes, same digest.
	idx := &index{raw: r.raw, mf: im, images: images}
	idx.fallback = func(h v1.Hash) (v1.Image, error) { return sourceImage(ctx, src, h, o) }
	d, err := w.writeIndex(ctx, idx, dst.Tag)
	if err != nil {
		return nil, fmt.Errorf("copy to %s (index): %w", dst, err)
	}
	res.Index, res.Reference = d.Digest, dst.WithDigest(d.Digest).String()
	return res, nil
}

// sourceImage returns the manifest h of src as a go-containerregistry
// image (read lazily, digests checked by the library).
func sourceImage(ctx context.Context, src Location, h v1.Hash, o *options) (v1.Image, error) {
	if !src.IsLayout() {
		return remote.Image(src.Repo.Digest(h.String()), append(o.remoteOptions(), remote.WithContext(ctx))...)
	}
	p, err := layout.FromPath(src.Dir)
	if err != nil {
		return nil, err
	}
	return blobImage(p, h)
}

// blobImage is the image manifest h of an image layout, found by digest
// among the blobs (go-containerregistry's layout finds only manifests that
// index.json lists, not the children of an index).
func blobImage(p layout.Path, h v1.Hash) (v1.Image, error) {
	raw, err := p.Bytes(h)
	if err != nil {
		return nil, fmt.Errorf("layout %s: manifest %s: %w", p, h, err)
	}
	mf, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("layout %s: manifest %s: %w", p, h, err)
	}
	cfg, err := p.Bytes(mf.Config.Digest)
	if err != nil {
		return nil, fmt.Errorf("layout %s: config %s: %w", p, mf.Config.Digest, err)
	}
	return partial.CompressedToImage(&layoutBlobImage{p: p, raw: raw, cfg: cfg, mf: mf})
}

type layoutBlobImage struct {
	p   layout.Path
	raw []byte
	cfg []byte
	mf  *v1.Manifest
}

func (i *layoutBlobImage) RawConfigFile() ([]byte, error)      { return i.cfg, nil }
func (i *layoutBlobImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *layoutBlobImage) RawManifest() ([]byte, error)        { return i.raw, nil }
func (i *layoutBlobImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, d := range append([]v1.Descriptor{i.mf.Config}, i.mf.Layers...) {
		if d.Digest == h {
			return &layoutBlob{p: i.p, d: d}, nil
		}
	}
	return nil, fmt.Errorf("layout %s: no blob %s in manifest", i.p, h)
}

type layoutBlob struct {
	p layout.Path
	d v1.Descriptor
}

func (l *layoutBlob) Digest() (v1.Hash, error)            { return l.d.Digest, nil }
func (l *layoutBlob) Size() (int64, error)                { return l.d.Size, nil }
func (l *layoutBlob) MediaType() (types.MediaType, error) { return l.d.MediaType, nil }
func (l *layoutBlob) Compressed() (io.ReadCloser, error)  { return l.p.Blob(l.d.Digest) }
