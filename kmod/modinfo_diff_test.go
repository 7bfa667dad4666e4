package kmod

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// These tests compare ModinfoFields with the output of the real kmod
// modinfo, field by field, over every module of the fixture kernel and the
// other fixture modules.

// modinfoBatch is how many files one modinfo process reads.
const modinfoBatch = 200

// modinfoRecord is one module of modinfo's output.
type modinfoRecord struct {
	file   string
	fields []Field
}

// runModinfo runs modinfo over files, modinfoBatch at a time and a few
// processes in parallel, and returns the fields it printed for each file.
func runModinfo(t testing.TB, files []string) map[string][]Field {
	t.Helper()
	tool := fixture.Tool(t, "modinfo")
	var batches [][]string
	for f := range slices.Chunk(files, modinfoBatch) {
		batches = append(batches, f)
	}
	results := make([][]modinfoRecord, len(batches))
	errs := make([]error, len(batches))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, batch := range batches {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(tool, append([]string{"-0"}, batch...)...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				errs[i] = fmt.Errorf("modinfo: %v: %s", err, stderr.Bytes())
				return
			}
			results[i], errs[i] = parseModinfoOutput(stdout.String())
		}()
	}
	wg.Wait()
	out := make(map[string][]Field, len(files))
	for i := range batches {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		for _, r := range results[i] {
			out[r.file] = r.fields
		}
	}
	for _, f := range files {
		if _, ok := out[f]; !ok {
			t.Fatalf("modinfo printed nothing for %s", f)
		}
	}
	return out
}

// parseModinfoOutput splits the output of `modinfo -0` into records. With
// -0, modinfo ends every line with a NUL instead of a newline, so values
// holding newlines stay unambiguous, and it prints "key=value" for the
// .modinfo and signature fields, but still "filename:" and "parm:" padded
// to 16 columns. The signature value stays wrapped with "\n\t\t" every 20
// bytes.
func parseModinfoOutput(out string) ([]modinfoRecord, error) {
	const (
		filenamePrefix = "filename:       "
		parmPrefix     = "parm:           "
	)
	var recs []modinfoRecord
	for item := range strings.SplitSeq(strings.TrimSuffix(out, "\x00"), "\x00") {
		if file, ok := strings.CutPrefix(item, filenamePrefix); ok {
			recs = append(recs, modinfoRecord{file: file})
			continue
		}
		r := lastRecord(recs)
		if r == nil {
			return nil, fmt.Errorf("modinfo output %q before any filename", item)
		}
		if v, ok := strings.CutPrefix(item, parmPrefix); ok {
			r.fields = append(r.fields, Field{Key: "parm", Value: v})
			continue
		}
		key, value, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("unparsable modinfo output %q", item)
		}
		if key == "signature" {
			value = strings.ReplaceAll(value, "\n\t\t", "")
		}
		r.fields = append(r.fields, Field{Key: key, Value: value})
	}
	return recs, nil
}

func lastRecord(recs []modinfoRecord) *modinfoRecord {
	if len(recs) == 0 {
		return nil
	}
	return &recs[len(recs)-1]
}

// diffFields compares want (modinfo's) with got (ModinfoFields) and
// describes every difference.
func diffFields(file string, m *Module, want []Field) []string {
	got := m.ModinfoFields()
	var diffs []string
	for i := range max(len(want), len(got)) {
		switch {
		case i >= len(got):
			diffs = append(diffs, fmt.Sprintf("%s: field %d: modinfo has %s=%q, ModinfoFields ends", file, i, want[i].Key, want[i].Value))
		case i >= len(want):
			diffs = append(diffs, fmt.Sprintf("%s: field %d: modinfo ends, ModinfoFields has %s=%q", file, i, got[i].Key, got[i].Value))
		case want[i] != got[i]:
			diffs = append(diffs, fmt.Sprintf("%s: field %d: key %q: modinfo %s=%q, ModinfoFields %s=%q", file, i, want[i].Key, want[i].Key, want[i].Value, got[i].Key, got[i].Value))
		}
	}
	return diffs
}

