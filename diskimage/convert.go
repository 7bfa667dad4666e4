package diskimage

// Disk image format conversion with qemu-img (and a sparse copy in Go for
// raw to raw), checksums of the results.
//
// Decisions:
//
//   - Paths are made absolute before they reach qemu-img, so that a file
//     name holding a colon ("nbd:...", "json:{...}") is never taken for a
//     protocol.
//   - Inspect reports, in ImageInfo.BackingFile, any file outside the image
//     that its data would be read from: a qcow2/vmdk backing file, a qcow2
//     external data file, a vmdk extent in another file (monolithicFlat,
//     twoGbMaxExtent*: a descriptor can name any host file or device). The
//     caller refuses such images; Convert refuses them too.
//   - qemu-img does not recognise fixed VHDs (their only footer is at the
//     end) and calls them raw, with the footer counted in the size. When
//     qemu-img says raw and the last 512 bytes are a valid fixed-disk VHD
//     footer, Inspect reports "vpc" and the vpc driver's size.
//   - Source formats are limited to raw, qcow2, vmdk, vpc (vhd), vhdx:
//     qemu-img's rarer drivers (bochs, cloop, dmg, parallels, qcow, qed,
//     vvfat...) are not meant for untrusted images.
//   - vhd output: Azure wants a virtual size that is a whole number of MiB.
//     Convert refuses other sizes rather than padding: padding would move
//     the end of the disk away from a GPT's backup header, and the builder
//     grows its working copies (and fixes the GPT) before converting.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/internal/tail"
)

// OutputFormats are the formats the builder accepts and writes, with their
// file extensions. "vhd" is a fixed-size VHD (qemu-img format "vpc").
var OutputFormats = map[string]string{"raw": ".raw", "qcow2": ".qcow2", "vmdk": ".vmdk", "vhd": ".vhd"}

// sourceFormats are the qemu-img formats Convert reads.
var sourceFormats = map[string]bool{"raw": true, "qcow2": true, "vmdk": true, "vpc": true, "vhdx": true}

const mib = 1 << 20

// ImageInfo is what qemu-img info reports.
type ImageInfo struct {
	Format      string // qemu-img's name: raw, qcow2, vmdk, vpc (VHD), vhdx...
	VirtualSize int64  // bytes the guest sees
	ActualSize  int64  // bytes allocated on the host
	// BackingFile names a file outside the image that its data is read
	// from: a backing file, a qcow2 external data file or a vmdk extent in
	// another file. Such images can read any host file: refuse them.
	BackingFile string
}

// Inspect runs `qemu-img info --output=json` on path (format probed). See
// ImageInfo.BackingFile; fixed VHDs are reported as "vpc".
func Inspect(ctx context.Context, path string) (ImageInfo, error) {
	return inspect(ctx, path, "")
}

