package initramfs

import (
	"path"
	"sort"
	"strings"
)

// Flavor names the tool that built an image.
type Flavor string

const (
	FlavorUnknown  Flavor = "unknown"
	InitramfsTools Flavor = "initramfs-tools" // Debian, Ubuntu
	Dracut         Flavor = "dracut"          // Fedora, RHEL, SUSE, Debian's alternative
	Mkinitcpio     Flavor = "mkinitcpio"      // Arch
	Booster        Flavor = "booster"
)

// flavorMarks are paths (cleaned, relative to the root) that identify each
// flavor, the strongest first.
var flavorMarks = []struct {
	path   string
	flavor Flavor
}{
	{"conf/initramfs.conf", InitramfsTools},
	{"usr/lib/dracut", Dracut},
	{"usr/lib/dracut/dracut-lib.sh", Dracut},
	{"lib/dracut", Dracut},
	{"buildconfig", Mkinitcpio},
	{"etc/booster.init.yaml", Booster},
	{"scripts/init-top", InitramfsTools},
	{"conf/arch.conf", InitramfsTools},
	{"etc/cmdline.d", Dracut},
	{"init_functions", Mkinitcpio},
	{"hooks", Mkinitcpio},
}

func (im *Image) paths() map[string]*Entry {
	m := make(map[string]*Entry, len(im.Entries))
	for i := range im.Entries {
		// Later records override earlier ones, as when unpacking.
		m[cleanPath(im.Entries[i].Name)] = &im.Entries[i]
	}
	return m
}

// Flavor guesses which tool built the image from the files it holds:
// initramfs-tools (conf/initramfs.conf, scripts/init-top), dracut
// (usr/lib/dracut, etc/cmdline.d), mkinitcpio (buildconfig, hooks/,
// init_functions) or booster (etc/booster.init.yaml).
func (im *Image) Flavor() Flavor {
	p := im.paths()
	for _, m := range flavorMarks {
		if _, ok := p[m.path]; ok {
			if m.flavor == Mkinitcpio && m.path == "hooks" {
				if _, ok := p["config"]; !ok {
					continue
				}
			}
			return m.flavor
		}
	}
	// Marks may only show as parents of other paths.
	for k := range p {
		for _, m := range flavorMarks[:4] {
			if strings.HasPrefix(k, m.path+"/") {
				return m.flavor
			}
		}
	}
	return FlavorUnknown
}

// Kernels returns the kernel releases the image has modules for: the
// folders under lib/modules or usr/lib/modules, sorted.
func (im *Image) Kernels() []string {
	set := map[string]bool{}
	for i := range im.Entries {
		k := cleanPath(im.Entries[i].Name)
		for _, prefix := range []string{"lib/modules/", "usr/lib/modules/"} {
			rest, ok := strings.CutPrefix(k, prefix)
			if !ok || rest == "" {
				continue
			}
			rel, _, nested := strings.Cut(rest, "/")
			if nested || im.Entries[i].IsDir() {
				set[rel] = true
			}
		}
	}
	var out []string
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// UsrMerged reports whether lib is a symlink to usr/lib (the last record for
// lib decides, as when unpacking).
func (im *Image) UsrMerged() bool {
	e, ok := im.paths()["lib"]
	if !ok || !e.IsSymlink() {
		return false
	}
	t := e.Target
	if !path.IsAbs(t) {
		t = path.Join("/", t)
	}
	return path.Clean(t) == "/usr/lib"
}
