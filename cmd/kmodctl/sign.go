package main

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

var hashes = map[string]crypto.Hash{
	"sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512,
}

var ifSignedModes = map[string]kmod.IfSigned{
	"replace": kmod.Replace, "skip": kmod.Skip, "fail": kmod.Fail,
}

// signJSON is one file of `module sign --json`.
type signJSON struct {
	Filename string `json:"filename"`
	OK       bool   `json:"ok"`
	// Skipped: already signed and --if-signed skip; the file is unchanged.
	Skipped bool `json:"skipped"`
	// Replaced counts the signatures stripped before signing.
	Replaced       int    `json:"replaced"`
	PreviousSigner string `json:"previous_signer,omitempty"`
	Compression    string `json:"compression,omitempty"`
	Error          string `json:"error,omitempty"`
}

func newSignCmd() *cobra.Command {
	var keyPath, certPath, hashName, ifSigned string
	var jobs int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "sign --key KEY --cert CERT [--hash sha256] [--if-signed replace|skip|fail] [--json] FILE...",
		Short: "Sign modules in place, as the kernel's scripts/sign-file does",
		Long: "Appends a detached PKCS#7 signature in the kernel's format to each module, in " +
			"place and atomically, in parallel. RSA output is byte-identical to scripts/sign-file. " +
			"Compressed modules are decompressed, signed and recompressed in the same format. " +
			"A module that is already signed is re-signed (old signature stripped) unless " +
			"--if-signed says skip or fail. KEY is PEM (PKCS#1, PKCS#8 or SEC1); CERT is PEM or DER.\n\n" +
			"--json prints one array, one object per FILE in argument order: {\"filename\", \"ok\", " +
			"\"skipped\" (already signed, --if-signed skip), \"replaced\" (signatures stripped), " +
			"\"previous_signer\", \"compression\", \"error\"}; the last three only when not empty.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, ok := hashes[hashName]
			if !ok {
				return usagef("--hash %q: use sha256, sha384 or sha512", hashName)
			}
			mode, ok := ifSignedModes[ifSigned]
			if !ok {
				return usagef("--if-signed %q: use replace, skip or fail", ifSigned)
			}
			keyPEM, err := os.ReadFile(keyPath)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			key, err := modsig.ParsePrivateKey(keyPEM)
			if err != nil {
				return fmt.Errorf("--key %s: %w", keyPath, err)
			}
			certs, err := readCerts(certPath)
			if err != nil {
				return err
			}
			s, err := kmod.NewSigner(key, certs[0], kmod.WithHash(h), kmod.WithIfSigned(mode))
			if err != nil {
				return fmt.Errorf("--key %s / --cert %s: %w", keyPath, certPath, err)
			}
			if asJSON {
				return signFilesJSON(cmd, s, args, jobs)
			}
			errs := s.SignFiles(cmd.Context(), args, jobs)
			for _, err := range errs {
				fmt.Fprintln(cmd.ErrOrStderr(), "kmodctl:", err)
			}
			if len(errs) > 0 {
				return errQuiet{fmt.Sprintf("%d of %d modules not signed", len(errs), len(args))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyPath, "key", "", "private key, PEM (required)")
	f.StringVar(&certPath, "cert", "", "signing certificate, PEM or DER (required)")
	f.StringVar(&hashName, "hash", "sha256", "digest: sha256, sha384 or sha512")
	f.StringVar(&ifSigned, "if-signed", "replace", "for modules already signed: replace, skip or fail")
	f.IntVarP(&jobs, "jobs", "j", 0, "parallel workers (default: number of CPUs)")
	f.BoolVar(&asJSON, "json", false, "print a JSON array, one object per file (errors on stderr as well)")
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("cert")
	return cmd
}

// signFilesJSON signs the files as the plain command does and prints each
// file's result as one JSON array.
func signFilesJSON(cmd *cobra.Command, s *kmod.Signer, paths []string, jobs int) error {
	results, errs := s.SignFilesResults(cmd.Context(), paths, jobs)
	out := make([]signJSON, len(paths))
	failed := 0
	for i, res := range results {
		err := errs[i]
		out[i] = signJSON{Filename: paths[i], OK: err == nil, Skipped: res.Skipped, Replaced: res.Replaced,
			PreviousSigner: res.PreviousSigner, Compression: string(res.Compression)}
		if err != nil {
			failed++
			out[i].Error = err.Error()
			fmt.Fprintln(cmd.ErrOrStderr(), "kmodctl:", err)
		}
	}
	if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
		return err
	}
	if failed > 0 {
		return errQuiet{fmt.Sprintf("%d of %d modules not signed", failed, len(paths))}
	}
	return nil
}

