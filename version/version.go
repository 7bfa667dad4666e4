// Package version holds the plugin's version. Release builds set
// VersionPrerelease to "" and dev builds to "dev" with -ldflags -X (Packer
// accepts only those two prereleases for installed plugins).
package version

import "github.com/hashicorp/packer-plugin-sdk/version"

var (
	// Version is the release number, without a leading v.
	Version = "0.1.0"
	// VersionPrerelease is "" for a release and "dev" for a local build.
	VersionPrerelease = "dev"
	// VersionMetadata is optional build metadata (semver "+...").
	VersionMetadata = ""
	// PluginVersion is what `describe` reports and Packer checks against
	// the installed file name.
	PluginVersion = version.NewPluginVersion(Version, VersionPrerelease, VersionMetadata)
)
