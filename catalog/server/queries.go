package server

import (
	"net/http"
	"slices"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// latest joins each instance to its latest attestation.
const latest = `instances i JOIN attestations a ON a.id = i.attestation_id`

func (s *Server) getInstances(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ctx := r.Context()
	out := []catalog.Instance{}
	err := s.store.read(ctx, func(tx *sqlTx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT a.instance_id, a.boot_id, a.kernel, a.arch, a.status, a.covered, a.pulled, a.generated_at, a.id
			FROM `+latest+` ORDER BY a.instance_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var in catalog.Instance
			var gen string
			if err := rows.Scan(&in.InstanceID, &in.BootID, &in.Kernel, &in.Arch, &in.Status, &in.Covered, &in.Pulled, &gen, &in.AttestationID); err != nil {
				return err
			}
			in.GeneratedAt = parseTime(gen)
			out = append(out, in)
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getDrift(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ctx := r.Context()
	out := []catalog.Drift{}
	err := s.store.read(ctx, func(tx *sqlTx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT a.instance_id, a.kernel, m.name, m.sha256, m.loaded,
			CASE WHEN m.sha256 = '' THEN 'unreadable'
				WHEN EXISTS (SELECT 1 FROM build_modules b WHERE b.kernel = a.kernel AND b.name = m.name AND b.sha256 = m.sha256) THEN 'unapproved'
				ELSE 'unknown' END
			FROM `+latest+` JOIN attested_modules m ON m.attestation_id = a.id
			WHERE NOT EXISTS (SELECT 1 FROM approvals p WHERE p.kernel = a.kernel AND p.module = m.name AND p.sha256 = m.sha256)
			ORDER BY a.instance_id, m.name`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d catalog.Drift
			if err := rows.Scan(&d.InstanceID, &d.Kernel, &d.Module, &d.SHA256, &d.Loaded, &d.Reason); err != nil {
				return err
			}
			out = append(out, d)
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getUncovered(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ctx := r.Context()
	out := []catalog.Uncovered{}
	err := s.store.read(ctx, func(tx *sqlTx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT a.kernel, a.arch, a.instance_id FROM `+latest+`
			WHERE NOT EXISTS (SELECT 1 FROM build_bundles b WHERE b.kernel = a.kernel AND (a.arch = '' OR b.arch = a.arch))
			ORDER BY a.kernel, a.arch, a.instance_id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k, arch, inst string
			if err := rows.Scan(&k, &arch, &inst); err != nil {
				return err
			}
			if n := len(out); n > 0 && out[n-1].Kernel == k && out[n-1].Arch == arch {
				out[n-1].Instances = append(out[n-1].Instances, inst)
				continue
			}
			out = append(out, catalog.Uncovered{Kernel: k, Arch: arch, Instances: []string{inst}})
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getWhoRuns(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := r.URL.Query()
	module, version, sum := q.Get("module"), q.Get("version"), q.Get("sha256")
	if module == "" {
		return badField("module", "missing")
	}
	if sum != "" && !sha256RE.MatchString(sum) {
		return badField("sha256", "%q is not a sha256 (64 lowercase hex digits)", sum)
	}
	ctx := r.Context()
	out := []catalog.Running{}
	err := s.store.read(ctx, func(tx *sqlTx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT a.instance_id, a.kernel, m.name, m.sha256, a.generated_at,
			COALESCE((SELECT group_concat(DISTINCT b.version) FROM build_modules b WHERE b.name = m.name AND b.sha256 = m.sha256 AND b.version != ''), '')
			FROM `+latest+` JOIN attested_modules m ON m.attestation_id = a.id
			WHERE m.name = ? AND m.loaded = 1 AND (? = '' OR m.sha256 = ?)
			ORDER BY a.instance_id`, module, sum, sum)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var run catalog.Running
			var gen, versions string
			if err := rows.Scan(&run.InstanceID, &run.Kernel, &run.Module, &run.SHA256, &gen, &versions); err != nil {
				return err
			}
			run.GeneratedAt = parseTime(gen)
			run.Versions = splitVersions(versions)
			if version != "" && !slices.Contains(run.Versions, version) {
				continue
			}
			out = append(out, run)
		}
		return rows.Err()
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func splitVersions(s string) []string {
	if s == "" {
		return []string{}
	}
	out := strings.Split(s, ",")
	slices.Sort(out)
	return slices.Compact(out)
}
