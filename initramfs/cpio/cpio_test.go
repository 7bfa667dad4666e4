package cpio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	cavalier "github.com/cavaliergopher/cpio"

	"github.com/kmodctl/packer-plugin-kmod/internal/fixture"
)

// rewrite reads every record of an archive stream and writes it back,
// padding included.
func rewrite(t testing.TB, data []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w := NewWriter(&out)
	if err := Copy(w, NewReader(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func readAll(t testing.TB, data []byte) ([]*Record, [][]byte) {
	t.Helper()
	r := NewReader(bytes.NewReader(data))
	var recs []*Record
	var bodies [][]byte
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return recs, bodies
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := r.ReadBody()
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
		bodies = append(bodies, b)
	}
}

// sample builds an archive with every record type, a hard link group of 256
// names (like Debian's busybox) and a crc-format file.
func sample(t testing.TB, format Format) []byte {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteHeader(&Record{Name: ".", Ino: 1, Mode: TypeDir | 0o755, Nlink: 3, Mtime: 1700000000, Format: format}))
	must(w.WriteHeader(&Record{Name: "bin", Ino: 2, Mode: TypeDir | 0o755, Nlink: 2, Mtime: 1700000000, Format: format}))
	body := []byte("#!/bin/sh\necho hello\n")
	must(w.WriteHeader(&Record{Name: "init", Ino: 3, Mode: TypeReg | 0o755, Nlink: 1, FileSize: uint32(len(body)),
		UID: 0, GID: 0, DevMajor: 8, DevMinor: 1, Check: map[Format]uint32{CRC: Checksum(body)}[format], Format: format}))
	_, err := w.Write(body)
	must(err)
	must(w.WriteSymlink(Record{Name: "sbin", Ino: 4, Mode: 0o777, Nlink: 1, Format: format}, "bin"))
	must(w.WriteHeader(&Record{Name: "dev/console", Ino: 5, Mode: TypeChar | 0o600, Nlink: 1, RdevMajor: 5, RdevMinor: 1, Format: format}))
	must(w.WriteHeader(&Record{Name: "dev/sda", Ino: 6, Mode: TypeBlock | 0o660, GID: 6, Nlink: 1, RdevMajor: 8, RdevMinor: 0, Format: format}))
	must(w.WriteHeader(&Record{Name: "run/fifo", Ino: 7, Mode: TypeFIFO | 0o644, Nlink: 1, Format: format}))
	names := make([]string, 256)
	for i := range names {
		names[i] = "bin/applet" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + itoa(i)
	}
	must(w.WriteHardLinks(Record{Ino: 8, Mode: TypeReg | 0o755, DevMajor: 8, DevMinor: 1, Format: format}, names, bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 1000)))
	must(w.WriteTrailer())
	must(w.PadTo(512))
	return buf.Bytes()
}

func itoa(i int) string {
	return string(rune('0'+i/100)) + string(rune('0'+i/10%10)) + string(rune('0'+i%10))
}

func TestRoundTripOwnArchive(t *testing.T) {
	for _, f := range []Format{Newc, CRC} {
		data := sample(t, f)
		if len(data)%512 != 0 {
			t.Fatalf("%s: %d bytes, not padded to 512", f, len(data))
		}
		if got := rewrite(t, data); !bytes.Equal(got, data) {
			t.Fatalf("%s: rewrite differs", f)
		}
		recs, bodies := readAll(t, data)
		if len(recs) != 7+256+1 {
			t.Fatalf("%s: %d records", f, len(recs))
		}
		if !recs[len(recs)-1].IsTrailer() {
			t.Fatalf("%s: last record %q is no trailer", f, recs[len(recs)-1].Name)
		}
		if string(bodies[3]) != "bin" || !recs[3].IsSymlink() {
			t.Errorf("%s: symlink %q -> %q", f, recs[3].Name, bodies[3])
		}
		if c := recs[4]; !c.IsDevice() || c.RdevMajor != 5 || c.RdevMinor != 1 {
			t.Errorf("%s: console %+v", f, c)
		}
		var links Links
		linked := 0
		for i, r := range recs {
			first, ok := links.Add(r)
			if ok {
				linked++
				if first != recs[7].Name {
					t.Errorf("%s: %s linked to %s, want %s", f, r.Name, first, recs[7].Name)
				}
			}
			if i >= 7 && i < 7+255 && len(bodies[i]) != 0 {
				t.Errorf("%s: link %d has a body", f, i)
			}
		}
		if linked != 255 || len(bodies[7+255]) != 4000 {
			t.Errorf("%s: %d linked, last body %d bytes", f, linked, len(bodies[7+255]))
		}
	}
}

