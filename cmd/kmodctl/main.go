// Command kmodctl inspects, signs, verifies and checks Linux kernel modules
// and the images that carry them.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if os.Getenv("GOGC") == "" {
		// kmodctl's heap stays small (tens of MB over a whole kernel tree), so
		// the default collector runs constantly; fewer cycles save ~25% of
		// the CPU time of a tree-wide inspect.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		var quiet errQuiet
		if !errors.As(err, &quiet) {
			fmt.Fprintln(os.Stderr, "kmodctl:", err)
		}
		var usage errUsage
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// errQuiet is a failure whose details were already printed per file.
type errQuiet struct{ msg string }

func (e errQuiet) Error() string { return e.msg }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "kmodctl",
		Short:         "Build-time toolkit for out-of-tree kernel modules",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newModuleCmd(), newDepmodCmd())
	root.AddCommand(newInitramfsCmd())
	root.AddCommand(newFirstbootCmd())
	root.AddCommand(newBundleCmd())
	root.AddCommand(newCatalogCmd())
	return root
}

func newModuleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "module",
		Short: "Inspect, sign, verify and check kernel module files",
	}
	cmd.AddCommand(newInspectCmd(), newSignCmd(), newVerifyCmd(), newCheckCmd())
	return cmd
}
