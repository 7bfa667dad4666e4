package kmod

import (
	"context"
	"fmt"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// catalogClient is a client of the catalog block's catalog.
func (c *CatalogConfig) client() (*catalog.Client, error) {
	opts := []catalog.Option{catalog.WithRetries(4)}
	if c.Token != "" {
		opts = append(opts, catalog.WithToken(c.Token))
	} else {
		opts = append(opts, catalog.WithTokenFile(c.TokenFile))
	}
	if c.CAFile != "" {
		opts = append(opts, catalog.WithCAFile(c.CAFile))
	}
	return catalog.New(c.URL, opts...)
}

// approvedDigests adds to r.allow the digests the catalog approves for
// the image's kernels. A catalog that cannot answer fails the build
// whatever on_error says: without it there is no allowlist to enforce.
func (r *run) approvedDigests(ctx context.Context) error {
	cli, err := r.cfg.Catalog.client()
	if err != nil {
		return fmt.Errorf("allowed_from_catalog: %w", err)
	}
	if r.allow == nil {
		r.allow = map[string]bool{}
	}
	n := 0
	for _, k := range r.kernels {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		aps, err := cli.Approvals(qctx, k.Release)
		cancel()
		if err != nil {
			return fmt.Errorf("allowed_from_catalog: kernel %s: %w", k.Release, err)
		}
		for _, a := range aps {
			r.allow[a.SHA256] = true
			n++
		}
	}
	r.ui.Say(fmt.Sprintf("kmod: allowlist: %d approvals from the catalog %s for %d kernels", n, r.cfg.Catalog.URL, len(r.kernels)))
	return nil
}

// recordBuild records the build (the image manifest) in the catalog. The
// provisioner cannot see the rest of the build: it records once its own
// work is complete (modules installed, checked, published).
func (r *run) recordBuild(ctx context.Context) error {
	c := r.cfg.Catalog
	fail := func(err error) error {
		if c.OnError == "warn" {
			r.ui.Error(fmt.Sprintf("kmod: catalog %s: the build was not recorded (on_error = \"warn\"): %v", c.URL, err))
			return nil
		}
		return fmt.Errorf("catalog %s: the build was not recorded: %w", c.URL, err)
	}
	data, err := r.manifest.Marshal()
	if err != nil {
		return fail(err)
	}
	cli, err := c.client()
	if err != nil {
		return fail(err)
	}
	name := c.ImageName
	if name == "" {
		name = r.cfg.PackerBuildName
	}
	b := &catalog.Build{ID: catalog.NewID(), BuildName: r.cfg.PackerBuildName, ImageName: name, ImageID: c.ImageID, Manifest: data}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	got, err := cli.RecordBuild(rctx, b)
	if err != nil {
		return fail(err)
	}
	r.ui.Say(fmt.Sprintf("kmod: catalog: build %s recorded (%d kernels, %d modules, %d bundles) by %s",
		got.ID, len(got.Kernels), len(got.Modules), len(got.Bundles), got.RecordedBy))
	return nil
}
