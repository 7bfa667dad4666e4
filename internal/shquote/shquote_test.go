package shquote

import (
	"os/exec"
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "''",
		"plain":            "plain",
		"/usr/src/a-1.0":   "/usr/src/a-1.0",
		"k=v,x@y:z+1%2":    "k=v,x@y:z+1%2",
		"two words":        "'two words'",
		"it's":             `'it'\''s'`,
		"$HOME":            "'$HOME'",
		"~root":            "'~root'",
		"*.ko":             "'*.ko'",
		"a\nb":             "'a\nb'",
		`back\slash"quote`: `'back\slash"quote'`,
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
	if got, want := Join("rm", "-f", "a b", ""), "rm -f 'a b' ''"; got != want {
		t.Errorf("Join = %s, want %s", got, want)
	}
}

// TestShellReadsBack runs the quoted words through the shells the callers
// use and checks each comes back as one argument, byte for byte.
func TestShellReadsBack(t *testing.T) {
	words := []string{
		"", "plain", "two words", "it's", "''", `'\''`, `"`, `\`, "$HOME", "${x:-y}", "`id`", "$(id)",
		"~", "~root", "*", "?", "[a]", "a;b", "a&b", "a|b", "a>b", "<", "#c", "!x", "{a,b}",
		"a\nb", "\t", " lead", "trail ", "=x", "x=y", "-n", "--", "é", "\x01\x7f\xff",
	}
	for _, sh := range []string{"/bin/sh", "bash"} {
		if _, err := exec.LookPath(sh); err != nil {
			continue
		}
		out, err := exec.Command(sh, "-c", `printf '%s\0' `+Join(words...)).Output()
		if err != nil {
			t.Fatalf("%s: %v", sh, err)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		if len(got) != len(words) {
			t.Fatalf("%s: %d words back, want %d: %q", sh, len(got), len(words), got)
		}
		for i := range words {
			if got[i] != words[i] {
				t.Errorf("%s: word %d = %q, want %q", sh, i, got[i], words[i])
			}
		}
	}
}
