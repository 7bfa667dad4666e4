package dkms

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParse checks that Parse and Plan never panic or hang, whatever the
// input, and that errors name the file.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/conf/*.conf")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"X=${a:-${b:-${c}}}", "A[${#A[@]}]=x\nA[${#A[@]}]=y", "x=$((1+(2*3)%4))", "case $x in a|b) y=1;; *) y=2;; esac",
		"f() { x=1; }; f", "if a; then b=1; elif c; then d=2; else e=3; fi", "cat <<EOF\nx\nEOF\ny=1",
		"a=(1 2 [5]=3)", "x=$'\\x41\\n'", "for i in 1 2 3; do A[i]=$i; done", "x=${y//a/b}", "x=${y:1:2}",
		"a=$a$a$a$a\na=$a$a$a$a", "((i++)); let j=i**2", "x=`echo $(echo \"$(echo)\")`", "[[ a =~ ^(b|c)$ ]] && x=1",
		"x=$((", "x=\"unterminated", "if x; then", "a=(", "${", "x=${y", "X=~/a:~/b",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 16<<10 {
			return
		}
		start := time.Now()
		c, err := Parse(bytes.NewReader(data), "fuzz.conf")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.conf") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, k := range []string{"6.1.0-56-amd64", "", "5.10.0-0.deb10.16-rt-arm64"} {
			p, err := c.PlanWith(k, "x86_64", PlanOptions{Module: "m", ModuleVersion: "1", KernelConfig: []byte("CONFIG_PCI=y\n")})
			if p == nil && err == nil {
				t.Fatal("Plan returned neither a plan nor an error")
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("took %v", d)
		}
	})
}
