package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// arrayKeys are always JSON arrays, even with one value, so consumers need
// not guess.
var arrayKeys = map[string]bool{
	"alias": true, "parm": true, "parmtype": true, "firmware": true,
	"softdep": true, "import_ns": true, "author": true, "weakdep": true,
}

func newInspectCmd() *cobra.Command {
	var asJSON bool
	var jobs int
	cmd := &cobra.Command{
		Use:   "inspect [--json] FILE...",
		Short: "Print a module's metadata the way modinfo does",
		Long: "Prints every .modinfo field, parameters and the signature fields " +
			"(sig_id, signer, sig_key, sig_hashalgo, signature) of each module, " +
			"compressed or not. --json prints one array with one object per file, " +
			"keys named as modinfo names its fields plus \"filename\".",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := bufio.NewWriterSize(cmd.OutOrStdout(), 1<<16)
			defer out.Flush()
			failed := 0
			if asJSON {
				out.WriteString("[")
			}
			first := true
			forEachOrdered(len(args), jobs, func(i int) any {
				m, err := kmod.ParseFile(args[i])
				if err != nil {
					return err
				}
				if asJSON {
					b, err := json.Marshal(inspectObject(args[i], m))
					if err != nil {
						return err
					}
					return b
				}
				return inspectText(args[i], m)
			}, func(i int, v any) {
				switch v := v.(type) {
				case error:
					failed++
					fmt.Fprintf(os.Stderr, "kmodctl: %s: %v\n", args[i], v)
				case []byte:
					if !first {
						out.WriteString(",")
					}
					first = false
					out.WriteString("\n")
					out.Write(v)
				case string:
					out.WriteString(v)
				}
			})
			if asJSON {
				out.WriteString("\n]\n")
			}
			if failed > 0 {
				return errQuiet{fmt.Sprintf("%d of %d files failed", failed, len(args))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array, one object per file")
	cmd.Flags().IntVarP(&jobs, "jobs", "j", 0, "parallel workers (default: number of CPUs)")
	return cmd
}

func inspectObject(path string, m *kmod.Module) map[string]any {
	obj := map[string]any{"filename": path}
	for k := range arrayKeys {
		obj[k] = []string{}
	}
	for _, f := range m.ModinfoFields() {
		if arrayKeys[f.Key] {
			obj[f.Key] = append(obj[f.Key].([]string), f.Value)
			continue
		}
		if _, seen := obj[f.Key]; !seen {
			obj[f.Key] = f.Value
		}
	}
	// modinfo merges parmtype into parm; keep the raw types too.
	obj["parmtype"] = nonNil(m.All("parmtype"))
	return obj
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func inspectText(path string, m *kmod.Module) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s%s\n", "filename:", path)
	for _, f := range m.ModinfoFields() {
		fmt.Fprintf(&b, "%-16s%s\n", f.Key+":", f.Value)
	}
	return b.String()
}
