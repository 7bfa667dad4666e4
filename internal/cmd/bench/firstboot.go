package main

// benchFirstboot: kmodctl firstboot verify --root on the provisioner's kind
// of output, against sha256sum of the same files (the floor). Filled in by
// issue 17's work.
func benchFirstboot(kmodctl, fixtures string) {
	report("firstboot verify", "not measured", "")
}
