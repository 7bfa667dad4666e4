package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// firstbootFlags are the flags the firstboot commands share.
type firstbootFlags struct {
	root, kernel, manifest, report string
	onDrift, onUncovered           string
	verbose, json                  bool
}

func (f *firstbootFlags) add(cmd *cobra.Command, defaultReport string, policies bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.root, "root", "/", "the system's root: every path is taken under it (a directory tree, for tests)")
	fl.StringVar(&f.kernel, "kernel", "", "the running kernel's release (default: uname -r)")
	fl.StringVar(&f.manifest, "manifest", "", "the manifest's path under --root (default "+manifestDefault+")")
	fl.StringVar(&f.report, "report", "", "where to write the JSON result (default --root joined with "+defaultReport+"; - for stdout)")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "also print each module's problems on stderr")
	fl.BoolVar(&f.json, "json", false, "print the result as JSON (the report's object) instead of the summary line; the report is still written")
	if policies {
		fl.StringVar(&f.onDrift, "on-drift", string(firstboot.PolicyFail), "a module that differs from the manifest, or a missing or malformed manifest: warn (exit 0) or fail (exit 1)")
		fl.StringVar(&f.onUncovered, "on-uncovered", string(firstboot.PolicyWarn), "a running kernel the manifest does not cover: warn (exit 0) or fail (exit 1)")
	}
}

const manifestDefault = manifest.Path

func (f *firstbootFlags) options() (firstboot.Options, error) {
	o := firstboot.Options{Root: f.root, Kernel: f.kernel, Manifest: f.manifest}
	var err error
	if f.onDrift != "" {
		if o.OnDrift, err = firstboot.ParsePolicy(f.onDrift); err != nil {
			return o, usagef("--on-drift: %w", err)
		}
	}
	if f.onUncovered != "" {
		if o.OnUncovered, err = firstboot.ParsePolicy(f.onUncovered); err != nil {
			return o, usagef("--on-uncovered: %w", err)
		}
	}
	return o, nil
}

// reportPath is --report, or the default path under --root.
func (f *firstbootFlags) reportPath(def string) string {
	if f.report != "" {
		return f.report
	}
	return filepath.Join(f.root, def)
}

// finish writes the JSON result, prints the summary line and the module
// problems (with -v), and turns the status into the exit status.
func (f *firstbootFlags) finish(cmd *cobra.Command, path string, v any, write func(string) error, summary string, status firstboot.Status, mods []firstboot.ModuleReport, errs []string) error {
	var werr error
	if path != "-" {
		werr = write(path)
	}
	switch {
	case path == "-" || f.json:
		if err := writeJSON(cmd.OutOrStdout(), v); werr == nil {
			werr = err
		}
	default:
		fmt.Fprintln(cmd.OutOrStdout(), summary)
	}
	if f.verbose {
		for _, m := range mods {
			for _, e := range m.Errors {
				fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: %s: %s\n", m.Name, e)
			}
		}
		for _, e := range errs {
			fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: %s\n", e)
		}
	}
	if werr != nil {
		return fmt.Errorf("write the report: %w", werr)
	}
	if status == firstboot.StatusFail {
		return errQuiet{"failed"}
	}
	return nil
}

func newFirstbootCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "firstboot",
		Short: "The first-boot agent: verify, load and lock the managed modules of the running kernel",
		Long: "The agent the kmod provisioner installs into an image. It reads the manifest (" + manifestDefault + ") " +
			"for the running kernel and checks each module it lists: the file's SHA-256, its signature against the " +
			"certificate the manifest records, the file modules.dep resolves its name to, the srcversion of a module " +
			"already loaded and the copy in the initramfs. A module that fails is blocked for the boot " +
			"(" + firstboot.BlockedPath + ") and never loaded.\n\n" +
			"Exit status: 0 when everything passed or the policies (--on-drift, --on-uncovered) say warn; 1 otherwise.",
	}
	cmd.AddCommand(newFirstbootVerifyCmd(), newFirstbootRunCmd(), newFirstbootLockdownCmd(), newFirstbootPullCmd(), newFirstbootReportCmd())
	return cmd
}

func newFirstbootVerifyCmd() *cobra.Command {
	var f firstbootFlags
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the managed modules and block the drifted ones for this boot (every boot, before systemd-modules-load)",
		Long: "Checks every managed module of the running kernel, writes " + firstboot.BlockedPath + " (`blacklist NAME` and " +
			"`install NAME /bin/false` for each module that failed, removed when none did), writes " + firstboot.VerifyPath +
			" and prints `kmodctl verify: N/M modules verified` (with --json or --report -, the result " +
			"object instead: the shape of " + firstboot.VerifyPath + ", see docs/guides/firstboot.mdx). " +
			"It loads nothing and writes only under /run.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.options()
			if err != nil {
				return err
			}
			v, err := firstboot.Verify(cmd.Context(), o)
			if err != nil {
				return err
			}
			return f.finish(cmd, f.reportPath(firstboot.VerifyPath), v, func(p string) error { return firstboot.WriteVerifyResult(p, v) },
				v.SummaryLine, v.Status, v.Modules, append(v.Errors, v.Warnings...))
		},
	}
	f.add(cmd, firstboot.VerifyPath, true)
	return cmd
}

func newFirstbootRunCmd() *cobra.Command {
	var f firstbootFlags
	var lockdown, once bool
	var modprobe string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Check and load the managed modules, write the report (once per instance)",
		Long: "Checks the managed modules of the running kernel like verify, loads those that passed and are not loaded " +
			"yet with the image's modprobe (dependencies and modprobe.d options apply) in manifest order, confirms each " +
			"in /sys/module, records its taint and parameters, writes " + firstboot.ReportPath + " and prints " +
			"`kmodctl: N/M modules verified and loaded`. With --lockdown it then sets kernel.modules_disabled=1. " +
			"With --once it does nothing when it already ran for this instance (cloud-init's instance-id, else " +
			"/etc/machine-id). With --json or --report -, it prints the report's object instead of the " +
			"summary line (see docs/guides/firstboot.mdx, The report).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.options()
			if err != nil {
				return err
			}
			o.Lockdown = lockdown
			if modprobe != "" {
				o.Modprobe = commandModprobe(modprobe)
			}
			root := f.root
			var id firstboot.Identity
			if once {
				id = firstboot.ReadIdentity(root)
				if firstboot.Done(root, id) {
					fmt.Fprintf(cmd.OutOrStdout(), "kmodctl: the first-boot part already ran for instance %s: nothing to do\n", id.InstanceID)
					return nil
				}
			}
			r, err := firstboot.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			path := f.reportPath(firstboot.ReportPath)
			if path != "-" {
				firstboot.KeepPull(path, r)
			}
			ferr := f.finish(cmd, path, r, func(p string) error { return firstboot.WriteReport(p, r) },
				r.SummaryLine, r.Status, r.Modules, append(r.Errors, r.Warnings...))
			if once && cmd.Context().Err() == nil {
				if err := firstboot.MarkDone(root, id); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: --once: %v\n", err)
				}
			}
			return ferr
		},
	}
	f.add(cmd, firstboot.ReportPath, true)
	fl := cmd.Flags()
	fl.BoolVar(&lockdown, "lockdown", false, "set kernel.modules_disabled=1 once the modules are loaded")
	fl.BoolVar(&once, "once", false, "run once per instance: do nothing when "+"/var/lib/kmodctl/firstboot.done holds this instance's ID, record it after the run")
	fl.StringVar(&modprobe, "modprobe", "", "run `PROGRAM NAME` to load a module instead of the system's modprobe (for tests)")
	_ = fl.MarkHidden("modprobe")
	return cmd
}

