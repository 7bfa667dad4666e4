// Command kmodctl inspects, signs, verifies and checks Linux kernel modules
// and the images that carry them.
//
// Exit status, for every command: 0 success, 1 failure, 2 usage error (an
// unknown command or flag, a flag value or an argument count the command
// does not accept); kmodctl dkms plan adds 3, a plan known only in part.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
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
	os.Exit(run(ctx, newRootCmd()))
}

// run executes root and returns the exit status: 2 for an errUsage, an
// errStatus's own, 1 for any other error.
func run(ctx context.Context, root *cobra.Command) int {
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var quiet errQuiet
	if !errors.As(err, &quiet) {
		fmt.Fprintln(root.ErrOrStderr(), "kmodctl:", err)
	}
	var usage errUsage
	if errors.As(err, &usage) {
		fmt.Fprintf(root.ErrOrStderr(), "Run '%s --help' for usage.\n", cmd.CommandPath())
		return 2
	}
	var status errStatus
	if errors.As(err, &status) {
		return status.code
	}
	return 1
}

// errStatus is an outcome with its own exit status, neither success nor
// failure (kmodctl dkms plan's 3: a plan known only in part).
type errStatus struct {
	code int
	msg  string
}

func (e errStatus) Error() string { return e.msg }

// errQuiet is a failure whose details were already printed per file.
type errQuiet struct{ msg string }

func (e errQuiet) Error() string { return e.msg }

// errUsage is a command line that cannot run: exit status 2. Flag parse
// errors, argument counts, required flags and unknown subcommands become
// one in usageErrors; a RunE returns one (usagef) for a flag value it
// rejects. Anything else that fails is exit status 1.
type errUsage struct{ err error }

func (e errUsage) Error() string { return e.err.Error() }
func (e errUsage) Unwrap() error { return e.err }

// usagef is a usage error, for flag values and combinations a command
// rejects.
func usagef(format string, a ...any) error { return errUsage{fmt.Errorf(format, a...)} }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "kmodctl",
		Short: "Build-time toolkit for out-of-tree kernel modules",
		Long: "Build-time toolkit for out-of-tree kernel modules.\n\n" +
			"Exit status: 0 success, 1 failure, 2 usage error (unknown command or flag, a flag value or " +
			"an argument count the command does not accept); kmodctl dkms plan exits 3 for a plan known " +
			"only in part. Commands that report take --json: one " +
			"JSON document on standard output, its shape given in each command's help; errors still go " +
			"to standard error.",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newModuleCmd(), newDepmodCmd())
	root.AddCommand(newInitramfsCmd())
	root.AddCommand(newFirstbootCmd())
	root.AddCommand(newBundleCmd())
	root.AddCommand(newCatalogCmd())
	root.AddCommand(newDKMSCmd())
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	usageErrors(root)
	return root
}

// usageErrors makes every way a command line can be wrong in cobra an
// errUsage, for root and every command under it: flag parse errors (the
// flag error function is inherited), argument counts, required flags and
// flag groups (checked with the arguments, before cobra checks them
// itself), and unknown subcommands of a command group (cobra itself only
// checks the root's, and shows a group's help for an unknown one).
func usageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return errUsage{err}
	})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.HasSubCommands() && !c.Runnable() {
			// A group: alone it shows its help (exit 0, as before); with
			// an argument that names no subcommand it is a usage error.
			c.Args = cobra.ArbitraryArgs
			c.DisableFlagsInUseLine = true
			c.SuggestionsMinimumDistance = 2 // cobra's default for the root
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) == 0 {
					return c.Help()
				}
				msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
				if s := c.SuggestionsFor(args[0]); len(s) > 0 {
					msg += "; did you mean " + strings.Join(s, " or ") + "?"
				}
				return errUsage{errors.New(msg)}
			}
		}
		check := c.Args
		if check == nil {
			check = cobra.ArbitraryArgs
		}
		c.Args = func(c *cobra.Command, args []string) error {
			err := check(c, args)
			if err == nil {
				err = c.ValidateRequiredFlags()
			}
			if err == nil {
				err = c.ValidateFlagGroups()
			}
			var u errUsage
			if err != nil && !errors.As(err, &u) {
				return errUsage{err}
			}
			return err
		}
	}
	walk(root)
}

func newModuleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "module",
		Short: "Inspect, sign, verify and check kernel module files",
	}
	cmd.AddCommand(newInspectCmd(), newSignCmd(), newVerifyCmd(), newCheckCmd())
	return cmd
}
