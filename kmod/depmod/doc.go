// Package depmod computes what kmod 30's depmod writes for a module tree
// (modules.dep, modules.alias, modules.symbols, their .bin indexes and the
// rest), byte for byte, in pure Go: Generate reads any fs.FS (a tree
// inside an image, an initramfs model) and returns the files, Write
// replaces them in a host folder atomically. The depmod.d configuration is
// the image's own unless WithConfig, WithConfigFS or WithoutConfig says
// otherwise; WithWarnings receives what depmod would print as warnings.
package depmod
