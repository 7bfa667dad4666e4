// Package linewriter turns a command's output stream into whole lines for a
// UI or a log.
package linewriter

import (
	"bytes"
	"sync"
)

// maxLine bounds a line kept waiting for its newline: a longer run (a
// progress bar redrawn with \r, binary output) is passed on in pieces.
const maxLine = 64 << 10

// Writer passes each line written to it to a function, without its "\n"
// (or "\r\n"). It is safe for concurrent writes, so one Writer can take a
// command's stdout and stderr. Flush passes on a last line that has no
// newline.
type Writer struct {
	mu   sync.Mutex
	line func(string)
	buf  []byte
}

// New returns a Writer passing lines to line.
func New(line func(string)) *Writer { return &Writer{line: line} }

func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(string(bytes.TrimSuffix(w.buf[:i], []byte("\r"))))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxLine {
		w.line(string(w.buf))
		w.buf = nil
	}
	return len(p), nil
}

// Flush passes on what was written after the last newline, if anything.
func (w *Writer) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(string(w.buf))
		w.buf = nil
	}
}
