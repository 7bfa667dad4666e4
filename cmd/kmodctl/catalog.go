package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
	"github.com/kmodctl/packer-plugin-kmod/firstboot"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/kmod/manifest"
)

// catalogFlags are the flags of every catalog command.
type catalogFlags struct {
	url, tokenFile, caFile string
	json                   bool
	timeout                time.Duration
}

func (f *catalogFlags) add(cmd *cobra.Command) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&f.url, "url", os.Getenv("KMODCTL_CATALOG_URL"), "the catalog, https://host:port (default $KMODCTL_CATALOG_URL)")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding the token (default: $KMODCTL_CATALOG_TOKEN)")
	fl.StringVar(&f.caFile, "ca-file", os.Getenv("KMODCTL_CATALOG_CA"), "PEM CA certificates for the catalog's TLS, besides the system's (default $KMODCTL_CATALOG_CA)")
	fl.BoolVar(&f.json, "json", false, "print JSON")
	fl.DurationVar(&f.timeout, "timeout", 2*time.Minute, "give up after this long")
}

func (f *catalogFlags) client(cmd *cobra.Command) (*catalog.Client, context.Context, context.CancelFunc, error) {
	if f.url == "" {
		return nil, nil, nil, usagef("--url (or $KMODCTL_CATALOG_URL) is required")
	}
	var opts []catalog.Option
	switch {
	case f.tokenFile != "":
		opts = append(opts, catalog.WithTokenFile(f.tokenFile))
	case os.Getenv("KMODCTL_CATALOG_TOKEN") != "":
		opts = append(opts, catalog.WithToken(os.Getenv("KMODCTL_CATALOG_TOKEN")))
	default:
		return nil, nil, nil, usagef("a token is required: --token-file or $KMODCTL_CATALOG_TOKEN")
	}
	if f.caFile != "" {
		opts = append(opts, catalog.WithCAFile(f.caFile))
	}
	cli, err := catalog.New(f.url, opts...)
	if err != nil {
		return nil, nil, nil, usagef("%v", err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	return cli, ctx, cancel, nil
}

// do runs fn with a client of the flags' catalog, under --timeout.
func (f *catalogFlags) do(cmd *cobra.Command, fn func(ctx context.Context, cli *catalog.Client) error) error {
	cli, ctx, cancel, err := f.client(cmd)
	if err != nil {
		return err
	}
	defer cancel()
	return fn(ctx, cli)
}

// listCmd is a command that fetches rows and prints them as JSON or as
// a table under header (tab-separated), one row per element.
func listCmd[T any](f *catalogFlags, cmd *cobra.Command, fetch func(ctx context.Context, cli *catalog.Client, args []string) ([]T, error),
	header string, row func(T) []any) *cobra.Command {
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return f.do(cmd, func(ctx context.Context, cli *catalog.Client) error {
			rows, err := fetch(ctx, cli, args)
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), rows, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, header)
				for _, r := range rows {
					cells := row(r)
					for i, c := range cells {
						sep := "\t"
						if i == len(cells)-1 {
							sep = "\n"
						}
						fmt.Fprint(tw, c, sep)
					}
				}
			})
		})
	}
	return cmd
}

// print writes v as JSON (--json) or through table.
func (f *catalogFlags) print(w io.Writer, v any, table func(tw *tabwriter.Writer)) error {
	if f.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func newCatalogCmd() *cobra.Command {
	var f catalogFlags
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "Query and update a kmod-catalog: builds, approvals, instances, drift",
		Long: "Talks to a kmod-catalog (cmd/kmod-catalog) over its HTTPS API with a bearer token: " +
			"--token-file or $KMODCTL_CATALOG_TOKEN; the URL from --url or $KMODCTL_CATALOG_URL.\n\n" +
			"--json prints the catalog API's objects (docs/catalog.mdx): the list commands one array of " +
			"them (builds, approvals, instances, drift, uncovered, who-runs, token ls); record the build, " +
			"approve an array of approvals, attest the attestation, token create the token (its secret " +
			"only without -o); export and import one object of counts, {\"builds\", \"approvals\", " +
			"\"attestations\", \"tokens\"} (export adds \"file\"). token revoke prints nothing.",
	}
	f.add(cmd)
	cmd.AddCommand(newCatalogBuildsCmd(&f), newCatalogRecordCmd(&f), newCatalogApproveCmd(&f), newCatalogApprovalsCmd(&f),
		newCatalogInstancesCmd(&f), newCatalogDriftCmd(&f), newCatalogUncoveredCmd(&f), newCatalogWhoRunsCmd(&f),
		newCatalogAttestCmd(&f), newCatalogTokenCmd(&f), newCatalogExportCmd(&f), newCatalogImportCmd(&f))
	return cmd
}

