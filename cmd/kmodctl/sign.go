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

func newSignCmd() *cobra.Command {
	var keyPath, certPath, hashName, ifSigned string
	var jobs int
	cmd := &cobra.Command{
		Use:   "sign --key KEY --cert CERT [--hash sha256] [--if-signed replace|skip|fail] FILE...",
		Short: "Sign modules in place, as the kernel's scripts/sign-file does",
		Long: "Appends a detached PKCS#7 signature in the kernel's format to each module, in " +
			"place and atomically, in parallel. RSA output is byte-identical to scripts/sign-file. " +
			"Compressed modules are decompressed, signed and recompressed in the same format. " +
			"A module that is already signed is re-signed (old signature stripped) unless " +
			"--if-signed says skip or fail. KEY is PEM (PKCS#1, PKCS#8 or SEC1); CERT is PEM or DER.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, ok := hashes[hashName]
			if !ok {
				return fmt.Errorf("--hash %q: use sha256, sha384 or sha512", hashName)
			}
			mode, ok := ifSignedModes[ifSigned]
			if !ok {
				return fmt.Errorf("--if-signed %q: use replace, skip or fail", ifSigned)
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
			errs := s.SignFiles(cmd.Context(), args, jobs)
			for _, err := range errs {
				fmt.Fprintln(os.Stderr, "kmodctl:", err)
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
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("cert")
	return cmd
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

func newVerifyCmd() *cobra.Command {
	var certPaths []string
	cmd := &cobra.Command{
		Use:   "verify --cert CERT [--cert CERT...] FILE...",
		Short: "Verify module signatures against certificates",
		Long: "Checks that each module carries a signature in the kernel's format made by the key " +
			"of one of the certificates, over the module's exact content. Prints the signer per " +
			"module; a tampered module, a wrong certificate or an unsigned module fails.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certs, err := readCerts(certPaths...)
			if err != nil {
				return err
			}
			failed := 0
			forEachOrdered(len(args), 0, func(i int) any {
				r, err := kmod.VerifyFile(args[i], certs)
				if err != nil {
					return err
				}
				return r
			}, func(i int, v any) {
				switch v := v.(type) {
				case error:
					failed++
					fmt.Fprintf(os.Stderr, "kmodctl: %s: %v\n", args[i], v)
				case *kmod.VerifyResult:
					fmt.Fprintf(cmd.OutOrStdout(), "%s: OK (signer %q, key %s, %s)\n", args[i], v.Signer, v.SigKey, v.HashName)
				}
			})
			if failed > 0 {
				return errQuiet{fmt.Sprintf("%d of %d modules failed verification", failed, len(args))}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&certPaths, "cert", nil, "trusted certificate, PEM or DER; repeatable (required)")
	_ = cmd.MarkFlagRequired("cert")
	return cmd
}
