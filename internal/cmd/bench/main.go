// Command bench measures kmodctl against the anchor tools in the same run and
// prints the ratios (make bench). Nothing here asserts: the numbers go into
// the issue notes.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

type result struct {
	name  string
	value string
	note  string
}

var results []result

func report(name, value, note string) {
	results = append(results, result{name, value, note})
	fmt.Printf("%-52s %14s  %s\n", name, value, note)
}

func main() {
	fixtures := flag.String("fixtures", envOr("KMODCTL_FIXTURES", "/var/cache/kmodctl-fixtures"), "fixture cache")
	kmodctl := flag.String("kmodctl", "bin/kmodctl", "kmodctl binary")
	signN := flag.Int("sign-modules", 500, "modules to sign")
	packer := flag.String("packer", "bin/packer", "Packer binary (make packer), for the builder and provisioner benches")
	plugin := flag.String("plugin", "bin/packer-plugin-kmod", "plugin binary (make plugin), for the builder and provisioner benches")
	builderRuns := flag.Int("builder-runs", 3, "packer builds (and anchor runs) in the builder bench; the median is reported")
	virtRuns := flag.Int("virt-customize-runs", 1, "timed virt-customize runs in the builder bench (after an untimed warm-up); the median is reported")
	provisionerRuns := flag.Int("provisioner-runs", 3, "packer builds (and anchor runs) in the provisioner bench; the median is reported")
	oras := flag.String("oras", "bin/oras", "oras binary (make oras), for the bundle bench")
	bundleMods := flag.Int("bundle-modules", 50, "modules in the bundle bench")
	bundleRuns := flag.Int("bundle-runs", 5, "pushes and pulls in the bundle bench; the median is reported")
	catalogBin := flag.String("catalog", "bin/kmod-catalog", "kmod-catalog binary (make catalog), for the catalog bench")
	catalogClients := flag.Int("catalog-clients", 32, "concurrent API clients in the catalog bench")
	catalogN := flag.Int("catalog-attestations", 3200, "attestations in the catalog bench")
	catalogMods := flag.Int("catalog-modules", 5, "modules per attestation in the catalog bench")
	only := flag.String("only", "", "comma list of benchmarks (sign,inspect,depmod,initramfs-ls,inject,bundle,catalog,builder,provisioner,firstboot); default all")
	flag.Parse()
	abs, err := filepath.Abs(*kmodctl)
	must(err)
	kver := strings.TrimSpace(string(mustRead(filepath.Join(*fixtures, "KVER"))))
	tree := filepath.Join(*fixtures, "kernel/root/lib/modules", kver)
	mods := modulesUnder(tree)
	fmt.Printf("bench: %d cores, kernel %s, %d modules in the fixture tree\n\n", runtime.NumCPU(), kver, len(mods))
	want := func(n string) bool { return *only == "" || strings.Contains(","+*only+",", ","+n+",") }
	if want("sign") {
		benchSign(abs, *fixtures, kver, mods, *signN)
	}
	if want("inspect") {
		benchInspect(abs, mods)
	}
	if want("depmod") {
		benchDepmod(abs, tree)
	}
	if want("initramfs-ls") {
		benchLs(abs, *fixtures)
	}
	if want("inject") {
		benchInject(abs, *fixtures)
	}
	if want("bundle") {
		o, err := filepath.Abs(*oras)
		must(err)
		benchBundle(abs, o, mods, *bundleMods, *bundleRuns)
	}
	if want("catalog") {
		b, err := filepath.Abs(*catalogBin)
		must(err)
		benchCatalog(b, *catalogClients, *catalogN, *catalogMods)
	}
	if want("builder") {
		p, err := filepath.Abs(*packer)
		must(err)
		pl, err := filepath.Abs(*plugin)
		must(err)
		benchBuilder(p, pl, *fixtures, filepath.Join(*fixtures, "cloudimg/debian12.raw"), *builderRuns, *virtRuns)
	}
	if want("provisioner") {
		p, err := filepath.Abs(*packer)
		must(err)
		pl, err := filepath.Abs(*plugin)
		must(err)
		benchProvisioner(p, pl, *fixtures, *provisionerRuns)
	}
	if want("firstboot") {
		benchFirstboot(abs, *fixtures)
	}
}

func modulesUnder(dir string) []string {
	var out []string
	must(filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			out = append(out, p)
		}
		return nil
	}))
	sort.Strings(out)
	return out
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func mustRead(p string) []byte {
	b, err := os.ReadFile(p)
	must(err)
	return b
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }

// best runs f n times and returns the shortest duration: the least disturbed
// by whatever else the machine was doing.
func best(n int, f func() time.Duration) time.Duration {
	var m time.Duration
	for i := 0; i < n; i++ {
		if d := f(); i == 0 || d < m {
			m = d
		}
	}
	return m
}
