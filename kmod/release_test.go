package kmod

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

func TestCompareReleases(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"6.1.0-9-amd64", "6.1.0-10-amd64", -1},
		{"6.1.0-10-amd64", "6.1.0-9-amd64", 1},
		{"6.1.0-9-amd64", "6.1.0-9-amd64", 0},
		{"6.1.0-9-amd64", "6.1.0-9-rt-amd64", -1},
		{"5.10.0-28-amd64", "6.1.0-9-amd64", -1},
		{"6.1~rc1", "6.1", -1},
		{"6.10.1", "6.9.12", 1},
		{"6.5.6-300.fc39.x86_64", "6.5.12-300.fc39.x86_64", -1},
		{"1:1.0", "2.0", 1},
		{"6.1.0-09", "6.1.0-9", 0},
		{"6.1a", "6.1+", -1}, // letters before other characters
	} {
		got := CompareReleases(c.a, c.b)
		if got < 0 {
			got = -1
		} else if got > 0 {
			got = 1
		}
		if got != c.want {
			t.Errorf("CompareReleases(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}

	// Against dpkg itself, on kernel release-like strings.
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Log("dpkg not installed: not compared with dpkg --compare-versions")
		return
	}
	vs := []string{"6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-10-cloud-amd64", "6.1.0-9-rt-amd64",
		"5.10.0-28-amd64", "6.1.0-56-amd64", "6.12.9+bpo-amd64", "6.12.9~bpo12+1-amd64",
		"6.5.6-300.fc39.x86_64", "6.5.12-300.fc39.x86_64", "6.8.0-1-generic", "6.8.0-10-generic",
		"6.8.0-rc1-generic", "0-rescue-0123abcd", "6.1.0", "6.1"}
	for _, a := range vs {
		for _, b := range vs {
			got := CompareReleases(a, b)
			lt := exec.Command("dpkg", "--compare-versions", a, "lt", b).Run() == nil
			eq := exec.Command("dpkg", "--compare-versions", a, "eq", b).Run() == nil
			if (got < 0) != lt || (got == 0) != eq {
				t.Errorf("CompareReleases(%q, %q) = %d; dpkg: lt %v eq %v", a, b, got, lt, eq)
			}
		}
	}
	// And sort -V agrees on the newest-first order of these.
	if _, err := exec.LookPath("sort"); err == nil {
		sorted := append([]string(nil), vs[:12]...)
		sort.Slice(sorted, func(i, j int) bool { return CompareReleases(sorted[i], sorted[j]) < 0 })
		cmd := exec.Command("sort", "-V")
		cmd.Stdin = strings.NewReader(strings.Join(vs[:12], "\n") + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Fields(string(out)); strings.Join(want, " ") != strings.Join(sorted, " ") {
			t.Errorf("order %v, sort -V %v", sorted, want)
		}
	}
}
