// Package bundle publishes signed kernel modules as OCI artifacts and
// takes them back: one image manifest per (bundle, kernel release,
// architecture) whose layers are the module files as installed and the
// certificates that sign them, described by a JSON config, plus one image
// index per bundle version listing every kernel's manifest. The format is
// specified in docs/bundles.mdx.
//
// A Bundle is created from module files (New, FromManifest), pushed to a
// registry or an OCI image-layout directory (Push, PushOne), and taken back
// by Fetch, which verifies everything before it returns: digests and sizes,
// the config against the layers present, every file's sha256, and every
// module's signature against the caller's trusted certificates (a
// bundle's own certificate never makes it trusted). WriteDir then writes
// the files into a directory all at once. List and Inspect read without
// verifying signatures.
//
// Locations are registry references (registry/repo[:tag|@digest]) or
// image layouts (oci:DIR[:TAG|@digest]); see ParseLocation. Registry
// access goes through go-containerregistry's remote package with the
// options of this package: the Docker config and credential helpers by
// default, TLS with extra CA certificates, plain HTTP only when asked for,
// retries on 429, 5xx and dropped connections, byte progress, and limits
// on every size read from the network.
package bundle
