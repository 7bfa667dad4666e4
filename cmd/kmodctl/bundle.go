package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kmodctl/packer-plugin-kmod/bundle"
	"github.com/kmodctl/packer-plugin-kmod/kmod"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// registryFlags are the flags of every bundle command that reaches a
// registry.
type registryFlags struct {
	caFile, username, authFile string
	passwordStdin, plainHTTP   bool
	trusted                    []string
}

func (f *registryFlags) add(cmd *cobra.Command, trust bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.caFile, "ca-file", "", "PEM CA certificates the registry's TLS certificate may chain to, besides the system's")
	fl.BoolVar(&f.plainHTTP, "plain-http", false, "allow plain HTTP to the registry (never used otherwise, not even for localhost)")
	fl.StringVar(&f.username, "username", "", "registry user; the password is read from standard input with --password-stdin (default: the Docker config and its credential helpers)")
	fl.BoolVar(&f.passwordStdin, "password-stdin", false, "read the registry password (or token, with no --username) from standard input")
	fl.StringVar(&f.authFile, "auth-file", "", "Docker-style auth file (config.json with auths or credHelpers) to take credentials from")
	if trust {
		fl.StringArrayVar(&f.trusted, "trusted-cert", nil, "certificate (PEM or DER) module signatures must verify against; repeatable. A bundle's own certificate never counts")
	}
}

func (f *registryFlags) options(cmd *cobra.Command) ([]bundle.Option, error) {
	var opts []bundle.Option
	if f.caFile != "" {
		opts = append(opts, bundle.WithCAFile(f.caFile))
	}
	if f.plainHTTP {
		opts = append(opts, bundle.WithPlainHTTP())
	}
	switch {
	case f.passwordStdin:
		pw, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("--password-stdin: %w", err)
		}
		pw = strings.TrimRight(pw, "\r\n")
		if f.username != "" {
			opts = append(opts, bundle.WithBasicAuth(f.username, pw))
		} else {
			opts = append(opts, bundle.WithToken(pw))
		}
	case f.username != "":
		return nil, usagef("--username needs --password-stdin")
	case f.authFile != "":
		opts = append(opts, bundle.WithAuthFile(f.authFile))
	}
	if len(f.trusted) > 0 {
		certs, err := readCerts(f.trusted...)
		if err != nil {
			return nil, err
		}
		opts = append(opts, bundle.WithTrustedCerts(certs...))
	}
	return opts, nil
}

func (f *registryFlags) location(s string) (bundle.Location, error) {
	l, err := bundle.ParseLocation(s, f.plainHTTP)
	if err != nil {
		return l, errUsage{err}
	}
	return l, nil
}

// setup returns the options of the flags and the locations refs name.
func (f *registryFlags) setup(cmd *cobra.Command, refs ...string) ([]bundle.Option, []bundle.Location, error) {
	opts, err := f.options(cmd)
	if err != nil {
		return nil, nil, err
	}
	var locs []bundle.Location
	for _, r := range refs {
		l, err := f.location(r)
		if err != nil {
			return nil, nil, err
		}
		locs = append(locs, l)
	}
	return opts, locs, nil
}

func newBundleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Publish signed modules as OCI artifacts and take them back",
		Long: "A bundle is one OCI image manifest per kernel release and architecture (module files " +
			"and signing certificates as layers, a JSON config describing them) plus an index per " +
			"bundle version. Locations are registry/repo[:tag|@digest] or oci:DIR[:TAG] (an OCI " +
			"image layout, for air-gapped transfer). See docs/bundles.mdx. Exit status: 0 ok, 1 " +
			"failure, 2 usage error.",
	}
	cmd.AddCommand(newBundleCreateCmd(), newBundlePushCmd(), newBundlePullCmd(), newBundleInspectCmd(),
		newBundleLsCmd(), newBundleVerifyCmd())
	return cmd
}

