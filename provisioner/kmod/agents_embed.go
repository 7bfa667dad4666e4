//go:build embedagents

package kmod

import "embed"

// The first-boot agent (kmodctl) for each architecture, built by
// scripts/agents.sh (make plugin does it).
//
//go:embed agents/kmodctl-linux-*
var agentFS embed.FS

// agentBinary returns the agent built for GOARCH arch.
func agentBinary(arch string) ([]byte, bool) {
	b, err := agentFS.ReadFile("agents/kmodctl-linux-" + arch)
	return b, err == nil
}
