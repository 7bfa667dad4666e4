package dkms

import (
	"reflect"
	"strings"
	"testing"
)

func TestCacheKey(t *testing.T) {
	in := CacheKeyInputs{Source: "source sha256:aa", DKMSConf: []byte("PACKAGE_NAME=x\n"), DKMSConfig: []byte("== /etc/dkms/framework.conf\n"),
		DKMSSHA256: "44", Kernel: "6.1.0-1-amd64", Arch: "x86_64", SymversSHA256: "11", ConfigSHA256: "22",
		Compiler: "gcc-12 (Debian 12.2.0-14) 12.2.0", Linker: "GNU ld 2.40", SigningCertSHA256: "33", SigningHash: "sha256"}
	key, err := in.Key()
	if err != nil || len(key) != 64 {
		t.Fatalf("Key = %q, %v", key, err)
	}
	if again, _ := in.Key(); again != key {
		t.Fatal("the key is not stable")
	}
	// Every input changes the key.
	v := reflect.ValueOf(&in).Elem()
	for i := 0; i < v.NumField(); i++ {
		c := in
		f := reflect.ValueOf(&c).Elem().Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(f.String() + "x")
		case reflect.Slice:
			f.SetBytes(append(append([]byte(nil), f.Bytes()...), 'x'))
		}
		if k, err := c.Key(); err != nil || k == key {
			t.Errorf("changing %s: key %s, %v", v.Type().Field(i).Name, k, err)
		}
	}
	// Moving a byte from one field to the next gives another key.
	a, b := in, in
	a.Kernel, a.Arch = "6.1.0-1-amd64x", "86_64"
	b.Kernel, b.Arch = "6.1.0-1-amd64", "x86_64"
	if ka, _ := a.Key(); ka == key {
		t.Error("field boundaries are not part of the key")
	}
	// An input that cannot be determined is named.
	c := in
	c.Compiler, c.SymversSHA256 = "", " "
	if _, err := c.Key(); err == nil || !strings.Contains(err.Error(), "Module.symvers, compiler") {
		t.Errorf("missing inputs: %v", err)
	}
	// The dkms configuration may be empty (no files).
	c = in
	c.DKMSConfig = nil
	if _, err := c.Key(); err != nil {
		t.Errorf("empty dkms configuration: %v", err)
	}
}
