package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
)

func init() { initramfsSubcommands = append(initramfsSubcommands, newInitramfsInjectCmd) }

func newInitramfsInjectCmd() *cobra.Command {
	var (
		modules              []string
		files                []string
		modulesDir, fwDir    string
		mode, kver, backup   string
		load, asJSON, best   bool
		doBackup, noVermagic bool
	)
	cmd := &cobra.Command{
		Use:   "inject IMAGE --module FILE... [--modules-dir DIR] [--firmware-dir DIR] [--mode append|rewrite] [--load] [--backup]",
		Short: "Add kernel modules (with dependencies and firmware) to an initramfs image",
		Long: "Adds the modules under lib/modules/KVER/updates/ of the image's kernel (usr/lib/... " +
			"in a merged-/usr image), the modules their depends= needs that the image lacks " +
			"(from --modules-dir, keeping their paths there), the firmware their firmware= " +
			"names (from --firmware-dir, default lib/firmware next to --modules-dir's " +
			"lib/modules; a warning when absent), and regenerates the image's depmod files " +
			"(modules.dep.bin, ...) for its kernel.\n\n" +
			"--mode append (default) adds one compressed archive at the end and changes no " +
			"existing byte; the kernel lets later entries win. lsinitramfs, lsinitrd and " +
			"lsinitcpio stop before it and do not list the new files (`kmodctl initramfs ls` " +
			"does). --mode rewrite keeps the leading uncompressed archives (early microcode) " +
			"byte for byte and merges the rest into one archive compressed like the image's " +
			"main one, deterministically.\n\n" +
			"--load has the image's early userspace load the modules: initramfs-tools " +
			"conf/modules, dracut etc/modules-load.d/kmodctl.conf (systemd) or " +
			"etc/cmdline.d/90-kmodctl.conf with rd.driver.pre=, mkinitcpio MODULES in /config.\n\n" +
			"The image is replaced atomically with its mode and owner; on error it is left as " +
			"it was. --backup keeps the old image as IMAGE.bak (--backup-file names another).\n\n" +
			"--json prints one object: {\"image\", \"mode\", \"flavor\", \"kernel_release\", \"compression\", " +
			"\"modules\", \"dependencies\", \"firmware\", \"files\" (with --file) (each [{\"name\", \"path\", " +
			"\"source\", \"size\", ...}]), \"missing_firmware\", " +
			"\"depmod\", \"load_config\", \"overridden\", \"hard_links_broken\", \"kept_segments\", " +
			"\"size_before\", \"size_after\", \"backup\", \"warnings\"}; the lists are arrays, never null.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(modules) == 0 && len(files) == 0 {
				return usagef("give at least one --module")
			}
			if m := initramfs.InjectMode(mode); m != initramfs.Append && m != initramfs.Rewrite {
				return usagef("--mode %q: use append or rewrite", mode)
			}
			opts := []initramfs.InjectOption{
				initramfs.WithModules(modules...),
				initramfs.WithMode(initramfs.InjectMode(mode)),
				initramfs.WithLoad(load),
			}
			for _, f := range files {
				src, dst, ok := strings.Cut(f, ":")
				if !ok || src == "" || dst == "" {
					return usagef("--file %q: want HOST-FILE:IMAGE-PATH", f)
				}
				data, err := os.ReadFile(src)
				if err != nil {
					return err
				}
				st, err := os.Stat(src)
				if err != nil {
					return err
				}
				opts = append(opts, initramfs.WithFile(dst, data, st.Mode().Perm()))
			}
			if modulesDir != "" {
				opts = append(opts, initramfs.WithModulesDir(modulesDir))
			}
			if fwDir != "" {
				opts = append(opts, initramfs.WithFirmwareDir(fwDir))
			}
			if kver != "" {
				opts = append(opts, initramfs.WithKernelRelease(kver))
			}
			if noVermagic {
				opts = append(opts, initramfs.WithoutVermagicCheck())
			}
			if best {
				opts = append(opts, initramfs.WithBestCompression())
			}
			switch {
			case backup != "":
				opts = append(opts, initramfs.WithBackupFile(backup))
			case doBackup:
				opts = append(opts, initramfs.WithBackup())
			}
			if !asJSON {
				opts = append(opts, initramfs.WithInjectWarnings(func(msg string) {
					fmt.Fprintln(cmd.ErrOrStderr(), "kmodctl: warning:", msg)
				}))
			}
			res, err := initramfs.Inject(args[0], opts...)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(injectJSON(res))
			}
			return writeInjectResult(cmd.OutOrStdout(), res)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&modules, "module", "m", nil, "module file to add (repeat; .ko, .ko.xz, .ko.zst, .ko.gz)")
	f.StringArrayVar(&files, "file", nil, "also add a regular file, HOST-FILE:IMAGE-PATH (repeat)")
	f.StringVar(&modulesDir, "modules-dir", "", "the target's module tree, e.g. ROOTFS/lib/modules/KVER: source of missing dependencies")
	f.StringVar(&fwDir, "firmware-dir", "", "the target's firmware folder (default: lib/firmware next to --modules-dir's lib/modules)")
	f.StringVar(&mode, "mode", string(initramfs.Append), "append (one archive added at the end) or rewrite (one merged archive)")
	f.BoolVar(&load, "load", false, "load the modules at early boot the way the image's flavor does")
	f.BoolVar(&doBackup, "backup", false, "keep the old image as IMAGE.bak")
	f.StringVar(&backup, "backup-file", "", "keep the old image at this path (implies --backup)")
	f.StringVar(&kver, "kver", "", "the image's kernel release (default: the only lib/modules/<release> of the image)")
	f.BoolVar(&noVermagic, "force-vermagic", false, "accept modules whose vermagic names another kernel release")
	f.BoolVar(&best, "best", false, "rewrite: compress harder (zstd's strongest level, gzip -9): within ~3% of zstd -9, ~8x slower")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object (warnings in it)")
	return cmd
}

