//go:build tools

// Package tools pins Packer as a build tool; see scripts/tools.sh.
package tools

import _ "github.com/hashicorp/packer"
