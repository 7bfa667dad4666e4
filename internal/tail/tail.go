// Package tail keeps the end of a command's output, for error messages.
package tail

import "sync"

// Buffer keeps the last Max bytes written to it (64 KiB when Max is 0). It
// is safe for concurrent writes (a command's stdout and stderr).
type Buffer struct {
	Max int
	mu  sync.Mutex
	b   []byte
}

func (t *Buffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	max := t.Max
	if max <= 0 {
		max = 64 << 10
	}
	t.b = append(t.b, p...)
	if len(t.b) > max {
		t.b = append(t.b[:0], t.b[len(t.b)-max:]...)
	}
	return len(p), nil
}

// String returns what is kept.
func (t *Buffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
