//go:build tools

// Package tools pins the oras CLI, the independent OCI client of the
// bundle tests; see scripts/tools.sh.
package tools

import _ "oras.land/oras/cmd/oras"