func newCatalogBuildsCmd(f *catalogFlags) *cobra.Command {
	var image string
	cmd := listCmd(f, &cobra.Command{Use: "builds [--image NAME]", Args: cobra.NoArgs,
		Short: "List recorded builds, newest first (build history of an image with --image)"},
		func(ctx context.Context, cli *catalog.Client, _ []string) ([]catalog.Build, error) {
			return cli.Builds(ctx, image)
		},
		"RECORDED\tBY\tIMAGE\tBUILD\tKERNELS\tMODULES\tBUNDLES\tID",
		func(b catalog.Build) []any {
			return []any{b.RecordedAt.Format(time.RFC3339), b.RecordedBy, b.ImageName, b.BuildName, strings.Join(b.Kernels, ","),
				len(b.Modules), len(b.Bundles), b.ID}
		})
	cmd.Flags().StringVar(&image, "image", "", "only builds of this image name")
	return cmd
}

func newCatalogRecordCmd(f *catalogFlags) *cobra.Command {
	var buildName, imageName, imageID, id string
	cmd := &cobra.Command{
		Use:   "record MANIFEST",
		Short: "Record a build from its image manifest (what the kmod provisioner's catalog block does)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if _, err := manifest.Unmarshal(data); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return f.do(cmd, func(ctx context.Context, cli *catalog.Client) error {
				b, err := cli.RecordBuild(ctx, &catalog.Build{ID: id, BuildName: buildName, ImageName: imageName, ImageID: imageID, Manifest: data})
				if err != nil {
					return err
				}
				if f.json {
					return f.print(cmd.OutOrStdout(), b, nil)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "build %s recorded: %d kernels, %d modules, %d bundles\n", b.ID, len(b.Kernels), len(b.Modules), len(b.Bundles))
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&buildName, "build-name", "", "the Packer build name")
	fl.StringVar(&imageName, "image-name", "", "the image's name")
	fl.StringVar(&imageID, "image-id", "", "the image's id")
	fl.StringVar(&id, "id", "", "the record's id (default: a new one; give the same id to retry safely)")
	return cmd
}

