package main

import (
	"bufio"
	"fmt"
	"strings"
	"unicode/utf8"

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
				// Only what modinfo shows: the symbol tables are not read.
				m, err := kmod.ParseFile(args[i], kmod.InfoOnly())
				if err != nil {
					return err
				}
				if asJSON {
					return appendInspectJSON(make([]byte, 0, 4096), args[i], m)
				}
				return inspectText(args[i], m)
			}, func(i int, v any) {
				switch v := v.(type) {
				case error:
					failed++
					// ParseFile's error names the file.
					fmt.Fprintln(cmd.ErrOrStderr(), "kmodctl:", v)
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

// appendInspectJSON appends one file's object: "filename" first, then the
// fields in modinfo's order. Hand-written rather than a map through
// encoding/json: over a whole kernel tree the reflection and key sorting
// cost more than parsing the modules.
func appendInspectJSON(b []byte, path string, m *kmod.Module) []byte {
	fields := m.ModinfoFields()
	// modinfo merges parmtype into parm; the raw types are kept as well.
	for _, v := range m.All("parmtype") {
		fields = append(fields, kmod.Field{Key: "parmtype", Value: v})
	}
	b = append(b, `{"filename":`...)
	b = appendJSONString(b, path)
	done := make(map[string]bool, len(fields))
	for i, f := range fields {
		if done[f.Key] {
			continue
		}
		done[f.Key] = true
		b = append(b, ',')
		b = appendJSONString(b, f.Key)
		b = append(b, ':')
		if !arrayKeys[f.Key] {
			// A repeated scalar key keeps its first value, as the kernel reads it.
			b = appendJSONString(b, f.Value)
			continue
		}
		b = append(b, '[')
		n := 0
		for _, g := range fields[i:] {
			if g.Key == f.Key {
				if n > 0 {
					b = append(b, ',')
				}
				b = appendJSONString(b, g.Value)
				n++
			}
		}
		b = append(b, ']')
	}
	for _, k := range arrayKeyOrder {
		if !done[k] {
			b = append(b, ',')
			b = appendJSONString(b, k)
			b = append(b, ":[]"...)
		}
	}
	return append(b, '}')
}

var arrayKeyOrder = []string{"alias", "author", "firmware", "import_ns", "parm", "parmtype", "softdep", "weakdep"}

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD
// as with encoding/json.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\t':
				b = append(b, '\\', 't')
			case '\r':
				b = append(b, '\\', 'r')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func inspectText(path string, m *kmod.Module) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s%s\n", "filename:", path)
	for _, f := range m.ModinfoFields() {
		fmt.Fprintf(&b, "%-16s%s\n", f.Key+":", f.Value)
	}
	return b.String()
}
