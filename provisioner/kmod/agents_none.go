//go:build !embedagents

package kmod

// agentBinary: a plugin built without -tags embedagents (plain go build)
// carries no first-boot agent; `make plugin` builds one that does.
func agentBinary(arch string) ([]byte, bool) { return nil, false }

// agentArches lists the architectures whose agent the plugin carries.
func agentArches() []string { return nil }
