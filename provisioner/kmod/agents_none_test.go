//go:build !embedagents

package kmod

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A plugin built with a plain go build carries no agent: Prepare refuses the
// default hook before anything runs, and accepts hook = "none".
func TestPrepareNoAgent(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"cert.pem", "key.pem", "x.ko"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	raw := func(hook string) map[string]interface{} {
		m := map[string]interface{}{"signing_cert": filepath.Join(dir, "cert.pem"), "signing_key": filepath.Join(dir, "key.pem"),
			"module": []map[string]interface{}{{"prebuilt": []string{filepath.Join(dir, "x.ko")}}}}
		if hook != "" {
			m["firstboot"] = map[string]interface{}{"hook": hook}
		}
		return m
	}
	for _, hook := range []string{"", "systemd", "cloud-init"} {
		var p Provisioner
		err := p.Prepare(raw(hook))
		if err == nil || !strings.Contains(err.Error(), "carries no first-boot agent") || !strings.Contains(err.Error(), `hook = "none"`) {
			t.Errorf("hook %q: Prepare = %v, want the no-agent error", hook, err)
		}
	}
	var p Provisioner
	if err := p.Prepare(raw("none")); err != nil {
		t.Errorf("hook none: Prepare = %v", err)
	}
}
