//go:build !linux

package kmod

import (
	"fmt"
	"os"
)

// moduleFile is a module file opened for piecewise reading.
type moduleFile struct{ *os.File }

// openModuleFile opens path for reading and returns its size.
func openModuleFile(path string) (moduleFile, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return moduleFile{}, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return moduleFile{}, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return moduleFile{}, 0, fmt.Errorf("not a regular file (%v)", st.Mode().Type())
	}
	return moduleFile{f}, st.Size(), nil
}
