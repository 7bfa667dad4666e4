package firstboot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestIdentity(t *testing.T) {
	t.Parallel()
	const boot = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	for _, tc := range []struct {
		name           string
		files          map[string]string
		id, source     string
		bootID         string
		problemsSubstr []string
	}{
		{"cloud-init", map[string]string{
			"var/lib/cloud/data/instance-id": "i-0abc123def\n",
			"etc/machine-id":                 "0123456789abcdef0123456789abcdef\n",
			"proc/sys/kernel/random/boot_id": boot + "\n",
		}, "i-0abc123def", SourceCloudInit, boot, nil},
		{"machine-id", map[string]string{
			"etc/machine-id":                 "0123456789abcdef0123456789abcdef\n",
			"proc/sys/kernel/random/boot_id": boot + "\n",
		}, "0123456789abcdef0123456789abcdef", SourceMachineID, boot, nil},
		{"empty cloud-init id", map[string]string{
			"var/lib/cloud/data/instance-id": "\n",
			"etc/machine-id":                 "0123456789abcdef0123456789abcdef",
		}, "0123456789abcdef0123456789abcdef", SourceMachineID, "", []string{BootIDPath}},
		{"uninitialized machine-id", map[string]string{
			"etc/machine-id": "uninitialized\n",
		}, "", "", "", []string{"uninitialized", BootIDPath}},
		{"nothing", nil, "", "", "", []string{MachineIDPath, BootIDPath}},
		{"binary cloud-init id", map[string]string{
			"var/lib/cloud/data/instance-id": "a\x01b",
			"etc/machine-id":                 "m",
		}, "m", SourceMachineID, "", []string{"printable", BootIDPath}},
		{"huge machine-id", map[string]string{
			"etc/machine-id": strings.Repeat("a", 5000),
		}, "", "", "", []string{"longer than"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, tc.files)
			id := ReadIdentity(root)
			if id.InstanceID != tc.id || id.Source != tc.source || id.BootID != tc.bootID {
				t.Errorf("got %+v, want %q %q %q", id, tc.id, tc.source, tc.bootID)
			}
			all := strings.Join(id.Problems, "\n")
			for _, s := range tc.problemsSubstr {
				if !strings.Contains(all, s) {
					t.Errorf("problems %q lack %q", id.Problems, s)
				}
			}
			if len(tc.problemsSubstr) == 0 && len(id.Problems) != 0 {
				t.Errorf("problems %q", id.Problems)
			}
			// Problems never name the host path.
			if strings.Contains(all, root) {
				t.Errorf("problems name the host path: %q", id.Problems)
			}
		})
	}
	// The report carries the cloud-init identity and the warnings.
	e := newEnv(t)
	e.write("var/lib/cloud/data/instance-id", "iid-datasource-none\n")
	os.Remove(filepath.Join(e.root, BootIDPath))
	r := e.run(e.options())
	if r.InstanceID != "iid-datasource-none" || r.InstanceIDSource != SourceCloudInit || r.BootID != "" || len(r.Warnings) != 1 || r.Status != StatusOK {
		t.Errorf("report identity %q %q %q, warnings %q, status %s", r.InstanceID, r.InstanceIDSource, r.BootID, r.Warnings, r.Status)
	}
}

func TestDone(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	a := Identity{InstanceID: "i-a", Source: SourceCloudInit}
	b := Identity{InstanceID: "i-b", Source: SourceCloudInit}
	if Done(root, a) {
		t.Error("done before any run")
	}
	if err := MarkDone(root, a); err != nil {
		t.Fatal(err)
	}
	if !Done(root, a) || Done(root, b) {
		t.Error("done for the wrong instance")
	}
	if err := MarkDone(root, b); err != nil {
		t.Fatal(err)
	}
	if Done(root, a) || !Done(root, b) {
		t.Error("a new instance did not replace the old")
	}
	if err := MarkDone(root, Identity{}); err == nil || Done(root, Identity{}) {
		t.Error("an identity without instance ID was recorded or is done")
	}
}
