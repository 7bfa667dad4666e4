package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/dkms"
)

// statusIncomplete is kmodctl dkms plan's exit status for a plan with
// values known only at build time: CI tells it from 0 (complete) and 1
// (rejected or unreadable).
const statusIncomplete = 3

// exclusiveVars are the directives whose values decide the
// BUILD_EXCLUSIVE verdict.
var exclusiveVars = []string{"BUILD_EXCLUSIVE_KERNEL", "BUILD_EXCLUSIVE_ARCH", "BUILD_EXCLUSIVE_CONFIG"}

// moduleVars are the variables the module list derives from (PACKAGE_NAME
// is BUILT_MODULE_NAME's default).
var moduleVars = []string{"PACKAGE_NAME", "BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION", "STRIP"}

// unameMachine maps GOARCH to what `uname -m` prints on Linux for that
// architecture, which is dkms's default $arch.
var unameMachine = map[string]string{
	"amd64":    "x86_64",
	"386":      "i686",
	"arm64":    "aarch64",
	"arm":      "armv7l",
	"ppc64le":  "ppc64le",
	"ppc64":    "ppc64",
	"s390x":    "s390x",
	"riscv64":  "riscv64",
	"mips64le": "mips64",
	"mips64":   "mips64",
	"mipsle":   "mips",
	"mips":     "mips",
	"loong64":  "loongarch64",
}

const dkmsPlanJSONHelp = `
With --json the plan is one JSON object on stdout:

  {
    "file": "/usr/src/v4l2loopback-0.12.7/dkms.conf",
    "overrides": ["/etc/dkms/v4l2loopback.conf"],   // --override files, in order
    "kernel": "6.1.0-57-amd64",
    "arch": "x86_64",
    "distro": "debian",
    "complete": true,                 // "unknown" is empty (exit status 0)
    "package": {"name": "v4l2loopback", "version": "0.12.7"},
    "modules": [                      // in record order
      {"dest_name": "v4l2loopback",   // DEST_MODULE_NAME: the installed file without .ko
       "built_name": "v4l2loopback",  // BUILT_MODULE_NAME: kbuild's name
       "built_path": "v4l2loopback.ko",       // BUILT_MODULE_LOCATION/, relative to the build dir
       "dest_dir": "/updates/dkms",   // under /lib/modules/KVER, as the distro's dkms rewrites it
       "strip": true}                 // dkms strips debug symbols (strip -g)
    ],
    "make": "make KERNEL_DIR=/lib/modules/6.1.0-57-amd64/build all",
    "clean": "make clean",            // both "" when known only at build time
    "patches": ["fix.patch"],         // PATCH entries applied for this kernel (PATCH_MATCH)
    "verdict": "built",               // built, excluded, unknown, or rejected
    "excluded": false,                // a BUILD_EXCLUSIVE_* directive excludes the kernel
    "reason": "",                     // why excluded, or which directive is unknown
    "unknown": [{"name": "PRE_BUILD", "why": "..."}],  // known only at build time
    "unsupported": ["line 12: ..."],  // constructs not evaluated, with their lines;
                                      // what they leave unknown for this kernel is in "unknown"
    "warnings": ["..."],
    "rejected": false,                // dkms rejects the file ("Bad conf file")
    "problems": []                    // why it rejects it
  }

Lists are [] when empty. A field derived from a variable in "unknown" is the
reader's guess: "modules" from PACKAGE_NAME, BUILT_MODULE_NAME,
BUILT_MODULE_LOCATION, DEST_MODULE_NAME, DEST_MODULE_LOCATION and STRIP, the
verdict from BUILD_EXCLUSIVE_* ("unknown" unless another one excludes). A
rejected file still prints the object (what the reader got, "verdict"
rejected); an unreadable file prints none.`

// dkmsPlanJSON is the --json document of kmodctl dkms plan.
type dkmsPlanJSON struct {
	File        string            `json:"file"`
	Overrides   []string          `json:"overrides"`
	Kernel      string            `json:"kernel"`
	Arch        string            `json:"arch"`
	Distro      string            `json:"distro"`
	Complete    bool              `json:"complete"`
	Package     dkmsPackageJSON   `json:"package"`
	Modules     []dkmsModuleJSON  `json:"modules"`
	Make        string            `json:"make"`
	Clean       string            `json:"clean"`
	Patches     []string          `json:"patches"`
	Verdict     string            `json:"verdict"`
	Excluded    bool              `json:"excluded"`
	Reason      string            `json:"reason"`
	Unknown     []dkmsUnknownJSON `json:"unknown"`
	Unsupported []string          `json:"unsupported"`
	Warnings    []string          `json:"warnings"`
	Rejected    bool              `json:"rejected"`
	Problems    []string          `json:"problems"`
}

