package kmod

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/kmodctl/packer-plugin-kmod/compress"
	"github.com/kmodctl/packer-plugin-kmod/internal/atomicfile"
	"github.com/kmodctl/packer-plugin-kmod/kmod/modsig"
)

// IfSigned says what signing does with a module that already carries a
// signature.
type IfSigned int

const (
	// Replace strips every existing signature and signs again (default).
	// sign-file instead appends a second signature, which the kernel
	// then reads as part of the content.
	Replace IfSigned = iota
	// Skip leaves an already signed module untouched.
	Skip
	// Fail refuses an already signed module with ErrAlreadySigned.
	Fail
)

func (p IfSigned) String() string {
	switch p {
	case Replace:
		return "replace"
	case Skip:
		return "skip"
	case Fail:
		return "fail"
	}
	return fmt.Sprintf("IfSigned(%d)", int(p))
}

// ErrAlreadySigned is returned for a signed module under WithIfSigned(Fail).
var ErrAlreadySigned = errors.New("module is already signed")

// DefaultMaxModuleSize bounds the decompressed size of a module that
// signing and verification accept, so a compression bomb fails early.
const DefaultMaxModuleSize = 1 << 30

type signConfig struct {
	hash     crypto.Hash
	ifSigned IfSigned
	maxSize  int64
}

// SignOption configures NewSigner; one with a bad argument makes NewSigner
// fail.
type SignOption func(*signConfig) error

// WithHash sets the digest: crypto.SHA256 (default, Debian's
// CONFIG_MODULE_SIG_HASH), crypto.SHA384 or crypto.SHA512. Use the target
// kernel's CONFIG_MODULE_SIG_HASH when it differs; the hash must be built
// into that kernel.
func WithHash(h crypto.Hash) SignOption {
	return func(c *signConfig) error {
		if err := modsig.CheckHash(h); err != nil {
			return err
		}
		c.hash = h
		return nil
	}
}

// WithIfSigned sets the policy for modules that are already signed.
func WithIfSigned(p IfSigned) SignOption {
	return func(c *signConfig) error {
		switch p {
		case Replace, Skip, Fail:
		default:
			return fmt.Errorf("unknown IfSigned policy %d", int(p))
		}
		c.ifSigned = p
		return nil
	}
}

// WithMaxModuleSize bounds the decompressed module size (default
// DefaultMaxModuleSize); n must be positive.
func WithMaxModuleSize(n int64) SignOption {
	return func(c *signConfig) error {
		if n <= 0 {
			return fmt.Errorf("max module size %d: want a positive number of bytes", n)
		}
		c.maxSize = n
		return nil
	}
}

// Signer signs module files the way Kbuild and DKMS do: decompress, strip
// the old signature, sign the ELF with sign-file's exact format, compress
// again in the same format (xz with a CRC32 check). It is safe for
// concurrent use.
type Signer struct {
	sig *modsig.Signer
	cfg signConfig
}

// NewSigner prepares a Signer for key and its certificate cert (RSA, or
// ECDSA P-256/P-384). The key must match the certificate.
func NewSigner(key crypto.Signer, cert *x509.Certificate, opts ...SignOption) (*Signer, error) {
	cfg := signConfig{hash: crypto.SHA256, ifSigned: Replace, maxSize: DefaultMaxModuleSize}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	s, err := modsig.NewSigner(key, cert, cfg.hash)
	if err != nil {
		return nil, err
	}
	return &Signer{sig: s, cfg: cfg}, nil
}

// SignResult describes what SignBytes did.
type SignResult struct {
	// Compression is the module's compression, kept in the output.
	Compression compress.Format
	// Skipped is true when the module was already signed and the policy
	// was Skip: the output is the input.
	Skipped bool
	// Replaced counts the signatures stripped before signing (more than
	// one when sign-file had been run on a signed module).
	Replaced int
	// PreviousSigner is the signer (issuer CN) of the outermost existing
	// signature, if any.
	PreviousSigner string
	// ContentSize is the size of the signed ELF content, SignatureSize the
	// bytes appended to it (CMS, struct, magic), both uncompressed.
	ContentSize, SignatureSize int
}

