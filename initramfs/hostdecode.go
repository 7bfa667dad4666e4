package initramfs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmodctl/packer-plugin-kmod/compress"
)

// unitDecoder decodes the compressed unit at the start of a byte slice and
// tells its compressed length (compress.UnitReader's contract).
type unitDecoder interface {
	io.Reader
	Len() int64
	Close() error
}

// hostDecodeMin is the smallest unit handed to the host's decompressor:
// below it starting a process costs more than the library's slower decoding.
const hostDecodeMin = 1 << 20

// newUnitDecoder returns a decoder of the unit of format f at the start of
// b. Large zstd and xz units are decoded by the host's own zstd or xz, as
// initramfs-tools itself does (unmkinitramfs, lsinitramfs), when the tool is
// installed: the pure-Go decoders run at about half the speed of C zstd
// (github.com/klauspost/compress) and a quarter of C xz
// (github.com/ulikunitz/xz), and decoding is all the time `ls` and `inject`
// spend. The unit's extent is known from its framing before decoding, so
// the tool gets exactly the unit. Any failure of the tool falls back to the
// library (see hostDecoder.fallback): results and errors are the library's.
// gzip stays with github.com/klauspost/compress/gzip, which is faster than
// C gzip and whose member end is only known by decoding it.
func newUnitDecoder(b []byte, f compress.Format) (unitDecoder, error) {
	if h := startHostDecoder(b, f); h != nil {
		return h, nil
	}
	u, err := compress.NewUnitReader(b, f)
	if err != nil {
		return nil, err
	}
	return u, nil
}

// hostDecoder reads the output of `zstd -dc` or `xz -dc` fed one unit.
type hostDecoder struct {
	src       []byte // the unit
	f         compress.Format
	cmd       *exec.Cmd
	out       *os.File
	stderr    bytes.Buffer
	delivered int64
	waited    bool
	lib       *compress.UnitReader // after a failure of the tool
}

func startHostDecoder(b []byte, f compress.Format) *hostDecoder {
	return startHostDecoderTo(b, f, nil)
}

// startHostDecoderTo starts the tool with its output to a pipe, or to the
// file output returns (nil: a pipe).
func startHostDecoderTo(b []byte, f compress.Format, output func() (*os.File, error)) *hostDecoder {
	var tool string
	args := []string{"-dcq"}
	var n int64
	var err error
	switch f {
	case compress.Zstd:
		tool = "zstd"
		n, err = compress.ZstdFrameLen(b)
	case compress.XZ:
		tool = "xz"
		// -T0: the blocks of a multi-block stream (xz -T0 writes them,
		// initramfs-tools uses it) are decoded on all cores.
		args = append(args, "-T0")
		n, err = compress.XZStreamLen(b)
	default:
		return nil
	}
	if err != nil || n < hostDecodeMin {
		return nil // the library reports a bad frame; small units stay in process
	}
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil
	}
	h := &hostDecoder{src: b[:n], f: f}
	// An empty environment: XZ_OPT, XZ_DEFAULTS and ZSTD_* cannot change
	// what the tool does. -q: no warnings on stderr for the caller.
	h.cmd = &exec.Cmd{Path: path, Args: append([]string{tool}, args...), Env: []string{},
		Stdin: bytes.NewReader(h.src), Stderr: &limitedBuffer{b: &h.stderr, left: 4 << 10},
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}}
	if output != nil {
		out, err := output()
		if err != nil {
			return nil
		}
		h.cmd.Stdout = out
		if err := h.cmd.Start(); err != nil {
			out.Close()
			return nil
		}
		h.out = out
		return h
	}
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		return nil
	}
	if err := h.cmd.Start(); err != nil {
		return nil
	}
	h.out = out.(*os.File)
	// A 1 MiB pipe instead of 64 KiB: the tool and the reader switch 16
	// times less often. Best effort (pipe-max-size may be lower).
	_, _ = unix.FcntlInt(h.out.Fd(), unix.F_SETPIPE_SZ, 1<<20)
	return h
}

func (h *hostDecoder) Len() int64 { return int64(len(h.src)) }

