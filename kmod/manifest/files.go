package manifest

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kmodctl/packer-plugin-kmod/kmod"
)

// ErrNotVerified is wrapped by ModuleFromFile's error for a module whose
// signature does not verify against the certificates it was given.
var ErrNotVerified = errors.New("module signature not verified")

// ModuleFromFile describes the module file at path (on the host; plain
// or compressed), to be installed at imagePath in the image: its name,
// version, srcversion and vermagic from .modinfo, the SHA-256 of the file
// as it is, and, when it is signed, the signer and sig_key as modinfo
// shows them. When certs are given and one of them verifies the
// signature, CertSHA256 is that certificate's SHA256 (see
// NewCertificate). The file is read once, so the checksum and the
// signature are of the same bytes.
//
// A signed module that none of certs (when any are given) verifies is
// still described, without CertSHA256, and returned with an error
// wrapping ErrNotVerified and the reason. Early, Load and Source are
// left for the caller.
func ModuleFromFile(path, imagePath string, certs []*x509.Certificate) (Module, error) {
	if err := checkImagePath(imagePath); err != nil {
		return Module{}, fmt.Errorf("%s: image path: %w", path, err)
	}
	data, err := readModule(path)
	if err != nil {
		return Module{}, err
	}
	km, err := kmod.Parse(data, kmod.InfoOnly())
	if err != nil {
		return Module{}, fmt.Errorf("%s: %w", path, err)
	}
	sum := sha256.Sum256(data)
	mod := Module{
		Name:   km.Name(),
		Path:   imagePath,
		SHA256: hex.EncodeToString(sum[:]),
	}
	if mod.Name == "" {
		mod.Name = kmod.ModuleNameFromPath(path)
	}
	mod.Version, _ = km.Get("version")
	mod.Srcversion, _ = km.Get("srcversion")
	mod.Vermagic = km.Vermagic()
	if km.Signature == nil {
		return mod, nil
	}
	res, verr := kmod.VerifyBytes(data, certs)
	if res == nil {
		return Module{}, fmt.Errorf("%s: %w", path, verr)
	}
	mod.Signer, mod.SigKey = res.Signer, res.SigKey
	if len(certs) == 0 {
		return mod, nil
	}
	if verr != nil {
		return mod, fmt.Errorf("%s: %w: %w", path, ErrNotVerified, verr)
	}
	if res.Certificate != nil {
		c := NewCertificate(res.Certificate)
		mod.CertSHA256 = c.SHA256
	}
	return mod, nil
}

// readModule reads a module file whole, refusing files larger than a
// module can be.
func readModule(path string) ([]byte, error) {
	f, st, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st.Size() > kmod.MaxModuleSize {
		return nil, fmt.Errorf("%s: %w: %d bytes", path, kmod.ErrTooLarge, st.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, kmod.MaxModuleSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > kmod.MaxModuleSize {
		return nil, fmt.Errorf("%s: %w", path, kmod.ErrTooLarge)
	}
	return data, nil
}

// openRegular opens path and checks that it is a regular file (what the
// open followed, symlinks included), returning it with its FileInfo.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	return f, st, nil
}

// InitramfsFromFile describes the initramfs image file at path (on the
// host), which is, byte for byte, the file at imagePath in the image: its
// length and SHA-256, for Kernel.Initramfs.
func InitramfsFromFile(path, imagePath string) (*Initramfs, error) {
	if err := checkImagePath(imagePath); err != nil {
		return nil, fmt.Errorf("%s: image path: %w", path, err)
	}
	f, _, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Initramfs{Path: imagePath, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Mismatch is a module file that is not as the manifest says.
type Mismatch struct {
	// Kernel is the release, Module the module's name, Path its path in
	// the image.
	Kernel, Module, Path string
	// Want is the manifest's SHA-256, Got the file's ("" when it could
	// not be read).
	Want, Got string
	// Reason is MismatchMissing, MismatchDifferent, MismatchNotRegular or
	// MismatchUnreadable followed by ": " and the error.
	Reason string
}

func (m Mismatch) String() string {
	s := fmt.Sprintf("%s: %s (%s): %s", m.Kernel, m.Module, m.Path, m.Reason)
	if m.Got != "" {
		s += fmt.Sprintf(" (sha256 %s, want %s)", m.Got, m.Want)
	}
	return s
}

// Reasons of a Mismatch.
const (
	MismatchMissing    = "missing"
	MismatchDifferent  = "different content"
	MismatchNotRegular = "not a regular file"
	MismatchUnreadable = "unreadable"
)

// Check compares every module of m with its file in the image tree at
// root (a host folder; "/" on the running system) and returns the
// modules whose file is missing, not a regular file, unreadable or of
// another SHA-256, in manifest order; none when all match. Paths are
// resolved inside root: a symbolic link in the image (/lib -> usr/lib,
// even absolute) is followed as the image would, never out of root.
func (m *Manifest) Check(root string) []Mismatch {
	var out []Mismatch
	for _, k := range m.Kernels {
		for _, mod := range k.Modules {
			mm := Mismatch{Kernel: k.Release, Module: mod.Name, Path: mod.Path, Want: mod.SHA256}
			got, reason := fileSum(root, mod.Path)
			switch {
			case reason != "":
				mm.Reason = reason
			case got != mod.SHA256:
				mm.Got, mm.Reason = got, MismatchDifferent
			default:
				continue
			}
			out = append(out, mm)
		}
	}
	return out
}

// fileSum returns the hex SHA-256 of the image file p under root, or why
// it has none.
func fileSum(root, p string) (string, string) {
	host, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return "", MismatchUnreadable + ": " + err.Error()
	}
	f, err := os.Open(host)
	if errors.Is(err, fs.ErrNotExist) {
		return "", MismatchMissing
	}
	if err != nil {
		return "", MismatchUnreadable + ": " + err.Error()
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", MismatchUnreadable + ": " + err.Error()
	}
	if !st.Mode().IsRegular() {
		return "", MismatchNotRegular
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", MismatchUnreadable + ": " + err.Error()
	}
	return hex.EncodeToString(h.Sum(nil)), ""
}
