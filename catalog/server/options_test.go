package server

import "testing"

// TestOptionsRefuse: an option with an unusable argument is an error from
// the option, not a silent default.
func TestOptionsRefuse(t *testing.T) {
	for name, opt := range map[string]Option{
		"WithHealth(nil)":      WithHealth(nil),
		"WithLeader(nil, nil)": WithLeader(nil, nil),
		"WithLogf(nil)":        WithLogf(nil),
		"WithMaxBody(0)":       WithMaxBody(0),
		"WithBatch(0)":         WithBatch(0),
	} {
		if err := opt(&options{}); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