func (h *hostDecoder) Read(p []byte) (int, error) {
	if h.lib != nil {
		return h.lib.Read(p)
	}
	n, err := h.out.Read(p)
	h.delivered += int64(n)
	if err == nil {
		return n, nil
	}
	if err == io.EOF {
		if err = h.wait(false); err == nil {
			return n, io.EOF
		}
	} else {
		h.wait(true)
	}
	if ferr := h.fallback(err); ferr != nil {
		return n, ferr
	}
	if n > 0 {
		return n, nil
	}
	return h.lib.Read(p)
}

// fallback switches to the library after the tool failed (corrupt data, a
// limit of the tool): it decodes the unit again, skips what the tool
// already delivered, and goes on from there, so that the caller sees the
// library's error at the library's place, or the rest of the data when only
// the tool refused it.
func (h *hostDecoder) fallback(cause error) error {
	lib, err := compress.NewUnitReader(h.src, h.f)
	if err != nil {
		return err
	}
	h.lib = lib
	if _, err := io.CopyN(io.Discard, lib, h.delivered); err != nil {
		if err == io.EOF {
			// The library produced less than the tool: trust neither.
			return fmt.Errorf("%s: %v: %s", h.f, cause, bytes.TrimSpace(h.stderr.Bytes()))
		}
		return err
	}
	return nil
}

// wait ends the tool (killed first when kill) and returns its failure.
func (h *hostDecoder) wait(kill bool) error {
	if h.waited {
		return nil
	}
	h.waited = true
	if kill {
		_ = h.cmd.Process.Kill()
	}
	err := h.cmd.Wait()
	if err != nil && !kill {
		return fmt.Errorf("%s -dc: %w", h.cmd.Args[0], err)
	}
	return nil
}

// Close stops the tool if it is still running and releases the decoder.
func (h *hostDecoder) Close() error {
	h.wait(true)
	if h.lib != nil {
		return h.lib.Close()
	}
	return nil
}

// limitedBuffer keeps the first bytes written to it and drops the rest.
type limitedBuffer struct {
	b    *bytes.Buffer
	left int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.left > 0 {
		k := min(len(p), l.left)
		l.b.Write(p[:k])
		l.left -= k
	}
	return len(p), nil
}

// hostDecodeToMemory decodes the zstd or xz unit at the start of b with the
// host's tool into a memory file and maps it, for Inject, which keeps the
// whole stream: the tool writes it once and it is read in place, instead of
// going through a pipe and being copied into a buffer. The file cannot grow
// past limit+1 bytes (sealed), so a bomb stops the tool. It returns nil
// when the tool is missing, fails or writes more than limit bytes; the
// caller then decodes the unit the usual way (errors are the library's).
func hostDecodeToMemory(b []byte, f compress.Format, limit int64) *mappedUnit {
	h := startHostDecoderTo(b, f, func() (*os.File, error) {
		fd, err := unix.MemfdCreate("kmodctl-initramfs", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			return nil, err
		}
		mf := os.NewFile(uintptr(fd), "kmodctl-initramfs")
		if err := mf.Truncate(limit + 1); err != nil {
			mf.Close()
			return nil, err
		}
		if _, err := unix.FcntlInt(mf.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_GROW|unix.F_SEAL_SHRINK); err != nil {
			mf.Close()
			return nil, err
		}
		return mf, nil
	})
	if h == nil {
		return nil
	}
	mf := h.out
	defer mf.Close()
	if err := h.cmd.Wait(); err != nil {
		return nil
	}
	// The tool shared the file's offset: it is the stream's length.
	n, err := mf.Seek(0, io.SeekCurrent)
	if err != nil || n > limit {
		return nil
	}
	m := &mappedUnit{n: h.Len(), release: func() {}}
	if n > 0 {
		// Populated: one call maps every page instead of a fault per page.
		data, err := unix.Mmap(int(mf.Fd()), 0, int(n), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil
		}
		m.data = data
		m.release = func() { unix.Munmap(data) }
	}
	m.r = bytes.NewReader(m.data)
	return m
}

// mappedUnit is a unit decoded into memory by hostDecodeToMemory.
type mappedUnit struct {
	data    []byte
	r       *bytes.Reader
	n       int64
	release func()
}

func (m *mappedUnit) Read(p []byte) (int, error) { return m.r.Read(p) }
func (m *mappedUnit) Len() int64                 { return m.n }
func (m *mappedUnit) Close() error               { return nil }
