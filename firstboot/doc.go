// Package firstboot is the agent the kmod provisioner installs into an
// image (`kmodctl firstboot verify|run|lockdown`): at boot it checks the
// modules the manifest (kmod/manifest) lists for the running kernel
// against the files in the image and loads only those that match.
//
// Verify runs on every boot, before systemd-modules-load: for each managed
// module of the running kernel it compares the file's SHA-256 with the
// manifest, verifies its signature against the certificate the manifest
// records for it, checks that modules.dep resolves the module's name to
// that file (so modprobe loads what was verified), compares a module that
// is already loaded (from the initramfs) by /sys/module/NAME/srcversion,
// and the module's copy in the initramfs with initramfs_sha256. A module
// that fails any check is drifted: it is blocked for this boot by
// BlockedPath (`blacklist NAME` and `install NAME /bin/false`, honoured by
// modprobe and systemd-modules-load).
//
// Run, once per instance, checks again the same way, loads the verified
// modules that are not loaded yet with the image's modprobe in manifest
// order (dependencies and modprobe.d options apply), confirms each in
// /sys/module, records its taint flags and parameters, and applies the
// lockdown (kernel.modules_disabled=1) when asked. Lockdown applies the
// lockdown alone, for the boots after the first.
//
// Nothing is loaded that was not verified: a missing or malformed
// manifest, an uncovered kernel or any failed check leaves the module
// alone, with the reason in the report. Every path is taken under
// Options.Root, so tests run against a directory tree.
package firstboot
