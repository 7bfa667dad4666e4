// Command packer-plugin-kmod is the Packer plugin: the kmod-image builder
// and the kmod provisioner.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/packer-plugin-sdk/plugin"

	"github.com/kmodctl/packer-plugin-kmod/builder/image"
	"github.com/kmodctl/packer-plugin-kmod/provisioner/kmod"
	"github.com/kmodctl/packer-plugin-kmod/version"
)

func main() {
	pps := plugin.NewSet()
	pps.RegisterBuilder("image", new(image.Builder))
	pps.RegisterProvisioner(plugin.DEFAULT_NAME, new(kmod.Provisioner))
	pps.SetVersion(version.PluginVersion)
	if err := pps.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