// commandModprobe loads modules by running prog NAME.
func commandModprobe(prog string) func(ctx context.Context, name string) error {
	return func(ctx context.Context, name string) error {
		out, err := exec.CommandContext(ctx, prog, name).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", prog, name, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

func newFirstbootLockdownCmd() *cobra.Command {
	var f firstbootFlags
	cmd := &cobra.Command{
		Use:   "lockdown",
		Short: "Set kernel.modules_disabled=1 (every boot, once the managed modules are loaded)",
		Long: "Sets kernel.modules_disabled=1 (" + firstboot.ModulesDisabledPath + ") and reads it back, naming the managed " +
			"modules of the running kernel that are not loaded; writes " + firstboot.LockdownReportPath + ". It fails " +
			"only when the setting does not take. With --json or --report -, it prints that file's object " +
			"({\"requested\", \"applied\", \"already_set\", \"missing\", \"error\", \"instance_id\", \"boot_id\", \"kernel\", \"generated_at\", \"status\", \"summary\"}) instead of the summary line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := f.options()
			if err != nil {
				return err
			}
			l, err := firstboot.Lockdown(cmd.Context(), o)
			if err != nil {
				return err
			}
			return f.finish(cmd, f.reportPath(firstboot.LockdownReportPath), l, func(p string) error { return firstboot.WriteLockdownResult(p, l) },
				l.SummaryLine, l.Status, nil, nil)
		},
	}
	f.add(cmd, firstboot.LockdownReportPath, false)
	return cmd
}

func newFirstbootPullCmd() *cobra.Command {
	var root, kernel, config, report, manifestPath string
	var noLoad, hook, verbose, asJSON bool
	cmd := &cobra.Command{
		Use:   "pull",
		Short: "Pull the signed modules of a kernel the image does not cover from its bundle (" + firstboot.PullConfigPath + ")",
		Long: "For a kernel the image's manifest does not cover (default: the running one), pulls the bundle " +
			firstboot.PullConfigPath + " names for that kernel and the image's architecture, verifies every module " +
			"against the image manifest's certificates and the bundle's sha256s, installs them under " +
			"/lib/modules/KVER/" + firstboot.PulledDir + ", runs depmod, puts the early ones into the kernel's " +
			"initramfs, writes the bundle's modprobe settings (" + firstboot.PulledModprobePath + ") and records " +
			"everything in " + firstboot.PulledPath + "; then loads them (not with --no-load) and records the " +
			"outcome in the report. A module that fails verification is never installed. Exit status: 0, or 1 " +
			"when the pull failed and the settings' on_failure is fail (--hook: always 0, for a kernel's " +
			"postinst hook, which must never fail a package install). --json prints the result the report " +
			"records (its \"pull\" object: {\"kernel\", \"arch\", \"outcome\", \"reference\", \"digest\", " +
			"\"modules\", ...}, see docs/guides/firstboot.mdx) instead of the summary line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			o := firstboot.PullOptions{Options: firstboot.Options{Root: root, Kernel: kernel, Manifest: manifestPath}, Config: config, Load: !noLoad}
			p, err := firstboot.Pull(cmd.Context(), o)
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), p); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), p.SummaryLine)
			}
			if verbose || p.Status != firstboot.StatusOK {
				for _, w := range p.Warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: %s\n", w)
				}
				for _, m := range p.Modules {
					if m.Error != "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: %s: %s\n", m.Name, m.Error)
					}
				}
			}
			rp := report
			if rp == "" {
				rp = filepath.Join(root, firstboot.ReportPath)
			}
			if p.Outcome != firstboot.PullCovered {
				if err := firstboot.WritePull(rp, p); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: write the report: %v\n", err)
				}
			}
			if p.Status == firstboot.StatusFail && !hook {
				return errQuiet{"failed"}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&root, "root", "/", "the system's root: every path is taken under it (a directory tree, for tests)")
	fl.StringVar(&kernel, "kernel", "", "the kernel release (default: uname -r)")
	fl.StringVar(&manifestPath, "manifest", "", "the manifest's path under --root (default "+manifestDefault+")")
	fl.StringVar(&config, "config", "", "the pull settings' path under --root (default "+firstboot.PullConfigPath+")")
	fl.StringVar(&report, "report", "", "the report to record the pull in (default --root joined with "+firstboot.ReportPath+")")
	fl.BoolVar(&noLoad, "no-load", false, "install only: do not load the modules (the kernel is not the running one)")
	fl.BoolVar(&hook, "hook", false, "exit 0 whatever happened (for /etc/kernel/postinst.d)")
	fl.BoolVarP(&verbose, "verbose", "v", false, "print the warnings")
	fl.BoolVar(&asJSON, "json", false, "print the result as one JSON object instead of the summary line")
	return cmd
}

func newFirstbootReportCmd() *cobra.Command {
	var root, config string
	var wait time.Duration
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Post this boot's attestation to the catalog (" + firstboot.ReportConfigPath + ")",
		Long: "Posts this boot's result to the catalog " + firstboot.ReportConfigPath + " names: the first-boot " +
			"report (" + firstboot.ReportPath + ") when it is from this boot, else this boot's verification (" +
			firstboot.VerifyPath + "), with the modules' loaded state read now, authenticated with the instance " +
			"token of the settings' token_file. Retries with backoff for --for. Posting the same result again " +
			"changes nothing. Exit status 1 when the catalog refused it or could not be reached in time. " +
			"--json prints the attestation the catalog recorded (its API object: {\"id\", \"instance_id\", " +
			"\"boot_id\", \"kernel\", \"status\", \"modules\", ...}, see docs/catalog.mdx) instead of the summary line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			logf := func(format string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: "+format+"\n", a...) }
			a, err := firstboot.PostReport(cmd.Context(), firstboot.ReportOptions{Root: root, ConfigPath: config, For: wait, Logf: logf})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), a)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "kmodctl report: attestation %s of instance %s (kernel %s, %s, %d modules) recorded\n",
				a.ID, a.InstanceID, a.Kernel, a.Status, len(a.Modules))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&root, "root", "/", "the system's root: every path is taken under it (a directory tree, for tests)")
	fl.StringVar(&config, "config", "", "the catalog settings' path under --root (default "+firstboot.ReportConfigPath+")")
	fl.DurationVar(&wait, "for", 10*time.Minute, "how long to keep trying")
	fl.BoolVar(&asJSON, "json", false, "print the recorded attestation as one JSON object")
	return cmd
}
