package initramfs

// Paths are the initramfs images of a kernel release, in the order they are
// looked for (initramfs-tools, then dracut).
func Paths(release string) []string {
	return []string{"/boot/initrd.img-" + release, "/boot/initramfs-" + release + ".img"}
}
