#!/usr/bin/env bash
# Builds the test fixtures into a machine-wide cache outside the checkout, so a
# clean clone (CI) reuses them. Idempotent: each component is verified against
# the checksum list written when it was built and rebuilt only when missing or
# damaged. The kernel release is chosen once and recorded in $C/KVER; every
# later fixture derives from it and from the .debs kept in $C/debs.
#
#   KMODCTL_FIXTURES   cache folder (default /var/cache/kmodctl-fixtures)
#   components: deps kernel headers testmods compressed foreign rootfs
#               rootfs-dracut rootfs-dkms initrd cloudimg cloudimg-dkms
#               (default: all)
set -euo pipefail

C=${KMODCTL_FIXTURES:-/var/cache/kmodctl-fixtures}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$C"

log() { printf 'fixtures: %s\n' "$*" >&2; }

# Temporary folders, removed however the script ends.
TMPS=()
trap 'rm -rf "${TMPS[@]}"' EXIT

# apt_install installs Debian packages only when one is missing, so the warm
# path makes no network calls.
apt_updated=
apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ -z "$apt_updated" ]; then apt-get update -q >/dev/null; apt_updated=1; fi
	log "apt-get install ${missing[*]}"
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# stamp NAME writes NAME.sha256 covering every file of component NAME.
stamp() {
	(cd "$C" && find "$1" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum >"$1.sha256.tmp" && mv "$1.sha256.tmp" "$1.sha256")
}
# fresh NAME [INPUT_HASH] succeeds when component NAME exists, matches its
# checksums and was built from the same inputs. A component is verified once
# per run (several components depend on the same ones), with openssl's
# SHA-NI code, several times faster than sha256sum over the rootfs trees;
# names sha256sum had to escape are checked by sha256sum itself.
declare -A VERIFIED=()
fresh() {
	[ -d "$C/$1" ] && [ -s "$C/$1.sha256" ] || return 1
	if [ $# -gt 1 ] && [ "$(cat "$C/$1.inputs" 2>/dev/null)" != "$2" ]; then return 1; fi
	[ -z "${VERIFIED[$1]-}" ] || return 0
	# Trees stamped with stamp_tree: unchanged metadata is enough.
	if [ -s "$C/$1.meta" ] && [ "$(treemeta "$1")" = "$(cat "$C/$1.meta")" ]; then
		VERIFIED[$1]=1
		return 0
	fi
	local list=$C/$1.sha256
	(
		cd "$C" || exit 1
		if ! command -v openssl >/dev/null; then
			exec sha256sum -c --quiet --strict "$list" >/dev/null 2>&1
		fi
		if grep -q '^\\' "$list"; then
			grep '^\\' "$list" | sha256sum -c --quiet --strict - >/dev/null 2>&1 || exit 1
		fi
		grep -v '^\\' "$list" | cut -c67- | xargs -r -d '\n' openssl dgst -sha256 -r 2>/dev/null |
			sed 's/ \*/  /' | cmp -s - <(grep -v '^\\' "$list")
	) || return 1
	# A tree whose content checked out: trust its new metadata next time.
	[ ! -e "$C/$1.meta" ] || treemeta "$1" >"$C/$1.meta"
	VERIFIED[$1]=1
}
begin() { unset "VERIFIED[$1]"; rm -rf "$C/$1" "$C/$1.sha256" "$C/$1.inputs" "$C/$1.meta"; mkdir -p "$C/$1"; }

# treemeta NAME hashes the metadata of every entry of component NAME (path,
# type, size, mtime, mode, link target).
treemeta() {
	(cd "$C" && find "$1" -printf '%p\t%y\t%s\t%T@\t%m\t%l\n' | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
}
# stamp_tree NAME is stamp for large trees (the rootfs fixtures): fresh
# trusts them without reading their content while no entry's metadata
# changed (anything written into the tree changes some mtime), and checks
# the content against NAME.sha256 otherwise.
stamp_tree() {
	stamp "$1"
	treemeta "$1" >"$C/$1.meta"
}

deps() {
	apt_install kmod openssl xz-utils zstd gzip make gcc libc6-dev dpkg-dev ca-certificates mmdebstrap cpio
}

kver() {
	if [ ! -s "$C/KVER" ]; then
		local pkg
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*\)$/\1/p' | sort -V | tail -1)
		if [ -z "$pkg" ]; then
			apt-get update -q >/dev/null; apt_updated=1
			pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: linux-image-\(.*\)$/\1/p' | sort -V | tail -1)
		fi
		[ -n "$pkg" ] || { log "cannot find the kernel behind linux-image-amd64"; exit 1; }
		echo "$pkg" >"$C/KVER"
		log "kernel release chosen: $pkg"
	fi
	KVER=$(cat "$C/KVER")
}

# debs downloads the kernel's packages once; later runs install from them so a
# Debian ABI bump does not change the fixtures.
debs() {
	mkdir -p "$C/debs"
	local want=("linux-image-$KVER" "linux-headers-$KVER" "linux-headers-${KVER%-*}-common")
	local p
	for p in "${want[@]}"; do
		if ! ls "$C/debs/${p}_"*.deb >/dev/null 2>&1; then
			[ -n "$apt_updated" ] || { apt-get update -q >/dev/null; apt_updated=1; }
			log "download $p"
			(cd "$C/debs" && apt-get download -q -o APT::Sandbox::User=root "$p" >/dev/null)
		fi
	done
	if ! ls "$C/debs/linux-kbuild-"*.deb >/dev/null 2>&1; then
		local kb
		kb=$(dpkg-deb -f "$C"/debs/linux-headers-"$KVER"_*.deb Depends | tr ',' '\n' | sed -n 's/^ *\(linux-kbuild-[0-9.]*\).*/\1/p' | head -1)
		(cd "$C/debs" && apt-get download -q -o APT::Sandbox::User=root "$kb" >/dev/null)
	fi
}

kernel() {
	fresh kernel && return 0
	log "extract linux-image-$KVER"
	begin kernel
	dpkg -x "$C"/debs/linux-image-"$KVER"_*.deb "$C/kernel/root"
	# Debian's package ships no depmod output; tests generate their own.
	stamp kernel
}

# headers installs the kernel headers with apt (their Makefile includes the
# -common package by absolute path); this brings scripts/sign-file too.
headers() {
	if ! dpkg-query -W -f='${Status}' "linux-headers-$KVER" 2>/dev/null | grep -q 'install ok installed'; then
		[ -n "$apt_updated" ] || { apt-get update -q >/dev/null; apt_updated=1; }
		log "install linux-headers-$KVER from the cached .debs"
		apt-get install -y -q --no-install-recommends "$C"/debs/linux-headers-*.deb "$C"/debs/linux-kbuild-*.deb >/dev/null
	fi
}

testmods() {
	local inputs
	inputs=$( (cd "$ROOT/testdata/modules" && cat Kbuild ./*.c; echo "$KVER") | sha256sum | cut -d' ' -f1)
	fresh testmods "$inputs" && return 0
	log "build test modules against $KVER"
	begin testmods
	local b
	b=$(mktemp -d)
	cp "$ROOT"/testdata/modules/Kbuild "$ROOT"/testdata/modules/*.c "$b/"
	# KBUILD_MODPOST_WARN: kmodtest_unresolved references a symbol that is not exported.
	make -s -C "/usr/src/linux-headers-$KVER" M="$b" KBUILD_MODPOST_WARN=1 modules >"$b/build.log" 2>&1 || { cat "$b/build.log" >&2; exit 1; }
	cp "$b"/*.ko "$b/Module.symvers" "$C/testmods/"
	rm -rf "$b"
	echo "$inputs" >"$C/testmods.inputs"
	stamp testmods
}

# compressed: .ko.xz (CRC32 check, as the kernel needs), .ko.zst and .ko.gz
# copies of a signed Debian module and of a test module.
compressed() {
	local src=("$C/kernel/root/lib/modules/$KVER/kernel/drivers/net/dummy.ko" "$C/testmods/kmodtest_param.ko")
	local inputs
	inputs=$(sha256sum "${src[@]}" | sha256sum | cut -d' ' -f1)
	fresh compressed "$inputs" && return 0
	log "compress sample modules"
	begin compressed
	local f n
	for f in "${src[@]}"; do
		n=$(basename "$f")
		cp "$f" "$C/compressed/$n"
		xz --check=crc32 --lzma2=dict=1MiB -c "$f" >"$C/compressed/$n.xz"
		zstd -q -19 -c "$f" >"$C/compressed/$n.zst"
		gzip -9 -n -c "$f" >"$C/compressed/$n.gz"
	done
	echo "$inputs" >"$C/compressed.inputs"
	stamp compressed
}

# foreign: a few real ELF32 little-endian (armhf) and big-endian (s390x)
# modules from Debian's kernel packages of those architectures.
foreign() {
	fresh foreign && return 0
	log "fetch armhf and s390x modules"
	begin foreign
	local arch flavour pkg d
	for arch in armhf s390x; do
		dpkg --print-foreign-architectures | grep -qx "$arch" || { dpkg --add-architecture "$arch"; apt_updated=; }
	done
	# A mirror mid-sync may fail one foreign index; what did arrive is enough.
	[ -n "$apt_updated" ] || { apt-get update -q >/dev/null 2>&1 || log "apt-get update reported errors (continuing)"; apt_updated=1; }
	mkdir -p "$C/debs/foreign"
	for arch in armhf s390x; do
		case $arch in armhf) flavour=armmp ;; s390x) flavour=s390x ;; esac
		# The foreign kernel need not be KVER: only the parser reads these.
		if ! ls "$C/debs/foreign/"*"_$arch.deb" >/dev/null 2>&1; then
			pkg=$(apt-cache depends "linux-image-$flavour:$arch" | sed -n 's/^ *Depends: \(linux-image-[^:]*\).*/\1/p' | sort -V | tail -1)
			[ -n "$pkg" ] || { log "no linux-image-$flavour for $arch"; exit 1; }
			(cd "$C/debs/foreign" && apt-get download -q -o APT::Sandbox::User=root "$pkg:$arch" >/dev/null)
		fi
		d=$(mktemp -d)
		dpkg -x "$C"/debs/foreign/*"_$arch.deb" "$d"
		mkdir -p "$C/foreign/$arch"
		# A spread of shapes: parameters, exports, aliases, dependencies.
		local m
		for m in drivers/net/dummy.ko fs/fat/fat.ko fs/fat/vfat.ko drivers/block/loop.ko net/ipv6/ipv6.ko lib/crc-itu-t.ko drivers/net/tun.ko; do
			cp "$d"/lib/modules/*/kernel/"$m" "$C/foreign/$arch/" 2>/dev/null || true
		done
		rm -rf "$d"
		[ -n "$(ls "$C/foreign/$arch")" ] || { log "no modules found in $pkg"; exit 1; }
	done
	stamp foreign
}

# Debian mirrors of the rootfs fixtures: the suites the build machine uses.
MIRRORS=(
	"deb http://deb.debian.org/debian bookworm main"
	"deb http://deb.debian.org/debian bookworm-updates main"
	"deb http://deb.debian.org/debian-security bookworm-security main"
)

# mkrootfs NAME TOOL: a minimal bookworm system booting with systemd whose
# kernel is the recorded KVER, installed from the cached .deb (the exact
# build, whatever the mirror now holds) and whose initrd the package's own
# hook generated with TOOL (initramfs-tools or dracut; a comma list may add
# packages). busybox, as initramfs-tools recommends it: Debian systems have it
# in their initrd. Kept as a directory: later fixtures chroot into it and
# build disk images from it. More mmdebstrap arguments may follow TOOL (more
# --include=PKGS or --include=/path/to.deb); a function post_NAME (dashes as
# underscores), when defined, then runs on the new tree before it is stamped,
# and its text is part of the inputs.
mkrootfs() {
	local name=$1 tool=$2 deb inputs a
	deb=$(ls "$C"/debs/linux-image-"$KVER"_*.deb)
	local args=(--variant=minbase --include="systemd,systemd-sysv,kmod,udev,$tool,zstd,busybox" --include="$deb" "${@:3}")
	local debs=("$deb") post=post_${name//-/_}
	for a in "${@:3}"; do [[ $a != --include=*.deb ]] || debs+=("${a#--include=}"); done
	declare -F "$post" >/dev/null || post=
	# The .debs' names carry their versions (they are kept once downloaded).
	inputs=$( (printf '%s\n' "${args[@]/$C/}" "${MIRRORS[@]}" "$KVER"; stat -c %s "${debs[@]}"; [ -z "$post" ] || declare -f "$post") | sha256sum | cut -d' ' -f1)
	fresh "$name" "$inputs" && return 0
	apt_install mmdebstrap
	log "mmdebstrap $name ($tool${3:+ ${*:3}}, linux-image-$KVER)"
	begin "$name"
	rmdir "$C/$name"
	local t0=$SECONDS
	mmdebstrap -q "${args[@]}" bookworm "$C/$name" "${MIRRORS[@]}" >&2
	[ -s "$C/$name/boot/initrd.img-$KVER" ] || { log "$name: the kernel package generated no /boot/initrd.img-$KVER"; exit 1; }
	[ -z "$post" ] || "$post" "$C/$name"
	echo "$inputs" >"$C/$name.inputs"
	stamp_tree "$name"
	log "$name built in $((SECONDS - t0)) s"
}

# xz-utils: mkinitramfs -c xz silently falls back to gzip without it.
rootfs() { mkrootfs rootfs initramfs-tools,xz-utils; }
rootfs_dracut() { mkrootfs rootfs-dracut dracut; }

# rootfs-dkms: rootfs (same packages, same kernel .deb) plus what a DKMS
# build needs: dkms, gcc (gcc-12, the kernel's compiler, through
# linux-compiler-gcc-12-x86), make, libc6-dev, openssl (without it dkms
# cannot generate its signing key and installs unsigned modules, which a
# Debian system with DKMS does not do), and the fixture kernel's
# headers installed from the cached .debs of KVER (linux-headers-KVER,
# -common, linux-kbuild), so they match the kernel whatever the mirror holds
# now. A fresh mmdebstrap rather than rootfs plus apt in a chroot: apt
# resolves everything in one clean run with no mounts, resolv.conf or
# policy-rc.d to manage, and the result does not depend on rootfs's state.
# Like rootfs it has no apt lists (mmdebstrap's cleanup): lists go stale as
# bookworm-security drops old .debs, so a test that needs more packages runs
# apt-get update itself; installing a local DKMS .deb needs no lists.
rootfs_dkms() {
	mkrootfs rootfs-dkms initramfs-tools,xz-utils --include=dkms,gcc,make,libc6-dev,openssl \
		--include="$(ls "$C"/debs/linux-headers-"$KVER"_*.deb)" \
		--include="$(ls "$C"/debs/linux-headers-"${KVER%-*}"-common_*.deb)" \
		--include="$(ls "$C"/debs/linux-kbuild-*.deb)"
}
# post_rootfs_dkms ROOT checks the DKMS tree and removes a DKMS signing key:
# dkms 3.0.10 generates /var/lib/dkms/mok.key and mok.pub when it first
# signs a module (none exists after mmdebstrap today: no module is built),
# and a key shared by every copy of a fixture is no key.
post_rootfs_dkms() {
	local r=$1 f v want
	for f in var/lib/dkms/mok.key var/lib/dkms/mok.pub; do
		if [ -e "$r/$f" ] || [ -L "$r/$f" ]; then log "rootfs-dkms: remove /$f"; rm -f "$r/$f"; fi
		[ ! -e "$r/$f" ] || { log "rootfs-dkms: /$f remains"; exit 1; }
	done
	for f in usr/sbin/dkms usr/bin/gcc usr/bin/make usr/bin/openssl usr/include/stdio.h "usr/src/linux-headers-$KVER/Module.symvers" \
		"usr/src/linux-headers-$KVER/scripts/sign-file" "lib/modules/$KVER/build"; do
		[ -e "$r/$f" ] || [ -L "$r/$f" ] || { log "rootfs-dkms: /$f is missing"; exit 1; }
	done
	[ "$(readlink "$r/lib/modules/$KVER/build")" = "/usr/src/linux-headers-$KVER" ] ||
		{ log "rootfs-dkms: /lib/modules/$KVER/build does not point at /usr/src/linux-headers-$KVER"; exit 1; }
	want=$(dpkg-deb -f "$(ls "$C"/debs/linux-image-"$KVER"_*.deb)" Version)
	v=$(dpkg-query --admindir="$r/var/lib/dpkg" -W -f='${Version}' "linux-headers-$KVER")
	[ "$v" = "$want" ] || { log "rootfs-dkms: linux-headers-$KVER is $v, the kernel is $want"; exit 1; }
}

# in_rootfs ROOTFS CMD...: runs CMD chrooted in a throwaway overlay of ROOTFS
# (the cached fixture stays untouched) with /proc, /sys and /dev mounted; the
# overlay's /out is the caller's $OUT. The mounts live in a private mount
# namespace, so they vanish with it on every path (even kill -9); the EXIT
# trap removes the overlay layers.
in_rootfs() {
	local lower=$1 t rc=0
	shift
	t=$(mktemp -d /tmp/kmodctl-chroot.XXXXXX)
	TMPS+=("$t")
	mkdir -p "$t/upper" "$t/work" "$t/merged"
	# shellcheck disable=SC2016
	unshare --mount --propagation private sh -euc '
		t=$1 lower=$2 out=$3; shift 3; m=$t/merged
		mount -t overlay overlay -o "lowerdir=$lower,upperdir=$t/upper,workdir=$t/work" "$m"
		mount -t proc proc "$m/proc"
		mount --bind /sys "$m/sys"
		mount --bind /dev "$m/dev"
		mkdir -p "$m/out"
		mount --bind "$out" "$m/out"
		exec chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
	' sh "$t" "$lower" "$OUT" "$@" || rc=$?
	rm -rf "$t"
	return "$rc"
}

# initrd: the initrd images boot tests and listers use, from the rootfs
# fixtures' own tools: initramfs-tools with each compressor, dracut's Debian
# default (gzip), the zstd image behind a synthetic early-microcode cpio, and
# the fixture kernel to boot them with.
initrd() {
	local inputs
	inputs=$( (cat "$C/rootfs.sha256" "$C/rootfs-dracut.sha256" "$C/kernel.sha256"; echo "$KVER v1") | sha256sum | cut -d' ' -f1)
	fresh initrd "$inputs" && return 0
	apt_install cpio
	log "generate initrd images"
	local t0=$SECONDS
	# Built aside and moved in at the end: boot tests running meanwhile see
	# the old images until then.
	OUT=$(mktemp -d "$C/.initrd.XXXXXX")
	TMPS+=("$OUT")
	local comp
	for comp in zstd gzip xz; do
		in_rootfs "$C/rootfs" mkinitramfs -c "$comp" -o "/out/initramfs-tools-$comp.img" "$KVER"
	done
	in_rootfs "$C/rootfs-dracut" dracut -q --no-hostonly --force "/out/dracut.img" "$KVER"
	chmod 0644 "$OUT"/*.img
	# The compressor each image must start with (the tools fall back quietly).
	local f magic
	for f in initramfs-tools-zstd:28b52ffd initramfs-tools-gzip:1f8b initramfs-tools-xz:fd377a585a dracut:1f8b; do
		magic=$(head -c 6 "$OUT/${f%%:*}.img" | od -An -tx1 | tr -d ' \n')
		[[ $magic == "${f#*:}"* ]] || { log "${f%%:*}.img starts with $magic, not ${f#*:}"; exit 1; }
	done
	# Early microcode: an uncompressed newc cpio first, names without "./",
	# padded to 4 bytes (cpio already pads to 512-byte blocks).
	local u
	u=$(mktemp -d)
	TMPS+=("$u")
	mkdir -p "$u/kernel/x86/microcode"
	printf 'KMODTEST-UCODE synthetic GenuineIntel microcode %.0s' {1..64} >"$u/kernel/x86/microcode/GenuineIntel.bin"
	find "$u" -exec touch -h -d @0 {} +
	(cd "$u" && printf '%s\n' kernel kernel/x86 kernel/x86/microcode kernel/x86/microcode/GenuineIntel.bin |
		cpio -o -H newc -R 0:0 --reproducible --quiet >"$u/early.cpio")
	local pad=$(( (4 - $(stat -c %s "$u/early.cpio") % 4) % 4 ))
	head -c "$pad" /dev/zero >>"$u/early.cpio"
	cat "$u/early.cpio" "$OUT/initramfs-tools-zstd.img" >"$OUT/initramfs-tools-zstd-ucode.img"
	rm -rf "$u"
	cp "$C/kernel/root/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
	begin initrd
	mv "$OUT"/* "$C/initrd/"
	rm -rf "$OUT"
	echo "$inputs" >"$C/initrd.inputs"
	stamp initrd
	log "initrd images built in $((SECONDS - t0)) s"
}

# cloudimg: a cloud-image-like disk built from the rootfs fixture without
# mounting anything: debian12.raw, a 2 GiB sparse GPT disk (1: BIOS boot
# 1 MiB; 2: /boot ext4 256 MiB, XBOOTLDR type, label boot; 3: / ext4, x86-64
# root type, label root, the rest) whose fstab names both filesystems by
# UUID, and debian12.qcow2 converted from it. Each filesystem is made by
# mkfs.ext4 -d in a temporary file and copied into its partition. Fixed
# GUIDs and UUIDs keep the layout the same across rebuilds. Stamped like the
# rootfs trees (metadata fingerprint), so a warm run does not re-read the
# 2 GiB image.
#
# cloudimg-dkms: the same from rootfs-dkms, 3 GiB (its root filesystem
# holds ~1.2 GB, and DKMS builds in the image need room), as
# debian12-dkms.raw/.qcow2. Same GUIDs and UUIDs as cloudimg: tests find
# the same layout and root=UUID=, but the two images must not be attached
# at once where UUIDs matter.
CLOUDIMG_SIZE=2G
CLOUDIMG_DKMS_SIZE=3G
CLOUDIMG_BOOT_MIB=256
CLOUDIMG_DISK_GUID=6b6d6f64-0000-4000-8000-000000000000
CLOUDIMG_PART_GUIDS=(6b6d6f64-0000-4000-8000-000000000001 6b6d6f64-0000-4000-8000-000000000002 6b6d6f64-0000-4000-8000-000000000003)
CLOUDIMG_BOOT_UUID=6b6d6f64-b007-4000-8000-000000000002
CLOUDIMG_ROOT_UUID=6b6d6f64-4007-4000-8000-000000000003
cloudimg() { mkcloudimg cloudimg rootfs "$CLOUDIMG_SIZE" debian12; }
cloudimg_dkms() { mkcloudimg cloudimg-dkms rootfs-dkms "$CLOUDIMG_DKMS_SIZE" debian12-dkms; }

# mkcloudimg NAME ROOTFS SIZE BASE builds component NAME: BASE.raw (SIZE) and
# BASE.qcow2 from the rootfs component ROOTFS.
mkcloudimg() {
	local name=$1 src=$2 size=$3 base=$4 inputs
	inputs=$( (cat "$C/$src.sha256" "$C/$src.meta"; echo "$KVER $size $CLOUDIMG_BOOT_MIB $CLOUDIMG_DISK_GUID ${CLOUDIMG_PART_GUIDS[*]} $CLOUDIMG_BOOT_UUID $CLOUDIMG_ROOT_UUID v1") | sha256sum | cut -d' ' -f1)
	fresh "$name" "$inputs" && return 0
	apt_install gdisk e2fsprogs util-linux qemu-utils
	log "build cloud image $base.raw/.qcow2 from $src"
	local t0=$SECONDS t
	t=$(mktemp -d "$C/.$name.XXXXXX")
	TMPS+=("$t")
	local raw=$t/$base.raw
	truncate -s "$size" "$raw"
	sgdisk -U "$CLOUDIMG_DISK_GUID" \
		-n 1:2048:+1M -t 1:ef02 -c 1:bios -u "1:${CLOUDIMG_PART_GUIDS[0]}" \
		-n "2:0:+${CLOUDIMG_BOOT_MIB}M" -t 2:ea00 -c 2:boot -u "2:${CLOUDIMG_PART_GUIDS[1]}" \
		-n 3:0:0 -t 3:8304 -c 3:root -u "3:${CLOUDIMG_PART_GUIDS[2]}" "$raw" >/dev/null
	# The trees: root without /boot's content, and /boot's content.
	mkdir "$t/root" "$t/boot"
	cp -a "$C/$src/." "$t/root/"
	find "$t/root/boot" -mindepth 1 -maxdepth 1 -exec mv -t "$t/boot/" {} +
	rm -f "$t/root/etc/fstab"
	printf 'UUID=%s / ext4 defaults 0 1\nUUID=%s /boot ext4 defaults 0 2\n' "$CLOUDIMG_ROOT_UUID" "$CLOUDIMG_BOOT_UUID" >"$t/root/etc/fstab"
	local n label uuid start sectors
	for n in 2 3; do
		case $n in 2) label=boot uuid=$CLOUDIMG_BOOT_UUID ;; 3) label=root uuid=$CLOUDIMG_ROOT_UUID ;; esac
		read -r start sectors < <(partx -g -o START,SECTORS -n "$n" "$raw") || { log "$name: no partition $n in the new table"; exit 1; }
		truncate -s $((sectors * 512)) "$t/$label.ext4"
		E2FSPROGS_FAKE_TIME=${SOURCE_DATE_EPOCH:-1700000000} mkfs.ext4 -q -F -d "$t/$label" -L "$label" -U "$uuid" \
			-E "root_owner=0:0,hash_seed=$uuid" "$t/$label.ext4"
		dd if="$t/$label.ext4" of="$raw" bs=4M conv=notrunc,sparse oflag=seek_bytes seek=$((start * 512)) status=none
		rm -rf "$t/$label" "$t/$label.ext4"
	done
	qemu-img convert -O qcow2 "$raw" "$t/$base.qcow2"
	qemu-img check -q "$t/$base.qcow2"
	begin "$name"
	mv "$raw" "$t/$base.qcow2" "$C/$name/"
	rm -rf "$t"
	echo "$inputs" >"$C/$name.inputs"
	stamp_tree "$name"
	log "$name built in $((SECONDS - t0)) s"
}

main() {
	local comps=("$@")
	[ ${#comps[@]} -gt 0 ] || comps=(deps kernel headers testmods compressed foreign rootfs rootfs-dracut rootfs-dkms initrd cloudimg cloudimg-dkms)
	kver
	debs
	local c
	for c in "${comps[@]}"; do
		case $c in
		deps) deps ;;
		kernel) kernel ;;
		headers) headers ;;
		testmods) headers; testmods ;;
		compressed) kernel; testmods; compressed ;;
		foreign) foreign ;;
		rootfs) rootfs ;;
		rootfs-dracut) rootfs_dracut ;;
		rootfs-dkms) rootfs_dkms ;;
		initrd) kernel; rootfs; rootfs_dracut; initrd ;;
		cloudimg) rootfs; cloudimg ;;
		cloudimg-dkms) rootfs_dkms; cloudimg_dkms ;;
		*) log "unknown component $c"; exit 2 ;;
		esac
	done
	log "ready in $C (kernel $KVER)"
}

main "$@"
