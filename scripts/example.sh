#!/usr/bin/env bash
# The main job (make example), on the embedded default, offline:
#
#  1. a real `packer build` of example/debian12.pkr.hcl with the pinned Packer
#     (bin/packer) and the plugin as built by `make plugin`, installed into a
#     private plugin folder (bin/packer-plugins, PACKER_PLUGIN_PATH) the way a
#     release is installed: the kmod-image builder customizes the Debian 12
#     cloud image fixture (a shell and a file provisioner), boot-checks it in
#     QEMU and writes qcow2 + raw into bin/example-output; then the outputs
#     are checked here: SHA256SUMS, qemu-img check, qcow2 == raw, the boot
#     check's probe line, the provisioners' files read out of the raw image;
#  2. the kmodctl tour on the fixture kernel and test modules: inspect, sign
#     with a throwaway key, verify, check, and inject a module into a copy of
#     a real Debian initramfs that is then booted in QEMU.
#
# Needs root (loop devices), the fixtures and bin/{kmodctl,packer,
# packer-plugin-kmod}: `make example` provides them. Idempotent: every run
# rebuilds bin/example-output with packer build -force. Prints what it does
# and a summary; exits non-zero on any failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/bin}
C=${KMODCTL_FIXTURES:-/var/cache/kmodctl-fixtures}
KVER=$(cat "$C/KVER")
K="$BIN/kmodctl"
PACKER="$BIN/packer"
OUT="$BIN/example-output"
BUILDLOG="$BIN/example-build.log"
TEMPLATE="$ROOT/example/debian12.pkr.hcl"
SRC="$C/cloudimg-dkms/debian12-dkms.qcow2"
export CHECKPOINT_DISABLE=1 PACKER_NO_COLOR=1
# A private Packer: plugins and config under bin/, nothing from ~/.config/packer.
export PACKER_PLUGIN_PATH="$BIN/packer-plugins" PACKER_CONFIG_DIR="$BIN/packer-config"
START=$SECONDS

step() { printf '\n== %s\n' "$*"; }
fail() {
	echo "example: $*" >&2
	exit 1
}

if [[ $(id -u) != 0 ]]; then
	fail "run as root (the kmod-image builder attaches loop devices): sudo -E make example"
fi
for f in "$K" "$PACKER" "$BIN/packer-plugin-kmod" "$BIN/oras" "$SRC"; do
	[[ -e $f ]] || fail "$f is missing (make example builds it)"
done
mkdir -p "$BIN"
# One example at a time per checkout: the output folder is fixed.
exec 8>"$BIN/.example.lock"
if ! flock -n 8; then
	echo "example: another make example is running in this checkout; waiting..." >&2
	flock 8
fi
W=$(mktemp -d)
REGPID=
trap 'stop_registry; rm -rf "$W"' EXIT

# start_registry runs Debian's docker-registry on a free port of 127.0.0.1
# (plain HTTP, no auth, storage in $W) and waits until it answers;
# stop_registry kills it. Nothing listens beyond loopback.
start_registry() {
	local p
	for p in $(shuf -i 20000-60000 -n 20); do
		(: </dev/tcp/127.0.0.1/"$p") 2>/dev/null && continue
		REGPORT=$p
		break
	done
	mkdir -p "$W/registry"
	printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
		"$W/registry/data" "$REGPORT" >"$W/registry/config.yml"
	/usr/bin/docker-registry serve "$W/registry/config.yml" >"$W/registry/log" 2>&1 &
	REGPID=$!
	local i
	for i in $(seq 100); do
		curl -fsS -o /dev/null "http://127.0.0.1:$REGPORT/v2/" 2>/dev/null && return 0
		sleep 0.1
	done
	cat "$W/registry/log" >&2
	fail "docker-registry did not start on 127.0.0.1:$REGPORT"
}
stop_registry() {
	if [[ -n $REGPID ]]; then
		kill "$REGPID" 2>/dev/null || true
		wait "$REGPID" 2>/dev/null || true
		REGPID=
	fi
}

# ---------------------------------------------------------------------------
step "install the plugin (bin/packer-plugin-kmod) into PACKER_PLUGIN_PATH=$PACKER_PLUGIN_PATH"
BIN=$BIN bash "$ROOT/scripts/dev.sh"

step "a module-signing key made for this run (stays in $W, never enters the image)"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=kmodctl example signing key/" \
	-keyout "$W/signing-key.pem" -out "$W/signing-cert.pem" 2>/dev/null
echo "$(openssl x509 -noout -subject -in "$W/signing-cert.pem")"

