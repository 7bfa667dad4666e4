package dkms

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The differential tests source each dkms.conf of testdata/conf with bash
// in the context dkms 3.0.10 gives it (read_conf: the dkms.conf variables
// unset, kernelver and arch set, sourced inside a function with extglob on)
// and compare what bash ends up with to what Parse and Plan say, for every
// variable they claim to know.

const (
	diffKernel  = "6.1.0-56-amd64"
	diffArch    = "x86_64"
	diffModule  = "kmodctl-diff"
	diffVersion = "0.0-diff"
)

// bashPrelude sets up dkms's context and a dumper printing, NUL-separated,
// "S name" for unset variables and "E name index value" per element.
var bashPrelude = `
shopt -s extglob
kernelver=` + diffKernel + `
arch=` + diffArch + `
dkms_tree=/var/lib/dkms
source_tree=/usr/src
install_tree=/lib/modules
kernel_source_dir=/lib/modules/$kernelver/build
kernel_config=$kernel_source_dir/.config
module=` + diffModule + `
module_version=` + diffVersion + `
DKMSVARS="` + strings.Join(dkmsConfVariables, " ") + `"
dump() {
	local _n _i _idx _v
	for _n in "$@"; do
		eval '_idx=("${!'"$_n"'[@]}")'
		if [ ${#_idx[@]} -eq 0 ]; then
			printf 'S\0%s\0' "$_n"
			continue
		fi
		for _i in "${_idx[@]}"; do
			eval '_v=${'"$_n"'[$_i]}'
			printf 'E\0%s\0%s\0%s\0' "$_n" "$_i" "$_v"
		done
	done
}
`

// firstPass is the file sourced in dkms's subshell: what safe_source sees.
const bashFirstPass = `
first() {
	unset $DKMSVARS
	local _f=$1; shift
	. "$_f" >/dev/null 2>&1 </dev/null
	dump "$@" >&3
}
first "$@" 3>&1
`

// dkmsView re-reads the printed values as dkms's safe_source does.
const bashDKMSView = `
view() {
	unset $DKMSVARS
	local _tmp
	_tmp=$(mktemp)
	( exec >"$_tmp"
	  . "$1" >/dev/null 2>&1 </dev/null
	  for _e in $DKMSVARS; do
		for _i in $(eval echo \${!$_e[@]}); do
			eval echo '$_e[$_i]=\"${'$_e'[$_i]}\"'
		done
	  done )
	. "$_tmp" >/dev/null 2>&1 </dev/null
	rm -f "$_tmp"
	dump $DKMSVARS
}
view "$1"
`

type bashVar struct {
	set   bool
	elems map[int64]string
}

func runBash(t *testing.T, script string, args ...string) map[string]*bashVar {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash not installed")
	}
	cmd := exec.Command(bash, append([]string{"--norc", "--noprofile", "-c", bashPrelude + script, "bash"}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent", "LC_ALL=C.UTF-8"}
	cmd.Dir = t.TempDir()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash: %v: %s", err, stderr.String())
	}
	vars := map[string]*bashVar{}
	f := strings.Split(string(out), "\x00")
	for i := 0; i < len(f)-1; {
		switch f[i] {
		case "S":
			vars[f[i+1]] = &bashVar{}
			i += 2
		case "E":
			v := vars[f[i+1]]
			if v == nil {
				v = &bashVar{set: true, elems: map[int64]string{}}
				vars[f[i+1]] = v
			}
			idx, err := strconv.ParseInt(f[i+2], 10, 64)
			if err != nil {
				t.Fatalf("bad index %q", f[i+2])
			}
			v.elems[idx] = f[i+3]
			i += 4
		default:
			t.Fatalf("bad dump at %d: %q", i, f[i])
		}
	}
	return vars
}

func confFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/conf/*.conf")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/conf files: %v", err)
	}
	return files
}

var diffOptions = PlanOptions{Module: diffModule, ModuleVersion: diffVersion}

// compareVar compares our view of one variable with bash's; it returns the
// number of compared elements.
func compareVar(t *testing.T, name string, ours *variable, oursUnsetKnown bool, theirs *bashVar) int {
	t.Helper()
	if theirs == nil {
		t.Errorf("%s: bash did not report it", name)
		return 0
	}
	if ours == nil {
		if !oursUnsetKnown {
			return 0 // unknown to us
		}
		if theirs.set {
			t.Errorf("%s: we say unset, bash has %v", name, theirs.elems)
		}
		return 1
	}
	if ours.unknown {
		return 0
	}
	n := 0
	if len(ours.elems) != len(theirs.elems) {
		got := map[int64]string{}
		for k, e := range ours.elems {
			got[k] = e.val
		}
		t.Errorf("%s: we have %d elements %v, bash %d %v", name, len(ours.elems), got, len(theirs.elems), theirs.elems)
		return 1
	}
	for k, e := range ours.elems {
		tv, ok := theirs.elems[k]
		if !ok {
			t.Errorf("%s[%d]: bash has no such element (ours %q)", name, k, e.val)
			continue
		}
		if !e.known {
			continue
		}
		n++
		if tv != e.val {
			t.Errorf("%s[%d] = %q, bash %q", name, k, e.val, tv)
		}
	}
	return n
}

// comparePlan compares the variables p claims to know with bash's view.
func comparePlan(t *testing.T, p *Plan, theirs map[string]*bashVar) int {
	t.Helper()
	unknown := map[string]bool{}
	for _, n := range p.Unknown {
		unknown[n] = true
	}
	compared := 0
	for _, n := range dkmsConfVariables {
		if unknown[n] {
			continue
		}
		tv := theirs[n]
		if tv == nil {
			t.Errorf("%s: bash did not report it", n)
			continue
		}
		ours := map[int64]string{}
		for k, v := range p.Vars {
			base, idx := k, int64(0)
			if i := strings.IndexByte(k, '['); i > 0 {
				base = k[:i]
				idx, _ = strconv.ParseInt(k[i+1:len(k)-1], 10, 64)
			}
			if base == n {
				ours[idx] = v
			}
		}
		compared++
		if len(ours) != len(tv.elems) {
			t.Errorf("%s: ours %v, bash %v", n, ours, tv.elems)
			continue
		}
		for k, v := range ours {
			if tv.elems[k] != v {
				t.Errorf("%s[%d] = %q, bash %q", n, k, v, tv.elems[k])
			}
		}
	}
	return compared
}

// compareFirst compares the first pass (the file in safe_source's
// subshell) with bash running script (bashFirstPass, or bashFirstPass16
// after a prelude) for every variable we know.
func compareFirst(t *testing.T, c *Conf, file string, o PlanOptions, script string) int {
	t.Helper()
	ev, err := c.evaluate(diffKernel, diffArch, o.withDefaults(diffKernel))
	if err != nil {
		t.Fatal(err)
	}
	in := ev.first[0]
	names := map[string]bool{}
	for _, n := range dkmsConfVariables {
		names[n] = true
	}
	for n := range in.vars {
		if isName(n) {
			names[n] = true
		}
	}
	var list []string
	for n := range names {
		list = append(list, n)
	}
	sort.Strings(list)
	abs, _ := filepath.Abs(file)
	theirs := runBash(t, script, append([]string{abs}, list...)...)
	compared := 0
	for _, n := range list {
		compared += compareVar(t, n, in.vars[n], in.unsetKnown[n], theirs[n])
	}
	return compared
}

func TestBashFirstPass(t *testing.T) {
	for _, file := range confFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			c, err := ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			compared := compareFirst(t, c, file, diffOptions, bashFirstPass)
			t.Logf("%d values compared, %d unsupported constructs", compared, len(c.Unsupported))
		})
	}
}

func TestBashDKMSView(t *testing.T) {
	for _, file := range confFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			c, err := ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			p, err := c.PlanWith(diffKernel, diffArch, diffOptions)
			if p == nil {
				t.Fatal(err)
			}
			abs, _ := filepath.Abs(file)
			compared := comparePlan(t, p, runBash(t, bashDKMSView, abs))
			t.Logf("%d variables compared, unknown %v", compared, p.Unknown)
		})
	}
}