func readCerts(paths ...string) ([]*x509.Certificate, error) {
	var all []*x509.Certificate
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("--cert: %w", err)
		}
		cs, err := modsig.ParseCertificates(b)
		if err != nil {
			return nil, fmt.Errorf("--cert %s: %w", p, err)
		}
		all = append(all, cs...)
	}
	return all, nil
}

// verifyJSON is one file of `module verify --json`.
type verifyJSON struct {
	Filename string `json:"filename"`
	OK       bool   `json:"ok"`
	// The signature's fields, named as modinfo names them; present when
	// the file carries a signature, even one that does not verify.
	Signer       string `json:"signer,omitempty"`
	SigKey       string `json:"sig_key,omitempty"`
	SigHashalgo  string `json:"sig_hashalgo,omitempty"`
	KeyAlgorithm string `json:"key_algorithm,omitempty"`
	Error        string `json:"error,omitempty"`
}

func newVerifyCmd() *cobra.Command {
	var certPaths []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify --cert CERT [--cert CERT...] [--json] FILE...",
		Short: "Verify module signatures against certificates",
		Long: "Checks that each module carries a signature in the kernel's format made by the key " +
			"of one of the certificates, over the module's exact content. Prints the signer per " +
			"module; a tampered module, a wrong certificate or an unsigned module fails.\n\n" +
			"--json prints one array, one object per FILE in argument order: {\"filename\", \"ok\", " +
			"\"signer\", \"sig_key\", \"sig_hashalgo\", \"key_algorithm\" (rsa or ecdsa), \"error\"}; " +
			"the signature's fields when the file carries one (even one that fails), \"error\" when ok is false.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certs, err := readCerts(certPaths...)
			if err != nil {
				return err
			}
			failed := 0
			var out []verifyJSON
			forEachOrdered(len(args), 0, func(i int) verifyJSON {
				v := verifyJSON{Filename: args[i]}
				r, err := kmod.VerifyFile(args[i], certs)
				if r != nil {
					v.Signer, v.SigKey, v.SigHashalgo, v.KeyAlgorithm = r.Signer, r.SigKey, r.HashName, r.KeyAlgorithm
				}
				v.OK = err == nil
				if err != nil {
					v.Error = err.Error()
				}
				return v
			}, func(i int, v verifyJSON) {
				switch {
				case !v.OK:
					failed++
					// VerifyFile's error names the file.
					fmt.Fprintln(cmd.ErrOrStderr(), "kmodctl:", v.Error)
				case !asJSON:
					fmt.Fprintf(cmd.OutOrStdout(), "%s: OK (signer %q, key %s, %s)\n", v.Filename, v.Signer, v.SigKey, v.SigHashalgo)
				}
				if asJSON {
					out = append(out, v)
				}
			})
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
					return err
				}
			}
			if failed > 0 {
				return errQuiet{fmt.Sprintf("%d of %d modules failed verification", failed, len(args))}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&certPaths, "cert", nil, "trusted certificate, PEM or DER; repeatable (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array, one object per file (errors on stderr as well)")
	_ = cmd.MarkFlagRequired("cert")
	return cmd
}
