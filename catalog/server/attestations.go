package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// attestReq is one attestation waiting for the writer.
type attestReq struct {
	a    *catalog.Attestation
	hash string
	who  *principal
	ctx  context.Context
	res  chan attestRes
}

type attestRes struct {
	out   *catalog.Attestation
	bound string // the instance the token is bound to after the write
	err   error
}

const maxModules = 4096

func checkAttestation(a *catalog.Attestation) error {
	if err := checkID("id", a.ID); err != nil {
		return err
	}
	for f, v := range map[string]string{"instance_id": a.InstanceID, "boot_id": a.BootID, "kernel": a.Kernel, "status": a.Status} {
		if v == "" {
			return badField(f, "missing")
		}
	}
	for f, v := range map[string]string{"instance_id": a.InstanceID, "boot_id": a.BootID, "kernel": a.Kernel, "arch": a.Arch, "status": a.Status} {
		if err := checkText(f, v, 256); err != nil {
			return err
		}
	}
	if a.GeneratedAt.IsZero() {
		return badField("generated_at", "missing")
	}
	if len(a.Modules) > maxModules {
		return badField("modules", "%d entries, at most %d", len(a.Modules), maxModules)
	}
	names := map[string]bool{}
	for i, m := range a.Modules {
		f := fmt.Sprintf("modules[%d]", i)
		if m.Name == "" {
			return badField(f+".name", "missing")
		}
		if err := checkText(f+".name", m.Name, 256); err != nil {
			return err
		}
		if names[m.Name] {
			return badField(f+".name", "%q twice", m.Name)
		}
		names[m.Name] = true
		if m.SHA256 != "" && !sha256RE.MatchString(m.SHA256) {
			return badField(f+".sha256", "%q is not a sha256 (64 lowercase hex digits)", m.SHA256)
		}
		if err := checkText(f+".srcversion", m.Srcversion, 256); err != nil {
			return err
		}
	}
	if len(a.Report) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(a.Report, &obj); err != nil {
			return badField("report", "not a JSON object: %v", err)
		}
	}
	return nil
}

func (s *Server) postAttestation(w http.ResponseWriter, r *http.Request, who *principal) error {
	var a catalog.Attestation
	body, err := decode(w, r, s.o.maxBody, &a)
	if err != nil {
		return err
	}
	a.RecordedAt = time.Time{}
	if err := checkAttestation(&a); err != nil {
		return err
	}
	if who.instanceID != "" && who.instanceID != a.InstanceID {
		return &apiError{code: http.StatusForbidden, field: "instance_id", msg: fmt.Sprintf("instance_id: token %q belongs to instance %q, not %q", who.name, who.instanceID, a.InstanceID)}
	}
	if s.forward(w, r, "/v1/attestations", body) {
		return nil
	}
	req := &attestReq{a: &a, hash: canonical(a), who: who, ctx: r.Context(), res: make(chan attestRes, 1)}
	select {
	case s.attest <- req:
	case <-r.Context().Done():
		return r.Context().Err()
	}
	var res attestRes
	select {
	case res = <-req.res:
	case <-r.Context().Done():
		// The writer may still commit it: the client retries with the
		// same id, which is idempotent.
		return r.Context().Err()
	}
	if res.err != nil {
		return res.err
	}
	if who.instanceID == "" && res.bound != "" {
		p := *who
		p.instanceID = res.bound
		s.cacheToken(&p)
	}
	writeJSON(w, http.StatusCreated, res.out)
	return nil
}

// attestWriter commits queued attestations: everything queued while the
// previous commit ran goes into the next transaction (group commit), so
// the rate is bound by commits, not by requests.
func (s *Server) attestWriter() {
	defer s.wg.Done()
	for {
		var batch []*attestReq
		select {
		case req := <-s.attest:
			batch = append(batch, req)
		case <-s.done:
			return
		}
	drain:
		for len(batch) < s.o.batch {
			select {
			case req := <-s.attest:
				batch = append(batch, req)
			default:
				break drain
			}
		}
		s.writeBatch(batch)
	}
}