func newBundleCreateCmd() *cobra.Command {
	var rf registryFlags
	var kernel, arch, name, version, manifestPath, root string
	var certs, early, noLoad []string
	var replace, asJSON bool
	cmd := &cobra.Command{
		Use: "create --kernel RELEASE --cert CERT [flags] TARGET MODULE...\n" +
			"  kmodctl bundle create --manifest MANIFEST --root DIR [--kernel RELEASE] TARGET",
		Short: "Create a bundle from signed module files and write it to a registry or a layout",
		Long: "With module files: the bundle of one kernel (--kernel, --arch), each module signed by " +
			"one of the --cert certificates; it joins the index at TARGET, replacing that kernel's " +
			"entry and keeping the others (--replace starts a new index). With --manifest: every " +
			"kernel of an image manifest (the kmod provisioner's /usr/lib/kmodctl/manifest.json), " +
			"its module files read under --root. The creation time is SOURCE_DATE_EPOCH, else the " +
			"Unix epoch, so the same inputs give the same digests. " + pushedJSONDoc,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, locs, err := rf.setup(cmd, args[0])
			if err != nil {
				return err
			}
			target := locs[0]
			if !replace {
				opts = append(opts, bundle.WithMerge())
			}
			copts := []bundle.CreateOption{bundle.WithName(name), bundle.WithVersion(version)}
			var bundles []*bundle.Bundle
			switch {
			case manifestPath != "":
				if len(args) > 1 || len(certs) > 0 || len(early) > 0 || len(noLoad) > 0 {
					return usagef("--manifest takes the modules, certificates and settings from the manifest: give no module files, --cert, --early or --no-load")
				}
				if root == "" {
					return usagef("--manifest needs --root (the image's root folder)")
				}
				bundles, err = bundlesFromManifest(manifestPath, root, kernel, arch, copts)
			case kernel == "":
				return usagef("give --kernel RELEASE (or --manifest)")
			case len(args) < 2:
				return usagef("give the module files after TARGET")
			case len(certs) == 0:
				return usagef("give --cert: the certificate that signs the modules")
			default:
				var b *bundle.Bundle
				b, err = bundleFromFiles(kernel, arch, args[1:], certs, early, noLoad, copts)
				bundles = []*bundle.Bundle{b}
			}
			if err != nil {
				return err
			}
			res, err := bundle.Push(cmd.Context(), target, bundles, append(opts, progressOption(cmd))...)
			if err != nil {
				return err
			}
			return printPushed(cmd.OutOrStdout(), res, asJSON)
		},
	}
	rf.add(cmd, false)
	fl := cmd.Flags()
	fl.StringVar(&kernel, "kernel", "", "kernel release the modules are for (with --manifest: only this kernel)")
	fl.StringVar(&arch, "arch", runtime.GOARCH, "architecture (GOARCH name: amd64, arm64, ...)")
	fl.StringArrayVar(&certs, "cert", nil, "certificate that signs the modules, PEM or DER; repeatable")
	fl.StringVar(&name, "name", "", "bundle name (recorded in the config)")
	fl.StringVar(&version, "version", "", "bundle version (config and org.opencontainers.image.version)")
	fl.StringArrayVar(&early, "early", nil, "module loaded from the initramfs; repeatable")
	fl.StringArrayVar(&noLoad, "no-load", nil, "module not loaded at boot (not in modules-load.d); repeatable")
	fl.StringVar(&manifestPath, "manifest", "", "an image manifest: bundle every kernel it lists")
	fl.StringVar(&root, "root", "", "with --manifest: the image's root folder, where the manifest's module paths are")
	fl.BoolVar(&replace, "replace", false, "write a new index with these kernels only, instead of joining the one at TARGET")
	fl.BoolVar(&asJSON, "json", false, "print what was written as one JSON object")
	return cmd
}

