package initramfs

import (
	"bytes"
	"io"
	"math/rand"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kmodctl/packer-plugin-kmod/compress"
)

// TestHostDecoder decodes a unit larger than hostDecodeMin with the host's
// tool, and a corrupt one with the same bytes and error as the library.
func TestHostDecoder(t *testing.T) {
	data := make([]byte, 3<<20)
	rand.New(rand.NewSource(1)).Read(data[:2<<20]) // incompressible: the unit stays > 1 MiB
	encode := map[compress.Format]func() []byte{
		compress.Zstd: func() []byte {
			e, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
			if err != nil {
				t.Fatal(err)
			}
			return e.EncodeAll(data, nil)
		},
		compress.XZ: func() []byte {
			var b bytes.Buffer
			w, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&b)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(data)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			return b.Bytes()
		},
	}
	for f, enc := range encode {
		t.Run(string(f), func(t *testing.T) {
			if _, err := exec.LookPath(string(f)); err != nil {
				t.Skipf("no %s on this machine: the library decodes", f)
			}
			unit := enc()
			// Trailing bytes are not the unit's.
			img := append(append([]byte(nil), unit...), 0, 0, 0, 0)
			u, err := newUnitDecoder(img, f)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := u.(*hostDecoder); !ok {
				t.Fatalf("decoder is %T, want the host's %s", u, f)
			}
			got, err := io.ReadAll(u)
			u.Close()
			if err != nil || !bytes.Equal(got, data) || u.Len() != int64(len(unit)) {
				t.Fatalf("host %s: %d bytes, err %v, len %d (want %d bytes, len %d)", f, len(got), err, u.Len(), len(data), len(unit))
			}
			// Into memory (Inject): the whole stream, or nothing past the
			// limit.
			m := hostDecodeToMemory(img, f, 8<<20)
			if m == nil || !bytes.Equal(m.data, data) || m.Len() != int64(len(unit)) {
				t.Fatalf("host %s into memory: %v", f, m)
			}
			m.release()
			if m := hostDecodeToMemory(img, f, 1<<20); m != nil {
				m.release()
				t.Fatalf("host %s into memory: %d bytes kept past a limit of 1 MiB", f, len(m.data))
			}
			// A byte of the data flipped (past what fits a pipe's buffer):
			// the check fails; what was delivered and the error are the
			// library's.
			bad := append([]byte(nil), img...)
			bad[len(unit)*3/4] ^= 0x55
			lib, err := compress.NewUnitReader(bad, f)
			if err != nil {
				t.Fatal(err)
			}
			want, wantErr := io.ReadAll(lib)
			lib.Close()
			if wantErr == nil {
				t.Fatal("the library decoded the corrupt unit")
			}
			u, err = newUnitDecoder(bad, f)
			if err != nil {
				t.Fatal(err)
			}
			got, err = io.ReadAll(u)
			if cerr := u.Close(); cerr != nil {
				t.Fatal(cerr)
			}
			if err == nil || err.Error() != wantErr.Error() || !bytes.Equal(got, want) {
				t.Fatalf("corrupt %s: %d bytes, err %v; library: %d bytes, err %v", f, len(got), err, len(want), wantErr)
			}
		})
	}
}