// TestCavalierCrossCheck reads our newc output with github.com/cavaliergopher/cpio
// and compares the fields it supports (it drops device numbers and stops at
// the first trailer).
func TestCavalierCrossCheck(t *testing.T) {
	data := sample(t, Newc)
	ours, bodies := readAll(t, data)
	cr := cavalier.NewReader(bytes.NewReader(data))
	for i, want := range ours {
		h, err := cr.Next()
		if want.IsTrailer() {
			if err != io.EOF {
				t.Fatalf("cavalier after the last entry: %v", err)
			}
			break
		}
		if err != nil {
			t.Fatalf("cavalier at %s: %v", want.Name, err)
		}
		if h.Name != want.Name || uint32(h.Mode) != want.Mode || uint32(h.Uid) != want.UID || uint32(h.Guid) != want.GID ||
			uint32(h.Links) != want.Nlink || uint32(h.Inode) != want.Ino || uint32(h.ModTime.Unix()) != want.Mtime {
			t.Errorf("record %d: cavalier %+v, ours %+v", i, h, want)
		}
		if want.IsSymlink() {
			if h.Linkname != string(bodies[i]) {
				t.Errorf("%s: cavalier link %q, ours %q", want.Name, h.Linkname, bodies[i])
			}
			continue
		}
		b, err := io.ReadAll(cr)
		if err != nil || !bytes.Equal(b, bodies[i]) || h.Size != int64(want.FileSize) {
			t.Errorf("%s: cavalier body %d bytes (size %d), ours %d: %v", want.Name, len(b), h.Size, len(bodies[i]), err)
		}
	}
}

// TestGNUCpio reads archives made by Debian's GNU cpio and rewrites them
// byte for byte: hard links, a symlink, device nodes, newc and crc.
func TestGNUCpio(t *testing.T) {
	cpioBin := fixture.Tool(t, "cpio")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), bytes.Repeat([]byte("busybox"), 999), 0o755)
	for _, n := range []string{"sh", "ls", "cat"} {
		if err := os.Link(filepath.Join(root, "bin/busybox"), filepath.Join(root, "bin", n)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "etc/odd"), []byte("x"), 0o644)
	os.Symlink("bin", filepath.Join(root, "sbin"))
	devices := syscall.Mknod(filepath.Join(root, "dev/console"), syscall.S_IFCHR|0o600, 5<<8|1) == nil
	for _, format := range []string{"newc", "crc"} {
		cmd := exec.Command("sh", "-c", `find . | LC_ALL=C sort | "$0" -o -H `+format+` --quiet`, cpioBin)
		cmd.Dir = root
		data, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := rewrite(t, data); !bytes.Equal(got, data) {
			t.Fatalf("%s: rewrite of GNU cpio output differs", format)
		}
		recs, bodies := readAll(t, data)
		byName := map[string]int{}
		for i, r := range recs {
			byName[r.Name] = i
		}
		if i, ok := byName["sbin"]; !ok || string(bodies[i]) != "bin" {
			t.Errorf("%s: symlink sbin missing or wrong", format)
		}
		if devices {
			if i, ok := byName["dev/console"]; !ok || recs[i].RdevMajor != 5 || recs[i].RdevMinor != 1 || !recs[i].IsDevice() {
				t.Errorf("%s: ./dev/console lost its device number", format)
			}
		}
		var links Links
		withData := 0
		for i, r := range recs {
			if _, ok := links.Add(r); ok || (r.Nlink == 4 && r.IsRegular()) {
				if len(bodies[i]) > 0 {
					withData++
				}
			}
		}
		if withData != 1 {
			t.Errorf("%s: %d records of the hard link group carry data, want 1", format, withData)
		}
	}
}

