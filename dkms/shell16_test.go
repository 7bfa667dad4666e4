package dkms

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// The issue-16 cases that the differential tests of bashdiff_test.go cannot
// run: files that make bash stop reading them (exit, set -e, set -u,
// arithmetic errors), and files whose IFS changes what safe_source prints
// (bashDKMSView's own loop splits with the file's IFS; dkms's does not).
// They live in testdata/conf/i16 and are compared with bash sourcing them
// through dkms 3.0.10's safe_source, copied verbatim.

// bashSafeSource is dkms 3.0.10's safe_source (mktemp_or_die is mktemp)
// and read_conf's clearing of the variables, then a dump of what dkms
// holds afterwards.
const bashSafeSource = `
safe_source() {
    # $1 = file to source
    # $@ = environment variables to echo out
    local to_source_file="$1"; shift
    declare -a -r export_envs=("$@")
    local tmpfile=$(mktemp)
    ( exec >"$tmpfile"
    . "$to_source_file" >/dev/null
    # This is really ugly, but a neat hack
    # Remember, in bash 2.0 and greater all variables are really arrays.
    for _export_env in "${export_envs[@]}"; do
        for _i in $(eval echo \${!$_export_env[@]}); do
            eval echo '$_export_env[$_i]=\"${'$_export_env'[$_i]}\"'
        done
    done

    # handle DKMS_DIRECTIVE stuff specially.
    for directive in $(set | grep ^DKMS_DIRECTIVE | cut -d = -f 2-3); do
        directive_name=${directive%%=*}
        directive_value=${directive#*=}
        echo "$directive_name=\"$directive_value\""
    done
    )
    . "$tmpfile"
    rm "$tmpfile"
}
view16() {
    for var in $DKMSVARS; do
        unset $var
    done
    safe_source "$1" $DKMSVARS
    dump $DKMSVARS
}
view16 "$1" 2>/dev/null </dev/null
`

// bashFirstPass16 is bashFirstPass in a subshell, as safe_source runs the
// file: an exit or a fatal error prints nothing.
const bashFirstPass16 = `
first16() {
	( unset $DKMSVARS
	  _f=$1; shift
	  . "$_f" >/dev/null 2>&1 </dev/null
	  dump "$@" >&3 )
}
first16 "$@" 3>&1
`

// expectation reads a file's "# expect: fatal LINE", "# expect: unknown"
// or "# expect: values" comment.
func expectation(t *testing.T, file string) (kind string, line int) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(strings.TrimPrefix(sc.Text(), "# expect:"))
		if !strings.HasPrefix(sc.Text(), "# expect:") || len(f) == 0 {
			continue
		}
		if f[0] == "fatal" && len(f) == 2 {
			line, err = strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("%s: bad expectation %q", file, sc.Text())
			}
		}
		return f[0], line
	}
	t.Fatalf("%s: no # expect: line", file)
	return "", 0
}

func TestShell16Files(t *testing.T) {
	files, err := filepath.Glob("testdata/conf/i16/*.conf")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/conf/i16 files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			kind, line := expectation(t, file)
			c, err := ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			p, err := c.PlanWith(diffKernel, diffArch, diffOptions)
			if p == nil {
				t.Fatal(err)
			}
			abs, _ := filepath.Abs(file)
			theirs := runBash(t, bashSafeSource, abs)
			compared := comparePlan(t, p, theirs)
			set := 0
			for _, n := range dkmsConfVariables {
				if v := theirs[n]; v != nil && v.set {
					set++
				}
			}
			switch kind {
			case "fatal":
				var ce *ConfError
				if !errors.As(err, &ce) || len(ce.Problems) == 0 || !strings.HasPrefix(ce.Problems[0], "line "+strconv.Itoa(line)+": ") {
					t.Errorf("want a ConfError naming line %d first, got %v", line, err)
				}
				if set != 0 {
					t.Errorf("bash's dkms read %d variables: not a fatal case", set)
				}
				if len(p.Unknown) != 0 {
					t.Errorf("unknown %v: a fatal error makes every variable known unset", p.Unknown)
				}
			case "unknown":
				for _, n := range []string{"PACKAGE_NAME", "PACKAGE_VERSION", "BUILT_MODULE_NAME", "MAKE"} {
					if _, ok := p.UnknownWhy[n]; !ok {
						t.Errorf("%s known (%q): the file may stop before safe_source prints", n, p.Vars[n])
					}
				}
				if err != nil {
					t.Errorf("a possible error is no rejection: %v", err)
				}
			case "values":
				if set == 0 {
					t.Errorf("bash's dkms read nothing")
				}
				compared += compareFirst(t, c, file, diffOptions, bashFirstPass16)
			default:
				t.Fatalf("bad expectation %q", kind)
			}
			t.Logf("%d compared; unknown %v; error %v", compared, p.Unknown, err)
		})
	}
}

