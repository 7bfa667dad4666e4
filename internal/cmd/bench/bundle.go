package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/internal/registrytest"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// benchBundle pushes and pulls a bundle of n modules of the fixture kernel
// (re-signed with a throwaway key) to and from a local docker-registry
// (plain HTTP on loopback), kmodctl against oras with the same files and
// registry, each to a fresh repository so every blob moves. kmodctl's push
// is `bundle create` (it parses and verifies every module to write the
// config, then pushes); its pull verifies digests, sizes, the config,
// every sha256 and every signature before it writes the folder in one
// rename. Medians of runs.
func benchBundle(kmodctl, oras string, mods []string, n, runs int) {
	fmt.Printf("\n== bundle: push and pull of %d signed modules, local docker-registry, medians of %d\n", n, runs)
	work, err := os.MkdirTemp("", "kmodctl-bench-bundle-")
	must(err)
	defer os.RemoveAll(work)
	reg, err := registrytest.New(filepath.Join(work, "registry"), registrytest.Options{})
	if reg != nil {
		defer reg.Stop()
	}
	must(err)

	// A throwaway ECDSA key (signing cost is not what is measured here).
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "kmodctl bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(err)
	cert, err := x509.ParseCertificate(der)
	must(err)
	certPath := filepath.Join(work, "cert.pem")
	must(os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	signer, err := kmod.NewSigner(key, cert)
	must(err)
	files := filepath.Join(work, "files")
	must(os.Mkdir(files, 0o755))
	step := len(mods) / n
	if step < 1 {
		step = 1
	}
	var paths []string
	var total int64
	for i := 0; i < len(mods) && len(paths) < n; i += step {
		data := mustRead(mods[i])
		signed, _, err := signer.SignBytes(data)
		must(err)
		p := filepath.Join(files, filepath.Base(mods[i]))
		if _, err := os.Stat(p); err == nil {
			continue
		}
		must(os.WriteFile(p, signed, 0o644))
		paths = append(paths, p)
		total += int64(len(signed))
	}
	fmt.Printf("%d modules, %.1f MB\n", len(paths), float64(total)/1e6)
	release := "6.1.0-bench-amd64"

	var kPush, oPush, kPull, oPull []time.Duration
	for i := 0; i < runs; i++ {
		kref := reg.Ref(fmt.Sprintf("kmodctl/bench%d:1", i))
		oref := reg.Ref(fmt.Sprintf("oras/bench%d:1", i))
		kPush = append(kPush, run(kmodctl, append([]string{"bundle", "create", "--plain-http", "--replace", "--kernel", release,
			"--arch", "amd64", "--cert", certPath, kref}, paths...)...))
		oargs := []string{"push", "--plain-http", "--artifact-type", bundle.ArtifactType, oref}
		for _, p := range paths {
			oargs = append(oargs, filepath.Base(p)+":"+bundle.ModuleMediaType)
		}
		oPush = append(oPush, runIn(files, oras, oargs...))
		kPull = append(kPull, run(kmodctl, "bundle", "pull", "--plain-http", "--kernel", release, "--arch", "amd64",
			"--trusted-cert", certPath, kref, filepath.Join(work, fmt.Sprintf("kpull%d", i))))
		oPull = append(oPull, run(oras, "pull", "--plain-http", "-o", filepath.Join(work, fmt.Sprintf("opull%d", i)), oref))
	}
	kp, op, kl, ol := median(kPush), median(oPush), median(kPull), median(oPull)
	report("bundle push: kmodctl bundle create (parse, verify, push)", secs(kp), "")
	report("bundle push: oras push (same files, same registry)", secs(op), "anchor")
	r := float64(kp) / float64(op)
	report("bundle push: kmodctl / oras", fmt.Sprintf("%.2fx", r), "goal <= 1.2x: "+passMiss(r <= 1.2))
	report("bundle pull: kmodctl bundle pull (all verification)", secs(kl), "")
	report("bundle pull: oras pull", secs(ol), "anchor")
	r = float64(kl) / float64(ol)
	report("bundle pull: kmodctl / oras", fmt.Sprintf("%.2fx", r), "goal <= 1.5x: "+passMiss(r <= 1.5))
}

// runIn is run with a working directory (oras names layers by the paths
// given, so it runs where the files are).
func runIn(dir, name string, args ...string) time.Duration {
	wd, err := os.Getwd()
	must(err)
	must(os.Chdir(dir))
	defer os.Chdir(wd)
	return run(name, args...)
}
