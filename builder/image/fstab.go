package image

import (
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/kmodctl/packer-plugin-kmod/diskimage"
)

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
func sortByMountPoint(es []diskimage.FstabEntry) {
	sort.SliceStable(es, func(i, j int) bool {
		di, dj := strings.Count(strings.TrimRight(es[i].File, "/"), "/"), strings.Count(strings.TrimRight(es[j].File, "/"), "/")
		if di != dj {
			return di < dj
		}
		return es[i].File < es[j].File
	})
}
