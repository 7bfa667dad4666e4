package bundle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// errNoSuchTag: an image layout has no manifest of that tag or digest.
var errNoSuchTag = errors.New("no such manifest in index.json")

// refNameAnnotation tags a manifest in an image layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// store reads documents and blobs of a location, every one checked against
// its descriptor's size and digest before it is returned.
type store interface {
	// root returns the document the location names (a manifest or an
	// index) and its descriptor.
	root(ctx context.Context) (v1.Descriptor, []byte, error)
	// get returns the manifest or blob d describes.
	get(ctx context.Context, d v1.Descriptor) ([]byte, error)
}

func openStore(loc Location, o *options) (store, error) {
	if loc.IsLayout() {
		p, err := layout.FromPath(loc.Dir)
		if err != nil {
			return nil, fmt.Errorf("layout %s: %w", loc.Dir, err)
		}
		return &layoutStore{loc: loc, p: p, o: o}, nil
	}
	// One puller: one transport, one token exchange, for every request.
	p, err := remote.NewPuller(o.remoteOptions()...)
	if err != nil {
		return nil, err
	}
	return &remoteStore{loc: loc, o: o, p: p}, nil
}

// check verifies data against d: size, then digest.
func check(d v1.Descriptor, data []byte, what string) error {
	if int64(len(data)) != d.Size {
		return fmt.Errorf("%s %s: %d bytes, the descriptor says %d", what, d.Digest, len(data), d.Size)
	}
	if d.Digest.Algorithm != "sha256" {
		return fmt.Errorf("%s %s: digest algorithm %q is not sha256", what, d.Digest, d.Digest.Algorithm)
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != d.Digest.Hex {
		return fmt.Errorf("%s %s: content has digest sha256:%x", what, d.Digest, sum)
	}
	return nil
}

// readLimited reads rc up to d.Size bytes plus one, so a longer stream is
// caught, counting progress.
func readLimited(rc io.Reader, d v1.Descriptor, limit int64, what string, count func(int64)) ([]byte, error) {
	if d.Size < 0 || d.Size > limit {
		return nil, &limitError{what: fmt.Sprintf("%s %s", what, d.Digest), size: d.Size, limit: limit}
	}
	buf := make([]byte, 0, d.Size)
	r := io.LimitReader(rc, d.Size+1)
	chunk := make([]byte, 64<<10)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if count != nil && n > 0 {
			count(int64(n))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, d.Digest, err)
		}
	}
	if err := check(d, buf, what); err != nil {
		return nil, err
	}
	return buf, nil
}

// remoteStore reads from a registry.
type remoteStore struct {
	loc Location
	o   *options
	p   *remote.Puller
	// counted is for progress.
	counted func(int64)
}

func (s *remoteStore) root(ctx context.Context) (v1.Descriptor, []byte, error) {
	desc, err := s.p.Get(ctx, s.loc.ref())
	if err != nil {
		return v1.Descriptor{}, nil, fmt.Errorf("%s: %s: %w", s.loc.where(), s.loc, err)
	}
	if int64(len(desc.Manifest)) > s.o.limits.Manifest {
		return v1.Descriptor{}, nil, &limitError{what: "manifest " + s.loc.String(), size: int64(len(desc.Manifest)), limit: s.o.limits.Manifest}
	}
	d := desc.Descriptor
	if err := check(d, desc.Manifest, "manifest"); err != nil {
		return v1.Descriptor{}, nil, fmt.Errorf("%s: %w", s.loc, err)
	}
	return d, desc.Manifest, nil
}

func (s *remoteStore) get(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	if isManifestType(d.MediaType) {
		if d.Size > s.o.limits.Manifest {
			return nil, &limitError{what: "manifest " + d.Digest.String(), size: d.Size, limit: s.o.limits.Manifest}
		}
		desc, err := s.p.Get(ctx, s.loc.Repo.Digest(d.Digest.String()))
		if err != nil {
			return nil, fmt.Errorf("%s: manifest %s: %w", s.loc.where(), d.Digest, err)
		}
		if err := check(d, desc.Manifest, "manifest"); err != nil {
			return nil, err
		}
		return desc.Manifest, nil
	}
	limit := s.o.limits.Layer
	if d.MediaType == ConfigMediaType {
		limit = s.o.limits.Config
	}
	if d.Size > limit {
		return nil, &limitError{what: "blob " + d.Digest.String(), size: d.Size, limit: limit}
	}
	l, err := s.p.Layer(ctx, s.loc.Repo.Digest(d.Digest.String()))
	if err != nil {
		return nil, fmt.Errorf("%s: blob %s: %w", s.loc.where(), d.Digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("%s: blob %s: %w", s.loc.where(), d.Digest, err)
	}
	defer rc.Close()
	data, err := readLimited(rc, d, limit, "blob", s.counted)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.loc.where(), err)
	}
	return data, nil
}

// layoutStore reads from an OCI image-layout directory.
type layoutStore struct {
	loc     Location
	p       layout.Path
	o       *options
	counted func(int64)
}

func (s *layoutStore) root(ctx context.Context) (v1.Descriptor, []byte, error) {
	idx, err := s.p.ImageIndex()
	if err != nil {
		return v1.Descriptor{}, nil, fmt.Errorf("layout %s: %w", s.loc.Dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Descriptor{}, nil, fmt.Errorf("layout %s: index.json: %w", s.loc.Dir, err)
	}
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		if (s.loc.Digest != "" && d.Digest.String() == s.loc.Digest) || (s.loc.Digest == "" && d.Annotations[refNameAnnotation] == s.loc.Tag) {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return v1.Descriptor{}, nil, fmt.Errorf("layout %s: %w: %s", s.loc.Dir, errNoSuchTag, s.loc)
	}
	if len(found) > 1 && s.loc.Digest == "" {
		return v1.Descriptor{}, nil, fmt.Errorf("layout %s: %d manifests tagged %s in index.json", s.loc.Dir, len(found), s.loc.Tag)
	}
	d := found[0]
	data, err := s.get(ctx, d)
	if err != nil {
		return d, nil, fmt.Errorf("%s: %w", s.loc, err)
	}
	return d, data, nil
}

func (s *layoutStore) get(ctx context.Context, d v1.Descriptor) ([]byte, error) {
	limit := s.o.limits.Layer
	switch {
	case isManifestType(d.MediaType):
		limit = s.o.limits.Manifest
	case d.MediaType == ConfigMediaType:
		limit = s.o.limits.Config
	}
	if d.Size > limit {
		return nil, &limitError{what: "blob " + d.Digest.String(), size: d.Size, limit: limit}
	}
	rc, err := s.p.Blob(d.Digest)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("layout %s: blob %s is missing", s.loc.Dir, d.Digest)
		}
		return nil, fmt.Errorf("layout %s: %w", s.loc.Dir, err)
	}
	defer rc.Close()
	data, err := readLimited(rc, d, limit, "blob", s.counted)
	if err != nil {
		return nil, fmt.Errorf("layout %s: %w", s.loc.Dir, err)
	}
	return data, ctx.Err()
}

func isManifestType(mt types.MediaType) bool {
	switch mt {
	case types.OCIManifestSchema1, types.OCIImageIndex, types.DockerManifestSchema2, types.DockerManifestList:
		return true
	}
	return false
}
