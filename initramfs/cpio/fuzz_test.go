package cpio

import (
	"bytes"
	"io"
	"testing"
)

// FuzzCpioReader: any input either fails with an error or reads to the end;
// what reads to the end is rewritten by the writer into an archive that
// reads back to the same records and bodies, and byte for byte the same when
// its hex digits are all upper case.
func FuzzCpioReader(f *testing.F) {
	// Small seeds: the fuzzer crawls on inputs of tens of KiB.
	for _, format := range []Format{Newc, CRC} {
		var b bytes.Buffer
		w := NewWriter(&b)
		w.WriteHeader(&Record{Name: ".", Mode: TypeDir | 0o755, Nlink: 2, Format: format})
		w.WriteHeader(&Record{Name: "init", Mode: TypeReg | 0o755, FileSize: 5, Check: Checksum([]byte("#!sh\n")), Format: format})
		w.Write([]byte("#!sh\n"))
		w.WriteSymlink(Record{Name: "bin", Format: format}, "usr/bin")
		w.WriteHeader(&Record{Name: "dev/console", Mode: TypeChar | 0o600, RdevMajor: 5, RdevMinor: 1, Format: format})
		body := []byte("BUSYBOX")
		w.WriteHardLinks(Record{Ino: 9, Mode: TypeReg | 0o755, DevMajor: 8, Format: format}, []string{"bin/busybox", "bin/sh", "bin/ls"}, body)
		w.WriteTrailer()
		w.PadTo(512)
		f.Add(b.Bytes())
	}
	var b bytes.Buffer
	w := NewWriter(&b)
	w.WriteSymlink(Record{Name: "l", HexLower: true}, "target")
	w.WriteHeader(&Record{Name: "d", Mode: TypeDir | 0o755})
	w.WriteTrailer()
	w.WritePadding(8)
	w.WriteHeader(&Record{Name: "f", Mode: TypeReg | 0o644, FileSize: 3, Format: CRC, Check: Checksum([]byte("abc"))})
	w.Write([]byte("abc"))
	w.Close()
	f.Add(b.Bytes())
	f.Add([]byte("070701"))
	f.Add(append(make([]byte, 7), '0'))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, bodies, ok := tryRead(data)
		if !ok {
			return
		}
		out := rewrite(t, data)
		recs2, bodies2, ok := tryRead(out)
		if !ok {
			t.Fatalf("rewrite does not read back")
		}
		if len(recs2) != len(recs) {
			t.Fatalf("%d records, rewrite has %d", len(recs), len(recs2))
		}
		mixed := false
		for i := range recs {
			a, b := *recs[i], *recs2[i]
			if a.HexLower != b.HexLower {
				mixed = true
			}
			a.HexLower, b.HexLower = false, false
			if a != b || !bytes.Equal(bodies[i], bodies2[i]) {
				t.Fatalf("record %d: %+v became %+v", i, a, b)
			}
		}
		if !mixed && !bytes.Equal(out, data) && !hasMixedCase(data) {
			t.Fatalf("rewrite differs")
		}
	})
}

func hasMixedCase(data []byte) bool {
	return bytes.ContainsAny(data, "abcdef") && bytes.ContainsAny(data, "ABCDEF")
}

func tryRead(data []byte) ([]*Record, [][]byte, bool) {
	r := NewReader(bytes.NewReader(data))
	var recs []*Record
	var bodies [][]byte
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return recs, bodies, true
		}
		if err != nil {
			if r.Offset() > int64(len(data)) {
				panic("offset beyond the input")
			}
			return nil, nil, false
		}
		b, err := r.ReadBody()
		if err != nil {
			return nil, nil, false
		}
		if len(b) != int(rec.FileSize) {
			panic("body length differs from FileSize")
		}
		recs = append(recs, rec)
		bodies = append(bodies, b)
	}
}
