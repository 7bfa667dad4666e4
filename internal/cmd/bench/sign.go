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
	"syscall"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// benchSign signs n fixture modules (signatures stripped first) three ways,
// each on all cores: kmodctl (one process for all files), the kernel's
// sign-file (one process per module, as Kbuild and DKMS run it), and the
// limit: crypto/rsa's private-key operation alone, once per module, spread
// over the cores. The digests and the durable rewrites of the files are
// measured apart and printed, not added to the limit. Goals (RSA-2048):
// at least 8x sign-file, within 1.2x of the limit.
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

		var oursCPU time.Duration
		ours := best(3, func() time.Duration {
			paths := fresh()
			cmd := exec.Command(kmodctl, append([]string{"module", "sign", "--key", key, "--cert", cert}, paths...)...)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			d := time.Since(start)
			if err != nil {
				must(fmt.Errorf("kmodctl module sign: %v: %s", err, out))
			}
			if c := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(); oursCPU == 0 || c < oursCPU {
				oursCPU = c
			}
			return d
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
		// The limit: the private-key operations alone, N signatures with
		// crypto/rsa on all cores, over digests computed beforehand.
		digests := make([][]byte, len(contents))
		for i, c := range contents {
			sum := sha256.Sum256(c)
			digests[i] = sum[:]
		}
		var privCPU time.Duration
		priv := best(3, func() time.Duration {
			cpu0 := cpuTime()
			start := time.Now()
			parallel(len(contents), cores, func(i int) {
				if _, err := signer.Sign(rand.Reader, digests[i], crypto.SHA256); err != nil {
					must(err)
				}
			})
			d := time.Since(start)
			if c := cpuTime() - cpu0; privCPU == 0 || c < privCPU {
				privCPU = c
			}
			return d
		})
		// Not in the limit, printed to show what the rest costs: the
		// digests, and the cheapest durable atomic rewrite of the files
		// (every temporary file created first, written and fsynced on all
		// cores, renamed, the folder fsynced once), as kmodctl does.
		var hashCPU time.Duration
		hash := best(3, func() time.Duration {
			cpu0 := cpuTime()
			start := time.Now()
			parallel(len(contents), cores, func(i int) { sha256.Sum256(contents[i]) })
			d := time.Since(start)
			if c := cpuTime() - cpu0; hashCPU == 0 || c < hashCPU {
				hashCPU = c
			}
			return d
		})
		var rewriteCPU time.Duration
		rewrite := best(3, func() time.Duration {
			paths := fresh()
			cpu0 := cpuTime()
			start := time.Now()
			tmps := make([]atomicfile.Reserved, len(paths))
			for i, p := range paths {
				r, err := atomicfile.Reserve(p, 0o644)
				must(err)
				tmps[i] = r
			}
			parallel(len(paths), 2*cores, func(i int) {
				f, err := tmps[i].Open()
				must(err)
				_, err = f.Write(contents[i])
				must(err)
				must(f.Sync())
				must(f.Close())
				must(tmps[i].Commit())
			})
			must(atomicfile.SyncDir(filepath.Dir(paths[0])))
			d := time.Since(start)
			if c := cpuTime() - cpu0; rewriteCPU == 0 || c < rewriteCPU {
				rewriteCPU = c
			}
			return d
		})
		// On cores busy with the signing, only the rewrites' waits on the
		// disk can overlap it; their CPU time (system time: copies, inode
		// allocation, writeback) adds to it.
		floor := priv + hash + rewriteCPU/time.Duration(cores)
		speedup, ratio := theirs.Seconds()/ours.Seconds(), ours.Seconds()/priv.Seconds()
		report(fmt.Sprintf("sign RSA-%d: kmodctl", bits), secs(ours), fmt.Sprintf("%.2f ms/module; CPU %.3f s", ours.Seconds()*1000/float64(len(contents)), oursCPU.Seconds()))
		report(fmt.Sprintf("sign RSA-%d: sign-file, one process per module", bits), secs(theirs), fmt.Sprintf("%d in parallel", cores))
		report(fmt.Sprintf("sign RSA-%d: sign-file, one at a time (as DKMS)", bits), secs(serial), fmt.Sprintf("kmodctl %.2fx faster", serial.Seconds()/ours.Seconds()))
		report(fmt.Sprintf("sign RSA-%d: limit (private-key ops / cores)", bits), secs(priv), fmt.Sprintf("crypto/rsa, digests made beforehand; CPU %.3f s", privCPU.Seconds()))
		report(fmt.Sprintf("sign RSA-%d: not in the limit: sha256 / cores", bits), secs(hash), fmt.Sprintf("CPU %.3f s", hashCPU.Seconds()))
		report(fmt.Sprintf("sign RSA-%d: not in the limit: durable rewrites", bits), secs(rewrite), fmt.Sprintf("temp, write, fsync, rename; CPU %.3f s", rewriteCPU.Seconds()))
		report(fmt.Sprintf("sign RSA-%d: floor with the I/O", bits), secs(floor), "limit + sha256 + rewrites' CPU / cores")
		report(fmt.Sprintf("sign RSA-%d: speed-up vs sign-file", bits), fmt.Sprintf("%.2fx", speedup), goalNote(bits, speedup >= 8, "goal >= 8x"))
		report(fmt.Sprintf("sign RSA-%d: kmodctl / limit", bits), fmt.Sprintf("%.2fx", ratio), goalNote(bits, ratio <= 1.2, "goal <= 1.2x"))
		report(fmt.Sprintf("sign RSA-%d: kmodctl / floor with the I/O", bits), fmt.Sprintf("%.2fx", ours.Seconds()/floor.Seconds()), "")
		// CPU times hold better than wall times on a shared machine.
		report(fmt.Sprintf("sign RSA-%d: CPU: kmodctl / limit", bits), fmt.Sprintf("%.2fx", oursCPU.Seconds()/privCPU.Seconds()), "")
		report(fmt.Sprintf("sign RSA-%d: CPU: kmodctl / floor with the I/O", bits), fmt.Sprintf("%.2fx", oursCPU.Seconds()/(privCPU+hashCPU+rewriteCPU).Seconds()), "")
		must(os.RemoveAll(dir))
	}
}

// goalNote is PASS/MISS for the RSA-2048 goals (speed-up >= 8x, within
// 1.2x of the limit); RSA-4096 is printed for information.
func goalNote(bits int, ok bool, goal string) string {
	if bits == 2048 {
		return passMiss(ok) + " (" + goal + ")"
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

// cpuTime is the user and system time this process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	must(syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
