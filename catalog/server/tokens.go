package server

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// NewSecret returns a new token secret ("kmc_" and 32 random bytes).
func NewSecret() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return "kmc_" + base64.RawURLEncoding.EncodeToString(b[:])
}

// Bootstrap makes sure an admin token with this secret exists (named
// name), so a new catalog can be managed; it is idempotent and changes
// nothing when the token is already there.
func (s *Store) Bootstrap(ctx context.Context, name, secret string) error {
	if len(secret) < 16 {
		return fmt.Errorf("admin token: %d characters, want at least 16", len(secret))
	}
	return s.tx(ctx, func(tx *sqlTx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO tokens (secret_sha256, name, role, instance_id, created_at, created_by)
			VALUES (?, ?, 'admin', '', ?, 'bootstrap') ON CONFLICT DO NOTHING`, secretHash(secret), name, now())
		return err
	})
}

func (s *Server) postToken(w http.ResponseWriter, r *http.Request, who *principal) error {
	var req catalog.TokenRequest
	if _, err := decode(w, r, s.o.maxBody, &req); err != nil {
		return err
	}
	if err := checkID("name", req.Name); err != nil {
		return err
	}
	if !req.Role.Valid() {
		return badField("role", "%q is not one of builder, approver, instance, auditor, admin", req.Role)
	}
	if req.InstanceID != "" && req.Role != catalog.RoleInstance {
		return badField("instance_id", "only an instance token is bound to an instance")
	}
	if err := checkText("instance_id", req.InstanceID, 256); err != nil {
		return err
	}
	secret := NewSecret()
	at := now()
	ctx := r.Context()
	err := s.store.tx(ctx, func(tx *sqlTx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM tokens WHERE name = ?`, req.Name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return &apiError{code: http.StatusConflict, field: "name", msg: fmt.Sprintf("name: a token %q exists (revoke it first, or pick another name)", req.Name)}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO tokens (secret_sha256, name, role, instance_id, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?)`,
			secretHash(secret), req.Name, string(req.Role), req.InstanceID, at, who.name)
		return err
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, catalog.Token{Name: req.Name, Role: req.Role, InstanceID: req.InstanceID,
		CreatedAt: parseTime(at), CreatedBy: who.name, Secret: secret})
	return nil
}

func queryTokens(ctx context.Context, tx *sqlTx) ([]catalog.ExportToken, error) {
	out := []catalog.ExportToken{}
	rows, err := tx.QueryContext(ctx, `SELECT secret_sha256, name, role, instance_id, created_at, created_by, revoked FROM tokens ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var t catalog.ExportToken
		var at string
		if err := rows.Scan(&t.SecretSHA256, &t.Name, &t.Role, &t.InstanceID, &at, &t.CreatedBy, &t.Revoked); err != nil {
			return nil, err
		}
		t.CreatedAt = parseTime(at)
		out = append(out, t)
	}
	return out, rows.Err()
}

func (s *Server) getTokens(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ctx := r.Context()
	var all []catalog.ExportToken
	err := s.store.read(ctx, func(tx *sqlTx) error {
		var err error
		all, err = queryTokens(ctx, tx)
		return err
	})
	if err != nil {
		return err
	}
	out := make([]catalog.Token, len(all))
	for i, t := range all {
		out[i] = t.Token
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) deleteToken(w http.ResponseWriter, r *http.Request, who *principal) error {
	name := r.PathValue("name")
	if name == who.name {
		return badField("name", "a token cannot revoke itself")
	}
	ctx := r.Context()
	var hash string
	err := s.store.tx(ctx, func(tx *sqlTx) error {
		if err := tx.QueryRowContext(ctx, `SELECT secret_sha256 FROM tokens WHERE name = ?`, name).Scan(&hash); err != nil {
			if err == errNoRows {
				return &apiError{code: http.StatusNotFound, field: "name", msg: fmt.Sprintf("name: no token %q", name)}
			}
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE tokens SET revoked = 1 WHERE name = ?`, name)
		return err
	})
	if err != nil {
		return err
	}
	s.forgetToken(hash)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
