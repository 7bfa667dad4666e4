//go:build cgo

// Command kmod-catalog runs a node of the catalog: the HTTP API of
// catalog/server on a go-dqlite node (replicated SQLite over raft). It is
// the project's only cgo binary: build it with CGO_ENABLED=1 -tags
// libsqlite3 against libdqlite-dev, libraft-dev and libsqlite3-dev
// (scripts/deps.sh installs them).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kmodctl/packer-plugin-kmod/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "kmod-catalog",
		Short:         "A replicated record of kernel module builds, approvals and instance attestations",
		Version:       version.PluginVersion.FormattedVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kmod-catalog:", err)
		var usage errUsage
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// errUsage is a wrong command line.
type errUsage struct{ error }
