package bundle

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

// tagRE is the tag grammar of the distribution spec.
var tagRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// ValidTag says whether tag is a valid OCI tag.
func ValidTag(tag string) bool { return tagRE.MatchString(tag) }

// archAliases are the names a kernel release may end with for a GOARCH
// (Debian uses the GOARCH-like name, Fedora and others uname -m).
var archAliases = map[string][]string{
	"amd64":   {"amd64", "x86_64"},
	"arm64":   {"arm64", "aarch64"},
	"386":     {"686", "686-pae", "i386", "i686"},
	"arm":     {"armmp", "armmp-lpae", "armv7l", "armhf"},
	"ppc64le": {"ppc64le", "powerpc64le"},
	"s390x":   {"s390x"},
	"riscv64": {"riscv64"},
}

// KernelTag is the tag a kernel's manifest gets: the release, with "_ARCH"
// appended unless the release already ends with "-NAME" or ".NAME" for a
// name of the architecture (amd64/x86_64, arm64/aarch64, ...), mapped to
// the tag grammar. The map is readable and one-to-one: '+' (illegal in
// tags; registries answer 404 for it) becomes '_'. When the release holds
// a character that could collide ('_' or anything outside [A-Za-z0-9.+-]),
// starts with '.' or '-', or the tag would exceed 128 characters, the tag
// ends with '-' and 12 hex digits of the SHA-256 of "release arch".
// The exact release and architecture are in the manifest's annotations;
// Fetch checks them, so a tag never selects a kernel by itself.
func KernelTag(release, arch string) string {
	s := release
	suffixed := false
	// keepFrom: characters from here on are the release's own arch
	// suffix, kept as they are (x86_64 holds a '_').
	keepFrom := len(release)
	for _, a := range archAliases[arch] {
		if strings.HasSuffix(release, "-"+a) || strings.HasSuffix(release, "."+a) {
			suffixed = true
			keepFrom = len(release) - len(a)
			break
		}
	}
	if !suffixed && arch != "" {
		// '_' never ends a mapped release's own arch suffix (those end
		// in -arch or .arch), so appended and built-in suffixes differ.
		s += "_" + arch
	}
	lossy := false
	var b strings.Builder
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case r == '_' && (i >= len(release) || i >= keepFrom):
			// The separator appended above, or inside the arch suffix.
			b.WriteByte('_')
		case r == '.' || r == '-':
			if i == 0 {
				// A tag cannot start with '.' or '-'.
				b.WriteByte('_')
				lossy = true
			} else {
				b.WriteRune(r)
			}
		case r == '+':
			b.WriteByte('_')
		default:
			b.WriteByte('_')
			lossy = true
		}
	}
	tag := b.String()
	if lossy || len(tag) > 128 || tag == "" {
		sum := sha256.Sum256([]byte(release + " " + arch))
		h := hex.EncodeToString(sum[:])[:12]
		if len(tag) > 128-13 {
			tag = tag[:128-13]
		}
		if tag == "" {
			tag = "k"
		}
		tag += "-" + h
	}
	return tag
}
