package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/initramfs"
)

// initramfsSubcommands are added to `kmodctl initramfs` next to ls, info and
// extract; other files append to it in init() (inject).
var initramfsSubcommands []func() *cobra.Command

func newInitramfsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "initramfs",
		Short: "List, inspect, extract and inject into initramfs images",
		Long: "Reads initramfs images the way the kernel unpacks them: every " +
			"segment (early uncompressed cpio archives, then gzip, zstd, xz, lzma, " +
			"lz4 or bzip2 compressed ones, NUL padding between), later entries " +
			"overriding earlier ones.",
	}
	cmd.AddCommand(newInitramfsLsCmd(), newInitramfsInfoCmd(), newInitramfsExtractCmd())
	for _, f := range initramfsSubcommands {
		cmd.AddCommand(f())
	}
	return cmd
}

func newInitramfsLsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls [--json] IMAGE",
		Short: "List the paths of an image, one per line, like lsinitramfs",
		Long: "Prints each path once, as stored in the archive, in the order it " +
			"first appears, over all segments (lsinitramfs, lsinitrd and lsinitcpio " +
			"miss segments appended after the first compressed one). --json prints " +
			"one JSON array of the paths, in the same order.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			im, err := initramfs.Open(args[0])
			if err != nil {
				return err
			}
			defer im.Close()
			paths := im.List()
			if asJSON {
				if paths == nil {
					paths = []string{}
				}
				return writeJSON(cmd.OutOrStdout(), paths)
			}
			out := bufio.NewWriterSize(cmd.OutOrStdout(), 1<<16)
			for _, p := range paths {
				out.WriteString(p)
				out.WriteByte('\n')
			}
			return out.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON array of paths")
	return cmd
}

func newInitramfsInfoCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info [--json] IMAGE",
		Short: "Show an image's segments, compression, entry counts, flavor and kernels",
		Long: "Shows an image's size, flavor (initramfs-tools, dracut, mkinitcpio), kernel releases, " +
			"whether it is /usr-merged, its entries and its segments. --json prints one object: " +
			"{\"image\", \"size\", \"flavor\", \"kernels\", \"usr_merged\", \"entries\", \"paths\", " +
			"\"segments\": [{\"offset\", \"length\", \"compression\" (none when uncompressed), \"entries\", \"trailers\", \"size\" (uncompressed), \"padding\"}]}.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			im, err := initramfs.Open(args[0])
			if err != nil {
				return err
			}
			defer im.Close()
			info := im.Info()
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			return writeInfo(cmd.OutOrStdout(), info)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

func writeInfo(w io.Writer, info initramfs.Info) error {
	yes := map[bool]string{true: "yes", false: "no"}
	kernels := strings.Join(info.Kernels, " ")
	if kernels == "" {
		kernels = "(none found)"
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "image:\t%s\n", info.Image)
	fmt.Fprintf(tw, "size:\t%d bytes\n", info.Size)
	fmt.Fprintf(tw, "flavor:\t%s\n", info.Flavor)
	fmt.Fprintf(tw, "kernels:\t%s\n", kernels)
	fmt.Fprintf(tw, "usr-merged:\t%s\n", yes[info.UsrMerged])
	fmt.Fprintf(tw, "entries:\t%d (%d distinct paths)\n", info.Entries, info.Paths)
	fmt.Fprintf(tw, "segments:\t%d\n", len(info.Segments))
	if err := tw.Flush(); err != nil {
		return err
	}
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "#\toffset\tlength\tcompression\tentries\tuncompressed\tpadding\t\n")
	for i, s := range info.Segments {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%d\t%d\t\n", i, s.Offset, s.Length, s.CompressionName(), s.Entries, s.Size, s.Padding)
	}
	return tw.Flush()
}

// extractJSON is the object of `initramfs extract --json`.
type extractJSON struct {
	Image     string   `json:"image"`
	Dir       string   `json:"dir"`
	Files     int      `json:"files"`
	Dirs      int      `json:"dirs"`
	Symlinks  int      `json:"symlinks"`
	HardLinks int      `json:"hard_links"`
	Nodes     int      `json:"nodes"`
	Bytes     int64    `json:"bytes"`
	Skipped   []string `json:"skipped"`
}

func newInitramfsExtractCmd() *cobra.Command {
	var opts initramfs.ExtractOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "extract [--devices] [--owners] [--json] IMAGE DIR",
		Short: "Unpack all segments of an image into a folder, safely",
		Long: "Unpacks like the kernel (later entries override earlier ones, hard " +
			"links per archive) but refuses absolute names, \"..\" and writes " +
			"through symlinks. Device nodes are created only as root with " +
			"--devices, owners only as root with --owners. --json prints one object: " +
			"{\"image\", \"dir\", \"files\", \"dirs\", \"symlinks\", \"hard_links\", \"nodes\", " +
			"\"bytes\", \"skipped\": [paths of device nodes and sockets not created]}.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			im, err := initramfs.Open(args[0])
			if err != nil {
				return err
			}
			defer im.Close()
			st, err := initramfs.Extract(im, args[1], opts)
			if err != nil {
				return err
			}
			if asJSON {
				skipped := st.Skipped
				if skipped == nil {
					skipped = []string{}
				}
				return writeJSON(cmd.OutOrStdout(), extractJSON{Image: args[0], Dir: args[1], Files: st.Files, Dirs: st.Dirs,
					Symlinks: st.Symlinks, HardLinks: st.HardLinks, Nodes: st.Nodes, Bytes: st.Bytes, Skipped: skipped})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d files, %d folders, %d symlinks, %d hard links, %d nodes, %d bytes into %s\n",
				args[0], st.Files, st.Dirs, st.Symlinks, st.HardLinks, st.Nodes, st.Bytes, args[1])
			if len(st.Skipped) > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "kmodctl: %s: skipped %d device nodes or sockets (need root and --devices): %s\n",
					args[0], len(st.Skipped), strings.Join(head(st.Skipped, 5), ", "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&opts.Devices, "devices", false, "create device nodes (root only)")
	cmd.Flags().BoolVar(&opts.Owners, "owners", false, "set owners from the archive (root only)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	return cmd
}

func head(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "...")
	}
	return s
}
