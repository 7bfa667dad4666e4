package dkms

import "github.com/kmodctl/packer-plugin-kmod/internal/shquote"

// shellQuote quotes s for a /bin/sh command line (shquote.Quote; the short
// name keeps the many command lines of this package readable).
func shellQuote(s string) string { return shquote.Quote(s) }