step "packer validate $(realpath --relative-to="$ROOT" "$TEMPLATE")"
cd "$ROOT"
keyvars=(-var "signing_cert=$W/signing-cert.pem" -var "signing_key=$W/signing-key.pem")
vars=(-var "source_image=$SRC" -var "output_directory=$OUT" "${keyvars[@]}")
# The builder refuses a non-empty output_directory unless Packer runs with
# -force, which validate does not take: validate against a fresh folder (the
# outputs of the previous run stay until the build replaces them).
"$PACKER" validate -var "source_image=$SRC" -var "output_directory=$W/validate-output" "${keyvars[@]}" "$TEMPLATE"

step "a local OCI registry for the published bundles (Debian's docker-registry on 127.0.0.1, plain HTTP)"
start_registry
echo "registry: 127.0.0.1:$REGPORT"
vars+=(-var "publish_repository=127.0.0.1:$REGPORT/kmodctl/example")

step "packer build -force: kmod-image on $(basename "$SRC") (provision, publish, boot check, qcow2 + raw)"
build_start=$SECONDS
if ! "$PACKER" build -force "${vars[@]}" "$TEMPLATE" 2>&1 | tee "$BUILDLOG"; then
	fail "packer build failed; its output is in $BUILDLOG"
fi
build_secs=$((SECONDS - build_start))
timings=$(grep -o 'kmod-image timings: .*' "$BUILDLOG" | tail -1 | sed 's/^kmod-image timings: //')
bootline=$(grep -o 'Boot check passed in [^;]*; [0-9]* modules loaded' "$BUILDLOG" | tail -1 || true)
[[ -n $timings ]] || fail "no 'kmod-image timings:' line in $BUILDLOG"
kmodtimes=$(grep -o 'kmod: done in .*' "$BUILDLOG" | tail -1 | sed 's/^kmod: //')
[[ -n $kmodtimes ]] || fail "no 'kmod: done in' line in $BUILDLOG"
[[ -n $bootline ]] || fail "no 'Boot check passed' line in $BUILDLOG"

step "verify the outputs in $OUT"
cd "$OUT"
for f in debian12.qcow2 debian12.raw SHA256SUMS debian12-boot.log debian12-manifest.json; do
	[[ -s $f ]] || fail "$OUT/$f is missing or empty"
done
# The two images are hashed in parallel (each takes a few seconds).
pids=()
while read -r line; do
	printf '%s\n' "$line" | sha256sum -c --quiet - >"$W/sum.$((${#pids[@]}))" 2>&1 &
	pids+=($!)
done <SHA256SUMS
for i in "${!pids[@]}"; do
	wait "${pids[$i]}" || { cat "$W/sum.$i" >&2; fail "SHA256SUMS does not check out"; }
done
echo "sha256sum -c SHA256SUMS: $(awk '{printf "%s%s", sep, $2; sep=", "}' SHA256SUMS) OK"
qemu-img check -q debian12.qcow2 || fail "qemu-img check debian12.qcow2 failed"
echo "qemu-img check debian12.qcow2: no errors"
qemu-img compare -q -f qcow2 -F raw debian12.qcow2 debian12.raw || fail "debian12.qcow2 and debian12.raw hold different disks"
echo "qemu-img compare: debian12.qcow2 and debian12.raw hold the same disk"

# The probe's line: KMODCTL-BOOTCHECK-<nonce> modules=a,b,c end-<nonce>
# (the kernel command line also names the marker, but never with a literal
# nonce after it).
probe=$(grep -a -o -E 'KMODCTL-BOOTCHECK-[0-9a-f]+ modules=[A-Za-z0-9_,-]* end-[0-9a-f]+' debian12-boot.log | tail -1 || true)
[[ -n $probe ]] || fail "no probe line (KMODCTL-BOOTCHECK-...) in $OUT/debian12-boot.log"
mods=$(sed -E 's/.* modules=([^ ]*) .*/\1/' <<<"$probe")
for m in ext4 dummy v4l2loopback kmodtest_marker; do
	[[ ,$mods, == *",$m,"* ]] || fail "the boot check's probe line does not list $m: $probe"
done
echo "boot log: $(cut -c1-100 <<<"$probe")..."
echo "  $(tr , '\n' <<<"$mods" | wc -l) modules loaded at boot; ext4, dummy, v4l2loopback and kmodtest_marker among them"

