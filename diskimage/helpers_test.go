package diskimage

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"
)

func tempImage(t testing.TB, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

type synthPart struct {
	typ, uuid   [16]byte
	first, last uint64
	name        string
	attr        uint64
}

// synthGPT builds a GPT disk image in memory (protective MBR, primary and
// backup headers) with the given sector size.
func synthGPT(ss int, sectors uint64, parts []synthPart) []byte {
	disk := make([]byte, uint64(ss)*sectors)
	// protective MBR
	disk[446+4] = 0xee
	binary.LittleEndian.PutUint32(disk[446+8:], 1)
	binary.LittleEndian.PutUint32(disk[446+12:], uint32(min(sectors-1, 0xffffffff)))
	disk[510], disk[511] = 0x55, 0xaa
	const n, esz = 128, 128
	arr := make([]byte, n*esz)
	for i, p := range parts {
		e := arr[i*esz:]
		copy(e[0:16], p.typ[:])
		copy(e[16:32], p.uuid[:])
		binary.LittleEndian.PutUint64(e[32:], p.first)
		binary.LittleEndian.PutUint64(e[40:], p.last)
		binary.LittleEndian.PutUint64(e[48:], p.attr)
		for j, c := range utf16.Encode([]rune(p.name)) {
			binary.LittleEndian.PutUint16(e[56+2*j:], c)
		}
	}
	arrSectors := uint64((len(arr) + ss - 1) / ss)
	put := func(my, alt, entryLBA uint64) {
		h := make([]byte, 92)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], my)
		binary.LittleEndian.PutUint64(h[32:], alt)
		binary.LittleEndian.PutUint64(h[40:], 2+arrSectors)
		binary.LittleEndian.PutUint64(h[48:], sectors-2-arrSectors)
		copy(h[56:72], bytes.Repeat([]byte{0xab}, 16))
		binary.LittleEndian.PutUint64(h[72:], entryLBA)
		binary.LittleEndian.PutUint32(h[80:], n)
		binary.LittleEndian.PutUint32(h[84:], esz)
		binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(arr))
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h))
		copy(disk[my*uint64(ss):], h)
		copy(disk[entryLBA*uint64(ss):], arr)
	}
	put(1, sectors-1, 2)
	put(sectors-1, 1, sectors-1-arrSectors)
	return disk
}

// guidBytes converts a textual GUID to its mixed-endian on-disk form.
func guidBytes(s string) (b [16]byte) {
	h := strings.ReplaceAll(s, "-", "")
	var raw [16]byte
	for i := 0; i < 16; i++ {
		var v byte
		for _, c := range h[2*i : 2*i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			default:
				v |= byte(c-'a') + 10
			}
		}
		raw[i] = v
	}
	b = raw
	b[0], b[1], b[2], b[3] = raw[3], raw[2], raw[1], raw[0]
	b[4], b[5] = raw[5], raw[4]
	b[6], b[7] = raw[7], raw[6]
	return b
}

func crc32IEEE(b []byte) uint32 { return crc32.ChecksumIEEE(b) }

func cmdStdin(t testing.TB, stdin, name string, args ...string) string {
	t.Helper()
	c := exec.Command(name, args...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }
