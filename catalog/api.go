// Package catalog is the client side of kmod-catalog, the replicated record
// of builds, bundles, approvals and instance attestations (the server is
// cmd/kmod-catalog on go-dqlite; its HTTP handler is catalog/server). This
// package is pure Go: kmodctl, the Packer plugin and the first-boot agent use
// it and stay static.
//
// The API is JSON over HTTPS under /v1, with bearer tokens. Every write
// carries a client-chosen id: the server keeps the first write of an id and
// answers a retry of the same body with the stored record, so a retried write
// never duplicates; the same id with another body is a conflict (409).
package catalog

import (
	"encoding/json"
	"time"
)

// Role is what a token may do.
type Role string

const (
	// RoleBuilder records builds (and reads builds and approvals).
	RoleBuilder Role = "builder"
	// RoleApprover approves module digests per kernel (and reads).
	RoleApprover Role = "approver"
	// RoleInstance posts its own instance's attestations only.
	RoleInstance Role = "instance"
	// RoleAuditor reads everything but tokens.
	RoleAuditor Role = "auditor"
	// RoleAdmin manages tokens, export and import (and reads).
	RoleAdmin Role = "admin"
)

// Roles lists every role, in the order the docs give them.
var Roles = []Role{RoleBuilder, RoleApprover, RoleInstance, RoleAuditor, RoleAdmin}

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	for _, k := range Roles {
		if r == k {
			return true
		}
	}
	return false
}

// Build is one image build: the image manifest the kmod provisioner wrote,
// plus who built it and when. The server derives Kernels, Modules and
// Bundles from Manifest; what a client sends in them is ignored.
type Build struct {
	// ID is the client's idempotency key (a random id per build).
	ID        string `json:"id"`
	BuildName string `json:"build_name,omitempty"`
	ImageName string `json:"image_name,omitempty"`
	ImageID   string `json:"image_id,omitempty"`
	// Manifest is the image manifest (kmod/manifest), as JSON.
	Manifest json.RawMessage `json:"manifest"`

	// Set by the server.
	RecordedAt time.Time     `json:"recorded_at,omitzero"`
	RecordedBy string        `json:"recorded_by,omitempty"`
	Kernels    []string      `json:"kernels,omitempty"`
	Modules    []BuildModule `json:"modules,omitempty"`
	Bundles    []BundleRef   `json:"bundles,omitempty"`
}

// BuildModule is one module file of a build, as its manifest records it.
type BuildModule struct {
	Kernel     string `json:"kernel"`
	Name       string `json:"name"`
	Version    string `json:"version,omitempty"`
	Path       string `json:"path"`
	SHA256     string `json:"sha256"`
	Srcversion string `json:"srcversion,omitempty"`
	Signer     string `json:"signer,omitempty"`
	CertSHA256 string `json:"cert_sha256,omitempty"`
}

// BundleRef is a bundle a build published.
type BundleRef struct {
	Kernel    string `json:"kernel"`
	Arch      string `json:"arch"`
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
}

// Approval approves one module file digest for one kernel.
type Approval struct {
	ID     string `json:"id"`
	Kernel string `json:"kernel"`
	Module string `json:"module"`
	SHA256 string `json:"sha256"`
	Note   string `json:"note,omitempty"`

	// Set by the server.
	ApprovedAt time.Time `json:"approved_at,omitzero"`
	ApprovedBy string    `json:"approved_by,omitempty"`
}

// Attestation is what one boot of one instance found: the first-boot
// agent's report, reduced to what the queries need, with the report itself.
type Attestation struct {
	// ID is the client's idempotency key; the agent derives it from the
	// instance id, boot id and report time.
	ID          string           `json:"id"`
	InstanceID  string           `json:"instance_id"`
	BootID      string           `json:"boot_id"`
	Kernel      string           `json:"kernel"`
	Arch        string           `json:"arch"`
	Status      string           `json:"status"`
	Covered     bool             `json:"covered"`
	Pulled      bool             `json:"pulled,omitempty"`
	GeneratedAt time.Time        `json:"generated_at"`
	Modules     []AttestedModule `json:"modules"`
	Report      json.RawMessage  `json:"report,omitempty"`

	// Set by the server.
	RecordedAt time.Time `json:"recorded_at,omitzero"`
}

