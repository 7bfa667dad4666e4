package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

func checkID(field, id string) error {
	if !idRE.MatchString(id) {
		return badField(field, "%q is not an id (1-128 of A-Z a-z 0-9 . _ : -, starting with a letter or digit)", id)
	}
	return nil
}

func checkText(field, s string, max int) error {
	if len(s) > max {
		return badField(field, "%d bytes, at most %d", len(s), max)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return badField(field, "contains a control character")
		}
	}
	return nil
}

// canonical is the hash of a request as decoded (whitespace and field
// order do not matter), to tell a retry from a conflicting reuse of an id.
func canonical(v any) string {
	b, _ := json.Marshal(v)
	return bodyHash(b)
}

func conflict(kind, id string) *apiError {
	return &apiError{code: http.StatusConflict, field: "id", msg: fmt.Sprintf("id: %s %q was already recorded with another body", kind, id)}
}

func (s *Server) postBuild(w http.ResponseWriter, r *http.Request, who *principal) error {
	var b catalog.Build
	if _, err := decode(w, r, s.o.maxBody, &b); err != nil {
		return err
	}
	// What the server sets is not part of the request.
	b.RecordedAt, b.RecordedBy, b.Kernels, b.Modules, b.Bundles = catalog.Build{}.RecordedAt, "", nil, nil, nil
	if err := checkID("id", b.ID); err != nil {
		return err
	}
	for f, v := range map[string]string{"build_name": b.BuildName, "image_name": b.ImageName, "image_id": b.ImageID} {
		if err := checkText(f, v, 512); err != nil {
			return err
		}
	}
	if len(b.Manifest) == 0 {
		return badField("manifest", "missing")
	}
	m, err := manifest.Unmarshal(b.Manifest)
	if err != nil {
		return badField("manifest", "%v", err)
	}
	hash := canonical(b)
	ctx := r.Context()
	var out *catalog.Build
	err = s.store.tx(ctx, func(tx *sqlTx) error {
		var stored string
		switch err := tx.QueryRowContext(ctx, `SELECT body_sha256 FROM builds WHERE id = ?`, b.ID).Scan(&stored); {
		case err == nil:
			if stored != hash {
				return conflict("build", b.ID)
			}
		case err == errNoRows:
			if err := insertBuild(ctx, tx, &b, m, hash, now(), who.name); err != nil {
				return err
			}
		default:
			return err
		}
		var err error
		out, err = loadBuild(ctx, tx, b.ID)
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

func insertBuild(ctx context.Context, tx *sqlTx, b *catalog.Build, m *manifest.Manifest, hash, at, by string) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO builds (id, body_sha256, recorded_at, recorded_by, build_name, image_name, image_id, manifest)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		b.ID, hash, at, by, b.BuildName, b.ImageName, b.ImageID, string(b.Manifest)); err != nil {
		return fmt.Errorf("insert build: %w", err)
	}
	for _, k := range m.Kernels {
		for _, mod := range k.Modules {
			if _, err := tx.ExecContext(ctx, `INSERT INTO build_modules (build_id, kernel, name, version, path, sha256, srcversion, signer, cert_sha256)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
				b.ID, k.Release, mod.Name, mod.Version, mod.Path, mod.SHA256, mod.Srcversion, mod.Signer, mod.CertSHA256); err != nil {
				return fmt.Errorf("insert build module: %w", err)
			}
		}
	}
	for _, bu := range m.Bundles {
		if _, err := tx.ExecContext(ctx, `INSERT INTO build_bundles (build_id, kernel, arch, reference, digest)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, b.ID, bu.Release, bu.Arch, bu.Reference, bu.Digest); err != nil {
			return fmt.Errorf("insert build bundle: %w", err)
		}
	}
	return nil
}

func loadBuild(ctx context.Context, tx *sqlTx, id string) (*catalog.Build, error) {
	b := catalog.Build{ID: id}
	var at, man string
	if err := tx.QueryRowContext(ctx, `SELECT recorded_at, recorded_by, build_name, image_name, image_id, manifest FROM builds WHERE id = ?`, id).
		Scan(&at, &b.RecordedBy, &b.BuildName, &b.ImageName, &b.ImageID, &man); err != nil {
		return nil, fmt.Errorf("build %s: %w", id, err)
	}
	b.RecordedAt, b.Manifest = parseTime(at), json.RawMessage(man)
	rows, err := tx.QueryContext(ctx, `SELECT kernel, name, version, path, sha256, srcversion, signer, cert_sha256
		FROM build_modules WHERE build_id = ? ORDER BY kernel, name, path`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var m catalog.BuildModule
		if err := rows.Scan(&m.Kernel, &m.Name, &m.Version, &m.Path, &m.SHA256, &m.Srcversion, &m.Signer, &m.CertSHA256); err != nil {
			return nil, err
		}
		b.Modules = append(b.Modules, m)
		if !seen[m.Kernel] {
			seen[m.Kernel] = true
			b.Kernels = append(b.Kernels, m.Kernel)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// A kernel without modules still belongs to the build.
	if m, err := manifest.Unmarshal(b.Manifest); err == nil {
		for _, k := range m.Kernels {
			if !seen[k.Release] {
				seen[k.Release] = true
				b.Kernels = append(b.Kernels, k.Release)
			}
		}
	}
	brows, err := tx.QueryContext(ctx, `SELECT kernel, arch, reference, digest FROM build_bundles WHERE build_id = ? ORDER BY kernel, arch`, id)
	if err != nil {
		return nil, err
	}
	defer brows.Close()
	for brows.Next() {
		var bu catalog.BundleRef
		if err := brows.Scan(&bu.Kernel, &bu.Arch, &bu.Reference, &bu.Digest); err != nil {
			return nil, err
		}
		b.Bundles = append(b.Bundles, bu)
	}
	return &b, brows.Err()
}

// limit reads ?limit= (default 100, at most 10000).
func limit(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return 100, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n > 10000 {
		return 0, badField("limit", "%q is not a number from 1 to 10000", v)
	}
	return n, nil
}

func (s *Server) getBuilds(w http.ResponseWriter, r *http.Request, _ *principal) error {
	n, err := limit(r)
	if err != nil {
		return err
	}
	image := r.URL.Query().Get("image")
	ctx := r.Context()
	out := []catalog.Build{}
	err = s.store.read(ctx, func(tx *sqlTx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT id FROM builds WHERE (? = '' OR image_name = ?) ORDER BY recorded_at DESC, id LIMIT ?`, image, image, n)
		if err != nil {
			return err
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, id := range ids {
			b, err := loadBuild(ctx, tx, id)
			if err != nil {
				return err
			}
			out = append(out, *b)
		}
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (s *Server) postApproval(w http.ResponseWriter, r *http.Request, who *principal) error {
	var a catalog.Approval
	if _, err := decode(w, r, s.o.maxBody, &a); err != nil {
		return err
	}
	a.ApprovedAt, a.ApprovedBy = catalog.Approval{}.ApprovedAt, ""
	if err := checkID("id", a.ID); err != nil {
		return err
	}
	if a.Kernel == "" {
		return badField("kernel", "missing")
	}
	if a.Module == "" {
		return badField("module", "missing")
	}
	if !sha256RE.MatchString(a.SHA256) {
		return badField("sha256", "%q is not a sha256 (64 lowercase hex digits)", a.SHA256)
	}
	for f, v := range map[string]string{"kernel": a.Kernel, "module": a.Module, "note": a.Note} {
		if err := checkText(f, v, 1024); err != nil {
			return err
		}
	}
	hash := canonical(a)
	ctx := r.Context()
	var out catalog.Approval
	err := s.store.tx(ctx, func(tx *sqlTx) error {
		var stored string
		switch err := tx.QueryRowContext(ctx, `SELECT body_sha256 FROM approvals WHERE id = ?`, a.ID).Scan(&stored); {
		case err == nil:
			if stored != hash {
				return conflict("approval", a.ID)
			}
		case err == errNoRows:
			// Approve only what a build recorded: an approval of a
			// digest nobody built is a typo.
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM build_modules WHERE kernel = ? AND name = ? AND sha256 = ?`,
				a.Kernel, a.Module, a.SHA256).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return &apiError{code: http.StatusNotFound, field: "sha256", msg: fmt.Sprintf("sha256: no recorded build has module %s with sha256 %s for kernel %s", a.Module, a.SHA256, a.Kernel)}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO approvals (id, body_sha256, kernel, module, sha256, note, approved_at, approved_by)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`, a.ID, hash, a.Kernel, a.Module, a.SHA256, a.Note, now(), who.name); err != nil {
				return err
			}
		default:
			return err
		}
		var at string
		out = a
		if err := tx.QueryRowContext(ctx, `SELECT approved_at, approved_by FROM approvals WHERE id = ?`, a.ID).Scan(&at, &out.ApprovedBy); err != nil {
			return err
		}
		out.ApprovedAt = parseTime(at)
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

func (s *Server) getApprovals(w http.ResponseWriter, r *http.Request, _ *principal) error {
	kernel := r.URL.Query().Get("kernel")
	ctx := r.Context()
	var out []catalog.Approval
	err := s.store.read(ctx, func(tx *sqlTx) error {
		var err error
		out, err = queryApprovals(ctx, tx, kernel)
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func queryApprovals(ctx context.Context, tx *sqlTx, kernel string) ([]catalog.Approval, error) {
	out := []catalog.Approval{}
	rows, err := tx.QueryContext(ctx, `SELECT id, kernel, module, sha256, note, approved_at, approved_by FROM approvals
		WHERE (? = '' OR kernel = ?) ORDER BY approved_at, id`, kernel, kernel)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var a catalog.Approval
		var at string
		if err := rows.Scan(&a.ID, &a.Kernel, &a.Module, &a.SHA256, &a.Note, &at, &a.ApprovedBy); err != nil {
			return nil, err
		}
		a.ApprovedAt = parseTime(at)
		out = append(out, a)
	}
	return out, rows.Err()
}