func bundleFromFiles(kernel, arch string, files, certPaths, early, noLoad []string, copts []bundle.CreateOption) (*bundle.Bundle, error) {
	certs, err := readCerts(certPaths...)
	if err != nil {
		return nil, err
	}
	isIn := func(list []string, name string) bool {
		for _, n := range list {
			if strings.ReplaceAll(n, "-", "_") == strings.ReplaceAll(name, "-", "_") {
				return true
			}
		}
		return false
	}
	var mods []bundle.ModuleInput
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		name := kmod.ModuleNameFromPath(f)
		sum := sha256.Sum256(data)
		mods = append(mods, bundle.ModuleInput{File: filepath.Base(f), Data: data, Early: isIn(early, name), Load: !isIn(noLoad, name),
			Source: manifest.Source{Kind: manifest.SourcePrebuilt, Digest: "sha256:" + hex.EncodeToString(sum[:])}})
	}
	b, err := bundle.New(kernel, arch, mods, certs, copts...)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func bundlesFromManifest(path, root, kernel, arch string, copts []bundle.CreateOption) ([]*bundle.Bundle, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	read := func(p string) ([]byte, error) {
		return os.ReadFile(filepath.Join(root, filepath.FromSlash(p)))
	}
	var out []*bundle.Bundle
	for _, k := range m.Kernels {
		if kernel != "" && k.Release != kernel {
			continue
		}
		b, err := bundle.FromManifest(m, k.Release, arch, read, copts...)
		if err != nil {
			return nil, fmt.Errorf("%s: kernel %s: %w", path, k.Release, err)
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no kernel %s in it", path, kernel)
	}
	return out, nil
}

// pushedJSONDoc is the --json shape of the commands that write a bundle.
const pushedJSONDoc = "--json prints one object: {\"kernels\": [{\"release\", \"arch\", \"tag\" (the " +
	"kernel's own tag), \"digest\", \"reference\" (the manifest by digest)}], \"index\" (its digest), " +
	"\"reference\" (the index by digest)}."

// printPushed prints what a push wrote: a line per kernel and the index,
// or one JSON object.
func printPushed(w io.Writer, res *bundle.PushResult, asJSON bool) error {
	if asJSON {
		return writeJSON(w, res)
	}
	for _, k := range res.Kernels {
		tag := ""
		if k.Tag != "" {
			tag = " (tag " + k.Tag + ")"
		}
		fmt.Fprintf(w, "%s/%s: %s%s\n", k.Release, k.Arch, k.Reference, tag)
	}
	_, err := fmt.Fprintf(w, "index: %s\n", res.Reference)
	return err
}

func newBundlePushCmd() *cobra.Command {
	var src registryFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "push [flags] SOURCE TARGET",
		Short: "Copy a bundle (every kernel) from a layout or registry to another, digests unchanged",
		Long: "Reads every kernel's bundle at SOURCE, checks it (sizes, digests, config; signatures " +
			"too with --trusted-cert), then writes the manifests, their kernel tags and the index to " +
			"TARGET byte for byte. oci:DIR[:TAG] on either side moves bundles across an air gap. The " +
			"registry flags apply to both sides. " + pushedJSONDoc,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, locs, err := src.setup(cmd, args[0])
			if err != nil {
				return err
			}
			from := locs[0]
			to, err := src.location(args[1])
			if err != nil {
				return err
			}
			start := time.Now()
			res, err := bundle.Copy(cmd.Context(), from, to, append(opts, progressOption(cmd))...)
			if err != nil {
				return err
			}
			if err := printPushed(cmd.OutOrStdout(), res, asJSON); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: pushed %d kernels in %v\n", len(res.Kernels), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	src.add(cmd, true)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was written as one JSON object")
	return cmd
}

