package loadconf

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestEarlyInitramfsTools(t *testing.T) {
	cases := []struct{ name, old, want string }{
		{"absent", "", "# BEGIN packer-plugin-kmod\na\nb_c\n# END packer-plugin-kmod\n"},
		{"kept lines", "# comment\n\nloop max_loop=8\n", "# comment\n\nloop max_loop=8\n# BEGIN packer-plugin-kmod\na\nb_c\n# END packer-plugin-kmod\n"},
		{"replaces the block", "\n\nfoo\n# BEGIN packer-plugin-kmod\nold\n# END packer-plugin-kmod\nbar\n",
			"foo\nbar\n# BEGIN packer-plugin-kmod\na\nb_c\n# END packer-plugin-kmod\n"},
		{"no final newline", "foo", "foo\n# BEGIN packer-plugin-kmod\na\nb_c\n# END packer-plugin-kmod\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := string(EarlyInitramfsTools([]byte(c.old), []string{"a", "b_c"}))
			if got != c.want {
				t.Errorf("got\n%q\nwant\n%q", got, c.want)
			}
			// Rewriting is idempotent.
			if again := string(EarlyInitramfsTools([]byte(got), []string{"a", "b_c"})); again != got {
				t.Errorf("second rewrite changed it:\n%q", again)
			}
		})
	}
}

// The dracut file is bash that dracut sources: force_drivers must hold
// the names as words.
func TestEarlyDracut(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kmodctl.conf")
	if err := os.WriteFile(p, EarlyDracut([]string{"a", "b_c"}), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", "-c", `force_drivers=" x "; . "$1"; for w in $force_drivers; do echo "$w"; done`, "bash", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); strings.Join(got, " ") != "x a b_c" {
		t.Errorf("force_drivers words %q", got)
	}
}
