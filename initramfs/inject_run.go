package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/initramfs/cpio"
)

// newArchive is the archive index of Inject's own records in the model.
const newArchive = 1 << 30

// injection is one Inject call: run opens the image, models its tree
// (buildTree), has the planners (inject_plan.go) add records to the model,
// and the writers (inject_write.go) write the result.
type injection struct {
	cfg    injectOptions
	res    *InjectResult
	im     *Image
	vt     *vtree
	kver   string
	moddir string // resolved lib/modules/KVER in the image
	// kernels are the releases the image has modules for.
	kernels []string
	mtime   uint32
	ino     uint32
	recs    []plannedRecord
	// firstMerged is the first archive Rewrite merges; early holds the
	// image's bytes before it.
	firstMerged int
	early       []byte
	// raw holds the bytes of the uncompressed segments.
	raw map[int][]byte
	// pending is Append's output, being written since the start.
	pending *pendingAppend
}

// plannedRecord is a record Inject adds, in the order it is written.
type plannedRecord struct {
	rec  cpio.Record
	body []byte
}

func (j *injection) warnf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	j.res.Warnings = append(j.res.Warnings, msg)
	if j.cfg.warn != nil {
		j.cfg.warn(msg)
	}
}

func (j *injection) run(imagePath string) error {
	st, err := os.Stat(imagePath)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", imagePath)
	}
	j.res.SizeBefore = st.Size()
	var openOpts []Option
	if j.cfg.limits != nil {
		openOpts = append(openOpts, WithLimits(*j.cfg.limits))
	}
	// Append's output starts with the image as it is: copy it (and flush
	// the copy) while the image is decoded and the records planned.
	if j.cfg.mode == Append {
		pending := j.startAppend(imagePath)
		j.pending = pending
		defer pending.abort()
	}
	// Open decodes every segment once to index it and keeps the streams
	// for the model.
	keeper := &streamKeeper{}
	// The model's bodies are slices of the streams: freed last.
	defer keeper.free()
	openOpts = append(openOpts, keepStreams(keeper))
	im, err := Open(imagePath, openOpts...)
	if err != nil {
		return err
	}
	defer im.Close()
	j.im = im
	j.res.Flavor = im.Flavor()
	if j.cfg.load && j.res.Flavor != InitramfsTools && j.res.Flavor != Dracut && j.res.Flavor != Mkinitcpio {
		return fmt.Errorf("%s: --load: the image's flavor is %s; kmodctl knows how initramfs-tools (conf/modules), dracut (modules-load.d or rd.driver.pre) and mkinitcpio (MODULES in /config) load modules at boot, not this one: inject without --load and load the modules another way", imagePath, j.res.Flavor)
	}
	j.firstMerged = j.mergeStart()
	if err := j.chooseKernel(); err != nil {
		return err
	}
	// Keep what the model needs from the mapping (the uncompressed
	// archives, the bytes Rewrite keeps) and let the mapping go before the
	// decompressed segments fill memory.
	j.early = append([]byte(nil), im.Bytes()[:im.Segments[j.firstMerged].Offset]...)
	j.raw = map[int][]byte{}
	for i, seg := range im.Segments {
		if seg.Compression == compress.None {
			j.raw[i] = append([]byte(nil), im.Bytes()[seg.Offset:seg.Offset+seg.Length]...)
		}
	}
	im.Close()
	err = j.buildTree(keeper, imagePath)
	if err != nil {
		return err
	}
	if err := j.findModuleDir(); err != nil {
		return err
	}
	if err := j.planModules(); err != nil {
		return err
	}
	if err := j.planDepmod(); err != nil {
		return err
	}
	if j.cfg.load {
		if err := j.planLoad(); err != nil {
			return err
		}
	}
	var size int64
	if j.cfg.mode == Append {
		seg, err := j.appendArchive()
		if err != nil {
			return err
		}
		if size, err = j.pending.finish(seg); err != nil {
			return err
		}
	} else if size, err = writeImage(imagePath, j.cfg.backup, j.rewriteImage); err != nil {
		return err
	}
	j.res.Backup = j.cfg.backup
	j.res.SizeAfter = size
	return nil
}

// mergeStart is the index of the first archive Rewrite merges: the leading
// uncompressed archives before a compressed one are early ones (microcode,
// mkinitcpio's early cpio) and stay; in an all-uncompressed image only
// leading archives holding nothing but kernel/ (early microcode) stay.
func (j *injection) mergeStart() int {
	segs := j.im.Segments
	for i, s := range segs {
		if s.Compression != compress.None {
			return i
		}
	}
	early := map[int]bool{}
	for i := range segs {
		early[i] = true
	}
	for _, e := range j.im.Entries {
		p := cleanPath(e.Name)
		if p != "kernel" && !strings.HasPrefix(p, "kernel/") && p != "early_cpio" && p != "." {
			early[e.Segment] = false
		}
	}
	for i := range segs {
		if !early[i] || i == len(segs)-1 {
			return i
		}
	}
	return len(segs) - 1
}

