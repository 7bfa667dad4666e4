package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

func newCheckCmd() *cobra.Command {
	var kernelDir, symvers, systemMap, headers, config, release string
	cmd := &cobra.Command{
		Use:   "check --kernel-dir DIR [--symvers FILE] FILE...",
		Short: "Check that modules would load on a target kernel",
		Long: "Checks the given modules, as one set, against a target kernel described by its " +
			"module tree (/lib/modules/KVER), its Module.symvers, System.map, headers or config: " +
			"vermagic (with modversions CRCs the release word does not decide, the CRCs do), " +
			"unresolved symbols, __versions CRCs, GPL-only and namespaced exports, and depends=. " +
			"Each problem names module, symbol and reason.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
			if release != "" {
				opts = append(opts, kmod.WithRelease(release))
			}
			if len(opts) == 0 {
				return fmt.Errorf("describe the target kernel: --kernel-dir, --headers, --symvers or --system-map")
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
			failed := 0
			for _, p := range args {
				m, err := kmod.ParseFile(p)
				if err != nil {
					fmt.Fprintf(os.Stderr, "kmodctl: %s: %v\n", p, err)
					failed++
					continue
				}
				mods = append(mods, m)
			}
			rep := kmod.Check(k, mods)
			if err := rep.Write(cmd.OutOrStdout()); err != nil {
				return err
			}
			if failed > 0 || !rep.OK() {
				return errQuiet{"check failed"}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kernelDir, "kernel-dir", "", "the target's module tree, /lib/modules/KVER (its build link and modules.builtin are used when present)")
	f.StringVar(&symvers, "symvers", "", "the target's Module.symvers (vmlinux exports and CRCs)")
	f.StringVar(&systemMap, "system-map", "", "the target's System.map (only __ksymtab_* entries count as exports)")
	f.StringVar(&headers, "headers", "", "the target's headers tree (Module.symvers, release, .config)")
	f.StringVar(&config, "config", "", "the target's kernel config (for vermagic), e.g. /boot/config-KVER")
	f.StringVar(&release, "release", "", "override the target's kernel release")
	return cmd
}
