package loadconf

import "strings"

// Paths of the files through which the distribution's initramfs generator
// includes, and loads, the early modules in the images it builds later
// (a kernel update, update-initramfs -u, dracut -f).
const (
	// InitramfsToolsModulesPath is initramfs-tools' list of modules to add
	// and load; EarlyInitramfsTools keeps a marked block in it.
	InitramfsToolsModulesPath = "/etc/initramfs-tools/modules"
	// DracutConfPath is the dracut configuration EarlyDracut renders.
	DracutConfPath = "/etc/dracut.conf.d/kmodctl.conf"
)

// The marks around the block EarlyInitramfsTools owns. They name the
// plugin because images provisioned before carry them.
const (
	earlyBegin = "# BEGIN packer-plugin-kmod"
	earlyEnd   = "# END packer-plugin-kmod"
)

// EarlyInitramfsTools returns InitramfsToolsModulesPath, whose current
// content is old (nil when absent), with early as its marked block: a
// previous block is replaced, the other lines are kept (leading blank
// lines dropped) and the block goes last.
func EarlyInitramfsTools(old []byte, early []string) []byte {
	var kept []string
	in := false
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		switch {
		case l == earlyBegin:
			in = true
		case l == earlyEnd:
			in = false
		case !in && (l != "" || len(kept) > 0):
			kept = append(kept, l)
		}
	}
	block := append([]string{earlyBegin}, early...)
	block = append(block, earlyEnd)
	return []byte(strings.Join(append(kept, block...), "\n") + "\n")
}

// EarlyDracut returns DracutConfPath: dracut force-loads early
// (force_drivers adds the modules and loads them in the initramfs).
func EarlyDracut(early []string) []byte {
	return []byte("# Written by packer-plugin-kmod: modules the initramfs must load.\nforce_drivers+=\" " + strings.Join(early, " ") + " \"\n")
}
