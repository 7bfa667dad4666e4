package manifest

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzUnmarshal: Unmarshal never panics, fails only with ErrVersion or
// ErrInvalid, and what it accepts marshals, reads back and marshals to
// the same bytes.
func FuzzUnmarshal(f *testing.F) {
	valid, err := sample(f).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	empty, _ := (&Manifest{}).Marshal()
	f.Add(empty)
	for _, s := range []string{
		`{"version": 1, "certificates": [], "kernels": [{"release": "6.1.0-9-amd64", "modules": [{"name": "m", "path": "/lib/modules/6.1.0-9-amd64/extra/m.ko", "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "early": false, "load": true}]}]}`,
		`{"version": 1, "certificates": [], "kernels": [{"release": "6.1.0-9-amd64", "modules": [], "initramfs": {"path": "/boot/initrd.img-6.1.0-9-amd64", "size": 30660657, "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}]}`,
		`{"version": 2}`,
		`{"version": 1, "version": 1}`,
		`{"Version": 1}`,
		`{"version": 1, "kernels": [{"release": "b"}, {"release": "a"}]}`,
		`{"version": 1, "kernels": [[[[[[[[[]]]]]]]]]}`,
		`{"version": 1e0}`,
		`null`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Unmarshal(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error %v wraps neither ErrInvalid nor ErrVersion", err)
			}
			return
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("accepted manifest does not marshal: %v\n%q", err, data)
		}
		back, err := Unmarshal(out)
		if err != nil {
			t.Fatalf("marshalled manifest does not read back: %v\n%s", err, out)
		}
		again, err := back.Marshal()
		if err != nil || !bytes.Equal(out, again) {
			t.Fatalf("marshal not stable (%v):\n%s\n%s", err, out, again)
		}
	})
}
