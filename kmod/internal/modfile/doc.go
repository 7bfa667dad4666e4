// Package modfile reads kernel module files for kmod and kmod/depmod: a
// bounds-checked reader of the ELF structures a module parser needs, the
// piecewise file source and the pooled scratch buffers behind it, and the
// decompression of .ko.gz/.ko.xz/.ko.zst content. It lives apart from kmod
// only so that both packages share one copy; its API follows their needs.
package modfile