type dkmsPackageJSON struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

type dkmsModuleJSON struct {
	DestName  string `json:"dest_name"`
	BuiltName string `json:"built_name"`
	BuiltPath string `json:"built_path"`
	DestDir   string `json:"dest_dir"`
	Strip     bool   `json:"strip"`
}

type dkmsUnknownJSON struct {
	Name string `json:"name"`
	Why  string `json:"why"`
}

func newDKMSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dkms",
		Short: "Read dkms.conf files as dkms 3.0.10 does, without building",
	}
	cmd.AddCommand(newDKMSPlanCmd())
	return cmd
}

// dkmsPlanArgs is the command line of kmodctl dkms plan.
type dkmsPlanArgs struct {
	kernel, arch, kernelConfig, module, moduleVersion, distro, osRelease string
	overrides                                                            []string
	asJSON                                                               bool
}

func newDKMSPlanCmd() *cobra.Command {
	var a dkmsPlanArgs
	cmd := &cobra.Command{
		Use:   "plan SOURCE_DIR|DKMS_CONF --kernel RELEASE [--arch ARCH] [--kernel-config FILE] [--module NAME --module-version VERSION] [--json]",
		Short: "Show what dkms would build from a dkms.conf for one kernel",
		Long: "Reads SOURCE_DIR/dkms.conf (or the file given) and evaluates it for one kernel and " +
			"architecture as dkms 3.0.10 would on Debian, without running anything from it, then " +
			"prints: the package name and version; each module with its built name, built path " +
			"(BUILT_MODULE_LOCATION, relative to the build folder), destination name and " +
			"destination folder under /lib/modules/KVER (Debian's and Ubuntu's dkms install into " +
			"/updates/dkms whatever DEST_MODULE_LOCATION says; --distro or --os-release change " +
			"that as dkms does), and whether dkms strips it; the make and clean commands (dkms " +
			"runs the make command with \"-jN KERNELRELEASE=KVER\" inserted after a leading " +
			"\"make\"); the patches applied; the BUILD_EXCLUSIVE verdict (built, or excluded and " +
			"why); warnings; and which values are known only at build time and why, with the " +
			"constructs of the file that were not evaluated and their lines.\n\n" +
			"--arch defaults to this machine's `uname -m` for the architecture kmodctl was built " +
			"for (amd64 x86_64, arm64 aarch64, 386 i686, arm armv7l, ppc64le, s390x, riscv64...): " +
			"give it for an image of another architecture. --kernel-config is the kernel's " +
			".config (a headers tree's .config or /boot/config-KVER; a folder means its .config): " +
			"BUILD_EXCLUSIVE_CONFIG and dkms's clang check read it, and without it a " +
			"BUILD_EXCLUSIVE_CONFIG is known only at build time. --module and --module-version " +
			"are dkms's -m and -v ($module, $module_version), both or neither; without them the " +
			"file sees them unset and dkms's default make command uses PACKAGE_NAME and " +
			"PACKAGE_VERSION. --override names a file dkms sources after dkms.conf " +
			"(/etc/dkms/MODULE.conf, MODULE-VERSION.conf, MODULE-VERSION-KVER.conf, " +
			"MODULE-VERSION-KVER-ARCH.conf), repeated in dkms's order.\n\n" +
			"Exit status: 0 the plan is complete; 3 it is not: some values are known only at " +
			"build time (listed, and what derives from them is the reader's guess); 1 dkms would reject the file (each " +
			"problem is printed) or a file cannot be read; 2 a usage error.\n" + dkmsPlanJSONHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDKMSPlan(cmd, args[0], a)
		},
	}
	f := cmd.Flags()
	f.StringVar(&a.kernel, "kernel", "", "the kernel release dkms builds for ($kernelver), e.g. 6.1.0-57-amd64")
	f.StringVar(&a.arch, "arch", "", "the architecture ($arch) as uname -m prints it (default: this machine's, see below)")
	f.StringVar(&a.kernelConfig, "kernel-config", "", "the kernel's .config, or a folder holding it (a headers tree)")
	f.StringVar(&a.module, "module", "", "dkms's -m: the module name ($module); needs --module-version")
	f.StringVar(&a.moduleVersion, "module-version", "", "dkms's -v: the module version ($module_version); needs --module")
	f.StringVar(&a.distro, "distro", "debian", "dkms's running_distribution (decides the destination folder)")
	f.StringVar(&a.osRelease, "os-release", "", "the target's /etc/os-release, to compute --distro from as dkms does")
	f.StringArrayVar(&a.overrides, "override", nil, "a file dkms sources after dkms.conf (/etc/dkms/*.conf); repeat in dkms's order")
	f.BoolVar(&a.asJSON, "json", false, "print the plan as JSON (shape below)")
	_ = cmd.MarkFlagRequired("kernel")
	cmd.MarkFlagsRequiredTogether("module", "module-version")
	cmd.MarkFlagsMutuallyExclusive("distro", "os-release")
	return cmd
}

