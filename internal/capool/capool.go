// Package capool loads the CA certificates a TLS client trusts besides the
// system's (the ca_file of registries and of the catalog).
package capool

import (
	"crypto/x509"
	"fmt"
	"os"
)

// Load returns the system's certificate pool (an empty one where there is
// none) with the PEM certificates of path added.
func Load(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, nil
}
