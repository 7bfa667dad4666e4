// Package rootfs makes a bootable-layout raw disk image from a root
// filesystem tree or tar archive (CreateImage): a GPT with a BIOS boot
// partition and an ext4 or xfs root partition, filled without mounting
// (ext4, mkfs.ext4 -d) or through a loop device (xfs), the tree's fstab
// given a "/" entry. It runs Linux tools (sfdisk, mkfs.*, debugfs, tar,
// losetup) and works on Linux only.
//
// The files follow the steps: create_linux.go checks the options and lays
// out the disk, ext4_linux.go and xfs_linux.go make and fill the
// filesystem, size_linux.go estimates whether the tree fits, fstab_linux.go
// adds the root entry, exec_linux.go runs the tools.
package rootfs
