package main

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// benchSign signs n fixture modules (signatures stripped first) three ways,
// each on all cores: kmodctl (one process for all files), the kernel's
// sign-file (one process per module, as Kbuild and DKMS run it), and the
// physical limit — Go's bare private-key operation (with the hash) for every
// module spread over the cores, plus one durable rewrite per file (temp file,
// fsync, rename; the folder fsynced once at the end, as kmodctl does).
func benchSign(kmodctl, fixtures, kver string, all []string, n int) {
	// The fixture kernel's own linux-kbuild, in the rootfs-dkms fixture.
	signFile := filepath.Join(fixtures, "rootfs-dkms/usr/lib", "linux-kbuild-"+fixture.KernelSeries(kver), "scripts/sign-file")
	if _, err := os.Stat(signFile); err != nil {
		must(fmt.Errorf("sign-file not found at %s (make fixtures builds it)", signFile))
	}
	work, err := os.MkdirTemp("", "kmodctl-bench-sign-")
	must(err)
	defer os.RemoveAll(work)

	// A spread of modules across the tree, not just one folder.
	step := len(all) / n
	if step < 1 {
		step = 1
	}
	var contents [][]byte
	var names []string
	for i := 0; i < len(all) && len(contents) < n; i += step {
		b := mustRead(all[i])
		c, _, err := modsig.Split(b)
		must(err)
		contents = append(contents, c)
		names = append(names, fmt.Sprintf("%04d-%s", len(names), filepath.Base(all[i])))
	}
	cores := runtime.NumCPU()
	var total int
	for _, c := range contents {
		total += len(c)
	}
	fmt.Printf("signing %d modules (%.1f MB) on %d cores\n", len(contents), float64(total)/1e6, cores)

	for _, bits := range []int{2048, 4096} {
		dir := filepath.Join(work, fmt.Sprint(bits))
		must(os.MkdirAll(dir, 0o755))
		key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
		out, err := exec.Command("openssl", "req", "-x509", "-newkey", fmt.Sprintf("rsa:%d", bits), "-nodes",
			"-days", "1", "-subj", "/CN=kmodctl bench/", "-keyout", key, "-out", cert).CombinedOutput()
		if err != nil {
			must(fmt.Errorf("openssl: %v: %s", err, out))
		}
		signer, err := modsig.ParsePrivateKey(mustRead(key))
		must(err)

		// fresh writes the unsigned modules into a new folder and returns their paths.
		round := 0
		fresh := func() []string {
			round++
			d := filepath.Join(dir, fmt.Sprintf("r%d", round))
			must(os.MkdirAll(d, 0o755))
			paths := make([]string, len(contents))
			for i, c := range contents {
				paths[i] = filepath.Join(d, names[i])
				must(os.WriteFile(paths[i], c, 0o644))
			}
			return paths
		}

		ours := best(3, func() time.Duration {
			paths := fresh()
			return run(kmodctl, append([]string{"module", "sign", "--key", key, "--cert", cert}, paths...)...)
		})
		theirs := best(2, func() time.Duration {
			paths := fresh()
			start := time.Now()
			parallel(len(paths), cores, func(i int) {
				if out, err := exec.Command(signFile, "sha256", key, cert, paths[i]).CombinedOutput(); err != nil {
					must(fmt.Errorf("sign-file %s: %v: %s", paths[i], err, out))
				}
			})
			return time.Since(start)
		})
		// DKMS signs one module after the other.
		serial := best(1, func() time.Duration {
			paths := fresh()
			start := time.Now()
			parallel(len(paths), 1, func(i int) {
				if out, err := exec.Command(signFile, "sha256", key, cert, paths[i]).CombinedOutput(); err != nil {
					must(fmt.Errorf("sign-file %s: %v: %s", paths[i], err, out))
				}
			})
			return time.Since(start)
		})
		// The limit, in two measured parts.
		priv := best(3, func() time.Duration {
			start := time.Now()
			parallel(len(contents), cores, func(i int) {
				sum := sha256.Sum256(contents[i])
				if _, err := signer.Sign(rand.Reader, sum[:], crypto.SHA256); err != nil {
					must(err)
				}
			})
			return time.Since(start)
		})
		rewrite := best(3, func() time.Duration {
			paths := fresh()
			start := time.Now()
			parallel(len(paths), cores, func(i int) {
				must(atomicfile.WriteFile(paths[i], contents[i], 0o644, atomicfile.NoDirSync()))
			})
			// One fsync of the folder makes all the renames durable.
			must(atomicfile.SyncDir(filepath.Dir(paths[0])))
			return time.Since(start)
		})
		limit := priv + rewrite
		report(fmt.Sprintf("sign RSA-%d: kmodctl", bits), secs(ours), fmt.Sprintf("%.2f ms/module", ours.Seconds()*1000/float64(len(contents))))
		report(fmt.Sprintf("sign RSA-%d: sign-file, one process per module", bits), secs(theirs), fmt.Sprintf("%d in parallel", cores))
		report(fmt.Sprintf("sign RSA-%d: sign-file, one at a time (as DKMS)", bits), secs(serial), fmt.Sprintf("kmodctl %.2fx faster", serial.Seconds()/ours.Seconds()))
		report(fmt.Sprintf("sign RSA-%d: limit (private-key ops / cores)", bits), secs(priv), "")
		report(fmt.Sprintf("sign RSA-%d: limit (durable rewrites)", bits), secs(rewrite), "")
		report(fmt.Sprintf("sign RSA-%d: limit vs sign-file (best possible)", bits), fmt.Sprintf("%.2fx", theirs.Seconds()/limit.Seconds()), "")
		report(fmt.Sprintf("sign RSA-%d: speed-up vs sign-file", bits), fmt.Sprintf("%.2fx", theirs.Seconds()/ours.Seconds()), goalNote(bits))
		report(fmt.Sprintf("sign RSA-%d: kmodctl / limit", bits), fmt.Sprintf("%.2fx", ours.Seconds()/limit.Seconds()), "goal <= 1.25x")
		must(os.RemoveAll(dir))
	}
}

func goalNote(bits int) string {
	if bits == 2048 {
		return "goal >= 8x"
	}
	return ""
}

// parallel runs f(i) for i in [0,n) on workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}