func runDKMSPlan(cmd *cobra.Command, src string, a dkmsPlanArgs) error {
	if a.kernel == "" {
		return usagef("--kernel: give a kernel release")
	}
	if cmd.Flags().Changed("module") && (a.module == "" || a.moduleVersion == "") {
		return usagef("--module and --module-version: give both, not empty")
	}
	if a.distro == "" {
		return usagef("--distro: give a distribution (debian, ubuntu, fedora...)")
	}
	if a.arch == "" {
		a.arch = unameMachine[runtime.GOARCH]
		if a.arch == "" {
			return usagef("--arch: no default for %s, give it", runtime.GOARCH)
		}
	}
	path := src
	if st, err := os.Stat(src); err == nil && st.IsDir() {
		path = filepath.Join(src, "dkms.conf")
	}
	conf, err := dkms.ParseFile(path)
	if err != nil {
		return err
	}
	opts := dkms.PlanOptions{Distro: a.distro, Module: a.module, ModuleVersion: a.moduleVersion}
	if a.osRelease != "" {
		data, err := os.ReadFile(a.osRelease)
		if err != nil {
			return err
		}
		if opts.Distro = dkms.DistroFromOSRelease(data); opts.Distro == "" {
			return fmt.Errorf("%s: no ID or ID_LIKE", a.osRelease)
		}
	}
	if a.kernelConfig != "" {
		if opts.KernelConfig, err = readKernelConfig(a.kernelConfig); err != nil {
			return err
		}
	}
	for _, o := range a.overrides {
		c, err := dkms.ParseFile(o)
		if err != nil {
			return err
		}
		opts.Overrides = append(opts.Overrides, c)
	}
	plan, err := conf.PlanWith(a.kernel, a.arch, opts)
	var confErr *dkms.ConfError
	if err != nil && (!errors.As(err, &confErr) || plan == nil) {
		return err
	}
	doc := dkmsPlanDoc(path, a.overrides, opts.Distro, conf, plan, confErr)
	err = nil
	if a.asJSON {
		err = writeJSON(cmd.OutOrStdout(), doc)
	} else if confErr == nil {
		err = writeDKMSPlan(cmd.OutOrStdout(), doc)
	}
	if err != nil {
		return err
	}
	if confErr != nil {
		// One line per problem, the file named once.
		return fmt.Errorf("%s: dkms would reject this dkms.conf (\"Bad conf file\"):\n  %s",
			confErr.Name, strings.Join(confErr.Problems, "\n  "))
	}
	if !doc.Complete {
		names := make([]string, len(doc.Unknown))
		for i, u := range doc.Unknown {
			names[i] = u.Name
		}
		return errStatus{statusIncomplete, fmt.Sprintf("%s: the plan is incomplete: %s known only at build time",
			path, strings.Join(names, ", "))}
	}
	return nil
}

// readKernelConfig reads a kernel .config, or the .config in a folder (a
// headers tree).
func readKernelConfig(p string) ([]byte, error) {
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		p = filepath.Join(p, ".config")
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	if b == nil {
		b = []byte{} // an empty config is a known one that sets nothing
	}
	return b, nil
}