# Read the provisioners' work straight out of the raw image's root
# filesystem (debugfs at the partition's offset: read-only, no loop device).
start=$(partx -g -o START,NAME debian12.raw | awk '$2 == "root" {print $1}')
[[ -n $start ]] || fail "debian12.raw has no partition named root"
img="debian12.raw?offset=$((start * 512))"
marker=$(debugfs -R 'cat /etc/kmodctl-example' "$img" 2>/dev/null)
[[ $marker == "kmodctl example: built by packer-plugin-kmod from "* ]] || fail "/etc/kmodctl-example in debian12.raw: got '$marker'"
echo "/etc/kmodctl-example (shell provisioner): $marker"
debugfs -R 'cat /etc/modules-load.d/kmodctl-example.conf' "$img" 2>/dev/null |
	cmp -s - "$ROOT/example/files/kmodctl-example.conf" || fail "/etc/modules-load.d/kmodctl-example.conf in debian12.raw differs from example/files/kmodctl-example.conf"
echo "/etc/modules-load.d/kmodctl-example.conf (file provisioner): identical to example/files/kmodctl-example.conf"
debugfs -R 'stat /etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service' "$img" 2>/dev/null | grep -q 'Type: symlink' ||
	fail "serial-getty@ttyS0.service is not enabled in debian12.raw"
echo "serial-getty@ttyS0.service: enabled"

# The kmod provisioner's work.
debugfs -R "cat /usr/lib/kmodctl/manifest.json" "$img" 2>/dev/null >"$W/manifest.json"
cmp -s "$W/manifest.json" debian12-manifest.json || fail "debian12-manifest.json (exported by the builder) differs from the image's /usr/lib/kmodctl/manifest.json"
echo "manifest: $(grep -c '"name"' debian12-manifest.json) module entries, exported next to the images"
cn=$(openssl x509 -noout -subject -nameopt multiline -in "$W/signing-cert.pem" | sed -n 's/^ *commonName *= //p')
# The module files the manifest lists (its other paths, such as a kernel's
# initramfs record under /boot, are not modules). dumpmod fails when debugfs
# wrote nothing: it does not report a missing file in its status.
modpaths() { grep -o '"path": "/lib/modules/[^"]*\.ko[^"]*"' "$W/manifest.json" | cut -d'"' -f4; }
dumpmod() {
	rm -f "$W/mod.ko"
	debugfs -R "dump $1 $W/mod.ko" "$img" 2>/dev/null
	[[ -s $W/mod.ko ]] || fail "$1: not in debian12.raw's root filesystem"
}
[[ -n $(modpaths) ]] || fail "the image's manifest lists no module file"
for p in $(modpaths); do
	dumpmod "$p"
	signer=$(modinfo -F signer "$W/mod.ko")
	[[ $signer == "$cn" ]] || fail "$p: signer '$signer', want '$cn'"
	"$K" module verify --cert "$W/signing-cert.pem" "$W/mod.ko" >/dev/null || fail "$p does not verify"
	echo "$p: signed by '$signer', verifies"
done

step "the bundles the kmod provisioner published to the local registry"
grep -o '"reference": "[^"]*"' "$W/manifest.json" | cut -d'"' -f4 | sed 's/^/manifest bundles: /'
grep -q '"bundles"' "$W/manifest.json" || fail "the image's manifest records no published bundle"
ref="127.0.0.1:$REGPORT/kmodctl/example:example"
"$K" bundle ls --plain-http "$ref"
"$K" bundle verify --plain-http --trusted-cert "$W/signing-cert.pem" "$ref"
mkdir -p "$W/oras"
"$BIN/oras" pull --plain-http -o "$W/oras" "127.0.0.1:$REGPORT/kmodctl/example:$KVER" >/dev/null
for p in $(modpaths); do
	dumpmod "$p"
	cmp -s "$W/mod.ko" "$W/oras/$(basename "$p")" || fail "oras pull: $(basename "$p") differs from the image's $p"
done
echo "oras pull $KVER: every module file byte-identical to the image's"
stop_registry

if debugfs -R 'stat /var/lib/dkms/mok.key' "$img" 2>/dev/null | grep -q Inode; then
	fail "/var/lib/dkms/mok.key exists in the image"
fi
echo "/var/lib/dkms/mok.key: absent (DKMS signed nothing, generated no key)"
bstart=$(partx -g -o START,NAME debian12.raw | awk '$2 == "boot" {print $1}')
bimg="debian12.raw?offset=$((bstart * 512))"
debugfs -R "dump /vmlinuz-$KVER $W/vmlinuz" "$bimg" 2>/dev/null
debugfs -R "dump /initrd.img-$KVER $W/initrd-out.img" "$bimg" 2>/dev/null
[[ -s $W/initrd-out.img ]] || fail "no /boot/initrd.img-$KVER in debian12.raw"
echo "booting the image's kernel and initramfs with no root device: the early module must load inside the initramfs"
timeout 150 qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot -nodefaults -serial stdio \
	-kernel "$W/vmlinuz" -initrd "$W/initrd-out.img" -append "console=ttyS0 panic=1" \
	>"$W/early.log" 2>&1 </dev/null || true
