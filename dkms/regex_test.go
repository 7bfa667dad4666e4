package dkms

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/shquote"
)

// ereCases are regular expressions as dkms.conf files could hold them: the
// issue's (\d, \<, \>, \b, \w, \s, {,3}, back references, [[=a=]], \x78,
// alternation in a group), the constructs the translation accepts, and the
// malformed ones bash rejects.
var ereCases = []string{
	// The BUILD_EXCLUSIVE_* values of the former TestBashRegex.
	`REQUIRES CONFIG_VIDEO_DEV`, `a{2,}`, `6.1.0-56-amd64`, `AMD64`,
	// the issue's
	`\d`, `^6\.\d`, `^6\.1\.0-\d+-amd64$`, `\<6`, `amd64\>`, `\bamd64`, `^\w+\.`, `\w+`, `\s`, `a{,3}`, `^a{,1}$`,
	`^[0-9]{,2}\.`, `(a)\1`, `^([0-9])\.\1`, `[[=a=]]`, `[[.a.]]`, `\x78`, `x86_\x36`, `[\d]`, `[\w]+`, `^[\.0-9]+$`,
	`x86_(32|64)`, `^x86_(32|64)$`, `^6\.(1|12)\.`, `^(6\.1\.0-[0-9]+|6\.12\.[0-9]+\+deb12)-amd64$`,
	// common idioms
	`^6\.`, `^5\.`, `^(3\.[1-9][0-9]|[4-9]\.)`, `^3\.1[4-9].*|^[4-9].*`, `^(5\.[6-9]\.|5\.[1-9][0-9]\.|[6-9]\.)`,
	`amd64$`, `-rt`, `x86_64|i.86`, `^do_not_build$`, `[[:digit:]]+\.[[:digit:]]+`, `^6\.1\.0-[0-9]+-amd64$`,
	`-amd64$`, `^6\.(1|12)\.[0-9]+`, `\+deb12`, `+deb12`, `^(x86_64|aarch64)$`, `^(i.86|x86_64)$`, `^arm`,
	`^[[:alnum:]_]+$`, `[[:upper:]]`, `[[:punct:]]+`, `[[:space:]]`, `[[:xdigit:]]{2}`, `[[:lower:]]{3,}`,
	`[[:cntrl:]]`, `[[:print:]]+$`, `[[:graph:]]`, `[[:blank:]]`, `[[:alpha:]]`,
	// structure
	`)`, `a)`, `(a))`, `)*`, `a**`, `a*?`, `a+*`, `a?+`, `a{2}*`, `a{1,2}{3}`, `(a)*`, `(^)*`, `(a|)+`, `()`, `a||b`,
	`|a`, `a|`, `(|a)`, `(^a)`, `a^`, `$a`, `^$`, `^`, `$`, `.`, `^.a$`, `b.a`, `b[^x]a`, `^a`, `b$`, `a{0}`, `.{0}`,
	`a{0,0}`, `a{,}`, `x*`, `(a|b){2,3}`, `((a)|b)+$`, `.{255}`, `a{256}`, `a}`, `}`, `a{1}}`,
	`[]a]`, `[^]a]`, `[a-]`, `[-a]`, `[^-a]`, `[]-a]`, `[a-a]`, `[[:digit:]-]`, `[[]`, `[A-z]`, `[%--]`, `[--@]`,
	`[!-~]`, `[0-9A-Fa-f]+`, `[^0-9]`, `[.]`, `[*+?{}()|^$]`, `[\]`, `[\\]`,
	`\.`, `\/`, `\-`, `\_`, `\=`, `\:`, `\,`, `\;`, `\@`, `\%`, `\#`, `\!`, `\"`, `\&`, `\~`, `\ `, `\{`, `\}`,
	`\(`, `\)`, `\[`, `\]`, `\*`, `\^`, `\$`, `\|`, `\+`, `\?`, `\\`, `\a`, `\n`, `\t`, "a\nb", "\t",
	`é`, `[é]`, `^.$`, `^..$`,
	// malformed for bash
	`(`, `[`, `\`, `a\`, `*a`, `^*a`, `a|*b`, `(*a)`, `+a`, `?a`, `{1}a`, `{`, `{a`, `a{`, `a{1`, `a{1,`, `a{x}`,
	`a{ 1}`, `a{}`, `a{3,1}`, `a{1,2,3}`, `a{32768}`, `^+`, `$*`, `x$*`, `^?`, `a$?`, `^{1}`, `a|{1}`, `({1})`,
	`[]`, `[^]`, `[a`, `[z-a]`, `[9-0]`, `[a-c-e]`, `[[:foo:]]`, `[[:ALPHA:]]`, `[[:alpha:]`, `[[:alpha:]-z]`,
}

// ereSubjects are kernel releases, architectures and odd strings.
var ereSubjects = []string{
	"6.1.0-56-amd64", "6.1.0-57-amd64", "6.12.48+deb12-amd64", "6.1.0-56-rt-amd64", "5.10.0-30-arm64", "4.19.0-27-686-pae",
	"6.1.0-57-cloud-amd64", "3.16.0-11-amd64", "x86_64", "aarch64", "i686", "armv7l", "ppc64le", "x86_32",
	"", "a", "aa", "aaa", "d", "6.1.0-d", `\`, "a{b", "a)", "b\na", "a\nb", "é", "éa", "a b", "\t", "x",
}

// bashStatuses runs [[ s =~ re ]] in bash for every pair, in the locale
// given, and returns the statuses.
func bashStatuses(t *testing.T, locale string, pairs [][2]string) []int {
	t.Helper()
	var script strings.Builder
	script.WriteString("m() { [[ $2 =~ $1 ]]; echo $?; }\n")
	for _, p := range pairs {
		script.WriteString("m " + shquote.Quote(p[0]) + " " + shquote.Quote(p[1]) + "\n")
	}
	cmd := exec.Command("bash", "-c", script.String())
	cmd.Env = append(os.Environ(), "LC_ALL="+locale)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bash: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(pairs) {
		t.Fatalf("bash gave %d statuses for %d pairs", len(lines), len(pairs))
	}
	st := make([]int, len(lines))
	for i, l := range lines {
		st[i], _ = strconv.Atoi(l)
	}
	return st
}

// TestEREBashDiff compares bashRegexMatch with bash's [[ =~ ]] for every
// expression and subject, in the C and the C.UTF-8 locales: whenever it
// says known, the answer must be bash's in both.
func TestEREBashDiff(t *testing.T) {
	var pairs [][2]string
	for _, re := range ereCases {
		for _, s := range ereSubjects {
			pairs = append(pairs, [2]string{re, s})
		}
	}
	statuses := map[string][]int{}
	for _, loc := range []string{"C", "C.UTF-8"} {
		statuses[loc] = bashStatuses(t, loc, pairs)
	}
	unknownRE := map[string]string{}
	known := 0
	for i, p := range pairs {
		m, ok, err := bashRegexMatch(p[0], p[1])
		if !ok {
			if err == nil {
				t.Errorf("%q =~ %q: unknown without a reason", p[1], p[0])
			}
			unknownRE[p[0]] = err.Error()
			continue
		}
		known++
		want := 1
		switch {
		case err != nil:
			var ee *EREError
			if !errors.As(err, &ee) {
				t.Errorf("%q =~ %q: error %v is not an *EREError", p[1], p[0], err)
			}
			want = 2
		case m:
			want = 0
		}
		for loc, st := range statuses {
			if st[i] != want {
				t.Errorf("%q =~ %q (LC_ALL=%s): bash returns %d, we say %d (%v)", p[1], p[0], loc, st[i], want, err)
			}
		}
	}
	t.Logf("%d of %d pairs known", known, len(pairs))
	for re, why := range unknownRE {
		t.Logf("unknown %q: %s", re, why)
	}
	// The constructs are never answered from Go's regexp.
	for _, re := range []string{`\d`, `\<6`, `amd64\>`, `\bamd64`, `\w+`, `\s`, `(a)\1`, `[[=a=]]`, `[[.a.]]`, `\x78`} {
		if _, ok := unknownRE[re]; !ok {
			t.Errorf("%q: expected unknown", re)
		}
	}
}

// TestEREMatchERE: with a matcher running bash, every pair is known and
// bash's.
func TestEREMatchERE(t *testing.T) {
	match := regexMatcher(localBashERE)
	for _, re := range []string{`\d`, `^6\.1\.0-\d`, `\<6`, `amd64\>`, `\w+`, `(a)\1`, `[[=a=]]`, `[A-z]`, `é`} {
		for _, s := range []string{"6.1.0-57-amd64", "6.12.48+deb12-amd64", "aa", "é"} {
			m, ok, err := match(re, s)
			if !ok {
				t.Errorf("%q =~ %q: still unknown: %v", s, re, err)
				continue
			}
			st := bashStatuses(t, "C.UTF-8", [][2]string{{re, s}})[0]
			if (st == 0) != m || (st == 2) != (err != nil) {
				t.Errorf("%q =~ %q: bash %d, we say %v %v", s, re, st, m, err)
			}
		}
	}
}

// localBashERE is PlanOptions.MatchERE as Driver.plan does it, with the
// local bash standing for the target's.
func localBashERE(pattern, subject string) (bool, error) {
	err := exec.Command("bash", "-c", `[[ $2 =~ $1 ]]`, "kmodctl-ere", pattern, subject).Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false, nil
	case errors.As(err, &ee) && ee.ExitCode() == 2:
		return false, &EREError{Pattern: pattern, Msg: "bash's [[ =~ ]] returns status 2"}
	}
	return false, err
}

// ereConfigs are kernel .config files for the BUILD_EXCLUSIVE_CONFIG test.
var ereConfigs = []string{
	"CONFIG_X86_64=y\nCONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_DRM_I915=m\n# CONFIG_PREEMPT_RT is not set\nCONFIG_HZ=250\n" +
		"CONFIG_LOCALVERSION=\"\"\nCONFIG_CC_IS_GCC=y\nCONFIG_VIDEO_DEV=m\nCONFIG_X86_32=n\n",
	"CONFIG_X86_32=y\nCONFIG_PREEMPT_RT=y\nCONFIG_PCI=m\nCONFIG_HZ=1000",
	"",
	"CONFIG_LOCALVERSION=\"-é\"\r\nCONFIG_PCI=y\r\nCONFIG_DRM_I915=y\n#é CONFIG_X=y\n",
	"\n\nCONFIG_A=y\n",
}

// ereConfigWords are BUILD_EXCLUSIVE_CONFIG values.
var ereConfigWords = []string{
	"CONFIG_PCI", "!CONFIG_PREEMPT_RT", "CONFIG_X86_(32|64)", "CONFIG_X86_(32|64) !CONFIG_PREEMPT_RT", "CONFIG_DRM_I915",
	"CONFIG_HZ", "CONFIG_A|CONFIG_PCI", "CONFIG_X86_32|", "CONFIG_X86_3.", "CONFIG_.*", "CONFIG_[A-Z]+", "(", "!(",
	"CONFIG_\\w+", "CONFIG_X86_\\d", "*A", "!*A", "CONFIG_PCI{", "[z-a]", "!CONFIG_[[:foo:]]", "CONFIG_VIDEO_DEV\nCONFIG_PCI",
	"CONFIG_LOCALVERSION", "!CONFIG_64BIT", "CONFIG_64BIT=y", "CONFIG_X86_64)", "CONFIG_(X86_64|PCI)", "!", "CONFIG_A||B",
	"CONFIG_LOCAL.*ION", "CONFIG_X86_(32|64", "!CONFIG_X86_(32|64", "CONFIG_PCI\tCONFIG_HZ", "!CONFIG_X86_32 CONFIG_PCI",
	"CONFIG_(PCI)+", "CONFIG_P{,1}CI", "!!CONFIG_PCI", "CONFIG_X86_64 CONFIG_A", "CONFIG_X86_(6)\\1", "CONFIG_DRM_I91[0-9]",
	"CONFIG_(A|DRM_I915|B)", "!CONFIG_(X|Y)", "CONFIG_PCI{1,2,}", "!CONFIG_PCI{", "!CONFIG_PCI)", "CONFIG_PCI|(", "",
	"  ", "CONFIG_VIDEO_DEV)|CONFIG_X", "C.NFIG_PCI", "!@(CONFIG_PCI)", "+(CONFIG_PCI)",
	"CONFIG_X86\\.64", "CONFIG_PC\\I", "!CONFIG_\\(PCI\\)", "CONFIG_\\w+", "!CONFIG_X86_6\\4", "CONFIG_PCI\\", "!CONFIG_PCI\\",
}

// TestKernelConfigGrepDiff runs dkms 3.0.10's BUILD_EXCLUSIVE_CONFIG loop
// (copied from /usr/sbin/dkms, with extglob on as dkms has it, in an empty
// working directory) over every value and config file and compares its
// build_exclude with checkKernelConfig whenever that says known.
func TestKernelConfigGrepDiff(t *testing.T) {
	if _, err := exec.LookPath("grep"); err != nil {
		t.Skip("no grep")
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "cwd")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	script.WriteString(`shopt -s extglob
cd ` + shquote.Quote(empty) + ` || exit 9
chk() {
	local BUILD_EXCLUSIVE_CONFIG=$1 kernel_source_dir=$2 build_exclude=""
	if [[ $BUILD_EXCLUSIVE_CONFIG && -e $kernel_source_dir/.config ]]; then
		local kconf
		for kconf in $BUILD_EXCLUSIVE_CONFIG ; do
			case "$kconf" in
				!*) grep -q -E "^${kconf#!}=[ym]" $kernel_source_dir/.config && build_exclude="yes" ;;
				*)  grep -q -E "^${kconf}=[ym]" $kernel_source_dir/.config || build_exclude="yes" ;;
			esac
		done
	fi
	echo "${build_exclude:-no}"
} 2>/dev/null
`)
	type pair struct {
		words string
		cfg   int
	}
	var pairs []pair
	for i, cfg := range ereConfigs {
		d := filepath.Join(dir, "k"+strconv.Itoa(i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, ".config"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, w := range ereConfigWords {
			script.WriteString("chk " + shquote.Quote(w) + " " + shquote.Quote(d) + "\n")
			pairs = append(pairs, pair{w, i})
		}
	}
	// Both locales at once: a grep per pair makes this the slow part.
	locales := []string{"C", "C.UTF-8"}
	outs := make([]bytes.Buffer, len(locales))
	cmds := make([]*exec.Cmd, len(locales))
	for i, loc := range locales {
		cmds[i] = exec.Command("bash", "-c", script.String())
		cmds[i].Env = append(os.Environ(), "LC_ALL="+loc)
		cmds[i].Stdout = &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatalf("bash: %v", err)
		}
	}
	for li, loc := range locales {
		if err := cmds[li].Wait(); err != nil {
			t.Fatalf("bash (LC_ALL=%s): %v", loc, err)
		}
		got := strings.Fields(outs[li].String())
		if len(got) != len(pairs) {
			t.Fatalf("bash gave %d answers for %d pairs", len(got), len(pairs))
		}
		known := 0
		for i, p := range pairs {
			reasons, ok, why := checkKernelConfig(p.words, []byte(ereConfigs[p.cfg]))
			if !ok {
				if why == "" {
					t.Errorf("%q on config %d: unknown without a reason", p.words, p.cfg)
				}
				if loc == "C" {
					t.Logf("%q on config %d: unknown: %s", p.words, p.cfg, why)
				}
				continue
			}
			known++
			if ours := map[bool]string{true: "yes", false: "no"}[len(reasons) > 0]; ours != got[i] {
				t.Errorf("%q on config %d (LC_ALL=%s): dkms excludes %s, we say %s %q", p.words, p.cfg, loc, got[i], ours, reasons)
			}
		}
		t.Logf("LC_ALL=%s: %d of %d known", loc, known, len(pairs))
	}
}

// TestPlanMatchERE: expressions outside the translated subset are unknown
// without PlanOptions.MatchERE and bash's answer with it.
func TestPlanMatchERE(t *testing.T) {
	conf := "PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/extra\n" +
		"BUILD_EXCLUSIVE_KERNEL='^6\\.1\\.0-\\d'\nBUILD_EXCLUSIVE_ARCH='^x86_\\w+$'\n" +
		"PATCH[0]=a.patch\nPATCH_MATCH[0]='\\<6\\.12'\nPATCH[1]=b.patch\nPATCH_MATCH[1]='^6'\n" +
		"MAKE[0]='make one'\nMAKE_MATCH[0]='^6'\nMAKE[1]='make two'\nMAKE_MATCH[1]='deb12\\>'\n"
	c := mustParse(t, conf)
	for _, tc := range []struct {
		kernel   string
		excluded bool
		patches  []string
		make     string
	}{
		// "\d" is a literal d for glibc: 6.1.0-57 does not match, dkms excludes.
		{"6.1.0-57-amd64", true, []string{"b.patch"}, "make one"},
		{"6.1.0-d-amd64", false, []string{"b.patch"}, "make one"},
		{"6.12.48+deb12-amd64", true, []string{"a.patch", "b.patch"}, "make two"},
	} {
		p, err := c.PlanWith(tc.kernel, "x86_64", PlanOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_ARCH", "PATCH_MATCH", "MAKE_MATCH"} {
			if _, ok := p.UnknownWhy[n]; !ok {
				t.Errorf("%s without MatchERE: %s not unknown (Unknown %v)", tc.kernel, n, p.Unknown)
			}
			if _, ok := p.Vars[n]; ok {
				t.Errorf("%s: unknown %s still in Vars", tc.kernel, n)
			}
		}
		if p.Excluded || p.Patches != nil || p.Make != "" {
			t.Errorf("%s without MatchERE: Excluded %v Patches %v Make %q from unknown expressions", tc.kernel, p.Excluded, p.Patches, p.Make)
		}
		if why := p.UnknownWhy["BUILD_EXCLUSIVE_KERNEL"]; !strings.Contains(why, `\d is a literal "d"`) {
			t.Errorf("%s: reason %q does not name \\d", tc.kernel, why)
		}

		p, err = c.PlanWith(tc.kernel, "x86_64", PlanOptions{MatchERE: localBashERE})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Unknown) != 0 {
			t.Errorf("%s with MatchERE: unknown %v %v", tc.kernel, p.Unknown, p.UnknownWhy)
		}
		if p.Excluded != tc.excluded || strings.Join(p.Patches, " ") != strings.Join(tc.patches, " ") || p.Make != tc.make {
			t.Errorf("%s with MatchERE: Excluded %v (%s) Patches %v Make %q, want %v %v %q", tc.kernel, p.Excluded, p.Reason, p.Patches, p.Make, tc.excluded, tc.patches, tc.make)
		}
	}
}

// TestPlanBadERE: dkms's [[ ! $1 =~ $BUILD_EXCLUSIVE_KERNEL ]] is true when
// the expression does not compile, so dkms excludes; a bad PATCH_MATCH
// applies nothing.
func TestPlanBadERE(t *testing.T) {
	c := mustParse(t, "PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/extra\n"+
		"BUILD_EXCLUSIVE_KERNEL='^(6'\nPATCH[0]=a.patch\nPATCH_MATCH[0]='*6'\n")
	p, err := c.PlanWith("6.1.0-57-amd64", "x86_64", PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Excluded || !strings.Contains(p.Reason, "does not compile") || p.Patches != nil || len(p.Unknown) != 0 {
		t.Errorf("Excluded %v %q Patches %v Unknown %v", p.Excluded, p.Reason, p.Patches, p.Unknown)
	}
	// what dkms's own test does
	out, err := exec.Command("bash", "-c", `K='^(6'; [[ $K && ! $1 =~ $K ]] && echo yes`, "x", "6.1.0-57-amd64").Output()
	if err != nil || strings.TrimSpace(string(out)) != "yes" {
		t.Errorf("bash: %q %v", out, err)
	}
}

// shRunner serves a dkms.conf to Driver.plan and runs the matching command
// Driver.plan sends (bash -c '[[ $2 =~ $1 ]]' ...) with the local sh, as a
// target would; anything else fails.
type shRunner struct {
	conf string
	cmds []string
}

func (r *shRunner) Run(ctx context.Context, cmd string, stdout, stderr io.Writer) (int, error) {
	r.cmds = append(r.cmds, cmd)
	switch {
	case strings.HasPrefix(cmd, "cat /var/lib/dkms/x/1/source/dkms.conf"):
		io.WriteString(stdout, r.conf)
		return 0, nil
	case strings.HasPrefix(cmd, "bash -c "):
		c := exec.CommandContext(ctx, "sh", "-c", cmd)
		c.Stdout, c.Stderr = stdout, stderr
		err := c.Run()
		var xe *exec.ExitError
		if errors.As(err, &xe) {
			return xe.ExitCode(), nil
		}
		return 0, err
	}
	return 3, nil
}

// TestDriverPlanMatchERE: Driver.plan asks the target's bash, passing the
// pattern and the kernel release as arguments (a pattern holding a quote
// and a ";" is not read as code).
func TestDriverPlanMatchERE(t *testing.T) {
	r := &shRunner{conf: "PACKAGE_NAME=x\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=x\nDEST_MODULE_LOCATION=/extra\n" +
		"BUILD_EXCLUSIVE_KERNEL='^6\\.1\\.0-\\d'\nMAKE[0]='make q'\nMAKE_MATCH[0]='\\<6|a;'\"'\"'b'\n"}
	d := &Driver{R: r}
	p := d.plan(context.Background(), dkmsTrees{dkmsTree: "/var/lib/dkms", sourceTree: "/usr/src", installTree: "/lib/modules"}, "x", "1", "6.1.0-57-amd64", "x86_64")
	if p == nil {
		t.Fatal("no plan")
	}
	if len(p.Unknown) != 0 || !p.Excluded || p.Make != "make q" {
		t.Errorf("Unknown %v %v, Excluded %v (%s), Make %q", p.Unknown, p.UnknownWhy, p.Excluded, p.Reason, p.Make)
	}
	asked := 0
	for _, c := range r.cmds {
		if strings.HasPrefix(c, "bash -c '[[ $2 =~ $1 ]]' kmodctl-ere ") {
			asked++
		}
	}
	if asked != 2 {
		t.Errorf("asked bash %d times: %q", asked, r.cmds)
	}
}