// dkmsPlanDoc formats the library's plan; it decides nothing itself
// beyond naming the verdict the plan's fields give.
func dkmsPlanDoc(path string, overrides []string, distro string, conf *dkms.Conf, p *dkms.Plan, confErr *dkms.ConfError) *dkmsPlanJSON {
	d := &dkmsPlanJSON{
		File:        path,
		Overrides:   append([]string{}, overrides...),
		Kernel:      p.Kernel,
		Arch:        p.Arch,
		Distro:      distro,
		Package:     dkmsPackageJSON{Name: p.PackageName, Version: p.PackageVersion},
		Modules:     []dkmsModuleJSON{},
		Make:        p.Make,
		Clean:       p.Clean,
		Patches:     append([]string{}, p.Patches...),
		Excluded:    p.Excluded,
		Reason:      p.Reason,
		Unknown:     []dkmsUnknownJSON{},
		Unsupported: append([]string{}, conf.Unsupported...),
		Warnings:    append([]string{}, p.Warnings...),
		Problems:    []string{},
	}
	for _, m := range p.Modules {
		d.Modules = append(d.Modules, dkmsModuleJSON{DestName: m.Name, BuiltName: m.BuiltName,
			BuiltPath: m.BuiltPath, DestDir: m.DestDir, Strip: m.Strip})
	}
	unknown := map[string]bool{}
	for _, n := range p.Unknown {
		unknown[n] = true
		d.Unknown = append(d.Unknown, dkmsUnknownJSON{Name: n, Why: p.UnknownWhy[n]})
	}
	d.Complete = len(d.Unknown) == 0
	switch {
	case confErr != nil:
		d.Verdict, d.Rejected = "rejected", true
		d.Problems = append(d.Problems, confErr.Problems...)
	case p.Excluded:
		d.Verdict = "excluded"
	default:
		d.Verdict = "built"
		var open []string
		for _, n := range exclusiveVars {
			if unknown[n] {
				open = append(open, n)
			}
		}
		if len(open) > 0 {
			d.Verdict = "unknown"
			d.Reason = strings.Join(open, ", ") + " known only at build time"
		}
	}
	return d
}

// writeDKMSPlan prints the plan for people.
func writeDKMSPlan(w io.Writer, d *dkmsPlanJSON) error {
	var b strings.Builder
	later := func(s string) string {
		if s == "" {
			return "(known only at build time, see below)"
		}
		return s
	}
	fmt.Fprintf(&b, "file:     %s\n", d.File)
	for _, o := range d.Overrides {
		fmt.Fprintf(&b, "override: %s\n", o)
	}
	fmt.Fprintf(&b, "kernel:   %s %s (dkms on %s)\n", d.Kernel, d.Arch, d.Distro)
	fmt.Fprintf(&b, "package:  %s %s\n", later(d.Package.Name), later(d.Package.Version))
	switch d.Verdict {
	case "excluded":
		fmt.Fprintf(&b, "verdict:  excluded: %s\n", d.Reason)
	case "unknown":
		fmt.Fprintf(&b, "verdict:  built unless excluded: %s\n", d.Reason)
	default:
		fmt.Fprintf(&b, "verdict:  built\n")
	}
	fmt.Fprintf(&b, "make:     %s\n", later(d.Make))
	if strings.HasPrefix(d.Make, "make") {
		fmt.Fprintf(&b, "          (dkms runs it with -jN KERNELRELEASE=%s inserted after \"make\")\n", d.Kernel)
	}
	fmt.Fprintf(&b, "clean:    %s\n", later(d.Clean))
	if len(d.Patches) == 0 {
		fmt.Fprintf(&b, "patches:  none\n")
	} else {
		fmt.Fprintf(&b, "patches:  %s\n", strings.Join(d.Patches, " "))
	}
	unknown := map[string]bool{}
	for _, u := range d.Unknown {
		unknown[u.Name] = true
	}
	var partial []string
	for _, n := range moduleVars {
		if unknown[n] {
			partial = append(partial, n)
		}
	}
	fmt.Fprintf(&b, "modules:  %d (destination folders under /lib/modules/%s)\n", len(d.Modules), d.Kernel)
	if len(partial) > 0 {
		fmt.Fprintf(&b, "          (known in part: %s known only at build time)\n", strings.Join(partial, ", "))
	}
	if len(d.Modules) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  DEST NAME\tBUILT NAME\tBUILT PATH\tDEST DIR\tSTRIP")
		for _, m := range d.Modules {
			strip := "no"
			switch {
			case unknown["STRIP"]:
				strip = "?"
			case m.Strip:
				strip = "yes"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", m.DestName, m.BuiltName, m.BuiltPath, m.DestDir, strip)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(d.Warnings) > 0 {
		fmt.Fprintf(&b, "warnings:\n")
		for _, x := range d.Warnings {
			fmt.Fprintf(&b, "  %s\n", x)
		}
	}
	if len(d.Unknown) > 0 {
		fmt.Fprintf(&b, "known only at build time:\n")
		for _, u := range d.Unknown {
			fmt.Fprintf(&b, "  %s: %s\n", u.Name, u.Why)
		}
	}
	if len(d.Unsupported) > 0 {
		if d.Complete {
			fmt.Fprintf(&b, "not evaluated (no value dkms reads depends on them for this kernel):\n")
		} else {
			fmt.Fprintf(&b, "not evaluated:\n")
		}
		for _, x := range d.Unsupported {
			fmt.Fprintf(&b, "  %s\n", x)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