// notELFError is returned for content that is not an ELF file.
type notELFError struct{ head []byte }

func (e notELFError) Error() string {
	return fmt.Sprintf("not an ELF module (starts with %q)", e.head)
}

func (e notELFError) Is(target error) bool { return target == ErrNotELF }

var elfMagic = []byte("\x7fELF")

// SignBytes signs a module image: plain or compressed (gzip, xz, zstd),
// unsigned or signed (see WithIfSigned). data is not modified. With Skip
// on a signed module, out is data itself.
func (s *Signer) SignBytes(data []byte) (out []byte, result SignResult, err error) {
	return s.signBytes(data, false)
}

// signBytes does SignBytes; owned says data may be overwritten past its
// signed content and its spare capacity used for the output.
func (s *Signer) signBytes(data []byte, owned bool) (out []byte, res SignResult, err error) {
	res.Compression = compress.Detect(data)
	raw := data
	if res.Compression != compress.None {
		raw, err = compress.Decompress(data, res.Compression, s.cfg.maxSize)
		if err != nil {
			return nil, res, fmt.Errorf("decompress: %w", err)
		}
		owned = true
	} else if int64(len(data)) > s.cfg.maxSize {
		return nil, res, fmt.Errorf("module of %d bytes exceeds the %d-byte limit", len(data), s.cfg.maxSize)
	}

	content := raw
	for {
		c, sig, err := modsig.Split(content)
		if c == nil {
			// The trailer itself is bad: the content's end is unknown.
			return nil, res, fmt.Errorf("existing signature: %w", err)
		}
		if sig == nil && err == nil {
			break
		}
		// A good trailer with an unparsable CMS is still a signature to
		// strip.
		if res.Replaced == 0 {
			if sig != nil && len(sig.Signers) > 0 {
				res.PreviousSigner = sig.Signers[0].IssuerCN
			}
			switch s.cfg.ifSigned {
			case Skip:
				res.Skipped = true
				return data, res, nil
			case Fail:
				if res.PreviousSigner != "" {
					return nil, res, fmt.Errorf("%w (by %q)", ErrAlreadySigned, res.PreviousSigner)
				}
				return nil, res, ErrAlreadySigned
			}
		}
		content = c
		res.Replaced++
	}
	if !bytes.HasPrefix(content, elfMagic) {
		head := content
		if len(head) > 4 {
			head = head[:4]
		}
		return nil, res, notELFError{head: bytes.Clone(head)}
	}
	res.ContentSize = len(content)

	var dst []byte
	if owned {
		// Append in place over the old signature, into spare capacity:
		// the content is not copied.
		dst = content
	} else {
		dst = make([]byte, len(content), len(content)+s.sig.MaxSize())
		copy(dst, content)
	}
	out, err = s.sig.Append(dst, content)
	if err != nil {
		return nil, res, err
	}
	res.SignatureSize = len(out) - len(content)
	if res.Compression != compress.None {
		if out, err = compress.Compress(out, res.Compression); err != nil {
			return nil, res, fmt.Errorf("compress %s: %w", res.Compression, err)
		}
	}
	return out, res, nil
}

// SignFile signs the module at path in place (see SignFileResult).
func (s *Signer) SignFile(path string) error {
	_, err := s.SignFileResult(path)
	return err
}

// SignFileResult signs the module at path in place: read, SignBytes, then
// an atomic replacement that keeps the file's mode and owner (a symlink's
// target is replaced, not the link). A skipped module is not rewritten; on
// any error the file is left untouched. Errors name the file.
func (s *Signer) SignFileResult(path string) (SignResult, error) {
	res, err := s.signFile(path)
	if err != nil {
		return res, fileError("sign", path, err)
	}
	return res, nil
}

