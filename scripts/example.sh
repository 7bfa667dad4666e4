#!/usr/bin/env bash
# The main job until the Packer parts land: run kmodctl over the fixture
# kernel and test modules — inspect, sign with a throwaway key, verify, and
# check against the fixture kernel. Prints what it does; exits non-zero on
# any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
C=${KMODCTL_FIXTURES:-/var/cache/kmodctl-fixtures}
KVER=$(cat "$C/KVER")
K="$ROOT/bin/kmodctl"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "inspect a Debian-signed module"
"$K" module inspect "$C/kernel/root/lib/modules/$KVER/kernel/drivers/net/dummy.ko" | cut -c1-100 | head -12

step "a throwaway RSA-2048 signing key (never leaves $W)"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=kmodctl example key/" \
	-keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cp "$C"/testmods/kmodtest_{base,dep,param}.ko "$W/"

step "sign the test modules"
"$K" module sign --key "$W/key.pem" --cert "$W/cert.pem" "$W"/kmodtest_*.ko

step "verify them"
"$K" module verify --cert "$W/cert.pem" "$W"/kmodtest_*.ko

step "signature fields as modinfo sees them"
modinfo -F signer "$W/kmodtest_param.ko"

step "check them against kernel $KVER"
"$K" module check --kernel-dir "$C/kernel/root/lib/modules/$KVER" \
	--symvers "/usr/src/linux-headers-$KVER/Module.symvers" "$W"/kmodtest_*.ko

step "check a module that cannot load (expected to fail)"
if "$K" module check --kernel-dir "$C/kernel/root/lib/modules/$KVER" \
	--symvers "/usr/src/linux-headers-$KVER/Module.symvers" "$C/testmods/kmodtest_unresolved.ko"; then
	echo "example: the unresolved module passed the check" >&2
	exit 1
fi
step "inject a module into a copy of a real Debian initramfs (append mode, --load)"
cp "$C/initrd/initramfs-tools-zstd.img" "$W/initrd.img"
"$K" initramfs inject "$W/initrd.img" --module "$C/testmods/kmodtest_marker.ko" \
	--modules-dir "$C/kernel/root/lib/modules/$KVER" --load
"$K" initramfs info "$W/initrd.img"

step "boot it in QEMU (TCG): the module must print its marker from inside the initramfs"
timeout 150 qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot -nodefaults -serial stdio \
	-kernel "$C/initrd/vmlinuz" -initrd "$W/initrd.img" -append "console=ttyS0 panic=1" \
	>"$W/console.log" 2>&1 </dev/null || true
if grep -a -m1 'KMODTEST-MARKER' "$W/console.log"; then
	echo "marker seen: the injected module loaded inside the initramfs"
else
	echo "example: the injected module's marker did not appear; console tail:" >&2
	tail -20 "$W/console.log" >&2
	exit 1
fi

echo
echo "example: OK"