// injectJSON gives the result's lists as arrays, never null.
func injectJSON(r *initramfs.InjectResult) *initramfs.InjectResult {
	c := *r
	for _, l := range []*[]initramfs.InjectedFile{&c.Modules, &c.Dependencies, &c.Firmware} {
		if *l == nil {
			*l = []initramfs.InjectedFile{}
		}
	}
	for _, l := range []*[]string{&c.MissingFirmware, &c.Depmod, &c.Overridden, &c.HardLinksBroken, &c.Warnings} {
		if *l == nil {
			*l = []string{}
		}
	}
	return &c
}

func writeInjectResult(w io.Writer, r *initramfs.InjectResult) error {
	fmt.Fprintf(w, "%s: %s (%s, kernel %s), %s archive\n", r.Image, r.Mode, r.Flavor, r.KernelRelease, r.Compression)
	for _, m := range r.Modules {
		fmt.Fprintf(w, "  module      %s\n", m.Path)
	}
	for _, m := range r.Dependencies {
		fmt.Fprintf(w, "  dependency  %s (for %s)\n", m.Path, m.NeededBy)
	}
	for _, m := range r.Firmware {
		fmt.Fprintf(w, "  firmware    %s (for %s)\n", m.Path, m.NeededBy)
	}
	for _, m := range r.Files {
		fmt.Fprintf(w, "  file        %s\n", m.Path)
	}
	for _, fw := range r.MissingFirmware {
		fmt.Fprintf(w, "  missing     firmware %s\n", fw)
	}
	if len(r.Depmod) > 0 {
		fmt.Fprintf(w, "  depmod      %d files regenerated\n", len(r.Depmod))
	}
	if r.LoadConfig != "" {
		fmt.Fprintf(w, "  load        %s\n", r.LoadConfig)
	}
	if r.KeptSegments > 0 {
		fmt.Fprintf(w, "  kept        %d early archive(s) byte for byte\n", r.KeptSegments)
	}
	if r.Backup != "" {
		fmt.Fprintf(w, "  backup      %s\n", r.Backup)
	}
	_, err := fmt.Fprintf(w, "  size        %d -> %d bytes\n", r.SizeBefore, r.SizeAfter)
	return err
}