func newCatalogApproveCmd(f *catalogFlags) *cobra.Command {
	var kernel, module, sum, build, note string
	cmd := &cobra.Command{
		Use:   "approve (--kernel K --module M --sha256 S | --build ID [--kernel K] [--module M])",
		Short: "Approve module digests for a kernel (one, or every module of a recorded build)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var todo []catalog.Approval
			switch {
			case build != "" && sum != "":
				return usagef("--build and --sha256 are mutually exclusive")
			case build == "" && (kernel == "" || module == "" || sum == ""):
				return usagef("give --kernel, --module and --sha256, or --build")
			case build == "":
				todo = append(todo, catalog.Approval{Kernel: kernel, Module: module, SHA256: sum, Note: note})
			}
			return f.do(cmd, func(ctx context.Context, cli *catalog.Client) error {
				if build != "" {
					bs, err := cli.Builds(ctx, "")
					if err != nil {
						return err
					}
					found := false
					for _, b := range bs {
						if b.ID != build {
							continue
						}
						found = true
						for _, m := range b.Modules {
							if (kernel == "" || m.Kernel == kernel) && (module == "" || m.Name == module) {
								todo = append(todo, catalog.Approval{Kernel: m.Kernel, Module: m.Name, SHA256: m.SHA256, Note: note})
							}
						}
					}
					if !found {
						return fmt.Errorf("no recorded build %q (among the newest 100)", build)
					}
					if len(todo) == 0 {
						return fmt.Errorf("build %s has no module matching --kernel %q --module %q", build, kernel, module)
					}
				}
				var done []*catalog.Approval
				for _, a := range todo {
					// A stable id per (kernel, module, digest): approving again
					// is a no-op.
					a.ID = "ap-" + short(a.SHA256) + "-" + strings.NewReplacer("+", "_", "~", "_").Replace(a.Kernel) + "-" + a.Module
					if len(a.ID) > 128 {
						a.ID = a.ID[:128]
					}
					got, err := cli.Approve(ctx, &a)
					var se *catalog.StatusError
					if errors.As(err, &se) && se.Code == http.StatusConflict {
						// Approved before (with another note): keep that one.
						got, err = existingApproval(ctx, cli, a)
					}
					if err != nil {
						return err
					}
					done = append(done, got)
				}
				if f.json {
					return f.print(cmd.OutOrStdout(), done, nil)
				}
				for _, a := range done {
					fmt.Fprintf(cmd.OutOrStdout(), "approved %s %s for %s (by %s)\n", a.Module, a.SHA256, a.Kernel, a.ApprovedBy)
				}
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&kernel, "kernel", "", "the kernel release")
	fl.StringVar(&module, "module", "", "the module name")
	fl.StringVar(&sum, "sha256", "", "the module file's sha256")
	fl.StringVar(&build, "build", "", "approve the modules of this recorded build")
	fl.StringVar(&note, "note", "", "a note (a change ticket, say)")
	return cmd
}

// readJSONFile decodes the JSON file at path into v and returns its bytes.
func readJSONFile(path string, v any) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
}

// existingApproval is the approval of a's kernel, module and digest.
func existingApproval(ctx context.Context, cli *catalog.Client, a catalog.Approval) (*catalog.Approval, error) {
	as, err := cli.Approvals(ctx, a.Kernel)
	if err != nil {
		return nil, err
	}
	for _, x := range as {
		if x.ID == a.ID {
			return &x, nil
		}
	}
	return nil, fmt.Errorf("approval %s: refused as a conflict, and not found", a.ID)
}

func newCatalogApprovalsCmd(f *catalogFlags) *cobra.Command {
	var kernel string
	cmd := listCmd(f, &cobra.Command{Use: "approvals [--kernel K]", Short: "List approvals", Args: cobra.NoArgs},
		func(ctx context.Context, cli *catalog.Client, _ []string) ([]catalog.Approval, error) {
			return cli.Approvals(ctx, kernel)
		},
		"KERNEL\tMODULE\tSHA256\tBY\tAT\tNOTE",
		func(a catalog.Approval) []any {
			return []any{a.Kernel, a.Module, a.SHA256, a.ApprovedBy, a.ApprovedAt.Format(time.RFC3339), a.Note}
		})
	cmd.Flags().StringVar(&kernel, "kernel", "", "only this kernel release")
	return cmd
}

func newCatalogInstancesCmd(f *catalogFlags) *cobra.Command {
	return listCmd(f, &cobra.Command{Use: "instances", Short: "List instances with their latest attestation", Args: cobra.NoArgs},
		func(ctx context.Context, cli *catalog.Client, _ []string) ([]catalog.Instance, error) {
			return cli.Instances(ctx)
		},
		"INSTANCE\tKERNEL\tSTATUS\tCOVERED\tPULLED\tREPORTED",
		func(i catalog.Instance) []any {
			return []any{i.InstanceID, i.Kernel, i.Status, i.Covered, i.Pulled, i.GeneratedAt.Format(time.RFC3339)}
		})
}

func newCatalogDriftCmd(f *catalogFlags) *cobra.Command {
	return listCmd(f, &cobra.Command{Use: "drift", Args: cobra.NoArgs,
		Short: "List modules of instances (latest attestation) whose digest no approval covers for their kernel"},
		func(ctx context.Context, cli *catalog.Client, _ []string) ([]catalog.Drift, error) {
			return cli.Drift(ctx)
		},
		"INSTANCE\tKERNEL\tMODULE\tSHA256\tLOADED\tREASON",
		func(d catalog.Drift) []any {
			return []any{d.InstanceID, d.Kernel, d.Module, d.SHA256, d.Loaded, d.Reason}
		})
}

func newCatalogUncoveredCmd(f *catalogFlags) *cobra.Command {
	return listCmd(f, &cobra.Command{Use: "uncovered", Args: cobra.NoArgs,
		Short: "List running kernels that no recorded bundle covers, with their instances"},
		func(ctx context.Context, cli *catalog.Client, _ []string) ([]catalog.Uncovered, error) {
			return cli.Uncovered(ctx)
		},
		"KERNEL\tARCH\tINSTANCES",
		func(u catalog.Uncovered) []any { return []any{u.Kernel, u.Arch, strings.Join(u.Instances, ",")} })
}

func newCatalogWhoRunsCmd(f *catalogFlags) *cobra.Command {
	var version, sum string
	cmd := listCmd(f, &cobra.Command{Use: "who-runs MODULE [--version V] [--sha256 S]", Args: cobra.ExactArgs(1),
		Short: "List instances whose latest attestation has MODULE loaded (optionally one version or digest)"},
		func(ctx context.Context, cli *catalog.Client, args []string) ([]catalog.Running, error) {
			return cli.WhoRuns(ctx, args[0], version, sum)
		},
		"INSTANCE\tKERNEL\tMODULE\tVERSIONS\tSHA256",
		func(r catalog.Running) []any {
			return []any{r.InstanceID, r.Kernel, r.Module, strings.Join(r.Versions, ","), r.SHA256}
		})
	cmd.Flags().StringVar(&version, "version", "", "only this module version (as recorded builds give it)")
	cmd.Flags().StringVar(&sum, "sha256", "", "only this module file digest")
	return cmd
}

func newCatalogAttestCmd(f *catalogFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "attest REPORT",
		Short: "Post a first-boot report (report.json) or verification result as an attestation",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v firstboot.VerifyResult
			raw, err := readJSONFile(args[0], &v)
			if err != nil {
				return err
			}
			var a *catalog.Attestation
			if err := f.do(cmd, func(ctx context.Context, cli *catalog.Client) error {
				a, err = cli.Attest(ctx, firstboot.Attestation(&v, raw, nil))
				return err
			}); err != nil {
				return err
			}
			if f.json {
				return f.print(cmd.OutOrStdout(), a, nil)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "attestation %s of instance %s recorded\n", a.ID, a.InstanceID)
			return nil
		},
	}
}

