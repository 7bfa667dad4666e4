// Package dkms reads dkms.conf files without running them and drives the
// real dkms on a target system (an image being provisioned by Packer).
//
// # dkms.conf
//
// A dkms.conf is a bash fragment that dkms sources (read_conf and
// safe_source in /usr/sbin/dkms). Parse reads it with a parser for the
// bash subset these files use: NAME=value, NAME="value", NAME='value',
// $'...', NAME[i]=value with arithmetic subscripts (including the
// NAME[${#NAME[@]}]=value append idiom), NAME+=value, NAME=(list),
// declare/local/export/readonly/typeset, unset, let, (( )), comments,
// line continuations, semicolons, here-documents, and $var, ${var},
// ${var:-default} and the other parameter expansions bash has (pattern
// removal and replacement, case conversion, substrings, lengths), plus
// $((arithmetic)); patterns inside a quoted "${x%%pat}" are patterns, as
// in bash. if, case and for are evaluated when their conditions or words
// are known from the file itself (test/[ on strings and numbers, true,
// false, and file tests on the kernel's .config when PlanOptions gives
// it); otherwise the assignments inside are marked unknown. set -e/-u,
// shopt, IFS and eval of known text are modelled; exit and the errors that
// stop bash make dkms read nothing (a *ConfError). Nothing is ever
// executed: command substitution, backquotes, commands, pipelines,
// functions, other file tests, sourcing other files are listed in
// Conf.Unsupported with their line numbers, and the variables they could
// set are in Conf.Unknown ("known only at build time"). kmodctl dkms plan
// prints what the reader concludes.
//
// The model of the environment is dkms 3.0.10's: the variables dkms reads
// from a dkms.conf (dkms_conf_variables) start unset, dkms provides
// $kernelver, $arch, $dkms_tree, $source_tree, $install_tree,
// $kernel_source_dir, $kernel_config, $module and $module_version, and
// every other name may hold something from dkms or the environment, so it
// is unknown until the file assigns it. dkms re-reads each value through
// an unquoted echo inside double quotes (safe_source), so quotes,
// backslashes and $ in values are evaluated a second time and runs of
// blanks become one space; Plan reproduces that.
//
// Conf reports values raw (expansions left as written); Conf.Plan
// evaluates the file for one kernel and architecture as dkms would and
// tells which modules dkms builds, where they end up, and whether
// BUILD_EXCLUSIVE_* excludes the kernel. Differential tests compare both
// against bash itself on the dkms.conf files of 37 Debian 12 packages and
// on crafted files (testdata/conf, testdata/conf/i16), regular expressions
// against bash's =~ and grep -E (regex_test.go).
//
// # Driver
//
// Driver runs dkms on the target through a Runner, a /bin/sh command line
// on the target (a chroot, or a Packer communicator). A provisioner would:
// DetectPackageManager; InstallPackages(BuildDependencies(...)), keeping
// the returned list; Driver.DisableSigning (after dkms is installed, before
// any *-dkms package, whose postinst builds right away); install *-dkms
// packages and PackageModules, or copy a source tree to
// /usr/src/NAME-VERSION and Driver.Add; Driver.Build per kernel, always with
// the image's kernel release (dkms's default is uname -r, the build host's
// kernel in a chroot); then restore the signing configuration and
// RemovePackages. Removing a *-dkms package runs "dkms remove --all", which
// deletes the modules dkms built and installed.
//
// Build checks what dkms itself does not: that headers exist for the
// kernel before it starts, that an exit status 0 came with modules in
// DKMS_TREE/NAME/VERSION/KERNEL/ARCH/module (dkms 3.0 layout; .ko, or
// .ko.xz/.gz/.zst when the kernel's modules are compressed), and that every
// module the dkms.conf plans is there. BUILD_EXCLUSIVE_* exclusions (exit
// status 77 in Debian's dkms 3.0.10 and upstream >= 3.0.11, 9 before) are a
// result, not an error.
package dkms
