package bundle

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Location is where bundles are: a registry repository or an OCI
// image-layout directory, with a tag or a digest.
type Location struct {
	// Dir is the image layout's directory (empty for a registry).
	Dir string
	// Repo is the registry repository (nil for a layout).
	Repo *name.Repository
	// Tag or Digest (one of them; Tag defaults to "latest").
	Tag    string
	Digest string
}

// DefaultTag is the tag of a location given without tag or digest.
const DefaultTag = "latest"

// ParseLocation parses "registry/repo[:tag|@digest]" or
// "oci:DIR[:TAG|@digest]". plainHTTP must match WithPlainHTTP: it lets
// the repository be reached over HTTP.
func ParseLocation(s string, plainHTTP bool) (Location, error) {
	if rest, ok := strings.CutPrefix(s, "oci:"); ok {
		return parseLayout(s, rest)
	}
	var opts []name.Option
	if plainHTTP {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(s, opts...)
	if err != nil {
		return Location{}, fmt.Errorf("reference %q: %w (want registry/repo[:tag|@digest] or oci:DIR[:TAG])", s, err)
	}
	repo := ref.Context()
	l := Location{Repo: &repo}
	switch r := ref.(type) {
	case name.Tag:
		l.Tag = r.TagStr()
	case name.Digest:
		l.Digest = r.DigestStr()
	}
	return l, nil
}

func parseLayout(s, rest string) (Location, error) {
	l := Location{}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		if _, err := v1.NewHash(rest[i+1:]); err != nil {
			return l, fmt.Errorf("reference %q: digest: %w", s, err)
		}
		l.Digest, rest = rest[i+1:], rest[:i]
	} else if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		if !ValidTag(rest[i+1:]) {
			return l, fmt.Errorf("reference %q: %q is not a valid tag", s, rest[i+1:])
		}
		l.Tag, rest = rest[i+1:], rest[:i]
	}
	if rest == "" {
		return l, fmt.Errorf("reference %q: no directory after oci:", s)
	}
	l.Dir = filepath.Clean(rest)
	if l.Tag == "" && l.Digest == "" {
		l.Tag = DefaultTag
	}
	return l, nil
}

// IsLayout says whether l is an image-layout directory.
func (l Location) IsLayout() bool { return l.Dir != "" }

// String is the location as ParseLocation takes it.
func (l Location) String() string {
	base := "oci:" + l.Dir
	sep := ":"
	if !l.IsLayout() {
		base = l.Repo.Name()
	}
	if l.Digest != "" {
		return base + "@" + l.Digest
	}
	return base + sep + l.Tag
}

// WithTag is l at another tag.
func (l Location) WithTag(tag string) Location {
	l.Tag, l.Digest = tag, ""
	return l
}

// WithDigest is l at a digest.
func (l Location) WithDigest(d v1.Hash) Location {
	l.Tag, l.Digest = "", d.String()
	return l
}

// where names the location's registry or directory in errors.
func (l Location) where() string {
	if l.IsLayout() {
		return "layout " + l.Dir
	}
	return "registry " + l.Repo.RegistryStr()
}

// ref is the registry reference of l.
func (l Location) ref() name.Reference {
	if l.Digest != "" {
		return l.Repo.Digest(l.Digest)
	}
	return l.Repo.Tag(l.Tag)
}
