//go:build embedagents

package kmod

import (
	"embed"
	"strings"
)

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

// agentArches lists the architectures whose agent the plugin carries.
func agentArches() []string {
	var arches []string
	entries, _ := agentFS.ReadDir("agents")
	for _, e := range entries {
		arches = append(arches, strings.TrimPrefix(e.Name(), "kmodctl-linux-"))
	}
	return arches
}