func (s *Server) writeBatch(batch []*attestReq) {
	// The batch lives as long as its longest request; requests whose
	// client went away are still written (their retries are idempotent).
	deadline := time.Now().Add(s.o.queryTimeout)
	for _, req := range batch {
		if d, ok := req.ctx.Deadline(); ok && d.After(deadline) {
			deadline = d
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var results []attestRes
	err := s.store.tx(ctx, func(tx *sqlTx) error {
		var err error
		results, err = writeAttestations(ctx, tx, batch, now())
		return err
	})
	for i, req := range batch {
		if err != nil {
			req.res <- attestRes{err: err}
			continue
		}
		req.res <- results[i]
	}
}

// writeAttestation writes one attestation in tx (an import's step).
func writeAttestation(ctx context.Context, tx *sqlTx, req *attestReq, at string) (attestRes, error) {
	res, err := writeAttestations(ctx, tx, []*attestReq{req}, at)
	if err != nil {
		return attestRes{}, err
	}
	return res[0], nil
}

// sqliteMaxVars keeps each statement within dqlite's limit of 255 bound
// parameters (its wire protocol counts them in one byte; SQLite's own
// limit is higher).
const sqliteMaxVars = 255

// writeAttestations writes a batch in tx with a few multi-row statements
// (each statement is a round trip to the leader). An error it returns
// fails the whole batch (and is retried); a refusal of one request is its
// result.
func writeAttestations(ctx context.Context, tx *sqlTx, batch []*attestReq, at string) ([]attestRes, error) {
	res := make([]attestRes, len(batch))
	// Tokens not yet bound are bound to the first instance they attest
	// for (rare: once per token).
	bound := make([]string, len(batch))
	for i, req := range batch {
		bound[i] = req.who.instanceID
		if bound[i] != "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tokens SET instance_id = ? WHERE secret_sha256 = ? AND instance_id = ''`,
			req.a.InstanceID, req.who.secretSHA256); err != nil {
			return nil, err
		}
		if err := tx.QueryRowContext(ctx, `SELECT instance_id FROM tokens WHERE secret_sha256 = ?`, req.who.secretSHA256).Scan(&bound[i]); err != nil {
			return nil, err
		}
	}
	// What is already stored under the batch's ids.
	type stored struct{ hash, recorded string }
	have := map[string]stored{}
	ids := make([]any, 0, len(batch))
	for _, req := range batch {
		ids = append(ids, req.a.ID)
	}
	for start := 0; start < len(ids); start += sqliteMaxVars {
		part := ids[start:min(start+sqliteMaxVars, len(ids))]
		rows, err := tx.QueryContext(ctx, `SELECT id, body_sha256, recorded_at FROM attestations WHERE id IN (`+placeholders(len(part), 1)+`)`, part...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			var st stored
			if err := rows.Scan(&id, &st.hash, &st.recorded); err != nil {
				rows.Close()
				return nil, err
			}
			have[id] = st
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	var att, mods, inst [][]any
	for i, req := range batch {
		a := req.a
		if bound[i] != a.InstanceID {
			res[i] = attestRes{err: &apiError{code: http.StatusForbidden, field: "instance_id",
				msg: fmt.Sprintf("instance_id: token %q belongs to instance %q, not %q", req.who.name, bound[i], a.InstanceID)}}
			continue
		}
		out := *a
		out.Report = nil
		if st, ok := have[a.ID]; ok {
			if st.hash != req.hash {
				res[i] = attestRes{err: conflict("attestation", a.ID)}
				continue
			}
			out.RecordedAt = parseTime(st.recorded)
			res[i] = attestRes{out: &out, bound: bound[i]}
			continue
		}
		// New: the same id twice in one batch is written once.
		have[a.ID] = stored{hash: req.hash, recorded: at}
		gen := fmtTime(a.GeneratedAt)
		att = append(att, []any{a.ID, req.hash, a.InstanceID, a.BootID, a.Kernel, a.Arch, a.Status, b2i(a.Covered), b2i(a.Pulled), gen, at, string(a.Report)})
		for _, m := range a.Modules {
			mods = append(mods, []any{a.ID, m.Name, m.SHA256, m.Srcversion, b2i(m.Loaded), b2i(m.Verified)})
		}
		inst = append(inst, []any{a.InstanceID, a.ID, gen})
		out.RecordedAt = parseTime(at)
		res[i] = attestRes{out: &out, bound: bound[i]}
	}
	if err := insertRows(ctx, tx, `INSERT INTO attestations (id, body_sha256, instance_id, boot_id, kernel, arch, status, covered, pulled, generated_at, recorded_at, report) VALUES `,
		` ON CONFLICT (id) DO NOTHING`, att); err != nil {
		return nil, fmt.Errorf("insert attestations: %w", err)
	}
	if err := insertRows(ctx, tx, `INSERT INTO attested_modules (attestation_id, name, sha256, srcversion, loaded, verified) VALUES `,
		` ON CONFLICT DO NOTHING`, mods); err != nil {
		return nil, fmt.Errorf("insert attested modules: %w", err)
	}
	// Rows apply in order, so of one instance's attestations in the batch
	// the latest stays.
	if err := insertRows(ctx, tx, `INSERT INTO instances (instance_id, attestation_id, generated_at) VALUES `,
		` ON CONFLICT (instance_id) DO UPDATE SET attestation_id = excluded.attestation_id, generated_at = excluded.generated_at
		WHERE excluded.generated_at > instances.generated_at
			OR (excluded.generated_at = instances.generated_at AND excluded.attestation_id > instances.attestation_id)`, inst); err != nil {
		return nil, fmt.Errorf("update instances: %w", err)
	}
	return res, nil
}

// insertRows runs head + (?,...),(?,...) + tail for rows, as few
// statements as the variable limit allows.
func insertRows(ctx context.Context, tx *sqlTx, head, tail string, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	width := len(rows[0])
	per := max(1, sqliteMaxVars/width)
	for start := 0; start < len(rows); start += per {
		part := rows[start:min(start+per, len(rows))]
		args := make([]any, 0, len(part)*width)
		for _, r := range part {
			args = append(args, r...)
		}
		if _, err := tx.ExecContext(ctx, head+placeholders(len(part), width)+tail, args...); err != nil {
			return err
		}
	}
	return nil
}

// placeholders is n groups of width "?": "(?,?),(?,?)"; with width 1,
// "?,?" (for IN lists).
func placeholders(n, width int) string {
	one := "?"
	if width > 1 {
		one = "(" + strings.Repeat("?,", width-1) + "?)"
	}
	return strings.Repeat(one+",", n-1) + one
}