type qemuInfo struct {
	Format              string `json:"format"`
	Filename            string `json:"filename"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	FormatSpecific      struct {
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Extents  []struct {
				Filename string `json:"filename"`
			} `json:"extents"`
		} `json:"data"`
	} `json:"format-specific"`
}

// inspect is Inspect with the format given (-f) when format != "".
func inspect(ctx context.Context, path, format string) (ImageInfo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ImageInfo{}, err
	}
	if _, err := os.Stat(abs); err != nil {
		return ImageInfo{}, fmt.Errorf("inspect: %w", err)
	}
	info, err := qemuImgInfo(ctx, abs, format)
	if err != nil {
		return ImageInfo{}, err
	}
	if format == "" && info.Format == "raw" && isFixedVHD(abs) {
		if vi, err := qemuImgInfo(ctx, abs, "vpc"); err == nil {
			info = vi
		}
	}
	return info, nil
}

func qemuImgInfo(ctx context.Context, abs, format string) (ImageInfo, error) {
	args := []string{"info", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	args = append(args, abs)
	out, err := qemuImg(ctx, nil, args...)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("inspect %s: %w", abs, err)
	}
	var qi qemuInfo
	if err := json.Unmarshal(out, &qi); err != nil {
		return ImageInfo{}, fmt.Errorf("inspect %s: qemu-img info output: %w", abs, err)
	}
	info := ImageInfo{Format: qi.Format, VirtualSize: qi.VirtualSize, ActualSize: qi.ActualSize}
	switch {
	case qi.FullBackingFilename != "":
		info.BackingFile = qi.FullBackingFilename
	case qi.BackingFilename != "":
		info.BackingFile = qi.BackingFilename
	case qi.FormatSpecific.Data.DataFile != "":
		info.BackingFile = qi.FormatSpecific.Data.DataFile
	default:
		for _, e := range qi.FormatSpecific.Data.Extents {
			if e.Filename != "" && e.Filename != qi.Filename && e.Filename != abs {
				info.BackingFile = e.Filename
				break
			}
		}
	}
	return info, nil
}

// isFixedVHD tells whether the last 512 bytes of path are a fixed-disk VHD
// footer with a valid checksum.
func isFixedVHD(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil || end < 1024 {
		return false
	}
	b := make([]byte, 512)
	if _, err := f.ReadAt(b, end-512); err != nil {
		return false
	}
	if string(b[:8]) != "conectix" || binary.BigEndian.Uint32(b[60:64]) != 2 {
		return false
	}
	var sum uint32
	for i, c := range b {
		if i < 64 || i >= 68 {
			sum += uint32(c)
		}
	}
	return ^sum == binary.BigEndian.Uint32(b[64:68])
}

// ConvertOption configures Convert.
type ConvertOption func(*convertConfig)

type convertConfig struct {
	progress    func(done, total int64)
	srcFormat   string
	compression bool
	sum         *string
	srcSum      *string
}

// WithProgress has fn called as the conversion progresses, with the bytes
// of the virtual disk done so far and its size (from qemu-img convert -p's
// percentage, or counted by the raw to raw copy); the last call is
// (total, total). fn is called from one goroutine at a time.
func WithProgress(fn func(done, total int64)) ConvertOption {
	return func(c *convertConfig) { c.progress = fn }
}

// WithSourceFormat sets the source's format (qemu-img's name; "vhd" is
// taken for "vpc") instead of detecting it with Inspect.
func WithSourceFormat(f string) ConvertOption {
	return func(c *convertConfig) { c.srcFormat = f }
}

// WithCompression compresses qcow2 output (qemu-img convert -c); it is
// ignored for the other formats (streamOptimized vmdk is always
// compressed).
func WithCompression(on bool) ConvertOption {
	return func(c *convertConfig) { c.compression = on }
}

// WithSHA256 has Convert store the hex sha256 of the file it writes in
// *sum, computed while the file is fsynced rather than in a pass after it.
func WithSHA256(sum *string) ConvertOption {
	return func(c *convertConfig) { c.sum = sum }
}

// WithSourceSHA256 has CopyRaw store the hex sha256 of the source file in
// *sum, from the copy's own read of a raw source (holes hashed as the zeros
// they read as), or read beside qemu-img for the other formats: one pass
// over the source instead of two. The caller compares it before using the
// copy.
func WithSourceSHA256(sum *string) ConvertOption {
	return func(c *convertConfig) { c.srcSum = sum }
}

// Convert writes src as dstFormat (a key of OutputFormats) to dst,
// atomically: a temporary file in dst's folder is written, fsynced and
// renamed over dst; it is removed on error and when ctx ends (which also
// kills qemu-img). src is opened read-only and never modified; its format
// is detected by Inspect unless WithSourceFormat is given, and must be raw,
// qcow2, vmdk, vpc or vhdx, without a backing file.
//
//   - raw: from raw, a sparse copy in Go (all-zero 1 MiB blocks and holes
//     are skipped); from other formats qemu-img, sparse too.
//   - qcow2: compat=1.1, uncompressed unless WithCompression(true).
//   - vmdk: subformat=streamOptimized (what AWS VM import takes).
//   - vhd: qemu-img's vpc, subformat=fixed, force_size=on, so the virtual
//     size is exactly the source's; it must be a whole number of MiB (Azure
//     requires it), else Convert fails: grow the image first.
func Convert(ctx context.Context, src, dst, dstFormat string, opts ...ConvertOption) error {
	var cfg convertConfig
	for _, o := range opts {
		o(&cfg)
	}
	if _, ok := OutputFormats[dstFormat]; !ok {
		return fmt.Errorf("convert: unknown output format %q (want one of %s)", dstFormat, formatList(OutputFormats))
	}
	srcFormat := cfg.srcFormat
	if srcFormat == "vhd" {
		srcFormat = "vpc"
	}
	if srcFormat != "" && !sourceFormats[srcFormat] {
		return fmt.Errorf("convert: unknown source format %q (want one of %s)", cfg.srcFormat, formatList(sourceFormats))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("convert %s: %w", src, err)
	}
	absSrc, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	absDst, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	srcSt, err := os.Stat(absSrc)
	if err != nil {
		return fmt.Errorf("convert: source: %w", err)
	}
	if srcSt.IsDir() {
		return fmt.Errorf("convert: source %s is a folder", absSrc)
	}
	if st, err := os.Stat(filepath.Dir(absDst)); err != nil {
		return fmt.Errorf("convert: destination folder: %w", err)
	} else if !st.IsDir() {
		return fmt.Errorf("convert: destination folder %s is not a folder", filepath.Dir(absDst))
	}
	if st, err := os.Stat(absDst); err == nil && os.SameFile(st, srcSt) {
		return fmt.Errorf("convert: destination %s is the source", absDst)
	}

	info, err := checkSource(ctx, absSrc, srcFormat)
	if err != nil {
		return err
	}
	total := info.VirtualSize
	if dstFormat == "vhd" && total%mib != 0 {
		return fmt.Errorf("convert %s to vhd: virtual size %d bytes is not a whole number of MiB, which Azure requires: grow the image to %d bytes first",
			absSrc, total, (total+mib-1)/mib*mib)
	}

	progress := cfg.progress
	if progress == nil {
		progress = func(int64, int64) {}
	}
	// The output's sha256 is read back from the page cache while
	// atomicfile fsyncs the file: the hash overlaps the disk write.
	var hashDone chan error
	defer func() {
		if hashDone != nil {
			<-hashDone
		}
	}()
	write := func(f *os.File) error {
		if err := cfg.write(ctx, f, absSrc, info, dstFormat, false); err != nil {
			return err
		}
		if cfg.sum != nil {
			// Its own descriptor: atomicfile closes f before the rename.
			r, err := os.Open(f.Name())
			if err != nil {
				return fmt.Errorf("convert %s: %w", absSrc, err)
			}
			hashDone = make(chan error, 1)
			go func() {
				defer r.Close()
				sum, err := sha256Reader(ctx, r, nil, 0)
				*cfg.sum = sum
				hashDone <- err
			}()
		}
		return nil
	}
	err = atomicfile.WriteFunc(absDst, 0o644, write, atomicfile.BeforeRename(func() error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("convert %s: %w", absSrc, err)
		}
		if hashDone != nil {
			err := <-hashDone
			hashDone = nil
			if err != nil {
				return fmt.Errorf("convert %s: %w", absSrc, err)
			}
		}
		return nil
	}))
	if err != nil {
		return err
	}
	progress(total, total)
	return nil
}

// CopyRaw writes src (a raw, qcow2, vmdk, vpc or vhdx image without a
// backing file, as Convert takes) as a raw image into dst, a file of src's
// virtual size holding only zeros (a new, truncated one) that the caller
// created, then truncates dst to that size. Unlike Convert it writes in
// place, with no temporary file and no fsync: it is for scratch copies
// (the builder's working copy, which has loop devices attached before it
// is written; see AttachSpare), made durable, if kept, by the caller.
// Holes and all-zero blocks are not written.
func CopyRaw(ctx context.Context, src string, dst *os.File, opts ...ConvertOption) error {
	var cfg convertConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.srcFormat == "vhd" {
		cfg.srcFormat = "vpc"
	}
	if cfg.srcFormat != "" && !sourceFormats[cfg.srcFormat] {
		return fmt.Errorf("copy: unknown source format %q (want one of %s)", cfg.srcFormat, formatList(sourceFormats))
	}
	absSrc, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	info, err := checkSource(ctx, absSrc, cfg.srcFormat)
	if err != nil {
		return err
	}
	switch {
	case cfg.srcSum == nil:
		err = cfg.write(ctx, dst, absSrc, info, "raw", true)
	case info.Format == "raw":
		h := sha256.New()
		err = sparseCopy(ctx, dst, absSrc, cfg.progress, h)
		*cfg.srcSum = hex.EncodeToString(h.Sum(nil))
	default:
		// qemu-img and the hash read the source side by side; the page
		// cache serves the slower of the two.
		var sumErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			*cfg.srcSum, sumErr = SHA256File(ctx, absSrc, nil)
		}()
		err = cfg.write(ctx, dst, absSrc, info, "raw", true)
		<-done
		if err == nil {
			err = sumErr
		}
	}
	if err != nil {
		return err
	}
	if err := dst.Truncate(info.VirtualSize); err != nil {
		return fmt.Errorf("copy %s: %w", absSrc, err)
	}
	if cfg.progress != nil {
		cfg.progress(info.VirtualSize, info.VirtualSize)
	}
	return nil
}

// checkSource inspects absSrc (format given, or probed when "") and refuses
// formats Convert does not read and images that read another file.
func checkSource(ctx context.Context, absSrc, srcFormat string) (ImageInfo, error) {
	info, err := inspect(ctx, absSrc, srcFormat)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("convert: %w", err)
	}
	if !sourceFormats[info.Format] {
		return ImageInfo{}, fmt.Errorf("convert %s: source format %q is not accepted (want one of %s)", absSrc, info.Format, formatList(sourceFormats))
	}
	if info.BackingFile != "" {
		return ImageInfo{}, fmt.Errorf("convert %s: refusing an image that reads another file (%s)", absSrc, info.BackingFile)
	}
	return info, nil
}

// write fills f with absSrc as dstFormat: the sparse copy in Go for raw to
// raw, else qemu-img convert. inPlace says f holds zeros already and must
// not be recreated (qemu-img -n --target-is-zero). qemu-img's own flushes
// are turned off (-t unsafe): the callers fsync the file themselves, once,
// or do not need it on disk (a scratch copy).
func (cfg *convertConfig) write(ctx context.Context, f *os.File, absSrc string, info ImageInfo, dstFormat string, inPlace bool) error {
	progress := cfg.progress
	if progress == nil {
		progress = func(int64, int64) {}
	}
	if info.Format == "raw" && dstFormat == "raw" {
		return SparseCopy(ctx, f, absSrc, progress)
	}
	args := []string{"convert", "-f", info.Format, "-t", "unsafe"}
	if inPlace {
		args = append(args, "-n", "--target-is-zero")
	}
	switch dstFormat {
	case "raw":
		args = append(args, "-O", "raw")
	case "qcow2":
		args = append(args, "-O", "qcow2")
		if !inPlace {
			args = append(args, "-o", "compat=1.1")
		}
		if cfg.compression {
			args = append(args, "-c")
		}
	case "vmdk":
		args = append(args, "-O", "vmdk", "-o", "subformat=streamOptimized")
	case "vhd":
		args = append(args, "-O", "vpc", "-o", "subformat=fixed,force_size=on")
	}
	var pw *progressWriter
	if cfg.progress != nil {
		args = append(args, "-p")
		pw = &progressWriter{total: info.VirtualSize, fn: progress}
	}
	args = append(args, absSrc, f.Name())
	if _, err := qemuImg(ctx, pw, args...); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("convert %s: %w", absSrc, ctx.Err())
		}
		return fmt.Errorf("convert %s: %w", absSrc, err)
	}
	return nil
}

func formatList[V any](m map[string]V) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// qemuImg runs qemu-img with args and returns its standard output (or
// streams it to stdout when not nil). ctx's end kills it; it is reaped
// before qemuImg returns.
func qemuImg(ctx context.Context, stdout io.Writer, args ...string) ([]byte, error) {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil, errors.New("qemu-img not found (scripts/deps.sh installs qemu-utils)")
	}
	var out bytes.Buffer
	errb := &tail.Buffer{Max: 8 << 10}
	c := exec.CommandContext(ctx, bin, args...)
	c.Stdout, c.Stderr = &out, errb
	if stdout != nil {
		c.Stdout = stdout
	}
	c.WaitDelay = 10 * time.Second
	if err := c.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		return nil, fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}

// progressWriter parses qemu-img convert -p output: "    (12.34/100%)\r".
type progressWriter struct {
	total int64
	fn    func(done, total int64)
	line  []byte
	last  int64
}

func (w *progressWriter) Write(p []byte) (int, error) {
	for _, c := range p {
		if c != '\r' && c != '\n' {
			if len(w.line) < 256 {
				w.line = append(w.line, c)
			}
			continue
		}
		s := strings.TrimSpace(string(w.line))
		w.line = w.line[:0]
		s, ok := strings.CutPrefix(s, "(")
		if !ok {
			continue
		}
		s, ok = strings.CutSuffix(s, "/100%)")
		if !ok {
			continue
		}
		pct, err := strconv.ParseFloat(s, 64)
		if err != nil || pct < 0 || pct > 100 {
			continue
		}
		done := int64(pct / 100 * float64(w.total))
		if done > w.total {
			done = w.total
		}
		if done < w.last {
			continue
		}
		w.last = done
		w.fn(done, w.total)
	}
	return len(p), nil
}

// SHA256File returns the hex sha256 of the file at path, reading it in
// 1 MiB blocks; progress, if not nil, is called after each with the bytes
// hashed and the file's size. ctx's end stops it.
func SHA256File(ctx context.Context, path string, progress func(done, total int64)) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("sha256: %w", err)
	}
	defer f.Close()
	total, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("sha256 %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("sha256 %s: %w", path, err)
	}
	sum, err := sha256Reader(ctx, f, progress, total)
	if err != nil {
		return "", fmt.Errorf("sha256 %s: %w", path, err)
	}
	return sum, nil
}

// sha256Reader hashes r to its end in 1 MiB reads; see SHA256File.
func sha256Reader(ctx context.Context, r io.Reader, progress func(done, total int64), total int64) (string, error) {
	h := sha256.New()
	buf := make([]byte, mib)
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := r.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			done += int64(n)
			if progress != nil {
				progress(done, max(total, done))
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// WriteChecksums writes sums (file name or path -> hex sha256) to path in
// sha256sum's format, "<hex>  <basename>\n", sorted by base name, replacing
// path atomically. Names with a newline, carriage return or backslash
// (which sha256sum would escape) and malformed sums are refused.
func WriteChecksums(path string, sums map[string]string) error {
	type line struct{ name, sum string }
	lines := make([]line, 0, len(sums))
	seen := map[string]string{}
	for name, sum := range sums {
		base := filepath.Base(name)
		if base == "." || base == "/" || strings.ContainsAny(base, "\n\r\\") {
			return fmt.Errorf("checksums: bad file name %q", name)
		}
		if prev, ok := seen[base]; ok {
			return fmt.Errorf("checksums: %s and %s have the same base name", prev, name)
		}
		seen[base] = name
		sum = strings.ToLower(sum)
		if b, err := hex.DecodeString(sum); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("checksums: %s: %q is not a hex sha256", name, sum)
		}
		lines = append(lines, line{base, sum})
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].name < lines[j].name })
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.sum + "  " + l.name + "\n")
	}
	return atomicfile.WriteFile(path, []byte(b.String()), 0o644)
}
