package initramfs

import (
	"fmt"
	"testing"

	"github.com/kmodctl/packer-plugin-kmod/compress"
)

func TestFlavorAndKernels(t *testing.T) {
	cases := []struct {
		name    string
		files   []file
		flavor  Flavor
		kernels string
		merged  bool
	}{
		{"initramfs-tools", []file{dir("conf"), reg("conf/initramfs.conf", ""), dir("lib/modules/6.1.0-9-amd64")}, InitramfsTools, "[6.1.0-9-amd64]", false},
		{"initramfs-tools scripts only", []file{dir("scripts"), dir("scripts/init-top")}, InitramfsTools, "[]", false},
		{"dracut", []file{dir("usr/lib/dracut"), reg("usr/lib/dracut/build-parameter.txt", ""), symlink("lib", "/usr/lib"),
			dir("usr/lib/modules/6.8.0-1-amd64"), dir("usr/lib/modules/6.1.0-9-amd64")}, Dracut, "[6.1.0-9-amd64 6.8.0-1-amd64]", true},
		{"dracut nested marks only", []file{reg("./usr/lib/dracut/dracut-lib.sh", "")}, Dracut, "[]", false},
		{"dracut cmdline.d", []file{dir("etc/cmdline.d")}, Dracut, "[]", false},
		{"mkinitcpio", []file{reg("buildconfig", ""), reg("config", "MODULES=()"), dir("hooks"), reg("usr/lib/modules/6.9.1-arch1-1/modules.dep", "")}, Mkinitcpio, "[6.9.1-arch1-1]", false},
		{"mkinitcpio hooks and config", []file{reg("config", ""), dir("hooks"), reg("init_functions", "")}, Mkinitcpio, "[]", false},
		{"booster", []file{reg("etc/booster.init.yaml", "")}, Booster, "[]", false},
		{"unknown", []file{reg("init", ""), dir("hooks"), symlink("lib", "lib64")}, FlavorUnknown, "[]", false},
	}
	for _, c := range cases {
		im := readImage(t, archive(t, c.files...))
		if im.Flavor() != c.flavor || fmt.Sprint(im.Kernels()) != c.kernels || im.UsrMerged() != c.merged {
			t.Errorf("%s: flavor %s, kernels %v, usr-merged %v", c.name, im.Flavor(), im.Kernels(), im.UsrMerged())
		}
	}
	// A later segment's lib decides.
	img := append(archive(t, symlink("lib", "usr/lib")), compressed(t, archive(t, dir("lib")), compress.Gzip)...)
	if readImage(t, img).UsrMerged() {
		t.Error("lib replaced by a folder still counts as usr-merged")
	}
}
