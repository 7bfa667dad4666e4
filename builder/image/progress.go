package image

import (
	"fmt"
	"sync"

	packersdk "github.com/hashicorp/packer-plugin-sdk/packer"
)

// progress returns a callback that reports an operation in the Packer UI at
// every tenth of the way (Packer's progress bar needs a stream; conversions
// by qemu-img report numbers instead).
func progress(u packersdk.Ui, what string) func(done, total int64) {
	var mu sync.Mutex
	last := -1
	return func(done, total int64) {
		if total <= 0 {
			return
		}
		pct := int(done * 100 / total)
		mu.Lock()
		defer mu.Unlock()
		if step := pct / 10; step > last {
			last = step
			u.Message(fmt.Sprintf("%s: %d%% (%s of %s)", what, pct, humanBytes(done), humanBytes(total)))
		}
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