func newBundlePullCmd() *cobra.Command {
	var rf registryFlags
	var kernel, arch string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "pull --kernel RELEASE --trusted-cert CERT [flags] SOURCE DIR",
		Short: "Verify a kernel's bundle and write its files into a folder, all at once",
		Long: "Fetches the bundle of --kernel for --arch (selected in an index by its annotations), " +
			"verifies everything before writing anything (digests, sizes, the config against the " +
			"layers, each file's sha256, each module's signature against --trusted-cert), then " +
			"writes the module files and certificates into DIR in one rename. On any failure DIR " +
			"is left as it was. --json prints one object: {\"release\", \"arch\", \"reference\" (the " +
			"manifest by digest), \"digest\", \"dir\", \"modules\": [the config's module objects, as " +
			"`bundle inspect --json` shows them], \"certificates\": [likewise]}.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(rf.trusted) == 0 {
				return usagef("give --trusted-cert: a bundle's own certificate never makes it trusted")
			}
			if kernel == "" {
				return usagef("give --kernel RELEASE")
			}
			opts, locs, err := rf.setup(cmd, args[0])
			if err != nil {
				return err
			}
			loc := locs[0]
			start := time.Now()
			f, err := bundle.Pull(cmd.Context(), loc, kernel, arch, args[1], append(opts, progressOption(cmd))...)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), map[string]any{"release": kernel, "arch": arch, "reference": f.Reference,
					"digest": f.Digest.String(), "dir": args[1], "modules": f.Config.Modules, "certificates": f.Config.Certificates})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: %s: %d modules verified, written to %s (%v)\n", kernel, arch, f.Reference,
				len(f.Config.Modules), args[1], time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	rf.add(cmd, true)
	cmd.Flags().StringVar(&kernel, "kernel", "", "kernel release (required)")
	cmd.Flags().StringVar(&arch, "arch", runtime.GOARCH, "architecture (GOARCH name)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was written as one JSON object")
	return cmd
}

func newBundleInspectCmd() *cobra.Command {
	var rf registryFlags
	var kernel, arch string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect [--kernel RELEASE] [--arch ARCH] [--json] SOURCE",
		Short: "Show a kernel's bundle: manifest, annotations and config (nothing verified but digests)",
		Long: "Shows the bundle of --kernel (default: the only one) for --arch: its reference, the kernel, " +
			"the modules and certificates its config lists. Only digests are checked; `bundle verify` checks " +
			"signatures. --json prints one object: {\"release\", \"arch\", \"digest\", \"reference\" (the " +
			"manifest by digest), \"annotations\" (the manifest's), \"config\" (the bundle's config, see " +
			"docs/bundles.mdx)}.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, locs, err := rf.setup(cmd, args[0])
			if err != nil {
				return err
			}
			loc := locs[0]
			archSel := arch
			if !cmd.Flags().Changed("arch") && kernel == "" {
				archSel = ""
			}
			in, err := bundle.Inspect(cmd.Context(), loc, kernel, archSel, opts...)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, map[string]any{"release": in.Release, "arch": in.Arch, "digest": in.Digest.String(),
					"reference": loc.WithDigest(in.Digest).String(), "annotations": in.Manifest.Annotations, "config": in.Config})
			}
			fmt.Fprintf(w, "reference:  %s\nkernel:     %s (%s)\n", loc.WithDigest(in.Digest), in.Release, in.Arch)
			if in.Config.Name != "" || in.Config.Version != "" {
				fmt.Fprintf(w, "bundle:     %s %s\n", in.Config.Name, in.Config.Version)
			}
			fmt.Fprintf(w, "created:    %s\n", in.Manifest.Annotations[bundle.AnnotationCreated])
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "MODULE\tVERSION\tFILE\tSIGNER\tEARLY\tLOAD\tSHA256")
			for _, m := range in.Config.Modules {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%.16s\n", m.Name, m.Version, m.File, m.Signer, m.Early, m.Load, m.SHA256)
			}
			tw.Flush()
			for _, c := range in.Config.Certificates {
				fmt.Fprintf(w, "certificate %s: %s (sha256 %s)\n", c.File, c.Subject, c.SHA256)
			}
			if len(in.Config.Load.Order) > 0 {
				fmt.Fprintf(w, "load order: %s\n", strings.Join(in.Config.Load.Order, " "))
			}
			return nil
		},
	}
	rf.add(cmd, false)
	cmd.Flags().StringVar(&kernel, "kernel", "", "kernel release (default: the only one)")
	cmd.Flags().StringVar(&arch, "arch", runtime.GOARCH, "architecture (GOARCH name)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newBundleLsCmd() *cobra.Command {
	var rf registryFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [--json] SOURCE",
		Short: "List the kernels and architectures of a bundle",
		Long: "Lists the kernels and architectures of the index at SOURCE, with each kernel's own tag and " +
			"manifest digest. --json prints one array: [{\"release\", \"arch\", \"digest\", \"size\"}] " +
			"(digest and size of the kernel's manifest).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, locs, err := rf.setup(cmd, args[0])
			if err != nil {
				return err
			}
			loc := locs[0]
			es, err := bundle.List(cmd.Context(), loc, opts...)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if es == nil {
					es = []bundle.Entry{}
				}
				return writeJSON(w, es)
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "KERNEL\tARCH\tTAG\tDIGEST")
			for _, e := range es {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Release, e.Arch, bundle.KernelTag(e.Release, e.Arch), e.Digest)
			}
			return tw.Flush()
		},
	}
	rf.add(cmd, false)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// verifyReport is one kernel's line of bundle verify.
