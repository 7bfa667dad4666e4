package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// benchDepmod: kmodctl depmod -b vs kmod's depmod -b over the whole fixture
// tree (tree is BASEDIR/lib/modules/KVER), each on its own hard-linked copy
// of BASEDIR with an empty configuration folder, best of 3. Both replace
// their output files every run; kmodctl also fsyncs them.
func benchDepmod(kmodctl string, tree string) {
	kver := filepath.Base(tree)
	base := strings.TrimSuffix(tree, "/lib/modules/"+kver)
	work, err := os.MkdirTemp("", "kmodctl-bench-depmod-")
	must(err)
	defer os.RemoveAll(work)
	cfg := filepath.Join(work, "depmod.d")
	must(os.Mkdir(cfg, 0o755))
	copyOf := func(name string) string {
		dst := filepath.Join(work, name)
		if out, err := exec.Command("cp", "-al", base, dst).CombinedOutput(); err != nil {
			must(fmt.Errorf("cp -al %s: %v: %s", base, err, out))
		}
		return dst
	}
	oursRoot, theirsRoot := copyOf("ours"), copyOf("theirs")
	ours := best(3, func() time.Duration {
		return run(kmodctl, "depmod", "-b", oursRoot, "-C", cfg, kver)
	})
	theirs := best(3, func() time.Duration {
		return run("/usr/sbin/depmod", "-b", theirsRoot, "-C", cfg, kver)
	})
	// The numbers only count when the outputs are the same.
	same := "byte-identical outputs"
	for _, n := range []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
		"modules.softdep", "modules.symbols", "modules.symbols.bin", "modules.builtin.bin",
		"modules.builtin.alias.bin", "modules.devname"} {
		a := mustRead(filepath.Join(oursRoot, "lib/modules", kver, n))
		b := mustRead(filepath.Join(theirsRoot, "lib/modules", kver, n))
		if !bytes.Equal(a, b) {
			same = n + " DIFFERS"
			break
		}
	}
	report("depmod full tree: kmodctl depmod -b", secs(ours), same)
	report("depmod full tree: depmod -b (kmod)", secs(theirs), "")
	report("depmod kmodctl / depmod", fmt.Sprintf("%.2fx", ours.Seconds()/theirs.Seconds()), "goal <= 0.5x")
}