func (s *Signer) signFile(path string) (SignResult, error) {
	j, err := s.prepare(path)
	if err != nil || j.res.Skipped {
		return j.res, err
	}
	return j.res, j.write()
}

// job is a signed module waiting to be written.
type job struct {
	target string
	out    []byte
	perm   os.FileMode
	res    SignResult
}

func (j *job) write(opts ...atomicfile.Option) error {
	return atomicfile.WriteFile(j.target, j.out, j.perm, opts...)
}

// prepare reads and signs the module at path (the CPU part of signFile).
func (s *Signer) prepare(path string) (job, error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return job{}, err
	}
	f, err := os.Open(target)
	if err != nil {
		return job{}, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return job{}, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return job{}, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	if st.Size() > s.cfg.maxSize {
		f.Close()
		return job{}, fmt.Errorf("file of %d bytes exceeds the %d-byte limit", st.Size(), s.cfg.maxSize)
	}
	// Room for the signature, so an uncompressed module is signed in its
	// own buffer.
	buf := make([]byte, st.Size(), st.Size()+int64(s.sig.MaxSize()))
	_, err = io.ReadFull(f, buf)
	f.Close()
	if err != nil {
		return job{}, fmt.Errorf("read: %w", err)
	}
	out, res, err := s.signBytes(buf, true)
	return job{target: target, out: out, perm: st.Mode().Perm(), res: res}, err
}

// SignFiles signs the modules at paths in place, as SignFile does, and
// returns the errors of the files that failed, in the order of paths, each
// naming its file; nil when all succeeded. See SignFilesResults.
func (s *Signer) SignFiles(ctx context.Context, paths []string, workers int) []error {
	_, errs := s.SignFilesResults(ctx, paths, workers)
	var out []error
	for _, err := range errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// SignFilesResults signs the modules at paths in place, as SignFileResult
// does, and returns each file's result and error (nil on success; errors
// name the file), indexed like paths.
//
// The private-key operations are CPU-bound: workers goroutines (<= 0:
// GOMAXPROCS) read, sign and write each module into its temporary file,
// reusing one buffer each, while more goroutines fsync those files and
// rename them over the modules, so that waiting on the disk overlaps the
// signing. The folders are fsynced once each at the end. Every temporary
// file is created (ahead, by one goroutine) before the first module is
// replaced, which keeps ext4 without a journal from searching past the
// inodes just freed (see atomicfile.Reserved). Cancelling ctx stops before
// the next file; files not signed then report ctx's error and their
// temporary files are removed (a killed process can leave them, named
// .NAME.tmp-*, next to the modules).
func (s *Signer) SignFilesResults(ctx context.Context, paths []string, workers int) ([]SignResult, []error) {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	workers = max(1, min(workers, len(paths)))
	syncers := max(1, min(max(8, 2*workers), len(paths)))
	results := make([]SignResult, len(paths))
	errs := make([]error, len(paths))
	fail := func(i int, err error) { errs[i] = fileError("sign", paths[i], err) }

	// The creator reserves the temporary files in order and hands them to
	// the workers; the channel holds them all, so it never waits.
	type reserved struct {
		i    int
		r    atomicfile.Reserved
		size int64
	}
	todo := make(chan reserved, len(paths))
	allReserved := make(chan struct{})
	go func() {
		defer close(allReserved)
		defer close(todo)
		for i, p := range paths {
			if err := ctx.Err(); err != nil {
				fail(i, err)
				continue
			}
			target, st, err := s.open(p)
			if err != nil {
				fail(i, err)
				continue
			}
			r, err := atomicfile.Reserve(target, st.Mode().Perm())
			if err != nil {
				fail(i, err)
				continue
			}
			todo <- reserved{i, r, st.Size()}
		}
	}()

	// Written temporary files go to the syncers, open; the buffer bounds
	// the open files.
	type written struct {
		i int
		r atomicfile.Reserved
		f *os.File
	}
	toSync := make(chan written, syncers)
	var signWG, syncWG sync.WaitGroup
	for w := 0; w < workers; w++ {
		signWG.Add(1)
		go func() {
			defer signWG.Done()
			var buf []byte
			for t := range todo {
				if err := ctx.Err(); err != nil {
					t.r.Discard()
					fail(t.i, err)
					continue
				}
				f, res, err := s.signInto(t.r, t.size, &buf)
				results[t.i] = res
				if err != nil {
					t.r.Discard()
					fail(t.i, err)
					continue
				}
				if res.Skipped {
					t.r.Discard()
					continue
				}
				toSync <- written{t.i, t.r, f}
			}
		}()
	}
	var dirsMu sync.Mutex
	dirs := make(map[string][]int) // folder -> files renamed into it
	for w := 0; w < syncers; w++ {
		syncWG.Add(1)
		go func() {
			defer syncWG.Done()
			for d := range toSync {
				err := d.f.Sync()
				if cerr := d.f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					d.r.Discard()
					fail(d.i, fmt.Errorf("replace %s: %w", d.r.Path, err))
					continue
				}
				// No module is replaced (its inode freed) before every
				// temporary file exists.
				<-allReserved
				if err := d.r.Commit(); err != nil {
					fail(d.i, err)
					continue
				}
				dir := filepath.Dir(d.r.Path)
				dirsMu.Lock()
				dirs[dir] = append(dirs[dir], d.i)
				dirsMu.Unlock()
			}
		}()
	}
	signWG.Wait()
	close(toSync)
	syncWG.Wait()
	// Until its folder is fsynced a rename may not survive a crash, so a
	// failure here fails every file renamed in that folder.
	for dir, idx := range dirs {
		if err := atomicfile.SyncDir(dir); err != nil {
			for _, i := range idx {
				fail(i, err)
			}
		}
	}
	return results, errs
}

