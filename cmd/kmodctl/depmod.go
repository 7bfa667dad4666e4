package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/kmod/depmod"
)

func newDepmodCmd() *cobra.Command {
	var basedir, symvers string
	var configs []string
	var dryRun, errsyms, all, asJSON bool
	cmd := &cobra.Command{
		Use:   "depmod [-b BASEDIR] [-C CONFIG]... [-n] [-e -E Module.symvers] [--json] [KVER]",
		Short: "Generate modules.dep and the module indexes, byte-identical to kmod 30's depmod",
		Long: "Writes modules.dep, modules.dep.bin, modules.alias(.bin), modules.softdep, " +
			"modules.symbols(.bin), modules.builtin.bin, modules.builtin.alias.bin and " +
			"modules.devname into BASEDIR/lib/modules/KVER, as `depmod -b BASEDIR KVER` of " +
			"kmod 30 does, byte for byte; each file is replaced atomically. KVER defaults to " +
			"the running kernel's release.\n\n" +
			"Unlike depmod, which reads the host's /etc/depmod.d even with -b, the depmod.d " +
			"configuration comes from inside BASEDIR (etc/depmod.d, run/depmod.d, " +
			"usr/local/lib/depmod.d, lib/depmod.d); -C names host paths instead, as with depmod. " +
			"A module file that cannot be read is an error naming it (depmod warns and lists the " +
			"module without dependencies).\n\n" +
			"--json prints one object instead of the warnings (and, with -n, instead of the text " +
			"files): {\"kernel\": KVER, \"basedir\": BASEDIR, \"written\": false with -n, " +
			"\"files\": [{\"name\": \"modules.dep\", \"size\": BYTES}, ...] in the order " +
			"depmod writes them, \"warnings\": [MESSAGE, ...]}. A failure prints no object: the " +
			"error goes to standard error. Exit status: 0 ok, 1 failed, 2 bad command line.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_ = all // depmod -a: all modules, which is what this command always does
			kver := ""
			if len(args) == 1 {
				kver = args[0]
				if !versionNumber.MatchString(kver) {
					return usagef("bad version passed %s", kver)
				}
			} else {
				b, err := os.ReadFile("/proc/sys/kernel/osrelease")
				if err != nil {
					return fmt.Errorf("no KVER given and the running kernel's release is unknown: %w", err)
				}
				kver = strings.TrimSpace(string(b))
			}
			stderr := cmd.ErrOrStderr()
			warnings := []string{}
			warn := func(msg string) {
				if asJSON {
					warnings = append(warnings, msg)
				} else {
					fmt.Fprintf(stderr, "kmodctl depmod: WARNING: %s\n", msg)
				}
			}
			opts := []depmod.Option{depmod.WithWarnings(warn)}
			if len(configs) > 0 {
				// Host paths, relative ones to the working folder.
				abs := make([]string, len(configs))
				for i, c := range configs {
					a, err := filepath.Abs(c)
					if err != nil {
						return err
					}
					abs[i] = a
				}
				opts = append(opts, depmod.WithConfigFS(os.DirFS("/"), abs...))
			}
			if symvers != "" {
				if !errsyms {
					// depmod -E alone checks nothing visible either.
					symvers = ""
				} else {
					b, err := os.ReadFile(symvers)
					if err != nil {
						return err
					}
					opts = append(opts, depmod.WithSymvers(b))
				}
			} else if errsyms {
				warn("-e needs -E")
			}
			if basedir == "" {
				basedir = "/"
			}
			var out *depmod.Output
			if dryRun {
				root, err := depmod.Dir(basedir)
				if err != nil {
					return err
				}
				if out, err = depmod.Generate(root, kver, opts...); err != nil {
					return err
				}
			} else {
				var err error
				if out, err = depmod.Write(basedir, kver, opts...); err != nil {
					return err
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				r := depmodReport{Kernel: kver, Basedir: basedir, Written: !dryRun, Files: []depmodFile{}, Warnings: warnings}
				for _, f := range out.Files {
					r.Files = append(r.Files, depmodFile{Name: f.Name, Size: len(f.Data)})
				}
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			if !dryRun {
				return nil
			}
			// depmod -n: the text files, in order, on standard output.
			for _, f := range out.Files {
				if strings.HasSuffix(f.Name, ".bin") {
					continue
				}
				if _, err := w.Write(f.Data); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&basedir, "basedir", "b", "", "root of the image holding lib/modules/KVER (default /)")
	f.StringArrayVarP(&configs, "config", "C", nil, "depmod.d folder or file on the host, instead of the image's configuration (repeatable)")
	f.BoolVarP(&dryRun, "dry-run", "n", false, "write the text files to standard output instead (no .bin indexes)")
	f.BoolVarP(&errsyms, "errsyms", "e", false, "report symbols no module nor vmlinux supplies, and CRC mismatches (needs -E)")
	f.StringVarP(&symvers, "symvers", "E", "", "the kernel's Module.symvers, for -e")
	f.BoolVarP(&all, "all", "a", false, "probe all modules (always the case)")
	f.BoolVar(&asJSON, "json", false, "print what was generated, and the warnings, as JSON")
	return cmd
}

// depmodReport is what depmod --json prints.
type depmodReport struct {
	Kernel   string       `json:"kernel"`
	Basedir  string       `json:"basedir"`
	Written  bool         `json:"written"`
	Files    []depmodFile `json:"files"`
	Warnings []string     `json:"warnings"`
}

type depmodFile struct {
	Name string `json:"name"`
	Size int    `json:"size"`
}

// versionNumber is depmod's test of a release, sscanf("%u.%u") == 2.
var versionNumber = regexp.MustCompile(`^\s*[+-]?[0-9]+\.\s*[+-]?[0-9]+`)
