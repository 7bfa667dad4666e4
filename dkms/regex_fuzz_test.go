package dkms

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

// FuzzERE checks that the expression scanner never panics, answers the
// same twice, and says why whenever it does not know. With
// KMODCTL_FUZZ_BASH=1 it also runs bash's [[ =~ ]] on every input and
// requires the same answer whenever it says known (slow: one bash per
// input).
func FuzzERE(f *testing.F) {
	for _, re := range ereCases {
		for _, s := range []string{"6.1.0-57-amd64", "6.12.48+deb12-amd64", "x86_64", "", "a\nb"} {
			f.Add(re, s)
		}
	}
	for _, w := range ereConfigWords {
		f.Add(w, "CONFIG_PCI=y\nCONFIG_X86_64=y\n")
	}
	withBash := os.Getenv("KMODCTL_FUZZ_BASH") == "1"
	f.Fuzz(func(t *testing.T, re, s string) {
		m, known, err := bashRegexMatch(re, s)
		m2, known2, err2 := bashRegexMatch(re, s)
		if m != m2 || known != known2 || (err == nil) != (err2 == nil) {
			t.Fatalf("%q =~ %q: %v %v %v, then %v %v %v", s, re, m, known, err, m2, known2, err2)
		}
		if !known && err == nil {
			t.Fatalf("%q =~ %q: unknown without a reason", s, re)
		}
		var ee *EREError
		if known && err != nil && !errors.As(err, &ee) {
			t.Fatalf("%q =~ %q: known with error %v, not an *EREError", s, re, err)
		}
		if reasons, ok, why := checkKernelConfig(re, []byte(s)); !ok && why == "" || ok && why != "" {
			t.Fatalf("checkKernelConfig(%q, %q): %v %v %q", re, s, reasons, ok, why)
		}
		if !withBash || !known {
			return
		}
		want := 1
		switch {
		case err != nil:
			want = 2
		case m:
			want = 0
		}
		got := 0
		if err := exec.Command("bash", "-c", `[[ $2 =~ $1 ]]`, "x", re, s).Run(); err != nil {
			var xe *exec.ExitError
			if !errors.As(err, &xe) {
				t.Skip(err) // a NUL byte in an argument, for instance
			}
			got = xe.ExitCode()
		}
		if got != want {
			t.Fatalf("%q =~ %q: bash %d, we say %d (%v)", s, re, got, want, err)
		}
	})
}
