package dkms

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"
)

// CacheKeyVersion is the version of the key's own format; a change to
// what goes into the key bumps it, so old cache entries are not taken.
const CacheKeyVersion = "kmodctl-dkms-cache-key/1"

// CacheKeyInputs is everything a DKMS build's module files depend on, as
// far as it can be known without building: a build cache keyed by Key
// returns the files of an earlier build with the same inputs.
// Driver.BuildInputs reads most of them from the target.
//
// Not in the key, because it does not change what DKMS builds for one
// kernel: other packages of the image, environment variables, the time,
// the modules' early/load settings and load configuration, and which other
// modules or kernels the build covers. Inputs a build could depend on but
// that are not listed here (a Makefile that reads files outside its source
// tree, the network) make a module unfit for caching; the cache is opt-in.
type CacheKeyInputs struct {
	// Source identifies the module's source: "source sha256:<tree>" for a
	// DKMS source tree (sorted paths, modes and contents), or
	// "package <name>=<exact version>" for a distro *-dkms package.
	Source string
	// DKMSConf is the module's dkms.conf as dkms reads it.
	DKMSConf []byte
	// DKMSConfig is the dkms configuration that applies: framework.conf,
	// framework.conf.d and the module's /etc/dkms/*.conf overrides, each
	// preceded by its path.
	DKMSConfig []byte
	// DKMSSHA256 is the SHA-256 of the dkms program.
	DKMSSHA256 string
	// Kernel is the exact release; Arch dkms's architecture (uname -m).
	Kernel, Arch string
	// SymversSHA256 and ConfigSHA256 are the hex SHA-256 of the kernel
	// build tree's Module.symvers and .config (the ABI and the options
	// modules are built against).
	SymversSHA256, ConfigSHA256 string
	// Compiler and Linker are the first lines of `--version` of the
	// compiler the kernel was built with (CONFIG_CC_VERSION_TEXT's first
	// word) and of ld.
	Compiler, Linker string
	// SigningCertSHA256 is the hex SHA-256 of the signing certificate's
	// DER, SigningHash the signature digest (sha256, sha384, sha512): the
	// cached files are signed.
	SigningCertSHA256, SigningHash string
}

// Key returns the hex SHA-256 of the inputs (and CacheKeyVersion), each
// length-prefixed. An input that could not be determined (empty) is an
// error naming it: such a module is built, not cached.
func (in CacheKeyInputs) Key() (string, error) {
	fields := []struct {
		name  string
		value string
	}{
		{"source", in.Source},
		{"dkms.conf", string(in.DKMSConf)},
		{"dkms config", string(in.DKMSConfig)},
		{"dkms program", in.DKMSSHA256},
		{"kernel", in.Kernel},
		{"arch", in.Arch},
		{"Module.symvers", in.SymversSHA256},
		{"kernel config", in.ConfigSHA256},
		{"compiler", in.Compiler},
		{"linker", in.Linker},
		{"signing certificate", in.SigningCertSHA256},
		{"signing hash", in.SigningHash},
	}
	var missing []string
	h := sha256.New()
	write(h, CacheKeyVersion)
	for _, f := range fields {
		// The dkms configuration may be legitimately empty (no file).
		if strings.TrimSpace(f.value) == "" && f.name != "dkms config" {
			missing = append(missing, f.name)
		}
		write(h, f.name)
		write(h, f.value)
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("cannot determine the %s", strings.Join(missing, ", "))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func write(h hash.Hash, s string) {
	fmt.Fprintf(h, "%d:", len(s))
	h.Write([]byte(s))
}
