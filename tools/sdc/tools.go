//go:build tools

// Package tools pins packer-sdc as a build tool; see scripts/tools.sh.
package tools

import _ "github.com/hashicorp/packer-plugin-sdk/cmd/packer-sdc"
