package catalog_test

import (
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// TestOptionsRefuse: an option with an unusable argument makes New fail.
func TestOptionsRefuse(t *testing.T) {
	for name, opt := range map[string]catalog.Option{
		"WithTransport(nil)": catalog.WithTransport(nil),
		"WithToken(\"\")":    catalog.WithToken(""),
		"WithRetries(-1)":    catalog.WithRetries(-1),
		"WithTimeout(0)":     catalog.WithTimeout(0),
	} {
		if _, err := catalog.New("https://catalog.invalid:8443", opt); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