grep -a -m1 'KMODTEST-MARKER' "$W/early.log" || { tail -20 "$W/early.log" >&2; fail "kmodtest_marker did not load from the image's initramfs"; }
cd "$ROOT"

# ---------------------------------------------------------------------------
# The kmodctl tour: the module toolkit the plugin's provisioner builds on.
tour_start=$SECONDS
step "inspect a Debian-signed module"
"$K" module inspect "$(ls "$C/kernel/root/lib/modules/$KVER/kernel/drivers/net/dummy.ko"* | head -1)" | cut -c1-100 | head -12

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
	--symvers "$C/rootfs-dkms/usr/src/linux-headers-$KVER/Module.symvers" "$W"/kmodtest_*.ko

step "check a module that cannot load (expected to fail)"
if "$K" module check --kernel-dir "$C/kernel/root/lib/modules/$KVER" \
	--symvers "$C/rootfs-dkms/usr/src/linux-headers-$KVER/Module.symvers" "$C/testmods/kmodtest_unresolved.ko"; then
	fail "the unresolved module passed the check"
fi
step "inject a module into a copy of a real Debian initramfs (append mode, --load)"
cp "$C/rootfs-dkms/boot/initrd.img-$KVER" "$W/initrd.img"
"$K" initramfs inject "$W/initrd.img" --module "$C/testmods/kmodtest_marker.ko" \
	--modules-dir "$C/kernel/root/lib/modules/$KVER" --load
"$K" initramfs info "$W/initrd.img"

step "boot it in QEMU (TCG): the module must print its marker from inside the initramfs"
timeout 150 qemu-system-x86_64 -accel tcg -m 1024 -nographic -no-reboot -nodefaults -serial stdio \
	-kernel "$C/kernel/root/boot/vmlinuz-$KVER" -initrd "$W/initrd.img" -append "console=ttyS0 panic=1" \
	>"$W/console.log" 2>&1 </dev/null || true
if grep -a -m1 'KMODTEST-MARKER' "$W/console.log"; then
	echo "marker seen: the injected module loaded inside the initramfs"
else
	echo "example: the injected module's marker did not appear; console tail:" >&2
	tail -20 "$W/console.log" >&2
	exit 1
fi
tour_secs=$((SECONDS - tour_start))

# ---------------------------------------------------------------------------
size() { du -h --apparent-size "$1" | cut -f1; }
alloc() { du -h "$1" | cut -f1; }
step "summary"
cat <<EOF
packer build   example/debian12.pkr.hcl, kmod-image builder, Packer $("$PACKER" version | head -1 | awk '{print $2}'), plugin $("$BIN/packer-plugin-kmod" describe | sed -n 's/.*"version":"\([^"]*\)".*/\1/p'): ${build_secs}s
  source       $SRC (read only)
  provisioners shell: /etc/kmodctl-example, /etc/motd, serial-getty@ttyS0 enabled
               file:  /etc/modules-load.d/kmodctl-example.conf (loads dummy at boot)
               kmod:  kmodtest-marker (DKMS source, early: in the initramfs) and
                      v4l2loopback-dkms (Debian package), rebuilt for $KVER, signed here
  boot check   ${bootline#Boot check }; ext4, dummy and v4l2loopback loaded
  early boot   kmodtest_marker printed its marker from the image's own initramfs
  outputs      $OUT/
               debian12.qcow2 $(size "$OUT/debian12.qcow2"), debian12.raw $(size "$OUT/debian12.raw") ($(alloc "$OUT/debian12.raw") allocated), debian12-boot.log, SHA256SUMS
  verified     sha256sum -c, qemu-img check, qcow2 == raw, probe line, provisioned files in the image,
               manifest, signer + signature of every managed module, no DKMS key in the image
  timings      builder: $timings
               kmod provisioner: $kmodtimes
bundle         the build's modules published by the kmod provisioner to a local registry (publish block),
               verified (kmodctl bundle verify) and pulled back byte for byte by oras
kmodctl tour   inspect, sign, verify, check, initramfs inject + QEMU boot: ${tour_secs}s
packer output  $BUILDLOG
EOF
echo
echo "example: OK in $((SECONDS - START))s"