func newCatalogTokenCmd(f *catalogFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create, list and revoke tokens (admin)"}
	var role, instance, out string
	create := &cobra.Command{
		Use:   "create NAME --role ROLE [--instance ID] [-o FILE]",
		Short: "Create a token; its secret is printed (or written to -o, 0600) once and never again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.do(cmd, func(ctx context.Context, cli *catalog.Client) error {
				t, err := cli.CreateToken(ctx, catalog.TokenRequest{Name: args[0], Role: catalog.Role(role), InstanceID: instance})
				if err != nil {
					return err
				}
				if out != "" {
					if err := atomicfile.WriteFile(out, []byte(t.Secret+"\n"), 0o600); err != nil {
						return err
					}
					t.Secret = ""
				}
				if f.json {
					return f.print(cmd.OutOrStdout(), t, nil)
				}
				if out == "" {
					fmt.Fprintln(cmd.OutOrStdout(), t.Secret)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "token %s (%s) written to %s\n", t.Name, t.Role, out)
				}
				return nil
			})
		},
	}
	create.Flags().StringVar(&role, "role", "", "builder, approver, instance, auditor or admin")
	create.Flags().StringVar(&instance, "instance", "", "bind an instance token to this instance id (default: bound on its first attestation)")
	create.Flags().StringVarP(&out, "output", "o", "", "write the secret to this file (0600) instead of printing it")
	ls := listCmd(f, &cobra.Command{Use: "ls", Short: "List tokens (never their secrets)", Args: cobra.NoArgs},
		func(ctx context.Context, cli *catalog.Client, _ []string) ([]catalog.Token, error) {
			return cli.Tokens(ctx)
		},
		"NAME\tROLE\tINSTANCE\tCREATED\tBY\tREVOKED",
		func(t catalog.Token) []any {
			return []any{t.Name, t.Role, t.InstanceID, t.CreatedAt.Format(time.RFC3339), t.CreatedBy, t.Revoked}
		})
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.do(cmd, func(ctx context.Context, cli *catalog.Client) error {
				return cli.RevokeToken(ctx, args[0])
			})
		},
	}
	cmd.AddCommand(create, ls, revoke)
	return cmd
}

// exportCounts is the --json object of export and import.
type exportCounts struct {
	File         string `json:"file,omitempty"`
	Builds       int    `json:"builds"`
	Approvals    int    `json:"approvals"`
	Attestations int    `json:"attestations"`
	Tokens       int    `json:"tokens"`
}

func newCatalogExportCmd(f *catalogFlags) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export -o FILE",
		Short: "Back up the whole catalog (admin): one consistent JSON document",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("-o FILE is required")
			}
			return f.do(cmd, func(ctx context.Context, cli *catalog.Client) error {
				e, err := cli.Export(ctx)
				if err != nil {
					return err
				}
				data, err := json.Marshal(e)
				if err != nil {
					return err
				}
				if err := atomicfile.WriteFile(out, data, 0o600); err != nil {
					return err
				}
				if f.json {
					return f.print(cmd.OutOrStdout(), exportCounts{File: out, Builds: len(e.Builds), Approvals: len(e.Approvals),
						Attestations: len(e.Attestations), Tokens: len(e.Tokens)}, nil)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "exported %d builds, %d approvals, %d attestations, %d tokens to %s\n",
					len(e.Builds), len(e.Approvals), len(e.Attestations), len(e.Tokens), out)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "the backup file (written atomically, 0600: it holds token digests)")
	return cmd
}

func newCatalogImportCmd(f *catalogFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "import FILE",
		Short: "Restore a backup into a catalog (admin); records already there are kept, so it can be run again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var e catalog.Export
			if _, err := readJSONFile(args[0], &e); err != nil {
				return err
			}
			if err := f.do(cmd, func(ctx context.Context, cli *catalog.Client) error { return cli.Import(ctx, &e) }); err != nil {
				return err
			}
			if f.json {
				return f.print(cmd.OutOrStdout(), exportCounts{Builds: len(e.Builds), Approvals: len(e.Approvals),
					Attestations: len(e.Attestations), Tokens: len(e.Tokens)}, nil)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "imported %d builds, %d approvals, %d attestations, %d tokens\n",
				len(e.Builds), len(e.Approvals), len(e.Attestations), len(e.Tokens))
			return nil
		},
	}
}