// AttestedModule is one managed module as an instance found it.
type AttestedModule struct {
	Name string `json:"name"`
	// SHA256 is the digest of the file on the instance ("" when it could
	// not be read).
	SHA256     string `json:"sha256"`
	Srcversion string `json:"srcversion,omitempty"`
	Loaded     bool   `json:"loaded"`
	Verified   bool   `json:"verified"`
}

// Instance is the latest attestation of one instance.
type Instance struct {
	InstanceID    string    `json:"instance_id"`
	BootID        string    `json:"boot_id"`
	Kernel        string    `json:"kernel"`
	Arch          string    `json:"arch"`
	Status        string    `json:"status"`
	Covered       bool      `json:"covered"`
	Pulled        bool      `json:"pulled"`
	GeneratedAt   time.Time `json:"generated_at"`
	AttestationID string    `json:"attestation_id"`
}

// Drift is one loaded module of an instance's latest attestation whose
// digest no approval covers for the kernel it runs.
type Drift struct {
	InstanceID string `json:"instance_id"`
	Kernel     string `json:"kernel"`
	Module     string `json:"module"`
	SHA256     string `json:"sha256"`
	Loaded     bool   `json:"loaded"`
	// Reason: "unapproved" (a recorded build has this digest, nobody
	// approved it for the kernel), "unknown" (no recorded build has it) or
	// "unreadable" (the instance could not read the file).
	Reason string `json:"reason"`
}

// Uncovered is a running kernel (and arch) that no recorded bundle covers.
type Uncovered struct {
	Kernel    string   `json:"kernel"`
	Arch      string   `json:"arch"`
	Instances []string `json:"instances"`
}

// Running is one instance that loads a module, from its latest attestation.
type Running struct {
	InstanceID string `json:"instance_id"`
	Kernel     string `json:"kernel"`
	Module     string `json:"module"`
	SHA256     string `json:"sha256"`
	// Versions are the versions recorded builds give this digest.
	Versions    []string  `json:"versions"`
	GeneratedAt time.Time `json:"generated_at"`
}

// TokenRequest asks for a new token.
type TokenRequest struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	// InstanceID binds an instance token to one instance; empty binds it
	// on its first attestation.
	InstanceID string `json:"instance_id,omitempty"`
}

// Token describes a token; Secret is set only in the answer that creates it.
type Token struct {
	Name       string    `json:"name"`
	Role       Role      `json:"role"`
	InstanceID string    `json:"instance_id,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	CreatedBy  string    `json:"created_by"`
	Revoked    bool      `json:"revoked"`
	Secret     string    `json:"secret,omitempty"`
}

// Health is the unauthenticated status of a node.
type Health struct {
	NodeID  uint64 `json:"node_id"`
	Address string `json:"address"`
	Leader  string `json:"leader"`
	Version string `json:"version"`
	// Members are the cluster's nodes as the leader knows them.
	Members []Member `json:"members"`
}

// Member is one node of the cluster.
type Member struct {
	ID      uint64 `json:"id"`
	Address string `json:"address"`
	// Role: voter, stand-by or spare.
	Role string `json:"role"`
}

// Export is a whole catalog: what backup writes and restore reads.
type Export struct {
	Version      int           `json:"version"`
	ExportedAt   time.Time     `json:"exported_at"`
	Tokens       []ExportToken `json:"tokens"`
	Builds       []Build       `json:"builds"`
	Approvals    []Approval    `json:"approvals"`
	Attestations []Attestation `json:"attestations"`
}

// ExportToken is a token as stored: the SHA-256 of its secret, never the
// secret.
type ExportToken struct {
	Token
	SecretSHA256 string `json:"secret_sha256"`
}

// ExportVersion is the version of Export this package writes and reads.
const ExportVersion = 1

// Error is the body of every error answer.
type Error struct {
	Error string `json:"error"`
	// Field names the request field at fault, when one is.
	Field string `json:"field,omitempty"`
}
