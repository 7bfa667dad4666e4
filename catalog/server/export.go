package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// importBatch is how many records one import transaction writes: one
// transaction is one raft entry, kept to a few MB.
const importBatch = 200

func (s *Server) getExport(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ctx := r.Context()
	e := catalog.Export{Version: catalog.ExportVersion, ExportedAt: time.Now().UTC()}
	// One read transaction: a consistent snapshot.
	err := s.store.read(ctx, func(tx *sqlTx) error {
		var err error
		if e.Tokens, err = queryTokens(ctx, tx); err != nil {
			return err
		}
		if e.Approvals, err = queryApprovals(ctx, tx, ""); err != nil {
			return err
		}
		if e.Builds, err = exportBuilds(ctx, tx); err != nil {
			return err
		}
		e.Attestations, err = exportAttestations(ctx, tx)
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, e)
	return nil
}

func exportBuilds(ctx context.Context, tx *sqlTx) ([]catalog.Build, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id FROM builds ORDER BY recorded_at, id`)
	if err != nil {
		return nil, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := []catalog.Build{}
	for _, id := range ids {
		b, err := loadBuild(ctx, tx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, *b)
	}
	return out, nil
}

func exportAttestations(ctx context.Context, tx *sqlTx) ([]catalog.Attestation, error) {
	out := []catalog.Attestation{}
	index := map[string]int{}
	rows, err := tx.QueryContext(ctx, `SELECT id, instance_id, boot_id, kernel, arch, status, covered, pulled, generated_at, recorded_at, report
		FROM attestations ORDER BY recorded_at, id`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var a catalog.Attestation
		var gen, rec, report string
		if err := rows.Scan(&a.ID, &a.InstanceID, &a.BootID, &a.Kernel, &a.Arch, &a.Status, &a.Covered, &a.Pulled, &gen, &rec, &report); err != nil {
			rows.Close()
			return nil, err
		}
		a.GeneratedAt, a.RecordedAt = parseTime(gen), parseTime(rec)
		a.Modules = []catalog.AttestedModule{}
		if report != "" {
			a.Report = json.RawMessage(report)
		}
		index[a.ID] = len(out)
		out = append(out, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	mrows, err := tx.QueryContext(ctx, `SELECT attestation_id, name, sha256, srcversion, loaded, verified FROM attested_modules ORDER BY attestation_id, rowid`)
	if err != nil {
		return nil, err
	}
	defer mrows.Close()
	for mrows.Next() {
		var id string
		var m catalog.AttestedModule
		if err := mrows.Scan(&id, &m.Name, &m.SHA256, &m.Srcversion, &m.Loaded, &m.Verified); err != nil {
			return nil, err
		}
		if i, ok := index[id]; ok {
			out[i].Modules = append(out[i].Modules, m)
		}
	}
	return out, mrows.Err()
}

// postImport merges an export into the catalog. Every record keeps its
// id, times and author, and a record whose id exists is left alone, so an
// import that failed half-way is completed by running it again.
func (s *Server) postImport(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var e catalog.Export
	if _, err := decode(w, r, s.o.maxImport, &e); err != nil {
		return err
	}
	if e.Version != catalog.ExportVersion {
		return badField("version", "%d, this catalog reads version %d", e.Version, catalog.ExportVersion)
	}
	type step func(ctx context.Context, tx *sqlTx) error
	var steps []step
	for i, t := range e.Tokens {
		if !sha256RE.MatchString(t.SecretSHA256) || !t.Role.Valid() {
			return badField(fmt.Sprintf("tokens[%d]", i), "needs a secret_sha256 and a known role")
		}
		steps = append(steps, func(ctx context.Context, tx *sqlTx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO tokens (secret_sha256, name, role, instance_id, created_at, created_by, revoked)
				VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
				t.SecretSHA256, t.Name, string(t.Role), t.InstanceID, fmtTime(t.CreatedAt), t.CreatedBy, b2i(t.Revoked))
			return err
		})
	}
	for i, b := range e.Builds {
		m, err := manifest.Unmarshal(b.Manifest)
		if err != nil {
			return badField(fmt.Sprintf("builds[%d].manifest", i), "%v", err)
		}
		if err := checkID(fmt.Sprintf("builds[%d].id", i), b.ID); err != nil {
			return err
		}
		at, by := fmtTime(b.RecordedAt), b.RecordedBy
		req := catalog.Build{ID: b.ID, BuildName: b.BuildName, ImageName: b.ImageName, ImageID: b.ImageID, Manifest: b.Manifest}
		hash := canonical(req)
		steps = append(steps, func(ctx context.Context, tx *sqlTx) error {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM builds WHERE id = ?`, req.ID).Scan(&n); err != nil || n > 0 {
				return err
			}
			return insertBuild(ctx, tx, &req, m, hash, at, by)
		})
	}
	for i, a := range e.Approvals {
		if err := checkID(fmt.Sprintf("approvals[%d].id", i), a.ID); err != nil {
			return err
		}
		req := catalog.Approval{ID: a.ID, Kernel: a.Kernel, Module: a.Module, SHA256: a.SHA256, Note: a.Note}
		hash := canonical(req)
		steps = append(steps, func(ctx context.Context, tx *sqlTx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO approvals (id, body_sha256, kernel, module, sha256, note, approved_at, approved_by)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
				a.ID, hash, a.Kernel, a.Module, a.SHA256, a.Note, fmtTime(a.ApprovedAt), a.ApprovedBy)
			return err
		})
	}
	for i := range e.Attestations {
		a := e.Attestations[i]
		rec := a.RecordedAt
		a.RecordedAt = time.Time{}
		if err := checkAttestation(&a); err != nil {
			ae := err.(*apiError)
			return badField(fmt.Sprintf("attestations[%d].%s", i, ae.field), "%s", ae.msg)
		}
		req := &attestReq{a: &a, hash: canonical(a), who: &principal{instanceID: a.InstanceID}}
		steps = append(steps, func(ctx context.Context, tx *sqlTx) error {
			res, err := writeAttestation(ctx, tx, req, fmtTime(rec))
			if err == nil {
				err = res.err
			}
			return err
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(steps)/importBatch+1)*s.o.queryTimeout)
	defer cancel()
	for start := 0; start < len(steps); start += importBatch {
		batch := steps[start:min(start+importBatch, len(steps))]
		if err := s.store.tx(ctx, func(tx *sqlTx) error {
			for _, st := range batch {
				if err := st(ctx, tx); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("import (records %d-%d of %d; run the import again to finish it): %w", start+1, start+len(batch), len(steps), err)
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
