//go:build !linux

package modfile

import (
	"fmt"
	"os"
)

// File is a module file opened for piecewise reading.
type File struct{ *os.File }

// OpenFile opens path for reading and returns its size.
func OpenFile(path string) (File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return File{}, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return File{}, 0, fmt.Errorf("not a regular file (%v)", st.Mode().Type())
	}
	return File{f}, st.Size(), nil
}