// compareWithModinfo parses every file and compares it with modinfo's
// fields for reference[file] (the file itself when reference is nil). It
// returns how many files were compared.
func compareWithModinfo(t *testing.T, files []string, reference map[string]string) int {
	t.Helper()
	refs := make([]string, 0, len(files))
	for _, f := range files {
		r := f
		if reference != nil {
			r = reference[f]
		}
		refs = append(refs, r)
	}
	want := runModinfo(t, uniq(refs))
	type result struct {
		m   *Module
		err error
	}
	results := make([]result, len(files))
	parallelFor(len(files), func(i int) {
		m, err := ParseFile(files[i])
		if err == nil {
			// kmodctl inspect reads with InfoOnly: it must print the same.
			mi, err := ParseFile(files[i], InfoOnly())
			if err != nil {
				results[i] = result{nil, fmt.Errorf("InfoOnly: %w", err)}
				return
			}
			if !reflect.DeepEqual(mi.ModinfoFields(), m.ModinfoFields()) {
				results[i] = result{nil, fmt.Errorf("%s: InfoOnly fields differ from the full parse", files[i])}
				return
			}
		}
		results[i] = result{m, err}
	})
	var diffs []string
	sigs := 0
	for i, f := range files {
		if results[i].err != nil {
			t.Errorf("ParseFile: %v", results[i].err)
			continue
		}
		if results[i].m.Signature != nil {
			sigs++
		}
		label := f
		if refs[i] != f {
			label = f + " (vs modinfo " + refs[i] + ")"
		}
		diffs = append(diffs, diffFields(label, results[i].m, want[refs[i]])...)
	}
	for i, d := range diffs {
		if i == 50 {
			t.Errorf("... and %d more differences", len(diffs)-50)
			break
		}
		t.Error(d)
	}
	t.Logf("compared %d files with modinfo (%d signed), %d differences", len(files), sigs, len(diffs))
	return len(files)
}

func uniq(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// parallelFor runs f(0..n-1) on GOMAXPROCS goroutines.
func parallelFor(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// treeModules lists every module file under dir.
func treeModules(t testing.TB, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != dir && (d.Name() == "build" || d.Name() == "source") {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() && isModuleFile(d.Name()) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func globFixtures(t testing.TB, pattern string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(fixture.Dir(), pattern))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		fixture.Missing(t, "fixtures "+pattern)
	}
	return files
}

func TestModinfoDiffTree(t *testing.T) {
	files := treeModules(t, fixture.ModulesDir(t))
	if len(files) < 1000 {
		t.Fatalf("only %d modules in the fixture tree", len(files))
	}
	compareWithModinfo(t, files, nil)
}

func TestModinfoDiffTestModules(t *testing.T) {
	compareWithModinfo(t, globFixtures(t, "testmods/*.ko"), nil)
}

func TestModinfoDiffForeign(t *testing.T) {
	for _, arch := range []string{"armhf", "s390x"} {
		t.Run(arch, func(t *testing.T) {
			compareWithModinfo(t, globFixtures(t, filepath.Join("foreign", arch, "*.ko")), nil)
		})
	}
}

func TestModinfoDiffCompressed(t *testing.T) {
	files := globFixtures(t, "compressed/*")
	var compressed []string
	plain := map[string]string{}
	for _, f := range files {
		if base, ok := strings.CutSuffix(f, filepath.Ext(f)); ok && strings.HasSuffix(base, ".ko") && !strings.HasSuffix(f, ".ko") {
			compressed = append(compressed, f)
			plain[f] = base
		}
	}
	if len(compressed) == 0 {
		fixture.Missing(t, "compressed modules")
	}
	t.Run("self", func(t *testing.T) {
		// modinfo reads a compressed file only when kmod was built with
		// its library: Debian's kmod 30 says "-ZLIB", so no .ko.gz.
		features := modinfoFeatures(t)
		readable := slices.DeleteFunc(slices.Clone(files), func(f string) bool {
			for ext, feature := range map[string]string{".gz": "ZLIB", ".xz": "XZ", ".zst": "ZSTD"} {
				if strings.HasSuffix(f, ext) && !features[feature] {
					t.Logf("%s: modinfo lacks %s support, compared with the uncompressed module only", f, feature)
					return true
				}
			}
			return false
		})
		compareWithModinfo(t, readable, nil)
	})
	t.Run("uncompressed", func(t *testing.T) { compareWithModinfo(t, compressed, plain) })
}

// modinfoFeatures returns the +FEATURE/-FEATURE flags of `modinfo --version`.
func modinfoFeatures(t testing.TB) map[string]bool {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, "modinfo"), "--version").Output()
	if err != nil {
		t.Fatalf("modinfo --version: %v", err)
	}
	features := map[string]bool{}
	for _, w := range strings.Fields(string(out)) {
		if len(w) > 1 && (w[0] == '+' || w[0] == '-') {
			features[w[1:]] = w[0] == '+'
		}
	}
	return features
}