// buildTree runs every record of the image through the model. Each
// compressed segment's stream is the one Open decoded (keeper); the model's
// bodies are slices of it (uncompressed segments: of their copies in raw).
func (j *injection) buildTree(keeper *streamKeeper, imagePath string) error {
	vt := newVtree()
	im := j.im
	var file *os.File
	defer func() {
		if file != nil {
			file.Close()
		}
	}()
	next := 0 // first entry of the segment
	for i, seg := range im.Segments {
		// Bodies: slices of the decompressed stream (compressed segments)
		// or of the segment's bytes (uncompressed ones).
		data := j.raw[i]
		start := seg.Offset
		if seg.Compression != compress.None {
			start = 0
			if data = keeper.stream(i); data == nil {
				// Not kept (beyond its reservation): decode from the
				// file, the image's mapping being gone.
				if file == nil {
					var err error
					if file, err = os.Open(imagePath); err != nil {
						return err
					}
				}
				r, err := compress.NewReader(bufio.NewReaderSize(io.NewSectionReader(file, seg.Offset, seg.Length), 1<<20), seg.Compression)
				if err != nil {
					return im.segErr(i, "", err)
				}
				data, err = readStream(r, make([]byte, seg.Size), nil)
				r.Close()
				if err != nil {
					return im.segErr(i, "", err)
				}
			}
			if int64(len(data)) != seg.Size {
				return im.segErr(i, "", fmt.Errorf("decompressed %d bytes, indexed %d", len(data), seg.Size))
			}
		}
		get := func(off, n int64) []byte {
			off -= start
			return data[off : off+n : off+n]
		}
		vt.archive = i
		// Records follow each other; a gap holds trailers (which end the
		// hard link groups) and padding.
		end := start + int64(len(data))
		expect := start
		for ; next < len(im.Entries) && im.Entries[next].Segment == i; next++ {
			e := &im.Entries[next]
			body := e.Offset + cpio.HeaderSize + int64(len(e.Name)) + 1
			body += (4 - body&3) & 3
			bodyEnd := body + int64(e.FileSize)
			if e.Offset < expect || bodyEnd > end {
				return im.segErr(i, e.Name, fmt.Errorf("record at %d outside the segment", e.Offset))
			}
			if e.Offset != expect {
				if err := vt.gap(get(expect, e.Offset-expect)); err != nil {
					return im.segErr(i, e.Name, err)
				}
			}
			rec := e.Record
			if err := vt.apply(&rec, get(body, int64(e.FileSize))); err != nil {
				return im.segErr(i, e.Name, err)
			}
			expect = min(bodyEnd+(4-bodyEnd&3)&3, end)
		}
		if expect < end {
			if err := vt.gap(get(expect, end-expect)); err != nil {
				return im.segErr(i, "", err)
			}
		}
	}
	j.vt = vt
	j.ino = vt.maxIno + 1
	return nil
}

func (j *injection) chooseKernel() error {
	kernels := j.im.Kernels()
	kver := j.cfg.kver
	switch {
	case kver != "":
	case len(kernels) == 1:
		kver = kernels[0]
	case len(kernels) == 0:
		return fmt.Errorf("%s: the image has no lib/modules/<release> folder: name its kernel release explicitly", j.im.Name)
	default:
		return fmt.Errorf("%s: the image has modules for several kernels (%s): name the release explicitly", j.im.Name, strings.Join(kernels, ", "))
	}
	if err := checkKernelRelease(kver); err != nil {
		return err
	}
	j.kver = kver
	j.kernels = kernels
	j.res.KernelRelease = kver
	return nil
}

// checkKernelRelease refuses a release that is not one folder name.
func checkKernelRelease(kver string) error {
	if kver == "" || strings.ContainsAny(kver, "/\x00") || kver == "." || kver == ".." {
		return fmt.Errorf("invalid kernel release %q", kver)
	}
	return nil
}

// findModuleDir resolves lib/modules/KVER in the model.
func (j *injection) findModuleDir() error {
	kver := j.kver
	n, err := j.vt.lookup("lib/modules/"+kver, true)
	if err != nil {
		return err
	}
	if n == nil {
		n, err = j.vt.lookup("usr/lib/modules/"+kver, true)
		if err != nil {
			return err
		}
	}
	if n == nil || !n.isDir() {
		return fmt.Errorf("%s: the image has no modules for kernel %s (it has: %s)", j.im.Name, kver, strings.Join(j.kernels, ", "))
	}
	j.moddir = n.path()
	return nil
}