type verifyReport struct {
	Release   string `json:"release"`
	Arch      string `json:"arch"`
	Reference string `json:"reference"`
	OK        bool   `json:"ok"`
	Modules   int    `json:"modules"`
	Error     string `json:"error,omitempty"`
}

func newBundleVerifyCmd() *cobra.Command {
	var rf registryFlags
	var kernel, arch string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify --trusted-cert CERT [--kernel RELEASE] [--arch ARCH] [--json] SOURCE",
		Short: "Verify every kernel's bundle (or one) as pull does, writing nothing",
		Long: "Verifies each kernel's bundle at SOURCE (only --kernel, and only --arch when given) the way " +
			"pull does, module signatures against --trusted-cert included, and writes nothing. --json " +
			"prints one array, one object per kernel: [{\"release\", \"arch\", \"reference\", \"ok\", " +
			"\"modules\" (count), \"error\" (when ok is false)}].",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(rf.trusted) == 0 {
				return usagef("give --trusted-cert: a bundle's own certificate never makes it trusted")
			}
			opts, locs, err := rf.setup(cmd, args[0])
			if err != nil {
				return err
			}
			loc := locs[0]
			archSel := ""
			if cmd.Flags().Changed("arch") {
				archSel = arch
			}
			vs, err := bundle.Verify(cmd.Context(), loc, kernel, archSel, opts...)
			if err != nil {
				return err
			}
			var reports []verifyReport
			failed := 0
			for _, v := range vs {
				r := verifyReport{Release: v.Release, Arch: v.Arch, Reference: v.Reference, OK: v.Err == nil, Modules: v.Modules}
				if v.Err != nil {
					r.Error = v.Err.Error()
					failed++
				}
				reports = append(reports, r)
			}
			w := cmd.OutOrStdout()
			if asJSON {
				if err := writeJSON(w, reports); err != nil {
					return err
				}
			} else {
				for _, r := range reports {
					if r.OK {
						fmt.Fprintf(w, "%s/%s: OK (%d modules, %s)\n", r.Release, r.Arch, r.Modules, r.Reference)
					} else {
						fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: %s/%s: %s\n", r.Release, r.Arch, r.Error)
					}
				}
			}
			if failed > 0 {
				return errQuiet{fmt.Sprintf("%d of %d bundles failed verification", failed, len(reports))}
			}
			return nil
		},
	}
	rf.add(cmd, true)
	cmd.Flags().StringVar(&kernel, "kernel", "", "verify only this kernel release")
	cmd.Flags().StringVar(&arch, "arch", runtime.GOARCH, "with --arch given: verify only this architecture")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// progressOption reports transferred bytes on stderr when it is a
// terminal (a line rewritten in place, at most ten times a second), and
// nothing otherwise.
func progressOption(cmd *cobra.Command) bundle.Option {
	f, ok := cmd.ErrOrStderr().(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return bundle.WithProgress(func(bundle.Progress) {})
	}
	var last time.Time
	return bundle.WithProgress(func(p bundle.Progress) {
		if time.Since(last) < 100*time.Millisecond && p.Done < p.Total {
			return
		}
		last = time.Now()
		fmt.Fprintf(f, "\rkmodctl: %.1f of %.1f MB", float64(p.Done)/1e6, float64(p.Total)/1e6)
		if p.Done >= p.Total {
			fmt.Fprintln(f)
		}
	})
}
