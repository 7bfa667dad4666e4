#!/usr/bin/env bash
# test.sh runs the whole suite (make test, after vet and the fixtures): the
# main run over every package, and beside it the alternate-kernel run: the
# kmod, initramfs and dkms packages again on the alternate fixture cache
# ($KMODCTL_FIXTURES/alt, an older ABI of the same series). The two go side
# by side. The alternate run is -short: its QEMU boots (initramfs's boot
# tests and the boot of every injected fixture image) and the pure-Go xz
# injections are left to the main run, because boots take the machine-wide
# QEMU slots (internal/qemu) that are the main run's critical path (measured:
# with them, the alternate initramfs package alone took 26 minutes beside the
# main run, and the whole make test 42); everything that reads the fixture's
# release, ABI, sizes and counts still runs on the alternate kernel.
#
# The main run streams; the alternate run's output is kept and printed after
# it. Exit status: non-zero when either run failed. An interrupt stops both.
#
# The main run packs the two cores: go test runs up to TEST_PACKAGES (4)
# test binaries at once instead of one per core, and the machine-wide QEMU
# slots (internal/qemu) are three. Measured with the CPU time of every test
# binary (go test -exec /usr/bin/time): many packages spend most of their
# wall time waiting, not computing (catalog 25 CPU-s in 144 s, builder/image
# 238 in 612, dkms 79 in 262, internal/qemu 96 in 207), and an acceptance
# test holds its slot through downloads, registry traffic and Packer's own
# waits; with one binary per core and two slots the cores sat idle while the
# provisioner's tests held both slots. The suite's work is about 2,800
# CPU-seconds; packed, that is about 23 minutes on two cores.
#
# Env: GO, TEST_TIMEOUT, KMODCTL_FIXTURES (set by the GNUmakefile);
# FIRST_PACKAGES (started first: the longest), ALT_PACKAGES, MAIN_PACKAGES,
# TEST_PACKAGES (go test -p of the main run), KMODCTL_QEMU_SLOTS.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
GO=${GO:-go}
TEST_TIMEOUT=${TEST_TIMEOUT:-40m}
: "${KMODCTL_FIXTURES:?KMODCTL_FIXTURES must be set}"
ALT=$KMODCTL_FIXTURES/alt
read -ra first <<<"${FIRST_PACKAGES:-./provisioner/kmod}"
read -ra altpkgs <<<"${ALT_PACKAGES:-./kmod/... ./initramfs/... ./dkms/...}"
read -ra mainpkgs <<<"${MAIN_PACKAGES:-./...}"
TEST_PACKAGES=${TEST_PACKAGES:-4}
export KMODCTL_QEMU_SLOTS=${KMODCTL_QEMU_SLOTS:-3}

altlog=$(mktemp /tmp/kmodctl-alt-test.XXXXXX)
# Job control puts the background run in its own process group, so an
# interrupt can stop all of it (go test, its test binaries, QEMU).
set -m
(
	set -e
	echo "== the kmod, initramfs and dkms packages on the alternate fixture kernel $(cat "$ALT/KVER")"
	KMODCTL_FIXTURES=$ALT "$GO" test -short -count=1 -timeout "$TEST_TIMEOUT" "${altpkgs[@]}"
) >"$altlog" 2>&1 &
altpid=$!
set +m
stop() {
	kill -TERM -- "-$altpid" 2>/dev/null
	wait "$altpid" 2>/dev/null
	rm -f "$altlog"
	exit 130
}
trap stop INT TERM

"$GO" test -count=1 -p "$TEST_PACKAGES" -timeout "$TEST_TIMEOUT" "${first[@]}" "${mainpkgs[@]}"
mainrc=$?
wait "$altpid"
altrc=$?
trap - INT TERM
echo "== the alternate-kernel run (beside the main run)"
cat "$altlog"
rm -f "$altlog"
[ "$mainrc" -eq 0 ] || echo "make test: the main run failed (exit $mainrc)" >&2
[ "$altrc" -eq 0 ] || echo "make test: the alternate-kernel run failed (exit $altrc)" >&2
[ "$mainrc" -eq 0 ] && [ "$altrc" -eq 0 ]
