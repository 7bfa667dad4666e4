package main

import (
	"crypto/x509"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// checkJSONHelp documents the shape --json prints.
const checkJSONHelp = `
With --json the report is one JSON object on stdout:

  {
    "ok": false,                      // no problem and every file read
    "release": "6.1.0-57-amd64",      // the kernel checked against
    "vermagic": "6.1.0-57-amd64 SMP preempt mod_unload modversions ",
    "modules": [                      // one per module read, in argument order
      {"module": "mymod", "path": "mymod.ko", "ok": false,
       "problems": [PROBLEM...], "notes": [PROBLEM...]}
    ],
    "problems": [PROBLEM...],         // all problems: the modules' and the kernel's
    "notes": [PROBLEM...],            // all notes, likewise
    "unreadable": [{"path": "bad.ko", "error": "..."}]
  }

where PROBLEM is {"module": NAME, "symbol": SYM, "kind": KIND, "reason": TEXT,
"in_tree": NAME}; "module" is empty for a finding about the kernel (kind
"signature"), "symbol" and "in_tree" are left out when empty. KIND is one of
arch, vermagic, modversions, unresolved, crc, gpl, namespace, depends,
duplicate, shadow, alias, signature. Lists are [] when empty.`

// problemJSON is one kmod.Problem in --json output.
type problemJSON struct {
	Module string `json:"module"`
	Symbol string `json:"symbol,omitempty"`
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	InTree string `json:"in_tree,omitempty"`
}

type checkModuleJSON struct {
	Module   string        `json:"module"`
	Path     string        `json:"path"`
	OK       bool          `json:"ok"`
	Problems []problemJSON `json:"problems"`
	Notes    []problemJSON `json:"notes"`
}

type unreadableJSON struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

type checkJSON struct {
	OK         bool              `json:"ok"`
	Release    string            `json:"release"`
	Vermagic   string            `json:"vermagic"`
	Modules    []checkModuleJSON `json:"modules"`
	Problems   []problemJSON     `json:"problems"`
	Notes      []problemJSON     `json:"notes"`
	Unreadable []unreadableJSON  `json:"unreadable"`
}

func problemsJSON(ps []kmod.Problem) []problemJSON {
	res := make([]problemJSON, 0, len(ps))
	for _, p := range ps {
		res = append(res, problemJSON{Module: p.Module, Symbol: p.Symbol, Kind: string(p.Kind), Reason: p.Reason, InTree: p.InTree})
	}
	return res
}

func writeCheckJSON(w io.Writer, rep *kmod.Report, unreadable []unreadableJSON) error {
	out := checkJSON{
		OK:         rep.OK() && len(unreadable) == 0,
		Release:    rep.Release,
		Vermagic:   rep.Vermagic,
		Modules:    make([]checkModuleJSON, 0, len(rep.Modules)),
		Problems:   problemsJSON(rep.Problems),
		Notes:      problemsJSON(rep.Notes),
		Unreadable: unreadable,
	}
	if out.Unreadable == nil {
		out.Unreadable = []unreadableJSON{}
	}
	for i := range rep.Modules {
		m := &rep.Modules[i]
		out.Modules = append(out.Modules, checkModuleJSON{Module: m.Module, Path: m.Path, OK: m.OK(),
			Problems: problemsJSON(m.Problems), Notes: problemsJSON(m.Notes)})
	}
	return writeJSON(w, out)
}

// certKeyType is the key type of a certificate as kmod.Kernel.CanVerify
// names it.
func certKeyType(c *x509.Certificate) string {
	switch c.PublicKeyAlgorithm {
	case x509.RSA:
		return "rsa"
	case x509.ECDSA:
		return "ecdsa"
	}
	return strings.ToLower(c.PublicKeyAlgorithm.String())
}

func newCheckCmd() *cobra.Command {
	var kernelDir, symvers, systemMap, headers, config, release, certPath, hashName string
	var asJSON, replaceInTree bool
	cmd := &cobra.Command{
		Use:   "check --kernel-dir DIR [--symvers FILE] [--cert CERT] [--hash ALGO] [--json] FILE...",
		Short: "Check that modules would load on a target kernel",
		Long: "Checks the given modules, as one set, against a target kernel described by its " +
			"module tree (/lib/modules/KVER), its Module.symvers, System.map, headers or config: " +
			"vermagic (with modversions CRCs the release word does not decide, the CRCs do), " +
			"unresolved symbols, __versions CRCs, GPL-only and namespaced exports, and depends=. " +
			"With --kernel-dir it also refuses a module that shadows an in-tree module of the same " +
			"name (depmod ranks updates/ above the kernel's tree) or claims device aliases of one " +
			"(modprobe loads both, the first to bind wins), unless --replace-in-tree. " +
			"--cert and --hash check that the kernel can verify signatures made with that " +
			"certificate's key type and that digest (ECDSA needs CONFIG_CRYPTO_ECDSA=y, sha384 and " +
			"sha512 CONFIG_CRYPTO_SHA512=y: =m cannot verify the modules that load before it), which " +
			"needs the kernel's config (--config, --headers, or --kernel-dir's build tree). " +
			"Each problem names module, symbol and reason. Exit status: 0 all good, 1 a problem " +
			"or an unreadable file, 2 a usage error.\n" + checkJSONHelp,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if hashName != "" {
				if _, ok := hashes[hashName]; !ok {
					return usagef("--hash %q: use sha256, sha384 or sha512", hashName)
				}
			}
			var opts []kmod.KernelOption
			if kernelDir != "" {
				opts = append(opts, kmod.WithModulesDir(kernelDir))
			}
			if headers != "" {
				opts = append(opts, kmod.WithHeaders(headers))
			}
			if symvers != "" {
				opts = append(opts, kmod.WithSymvers(symvers))
			}
			if systemMap != "" {
				opts = append(opts, kmod.WithSystemMap(systemMap))
			}
			if config != "" {
				opts = append(opts, kmod.WithConfig(config))
			}
			if len(opts) == 0 {
				return usagef("describe the target kernel: --kernel-dir, --headers, --symvers or --system-map")
			}
			if release != "" {
				opts = append(opts, kmod.WithRelease(release))
			}
			keyType := ""
			if certPath != "" {
				certs, err := readCerts(certPath)
				if err != nil {
					return err
				}
				keyType = certKeyType(certs[0])
			}
			k, err := kmod.LoadKernel(opts...)
			if err != nil {
				return err
			}
			if !k.VmlinuxKnown {
				// Without vmlinux's exports every core symbol would look
				// unresolved, or pass unchecked: refuse rather than guess.
				return fmt.Errorf("the target kernel's own exports are unknown: give --symvers, --headers or --system-map (a kernel dir whose build link or usr/src/linux-headers-%s holds Module.symvers also works)", k.Release)
			}
			mods := make([]*kmod.Module, 0, len(args))
			var unreadable []unreadableJSON
			for _, p := range args {
				m, err := kmod.ParseFile(p)
				if err != nil {
					unreadable = append(unreadable, unreadableJSON{Path: p, Error: err.Error()})
					if !asJSON {
						fmt.Fprintln(cmd.ErrOrStderr(), "kmodctl:", err)
					}
					continue
				}
				mods = append(mods, m)
			}
			rep := kmod.Check(k, mods)
			if len(k.InTree) == 0 {
				rep.AddNotes(kmod.Problem{Kind: kmod.KindShadow, Reason: fmt.Sprintf("the in-tree modules of kernel %s are unknown (give --kernel-dir): shadowing and alias claims not checked", k.Release)})
			}
			if conflicts := kmod.InTreeConflicts(k, mods); replaceInTree {
				rep.AddNotes(conflicts...)
			} else {
				rep.AddProblems(conflicts...)
			}
			// Key type and digest each on their own, so that both are
			// reported when both fail (RSA needs nothing of the kernel).
			if keyType != "" {
				if err := k.CanVerify(keyType, ""); err != nil {
					rep.AddProblems(kmod.Problem{Kind: kmod.KindSignature, Reason: err.Error()})
				}
			}
			if hashName != "" {
				if err := k.CanVerify("rsa", hashName); err != nil {
					rep.AddProblems(kmod.Problem{Kind: kmod.KindSignature, Reason: err.Error()})
				}
			}
			if asJSON {
				err = writeCheckJSON(cmd.OutOrStdout(), rep, unreadable)
			} else {
				err = rep.Write(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			if len(unreadable) > 0 || !rep.OK() {
				return errQuiet{"check failed"}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kernelDir, "kernel-dir", "", "the target's module tree, /lib/modules/KVER (its build link, modules.builtin, modules.dep and modules.alias are used when present)")
	f.StringVar(&symvers, "symvers", "", "the target's Module.symvers (vmlinux exports and CRCs)")
	f.StringVar(&systemMap, "system-map", "", "the target's System.map (only __ksymtab_* entries count as exports)")
	f.StringVar(&headers, "headers", "", "the target's headers tree (Module.symvers, release, .config)")
	f.StringVar(&config, "config", "", "the target's kernel config (for vermagic and --cert/--hash), e.g. /boot/config-KVER")
	f.StringVar(&release, "release", "", "override the target's kernel release")
	f.StringVar(&certPath, "cert", "", "signing certificate, PEM or DER: the kernel must be able to verify its key type")
	f.StringVar(&hashName, "hash", "", "signature digest (sha256, sha384 or sha512) the kernel must be able to verify")
	f.BoolVar(&replaceInTree, "replace-in-tree", false, "replacing in-tree modules is intended: shadowing and alias claims are notes, not problems")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON (shape below)")
	return cmd
}
