package image

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

// fstabEntry is one line of /etc/fstab.
type fstabEntry struct {
	Spec, File, Type string
	Options          []string
	Line             int
}

func (e fstabEntry) has(opt string) bool {
	for _, o := range e.Options {
		if o == opt {
			return true
		}
	}
	return false
}

// parseFstab reads fstab(5) lines: fields separated by blanks, octal
// escapes (\040 for a space), comments and blank lines ignored.
func parseFstab(r io.Reader) ([]fstabEntry, error) {
	var res []fstabEntry
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: want at least spec and mount point, got %q", n, line)
		}
		e := fstabEntry{Spec: unescapeOctal(f[0]), File: unescapeOctal(f[1]), Type: "auto", Line: n}
		if len(f) > 2 {
			e.Type = f[2]
		}
		if len(f) > 3 {
			e.Options = strings.Split(f[3], ",")
		}
		res = append(res, e)
	}
	return res, sc.Err()
}

var octalEscape = regexp.MustCompile(`\\[0-7]{3}`)

func unescapeOctal(s string) string {
	return octalEscape.ReplaceAllStringFunc(s, func(m string) string {
		v, _ := strconv.ParseUint(m[1:], 8, 8)
		return string(rune(v))
	})
}

// devName matches partitions of the first disk only: the image is the
// instance's first disk, and /dev/sdb1 must never be taken for its
// partition 1.
var devName = regexp.MustCompile(`^/dev/(?:sda|vda|hda|xvda|nvme0n1p|mmcblk0p)(\d+)$`)

// matchPartition finds the partition an fstab spec names.
func matchPartition(spec string, t *diskimage.Table, probes map[int]diskimage.FS) (diskimage.Partition, bool) {
	key, val, ok := strings.Cut(spec, "=")
	if !ok {
		for prefix, k := range map[string]string{
			"/dev/disk/by-uuid/": "UUID", "/dev/disk/by-label/": "LABEL",
			"/dev/disk/by-partuuid/": "PARTUUID", "/dev/disk/by-partlabel/": "PARTLABEL",
		} {
			if strings.HasPrefix(spec, prefix) {
				key, val, ok = k, strings.TrimPrefix(spec, prefix), true
			}
		}
	}
	val = strings.Trim(val, `"`)
	for _, p := range t.Partitions {
		fs := probes[p.Number]
		switch {
		case ok && key == "UUID" && fs.UUID != "" && strings.EqualFold(fs.UUID, val),
			ok && key == "LABEL" && fs.Label != "" && fs.Label == val,
			ok && key == "PARTUUID" && strings.EqualFold(p.UUID, val),
			ok && key == "PARTLABEL" && p.Name != "" && p.Name == val:
			return p, true
		}
	}
	if m := devName.FindStringSubmatch(spec); m != nil {
		n, _ := strconv.Atoi(m[1])
		return t.Partition(n)
	}
	return diskimage.Partition{}, false
}

// hostFilesystems lists the filesystem types the running kernel can mount.
func hostFilesystems() map[string]bool {
	res := map[string]bool{}
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return res
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			res[f[len(f)-1]] = true
		}
	}
	return res
}

// sortByMountPoint orders entries so that parents mount before children.
func sortByMountPoint(es []fstabEntry) {
	sort.SliceStable(es, func(i, j int) bool {
		di, dj := strings.Count(strings.TrimRight(es[i].File, "/"), "/"), strings.Count(strings.TrimRight(es[j].File, "/"), "/")
		if di != dj {
			return di < dj
		}
		return es[i].File < es[j].File
	})
}