// TestShell16Known checks that the crafted files give values, not only
// unknowns that agree with anything.
func TestShell16Known(t *testing.T) {
	cases := map[string][]string{
		"crafted-i16-dqpattern.conf": {"KMAJOR=6", "KMINOR=1", "KBASE=6.1.0", "VMAJMIN=1.2", "DIGITS=N.N.N-NN-amdNN",
			"QUOTEDSUB=a*b.c-d*e", "SQ=b.c-d*e", "ESC=a*b.c-d", "ALL=aSb.c-dSe", "UPPAT=A*B.C-d*e", "LIT='}'",
			"MAKE[0]=make KVER=6.1.0-56-amd64 NEW=1", "BUILT_MODULE_NAME[0]=dq_amd64"},
		"crafted-i16-options.conf": {"A=1", "B=unset", "C=d", "D=", "F=assigned", "G=", "BUILT_MODULE_NAME[0]=options", "LY=old", "LW=5"},
		"crafted-i16-eval.conf":    {"PACKAGE_VERSION=1.0", "X=2.0", "MAKE[0]=make V=2.0 X=2.0", "CLEAN=make clean", "POST_ADD=yes", "POST_BUILD=nested 2.0", "A[2]=3", "BUILT_MODULE_NAME[0]=ev", "POST_INSTALL=builtin", "POST_REMOVE=command"},
		"crafted-i16-read.conf":    {"PACKAGE_NAME=reader", "BUILT_MODULE_NAME[0]=reader"},
		"crafted-i16-shopt.conf":   {"K=6.1.0", "PACKAGE_NAME=shopt"},
	}
	unknown := map[string][]string{
		"crafted-i16-read.conf":  {"DESC", "ARR", "X", "Y", "LINES", "PV", "REPLY", "POST_ADD"},
		"crafted-i16-shopt.conf": {"A", "X"},
	}
	for file, want := range cases {
		c, err := ParseFile(filepath.Join("testdata/conf", file))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := c.evaluate(diffKernel, diffArch, diffOptions.withDefaults(diffKernel))
		if err != nil {
			t.Fatal(err)
		}
		in := ev.first[0]
		for _, w := range want {
			k, v, _ := strings.Cut(w, "=")
			name, idx := k, int64(0)
			if i := strings.IndexByte(k, '['); i > 0 {
				name = k[:i]
				idx, _ = strconv.ParseInt(k[i+1:len(k)-1], 10, 64)
			}
			got, known := in.get(name, idx)
			if !known || got != v {
				t.Errorf("%s: %s = %q (known %v), want %q", file, k, got, known, v)
			}
		}
		for _, n := range unknown[file] {
			if v, ok := in.vars[n]; !ok || !v.unknown && !anyUnknown(v) {
				t.Errorf("%s: %s should be known only at build time", file, n)
			}
		}
	}
}

