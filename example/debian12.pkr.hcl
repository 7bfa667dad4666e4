# The kmodctl example: customize the embedded Debian 12 cloud image (the
# fixture from `make fixtures`) offline with the kmod-image builder, boot-check
# the result in QEMU and write it as qcow2 and raw. No network is needed: the
# provisioners only write files and enable a unit inside the image.
#
#   make example                      # everything, from a fresh checkout
#   bin/packer build -force \
#     -var source_image=$KMODCTL_FIXTURES/cloudimg/debian12.qcow2 \
#     -var output_directory=bin/example-output example/debian12.pkr.hcl
#
# The plugin must be installed first (make dev; scripts/example.sh installs it
# into a private PACKER_PLUGIN_PATH under bin/).

packer {
  required_plugins {
    kmod = {
      source  = "github.com/kmodctl/kmod"
      version = ">= 0.1.0"
    }
  }
}

variable "source_image" {
  type        = string
  description = "The Debian 12 cloud image to customize (qcow2 or raw)."
  default     = "/var/cache/kmodctl-fixtures/cloudimg/debian12.qcow2"
}

variable "output_directory" {
  type        = string
  description = "Where the images, SHA256SUMS and the boot log go."
  default     = "output-debian12"
}

source "kmod-image" "debian12" {
  source_image     = var.source_image
  output_directory = var.output_directory
  output_name      = "debian12"
  output_formats   = ["qcow2", "raw"]

  boot_check {
    # ext4 holds the root filesystem; dummy is loaded at boot only because
    # of the file the `file` provisioner below puts in /etc/modules-load.d.
    expect_modules = ["ext4", "dummy"]
  }
}

build {
  sources = ["source.kmod-image.debian12"]

  # Runs inside the image (a chroot), as root, with a clean environment.
  provisioner "shell" {
    inline = [
      "set -e",
      ". /etc/os-release",
      "echo \"kmodctl example: built by packer-plugin-kmod from $PRETTY_NAME\" > /etc/kmodctl-example",
      "cat /etc/kmodctl-example >> /etc/motd",
      # A login prompt on the serial console: what cloud consoles show.
      "systemctl enable serial-getty@ttyS0.service",
      "ls /lib/modules",
    ]
  }

  provisioner "file" {
    source      = "${path.root}/files/kmodctl-example.conf"
    destination = "/etc/modules-load.d/kmodctl-example.conf"
  }
}