// TestModinfoDiffCrafted rewrites .modinfo of a test module with objcopy to
// probe modinfo's rules on unusual strings, and compares.
func TestModinfoDiffCrafted(t *testing.T) {
	base := fixture.TestModule(t, "kmodtest_param")
	objcopy := fixture.Tool(t, "objcopy")
	cases := map[string]string{
		"params":   "parm=onlydesc:A description\x00parmtype=onlytype:int\x00parm=both:Both desc\x00parmtype=both:uint\x00parm=nocolon\x00parmtype=nocolon2\x00parm=empty:\x00parmtype=empty:\x00license=GPL\x00",
		"dupparam": "parm=dup:first\x00parm=dup:second\x00parmtype=dup:int\x00parmtype=dup:long\x00parm=x:y:z\x00parmtype=:int\x00parm=:desc\x00",
		"keys":     "\x00\x00\x00noequals\x00=valueonly\x00k=\x00averyveryverylongkeyname=v\x00fifteen_chars_k=v\x00sixteen_chars_ky=v\x00k14_chars_abcd=v\x00lead=  spaces\x00multi=a=b\x00name=foo\x00\x00\x00last=unterminated",
		"empty":    "",
		"padding":  "\x00\x00\x00",
		"onebyte":  "x",
		"padone":   "\x00\x00x",
		"twobytes": "ab",
		"interior": "name=bar\x00\x00\x00\x00alias=foo\x00",
		"interleave": "parm=p:d\x00key=v\x00parmtype=p:t\x00" +
			"parmtype=q:int\x00parm=q:desc\x00sig_id=fake\x00",
	}
	dir := t.TempDir()
	var files []string
	for name, content := range cases {
		sec := filepath.Join(dir, name+".modinfo")
		if err := os.WriteFile(sec, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		ko := filepath.Join(dir, name+".ko")
		out, err := exec.Command(objcopy, "--update-section", ".modinfo="+sec, base, ko).CombinedOutput()
		if err != nil {
			t.Fatalf("objcopy: %v: %s", err, out)
		}
		files = append(files, ko)
	}
	slices.Sort(files)
	compareWithModinfo(t, files, nil)
}

// TestModinfoDiffSigned signs a test module with the kernel's sign-file
// under various issuers, serials, keys and digests and compares the sig_*
// fields with modinfo's: kmod's signer rule (first CN, else the last
// attribute), serial magnitude, and the cases where kmod 30 prints no
// signature at all (subject key id, digests it cannot name).
func TestModinfoDiffSigned(t *testing.T) {
	signFile := fixture.SignFile(t)
	openssl := fixture.Tool(t, "openssl")
	base := fixture.TestModule(t, "kmodtest_base")
	dir := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %q: %v: %s", filepath.Base(name), args, err, out)
		}
	}
	rsa := filepath.Join(dir, "rsa.key")
	run(openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa)
	ec := filepath.Join(dir, "ec.key")
	run(openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ec)
	cases := []struct {
		name, key, subject, serial, hash string
		skid                             bool
	}{
		{"cn", rsa, "/CN=Test signer/O=Org", "1", "sha256", false},
		{"no-cn", rsa, "/O=Org1/OU=Unit", "0x80aabb", "sha512", false},
		{"two-cn", rsa, "/CN=First/CN=Second", "2", "sha1", false},
		{"country", rsa, "/C=DE", "0", "sha224", false},
		{"utf8", rsa, "/CN=Ünïcode ñame", "-5", "sha384", false},
		{"ecdsa", ec, "/CN=EC signer", "0x00ff", "sha256", false},
		{"md5", rsa, "/CN=md5", "3", "md5", false},
		{"ripemd160", rsa, "/CN=rmd", "4", "ripemd160", false},
		{"sha3", rsa, "/CN=sha3", "5", "sha3-256", false},
		{"sha512-224", rsa, "/CN=short", "6", "sha512-224", false},
		{"skid", rsa, "/CN=Test signer", "7", "sha256", true},
	}
	var files []string
	for _, c := range cases {
		crt := filepath.Join(dir, c.name+".crt")
		run(openssl, "req", "-new", "-x509", "-utf8", "-key", c.key, "-out", crt, "-days", "2", "-subj", c.subject, "-set_serial", c.serial)
		ko := filepath.Join(dir, c.name+".ko")
		data, err := os.ReadFile(base)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ko, data, 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{c.hash, c.key, crt, ko}
		if c.skid {
			args = append([]string{"-k"}, args...)
		}
		run(signFile, args...)
		files = append(files, ko)
	}
	compareWithModinfo(t, files, nil)
}