// TestShell16Parse: Conf reports an exit that always happens, and not one
// that depends on the kernel.
func TestShell16Parse(t *testing.T) {
	c, err := ParseFile("testdata/conf/i16/crafted-i16-exit.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.Fatal, "line 6: exit") {
		t.Errorf("Fatal = %q", c.Fatal)
	}
	c, err = ParseFile("testdata/conf/i16/crafted-i16-exit-kernel.conf")
	if err != nil {
		t.Fatal(err)
	}
	if c.Fatal != "" || !contains(c.Unknown, "PACKAGE_NAME") {
		t.Errorf("Fatal = %q, unknown %v: the exit depends on the kernel", c.Fatal, c.Unknown)
	}
	p, err := c.Plan("5.10.0-30-amd64", diffArch)
	if err != nil || p.PackageName != "fatal" {
		t.Errorf("kernel 5.10: %v %v", p, err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestShell16Override: an override that exits leaves dkms's values as the
// dkms.conf set them.
func TestShell16Override(t *testing.T) {
	c, err := Parse(strings.NewReader("PACKAGE_NAME=p\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=m\nDEST_MODULE_LOCATION[0]=/extra\n"), "dkms.conf")
	if err != nil {
		t.Fatal(err)
	}
	o, err := Parse(strings.NewReader("PACKAGE_VERSION=2\nexit 1\n"), "/etc/dkms/p.conf")
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.PlanWith(diffKernel, diffArch, PlanOptions{Overrides: []*Conf{o}})
	if err != nil {
		t.Fatal(err)
	}
	if p.PackageVersion != "1" || len(p.Warnings) == 0 || !strings.Contains(p.Warnings[0], "line 2: exit") {
		t.Errorf("version %q, warnings %v", p.PackageVersion, p.Warnings)
	}
}

// TestShell16EchoSplit compares echoSplit with bash printing a value as
// safe_source does, for several IFS.
func TestShell16EchoSplit(t *testing.T) {
	values := []string{"", " ", "a", " a b ", "a  b", "1.2.3", ".1", "1.", "1..2", ".", "..", " . ", "a : b", ":a::b:", "x\ty\nz", "a.b c:d", "\t.\t"}
	ifss := []string{" \t\n", ".", " :", ":", "", " ", ". \t", "\n"}
	var script strings.Builder
	type pair struct{ v, ifs string }
	var pairs []pair
	for _, ifs := range ifss {
		for _, v := range values {
			script.WriteString("IFS=" + shquote.Quote(ifs) + "; V=" + shquote.Quote(v) + "; _o=$(eval echo 'X=\\\"$V\\\"'); IFS=$' \\t\\n'; printf 'E\\0r\\0%s\\0%s\\0' " + strconv.Itoa(len(pairs)) + " \"$_o\"\n")
			pairs = append(pairs, pair{v, ifs})
		}
	}
	theirs := runBash(t, script.String())
	for i, pr := range pairs {
		got := "X=\"" + echoSplit(pr.v, pr.ifs) + "\""
		if want := theirs["r"].elems[int64(i)]; got != want {
			t.Errorf("IFS %q value %q: ours %q, bash %q", pr.ifs, pr.v, got, want)
		}
	}
}

// kernelConfigFile is the fixture kernel's real .config (its headers);
// missing, the test skips, or fails in CI (internal/fixture).
func kernelConfigFile(t *testing.T) []byte {
	t.Helper()
	p := filepath.Join(fixture.Headers(t), ".config")
	data, err := os.ReadFile(p)
	if err != nil || len(data) == 0 {
		fixture.Missing(t, "the kernel .config "+p)
	}
	t.Logf("kernel config %s", p)
	return data
}

// TestShell16KernelConfig sources every testdata/conf file with a real
// .config at $kernel_source_dir, in bash and with PlanOptions.KernelConfig,
// and compares every variable we claim to know.
func TestShell16KernelConfig(t *testing.T) {
	data := kernelConfigFile(t)
	ksd := t.TempDir()
	if err := os.WriteFile(filepath.Join(ksd, ".config"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	prelude := "kernel_source_dir=" + shquote.Quote(ksd) + "\nkernel_config=$kernel_source_dir/.config\n"
	o := diffOptions
	o.KernelSourceDir = ksd
	o.KernelConfig = data
	// the files whose values the config decides: now definite
	definite := map[string][]string{
		"digimend-dkms_11-2.dkms.conf": {"BUILD_EXCLUSIVE_KERNEL", "MAKE", "BUILT_MODULE_NAME"},
		// lttng-modules and v4l2loopback also run sed and sort -V on
		// $kernelver: those stay unknown
		"crafted-i16-kconfig.conf": {"BUILD_EXCLUSIVE_ARCH", "BUILD_EXCLUSIVE_KERNEL", "MAKE", "BUILT_MODULE_NAME", "POST_ADD"},
	}
	for _, file := range confFiles(t) {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(src, []byte("config")) {
			continue // the others do not look at it
		}
		t.Run(filepath.Base(file), func(t *testing.T) {
			c, err := ParseFile(file)
			if err != nil {
				t.Fatal(err)
			}
			p, err := c.PlanWith(diffKernel, diffArch, o)
			if p == nil {
				t.Fatal(err)
			}
			abs, _ := filepath.Abs(file)
			theirs := runBash(t, prelude+bashSafeSource, abs)
			n := comparePlan(t, p, theirs)
			n += compareFirst(t, c, file, o, prelude+bashFirstPass16)
			for _, v := range definite[filepath.Base(file)] {
				if why, ok := p.UnknownWhy[v]; ok {
					t.Errorf("%s unknown with the kernel config given: %s", v, why)
				}
			}
			t.Logf("%d compared, unknown %v", n, p.Unknown)
		})
	}
}