func TestErrors(t *testing.T) {
	good := sample(t, CRC)
	corrupt := func(off int, b ...byte) []byte {
		d := bytes.Clone(good)
		copy(d[off:], b)
		return d
	}
	// records: "." at 0 (110+2 -> 112), "bin" at 112 (110+4 -> 116), "init" at 228.
	cases := []struct {
		name string
		data []byte
		want string
		is   error
	}{
		{"bad magic", corrupt(0, '0', '7', '0', '7', '0', '9'), `offset 0: bad magic "070709"`, nil},
		{"odc", corrupt(0, '0', '7', '0', '7', '0', '7'), "offset 0: old portable", nil},
		{"not hex", corrupt(112+14, 'z'), `offset 126: field c_mode: "z00041ED" is not hex`, nil},
		{"junk", corrupt(112, 'x'), "offset 112: no cpio header: byte 0x78", ErrNoHeader},
		{"name padding", corrupt(112+110+4, 'x'), `offset 226: entry "bin": name padding byte 0x78 is not NUL`, nil},
		{"checksum", corrupt(228+110+8, 'X'), `entry "init": bad data checksum`, ErrChecksum},
		{"truncated body", good[:228+110+8+3], `offset 349: entry "init": truncated body`, io.ErrUnexpectedEOF},
		{"truncated header", good[:100], "offset 0: truncated header", io.ErrUnexpectedEOF},
		{"misaligned", append([]byte{0}, good...), "not 4-byte aligned", ErrNoHeader},
		{"name size 0", corrupt(94, '0', '0', '0', '0', '0', '0', '0', '0'), "offset 94: name size 0", nil},
		{"name too long", corrupt(94, '0', '0', '0', '0', '2', '0', '0', '0'), "name size 8192 exceeds 4096", nil},
		{"name not terminated", corrupt(110+1, 'x'), `name ".x" not NUL-terminated`, nil},
	}
	for _, c := range cases {
		r := NewReader(bytes.NewReader(c.data))
		var err error
		for err == nil {
			_, err = r.Next()
			if err == nil {
				_, err = io.Copy(io.Discard, r)
			}
		}
		if err == io.EOF {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q, want %q", c.name, err, c.want)
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s: error %q is not %v", c.name, err, c.is)
		}
	}
}

func TestNoHeaderStopsAtJunk(t *testing.T) {
	data := append(sample(t, Newc), 0x28, 0xb5, 0x2f, 0xfd)
	r := NewReader(bytes.NewReader(data))
	n := 0
	for {
		_, err := r.Next()
		if err != nil {
			if !errors.Is(err, ErrNoHeader) {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	if r.Offset() != int64(len(data)-4) {
		t.Fatalf("stopped at %d, want %d", r.Offset(), len(data)-4)
	}
}

func TestWriterErrors(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteHeader(&Record{Name: "a", Mode: TypeReg, FileSize: 3, Format: CRC, Check: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("abcd")); err != ErrWriteTooLong {
		t.Fatalf("long write: %v", err)
	}
	if err := w.Close(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("bad checksum: %v", err)
	}
	w = NewWriter(&buf)
	w.WriteHeader(&Record{Name: "b", Mode: TypeReg, FileSize: 3})
	if err := w.WriteTrailer(); err == nil || !strings.Contains(err.Error(), "short by 3") {
		t.Fatalf("short body: %v", err)
	}
	if err := NewWriter(&buf).WriteHeader(&Record{Name: "a\x00b"}); err == nil {
		t.Fatal("NUL in name accepted")
	}
}

func TestLowerHexRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.WriteHeader(&Record{Name: "x", Mode: TypeDir | 0o755, Mtime: 0x6abcdef0, HexLower: true})
	w.WriteTrailer()
	w.Close()
	if !bytes.Contains(buf.Bytes(), []byte("6abcdef0")) {
		t.Fatalf("no lower-case hex: %q", buf.Bytes()[:110])
	}
	if got := rewrite(t, buf.Bytes()); !bytes.Equal(got, buf.Bytes()) {
		t.Fatal("lower-case archive not reproduced")
	}
}