// open resolves path's symlinks and checks that the target is a regular
// file within the size limit.
func (s *Signer) open(path string) (target string, st os.FileInfo, err error) {
	target, err = filepath.EvalSymlinks(path)
	if err != nil {
		return "", nil, err
	}
	if st, err = os.Stat(target); err != nil {
		return "", nil, err
	}
	if !st.Mode().IsRegular() {
		return "", nil, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	if st.Size() > s.cfg.maxSize {
		return "", nil, fmt.Errorf("file of %d bytes exceeds the %d-byte limit", st.Size(), s.cfg.maxSize)
	}
	return target, st, nil
}

// signInto reads the module r replaces (size bytes when reserved) into
// *buf, grown as needed and reused across calls, signs it and writes the
// result into r's temporary file, returned open and not yet fsynced.
func (s *Signer) signInto(r atomicfile.Reserved, size int64, buf *[]byte) (*os.File, SignResult, error) {
	in, err := os.Open(r.Path)
	if err != nil {
		return nil, SignResult{}, err
	}
	// Room for the signature, so an uncompressed module is signed in its
	// own buffer; a file that grew since it was reserved is read whole.
	b := (*buf)[:0]
	if need := int(size) + s.sig.MaxSize(); cap(b) < need {
		b = make([]byte, 0, need)
	}
	b, err = readAll(in, b, s.cfg.maxSize)
	in.Close()
	*buf = b[:0]
	if err != nil {
		return nil, SignResult{}, err
	}
	out, res, err := s.signBytes(b, true)
	if err != nil || res.Skipped {
		return nil, res, err
	}
	f, err := r.Open()
	if err != nil {
		return nil, res, err
	}
	if _, err := f.Write(out); err != nil {
		f.Close()
		return nil, res, fmt.Errorf("replace %s: %w", r.Path, err)
	}
	return f, res, nil
}

// readAll appends f's content to b up to max bytes, the way os.ReadFile
// reads, into the caller's buffer.
func readAll(f *os.File, b []byte, max int64) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if int64(len(b)) > max {
			return nil, fmt.Errorf("file of more than %d bytes exceeds the %d-byte limit", max, max)
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
	}
}
