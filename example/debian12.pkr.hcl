# The kmodctl example: customize the embedded Debian 12 cloud image (the
# fixture from `make fixtures`, with DKMS and the kernel's headers) offline
# with the kmod-image builder; the kmod provisioner rebuilds two out-of-tree
# modules with the image's DKMS for the image's kernel, signs them here with a
# key that never enters the image, checks and installs them (one early, in the
# initramfs; one through modules-load.d), publishes them as OCI bundles when
# publish_repository is set, and the boot check proves the result boots with
# them loaded. Debian's v4l2loopback-dkms comes from the image's apt sources
# (deb.debian.org).
#
#   make example                      # everything, from a fresh checkout
#   bin/packer build -force \
#     -var source_image=$KMODCTL_FIXTURES/cloudimg-dkms/debian12-dkms.qcow2 \
#     -var signing_cert=cert.pem -var signing_key=key.pem \
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
  default     = "/var/cache/kmodctl-fixtures/cloudimg-dkms/debian12-dkms.qcow2"
}

variable "signing_cert" {
  type        = string
  description = "The module-signing certificate (PEM or DER)."
}

variable "signing_key" {
  type        = string
  description = "Its private key (PEM). Read on the build host only."
  sensitive   = true
}

variable "publish_repository" {
  type        = string
  description = "A registry repository (host/repo) to publish the modules to as OCI bundles, plain HTTP; empty: no publish. make example starts a registry on 127.0.0.1 for it."
  default     = ""
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
    # of the file the `file` provisioner below puts in /etc/modules-load.d;
    # v4l2loopback through the kmod provisioner's modules-load.d entry.
    expect_modules = ["ext4", "dummy", "v4l2loopback"]
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

  # Rebuild, sign, check and install kernel modules for the image's kernels.
  provisioner "kmod" {
    signing_cert = var.signing_cert
    signing_key  = var.signing_key

    # The test module that prints KMODTEST-MARKER when it loads: from the
    # initramfs only (early), not from modules-load.d.
    module {
      source = "${path.root}/modules/kmodtest-marker"
      early  = true
      load   = false
    }
    # A distro DKMS package, rebuilt for the image's kernel (not uname -r).
    module {
      package = "v4l2loopback-dkms"
    }
    options = {
      v4l2loopback = "devices=2"
    }

    # Publish the signed modules as OCI bundles (one per image kernel, and
    # an index tagged "example"), recorded in the image's manifest.
    dynamic "publish" {
      for_each = var.publish_repository == "" ? [] : [var.publish_repository]
      content {
        repository = publish.value
        tag        = "example"
        plain_http = true
      }
    }
  }
}
