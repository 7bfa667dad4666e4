package kmod

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/internal/catalogtest"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// TestCatalogAllowlistAndRecord: allowed_from_catalog takes exactly the
// approved digests of the image's kernels from a real catalog node; the
// build record goes in with the builder token; an unreachable catalog
// fails the allowlist always, and the record per on_error.
func TestCatalogAllowlistAndRecord(t *testing.T) {
	c := catalogtest.Start(t, 1, catalogtest.Options{})
	node := c.Nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	admin := node.Client(t, c.AdminToken)
	secret := func(name string, role catalog.Role) string { return c.Token(t, name, role, "") }
	builder, approver := secret("ci", catalog.RoleBuilder), secret("sec", catalog.RoleApprover)
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	k1, k2 := "6.1.0-98-amd64", "6.1.0-99-amd64"
	m := &manifest.Manifest{Version: manifest.Version, Certificates: []manifest.Certificate{}}
	for _, k := range []string{k1, k2} {
		m.Kernels = append(m.Kernels, manifest.Kernel{Release: k, Modules: []manifest.Module{
			{Name: "kma", Path: "/lib/modules/" + k + "/updates/kma.ko", SHA256: sum("a" + k)},
			{Name: "kmb", Path: "/lib/modules/" + k + "/updates/kmb.ko", SHA256: sum("b" + k)}}})
	}
	data, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Client(t, builder).RecordBuild(ctx, &catalog.Build{ID: "earlier", Manifest: data}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []catalog.Approval{{Kernel: k1, Module: "kma", SHA256: sum("a" + k1)}, {Kernel: k2, Module: "kmb", SHA256: sum("b" + k2)}} {
		if _, err := node.Client(t, approver).Approve(ctx, &a); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &Config{AllowedFromCatalog: true, Catalog: CatalogConfig{URL: node.URL(), Token: builder, CAFile: c.CAFile, OnError: "fail", ImageName: "img"}}
	cfg.PackerBuildName = "test.kmod-image.x"
	r := &run{cfg: cfg, ui: packersdk.TestUi(t), kernels: []*targetKernel{{Release: k1}}, allow: map[string]bool{sum("manual"): true}}
	if err := r.approvedDigests(ctx); err != nil {
		t.Fatal(err)
	}
	if len(r.allow) != 2 || !r.allow[sum("a"+k1)] || !r.allow[sum("manual")] {
		t.Errorf("allowlist for %s: %v", k1, r.allow)
	}
	r.manifest = m
	if err := r.recordBuild(ctx); err != nil {
		t.Fatal(err)
	}
	bs, err := admin.Builds(ctx, "img")
	if err != nil || len(bs) != 1 || bs[0].BuildName != "test.kmod-image.x" || bs[0].RecordedBy != "ci" || len(bs[0].Modules) != 4 {
		t.Errorf("recorded: %v %+v", err, bs)
	}

	// The catalog down.
	node.Stop()
	dead := &run{cfg: cfg, ui: packersdk.TestUi(t), kernels: []*targetKernel{{Release: k2}}, manifest: m}
	short, cancel2 := context.WithTimeout(ctx, 20*time.Second)
	defer cancel2()
	if err := dead.approvedDigests(short); err == nil || !strings.Contains(err.Error(), "allowed_from_catalog: kernel "+k2) {
		t.Errorf("allowlist with the catalog down: %v", err)
	}
	if err := dead.recordBuild(short); err == nil || !strings.Contains(err.Error(), "the build was not recorded") {
		t.Errorf("record with the catalog down, on_error fail: %v", err)
	}
	cfg.Catalog.OnError = "warn"
	if err := dead.recordBuild(short); err != nil {
		t.Errorf("record with the catalog down, on_error warn: %v", err)
	}
}
