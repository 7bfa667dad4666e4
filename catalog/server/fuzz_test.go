package server

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kmodctl/packer-plugin-kmod/catalog"
)

// FuzzDecodeRequest: any request body gives a decoded, checked request
// or an API error with a 4xx status, never a panic; a field a decoding
// error names is one the body has, and a check error always names one.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(`{"id":"a","instance_id":"i","boot_id":"b","kernel":"k","arch":"amd64","status":"ok","generated_at":"2026-12-01T00:00:00Z","modules":[{"name":"m","sha256":""}]}`)
	f.Add(`{"id":5}`)
	f.Add(`{"id":"b","imagename":"x"}`)
	f.Add(`{"id":"b",`)
	f.Add(`{"id":"x","manifest":{"version":1,"certificates":[],"kernels":[]}}`)
	f.Add(`{"id":"x","kernel":"k","module":"m","sha256":"` + strings.Repeat("a", 64) + `"}`)
	f.Fuzz(func(t *testing.T, body string) {
		for _, check := range []func() error{
			func() error {
				var a catalog.Attestation
				if _, err := decode(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), 4096, &a); err != nil {
					return err
				}
				if err := checkAttestation(&a); err != nil {
					var ae *apiError
					if !errors.As(err, &ae) || ae.code != http.StatusBadRequest || ae.field == "" {
						t.Fatalf("%q: check: %v is not a 400 naming a field", body, err)
					}
				}
				return nil
			},
			func() error {
				var b catalog.Build
				_, err := decode(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), 4096, &b)
				return err
			},
			func() error {
				var r catalog.TokenRequest
				_, err := decode(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), 4096, &r)
				return err
			},
		} {
			err := check()
			if err == nil {
				continue
			}
			var ae *apiError
			if !errors.As(err, &ae) || ae.code < 400 || ae.code >= 500 {
				t.Fatalf("%q: %v is not a 4xx API error", body, err)
			}
			if len(body) > 4096 && ae.code != http.StatusRequestEntityTooLarge {
				continue
			}
			// (json reports invalid UTF-8 in a name as U+FFFD.)
			if ae.field != "" && utf8.ValidString(body) && !strings.Contains(body, strings.SplitN(strings.SplitN(ae.field, "[", 2)[0], ".", 2)[0]) {
				t.Fatalf("%q: error names field %q, not in the body: %v", body, ae.field, err)
			}
		}
	})
}
