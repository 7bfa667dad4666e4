package initramfs

import (
	"bytes"
	"io"
	"os/exec"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// FuzzSegments: any input either fails to read with an error or yields
// segments that tile the image, and walking them (a second decode) succeeds
// with every body of its declared size.
func FuzzSegments(f *testing.F) {
	small := archive(f, dir("."), reg("init", "#!/bin/sh\n"), symlink("lib", "usr/lib"), dir("usr/lib/modules/6.1.0-1-amd64"),
		reg("conf/initramfs.conf", "x"))
	early := archive(f, reg("kernel/x86/microcode/GenuineIntel.bin", "ucode"))
	f.Add(small)
	f.Add(append(bytes.Clone(early), small...))
	for _, c := range []compress.Format{compress.Gzip, compress.Zstd, compress.XZ, compress.Lzma, compress.LZ4} {
		z, err := compress.Compress(small, c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append(append(bytes.Clone(early), z...), 0, 0, 0, 0))
	}
	if bz, err := bzip2Tool(small); err == nil {
		f.Add(append(bytes.Clone(early), bz...))
	}
	f.Add(zstdRLEBomb(3))
	f.Fuzz(func(t *testing.T, data []byte) {
		im, err := Read(bytes.NewReader(data), int64(len(data)), WithLimits(Limits{MaxTotal: 8 << 20, MaxEntries: 10000}))
		if err != nil {
			return
		}
		off := im.LeadingPadding
		entries := 0
		for i, s := range im.Segments {
			if s.Offset != off || s.Length <= 0 {
				t.Fatalf("segment %d %+v does not start at %d", i, s, off)
			}
			off += s.Length + s.Padding
			entries += s.Entries
		}
		if off != int64(len(data)) || entries != len(im.Entries) {
			t.Fatalf("segments cover %d of %d bytes, %d of %d entries", off, len(data), entries, len(im.Entries))
		}
		im.Info()
		n := 0
		err = im.Walk(func(seg int, r *cpio.Record, body io.Reader) error {
			b, err := io.ReadAll(body)
			if err != nil {
				return err
			}
			if len(b) != int(r.FileSize) {
				t.Fatalf("%s: %d bytes, FileSize %d", r.Name, len(b), r.FileSize)
			}
			n++
			return nil
		})
		if err != nil || n != len(im.Entries) {
			t.Fatalf("walk after a successful read: %d of %d records: %v", n, len(im.Entries), err)
		}
	})
}

func bzip2Tool(b []byte) ([]byte, error) {
	cmd := exec.Command("bzip2", "-c")
	cmd.Stdin = bytes.NewReader(b)
	return cmd.Output()
}
