#!/usr/bin/env bash
# Builds the test fixtures into a machine-wide cache outside the checkout, so a
# clean clone (CI) reuses them. Idempotent: each component is verified against
# the checksum list written when it was built and rebuilt only when missing or
# damaged. The kernel release is chosen once and recorded in $C/KVER; every
# later fixture derives from it and from the .debs kept in $C/debs.
#
# The Debian trees derive from one another, so each initramfs is generated
# once: base (mmdebstrap, no kernel) -> rootfs (+ the kernel .deb, whose hook
# generates the initrd) -> rootfs-dkms (+ dkms, gcc and the kernel's headers,
# which generate nothing) and rootfs-dracut (+ dracut, which generates its
# own). The headers are used from rootfs-dkms, never installed on the host,
# and the test modules are built there with the kernel's own compiler.
#
#   KMODCTL_FIXTURES         cache folder (default /var/cache/kmodctl-fixtures)
#   KMODCTL_KERNEL           kernel release to pin when the cache has none yet
#   KMODCTL_KERNEL_PICK      newest (default): the kernel behind
#                            linux-image-amd64; older: the oldest ABI of the
#                            same series Debian still ships, other than the
#                            parent cache's kernel (the alternate-kernel run)
#   KMODCTL_FIXTURES_PARENT  a cache whose kernel-independent components
#                            (base, foreign) this one reuses
#
#   components: deps kernel debs base rootfs rootfs-dkms rootfs-dracut testmods
#               compressed foreign initrd cloudimg cloudimg-dkms, or a set:
#               all (default), example (what `make example` needs),
#               alt (what the alternate-kernel test run needs)
set -euo pipefail

C=${KMODCTL_FIXTURES:-/var/cache/kmodctl-fixtures}
PARENT=${KMODCTL_FIXTURES_PARENT:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$C"

log() { printf 'fixtures: %s\n' "$*" >&2; }

# Temporary folders, removed however the script ends. None holds a mount:
# chroots run in private mount namespaces that die with their process.
TMPS=()
trap 'rm -rf --one-file-system "${TMPS[@]}"' EXIT

# apt_install installs Debian packages only when one is missing, so the warm
# path makes no network calls.
apt_updated=
apt_update() { [ -n "$apt_updated" ] || { apt-get update -q >/dev/null; apt_updated=1; }; }
apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	apt_update
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

# kernel_candidates lists the amd64 kernel releases the archive offers in
# the series of release $1 (e.g. 6.1), oldest first.
kernel_candidates() {
	local series=$1
	apt-cache search --names-only '^linux-image-[0-9].*-amd64$' | sed -n 's/^linux-image-\([^ ]*-amd64\) .*/\1/p' |
		grep -v -e '-cloud-amd64$' -e '-rt-amd64$' | grep "^${series//./\\.}[.-]" | sort -V
}

kver() {
	if [ ! -s "$C/KVER" ]; then
		local pkg="${KMODCTL_KERNEL:-}" pick=${KMODCTL_KERNEL_PICK:-newest}
		if [ -z "$pkg" ] && [ "$pick" = newest ]; then
			pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*\)$/\1/p' | sort -V | tail -1)
			if [ -z "$pkg" ]; then
				apt_update
				pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: linux-image-\(.*\)$/\1/p' | sort -V | tail -1)
			fi
		elif [ -z "$pkg" ] && [ "$pick" = older ]; then
			# Another ABI of the parent's series, the oldest the archive
			# still has: the farthest from the parent's kernel.
			[ -s "$PARENT/KVER" ] || { log "KMODCTL_KERNEL_PICK=older needs KMODCTL_FIXTURES_PARENT with a KVER"; exit 2; }
			local other series c
			other=$(cat "$PARENT/KVER")
			series=$(echo "$other" | cut -d. -f1-2)
			apt_update
			mkdir -p "$C/debs"
			for c in $(kernel_candidates "$series"); do
				[ "$c" != "$other" ] || continue
				# The index may list a package the pool no longer has.
				if (cd "$C/debs" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$c" >/dev/null 2>&1); then
					pkg=$c
					break
				fi
			done
		elif [ -z "$pkg" ]; then
			log "KMODCTL_KERNEL_PICK=$pick: want newest or older"
			exit 2
		fi
		[ -n "$pkg" ] || { log "cannot choose a kernel release (KMODCTL_KERNEL_PICK=${KMODCTL_KERNEL_PICK:-newest})"; exit 1; }
		echo "$pkg" >"$C/KVER"
		log "kernel release chosen: $pkg"
	fi
	KVER=$(cat "$C/KVER")
	# linux-kbuild-X.Y: the series of the release.
	SERIES=$(echo "$KVER" | cut -d. -f1-2 | sed 's/[^0-9.].*//')
}

# debs downloads the kernel's packages once; later runs install from them so a
# Debian ABI bump does not change the fixtures.
debs() {
	mkdir -p "$C/debs"
	local want=("linux-image-$KVER" "linux-headers-$KVER" "linux-headers-${KVER%-*}-common")
	local p
	for p in "${want[@]}"; do
		if ! ls "$C/debs/${p}_"*.deb >/dev/null 2>&1; then
			apt_update
			log "download $p"
			(cd "$C/debs" && apt-get download -q -o APT::Sandbox::User=root "$p" >/dev/null)
		fi
	done
	# linux-kbuild-X.Y of the kernel's own upload when the archive still has
	# it, else the newest, as apt gives a user installing these headers
	# today (they depend on linux-kbuild-X.Y >= their version).
	local kb ver f
	kb=$(dpkg-deb -f "$(deb_of "linux-headers-$KVER")" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-kbuild-[0-9.]*\).*/\1/p' | head -1)
	ver=$(dpkg-deb -f "$(deb_of "linux-image-$KVER")" Version)
	if ! ls "$C/debs/$kb"_*.deb >/dev/null 2>&1; then
		apt_update
		log "download $kb"
		(cd "$C/debs" && { apt-get download -q -o APT::Sandbox::User=root "$kb=$ver" >/dev/null 2>&1 ||
			apt-get download -q -o APT::Sandbox::User=root "$kb" >/dev/null; })
	fi
	for f in "$C/debs/$kb"_*.deb; do
		dpkg --compare-versions "$(dpkg-deb -f "$f" Version)" ge "$ver" || { log "$(basename "$f") is older than the kernel ($ver)"; exit 1; }
	done
}
deb_of() { ls "$C"/debs/"$1"_*.deb; }

kernel() {
	fresh kernel && return 0
	log "extract linux-image-$KVER"
	begin kernel
	dpkg -x "$(deb_of "linux-image-$KVER")" "$C/kernel/root"
	# Debian's package ships no depmod output; tests generate their own.
	stamp kernel
}

# testmods builds testdata/modules against the fixture kernel's headers,
# chrooted in an overlay of rootfs-dkms: the kernel's own compiler (gcc-12),
# headers and kbuild, whatever the host has.
inputs_testmods() { (cd "$ROOT/testdata/modules" && cat Kbuild ./*.c; echo "$KVER"; cat "$C/rootfs-dkms.inputs") | sha256sum | cut -d' ' -f1; }
testmods() {
	local inputs
	inputs=$(inputs_testmods)
	fresh testmods "$inputs" && return 0
	log "build test modules against $KVER"
	OUT=$(mktemp -d "$C/.testmods.XXXXXX")
	TMPS+=("$OUT")
	cp "$ROOT"/testdata/modules/Kbuild "$ROOT"/testdata/modules/*.c "$OUT/"
	# KBUILD_MODPOST_WARN: kmodtest_unresolved references a symbol that is not exported.
	if ! in_rootfs "$C/rootfs-dkms" make -s -C "/usr/src/linux-headers-$KVER" M=/out KBUILD_MODPOST_WARN=1 modules >"$OUT/build.log" 2>&1; then
		cat "$OUT/build.log" >&2
		exit 1
	fi
	begin testmods
	cp "$OUT"/*.ko "$OUT/Module.symvers" "$C/testmods/"
	echo "$inputs" >"$C/testmods.inputs"
	stamp testmods
}

# Debian mirrors of the rootfs fixtures: the suites the build machine uses.
MIRRORS=(
	"deb http://deb.debian.org/debian bookworm main"
	"deb http://deb.debian.org/debian bookworm-updates main"
	"deb http://deb.debian.org/debian-security bookworm-security main"
)

# The packages of every tree. busybox, as initramfs-tools recommends it:
# Debian systems have it in their initrd. xz-utils: mkinitramfs -c xz
# silently falls back to gzip without it. linux-base: every Debian kernel
# package depends on it.
BASE_PACKAGES=systemd,systemd-sysv,kmod,udev,initramfs-tools,zstd,busybox,xz-utils,linux-base

# base: a minimal bookworm system booting with systemd, without a kernel
# (nothing generates an initramfs in it). Kernel-independent: an alternate-
# kernel cache reuses its parent's. Not a test fixture itself.
inputs_base() { (echo "base v2 $BASE_PACKAGES"; printf '%s\n' "${MIRRORS[@]}") | sha256sum | cut -d' ' -f1; }
base() {
	local inputs
	inputs=$(inputs_base)
	fresh base "$inputs" && return 0
	apt_install mmdebstrap
	log "mmdebstrap base ($BASE_PACKAGES)"
	begin base
	rmdir "$C/base"
	mmdebstrap -q --variant=minbase --include="$BASE_PACKAGES" bookworm "$C/base" "${MIRRORS[@]}" >&2
	echo "$inputs" >"$C/base.inputs"
	stamp_tree base
}
# BASE is the base tree rootfs derives from: the parent cache's when set.
base_dir() { if [ -n "$PARENT" ]; then echo "$PARENT/base"; else echo "$C/base"; fi; }

# in_tree TREE CMD... runs CMD chrooted in TREE itself (to change it) with
# /proc, /sys and /dev mounted in a private mount namespace, so they vanish
# with it on every path, even kill -9; TREE keeps the host's resolv.conf
# mmdebstrap copied, and a policy-rc.d keeps services from starting.
in_tree() {
	local tree=$1
	shift
	printf '#!/bin/sh\nexit 101\n' >"$tree/usr/sbin/policy-rc.d"
	chmod 0755 "$tree/usr/sbin/policy-rc.d"
	local rc=0
	# shellcheck disable=SC2016
	unshare --mount --propagation private sh -euc '
		m=$1; shift
		mount -t proc proc "$m/proc"
		mount --bind /sys "$m/sys"
		mount --rbind /dev "$m/dev"
		exec chroot "$m" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"
	' sh "$tree" "$@" || rc=$?
	rm -f "$tree/usr/sbin/policy-rc.d"
	return "$rc"
}

# tidy TREE removes what a package run leaves that mmdebstrap's own cleanup
# removes too: apt lists and caches, logs, temporary files.
tidy() {
	local t=$1
	find "$t/var/lib/apt/lists" -mindepth 1 -maxdepth 1 ! -name lock ! -name partial -exec rm -rf {} +
	rm -rf "$t"/var/cache/apt/*.bin "$t"/var/cache/apt/archives/*.deb "$t"/tmp/kmodctl-debs
	rm -f "$t/var/log/dpkg.log" "$t/var/log/alternatives.log" "$t"/var/log/apt/*.log "$t"/var/log/apt/eipp.log.xz "$t/var/cache/ldconfig/aux-cache"
}

# derive NAME FROM INPUTS SCRIPT: component NAME is a copy of tree FROM
# changed by the shell function SCRIPT (called with the new tree), built
# aside and moved in when complete.
derive() {
	local name=$1 from=$2 inputs=$3 script=$4 t0=$SECONDS
	local t
	t=$(mktemp -d "$C/.$name.XXXXXX")
	TMPS+=("$t")
	cp -a "$from/." "$t/"
	"$script" "$t"
	tidy "$t"
	begin "$name"
	rmdir "$C/$name"
	mv "$t" "$C/$name"
	echo "$inputs" >"$C/$name.inputs"
	stamp_tree "$name"
	log "$name built in $((SECONDS - t0)) s"
}

# inputs_of NAME...: a hash of the named components as built (their
# checksum lists) for a derived component's inputs.
inputs_of() { (for n in "$@"; do [ ! -e "$n.inputs" ] || cat "$n.inputs"; cat "$n.sha256"; done) | sha256sum | cut -d' ' -f1; }

# rootfs: base plus the fixture kernel, installed from the cached .deb (the
# exact build, whatever the mirror now holds) by dpkg, whose hook generates
# /boot/initrd.img-KVER with initramfs-tools (zstd, MODULES=most).
inputs_rootfs() { (echo "rootfs v2 $KVER"; inputs_of "$(base_dir)"; stat -c %s "$(deb_of "linux-image-$KVER")") | sha256sum | cut -d' ' -f1; }
rootfs() {
	local b inputs
	b=$(base_dir)
	inputs=$(inputs_rootfs)
	fresh rootfs "$inputs" && return 0
	log "rootfs: base + linux-image-$KVER (its hook generates the initrd: about a minute)"
	derive rootfs "$b" "$inputs" rootfs_script
}
rootfs_script() {
	local t=$1
	mkdir -p "$t/tmp/kmodctl-debs"
	cp "$(deb_of "linux-image-$KVER")" "$t/tmp/kmodctl-debs/"
	in_tree "$t" sh -c 'dpkg -i /tmp/kmodctl-debs/*.deb' >/dev/null
	[ -s "$t/boot/initrd.img-$KVER" ] || { log "rootfs: the kernel package generated no /boot/initrd.img-$KVER"; exit 1; }
}

# rootfs-dkms: rootfs plus what a DKMS build needs: dkms, gcc (gcc-12, the
# kernel's compiler, through linux-compiler-gcc-12-x86), make, libc6-dev,
# openssl (without it dkms cannot generate its signing key and installs
# unsigned modules, which a Debian system with DKMS does not do), and the
# fixture kernel's headers installed from the cached .debs of KVER
# (linux-headers-KVER, -common, linux-kbuild), so they match the kernel
# whatever the mirror holds now. None of these triggers an initramfs
# update: the initrd is rootfs's. Like rootfs it has no apt lists: lists go
# stale as bookworm-security drops old .debs, so a test that needs more
# packages runs apt-get update itself; installing a local DKMS .deb needs
# no lists.
DKMS_PACKAGES="dkms gcc make libc6-dev openssl"
# The .debs' names carry their versions.
inputs_rootfs_dkms() {
	(echo "rootfs-dkms v2 $KVER $DKMS_PACKAGES"; inputs_of "$C/rootfs"; declare -f rootfs_dkms_script post_rootfs_dkms
		basename -a "$(deb_of "linux-headers-$KVER")" "$(deb_of "linux-headers-${KVER%-*}-common")" "$C"/debs/linux-kbuild-*.deb) | sha256sum | cut -d' ' -f1
}
rootfs_dkms() {
	local inputs
	inputs=$(inputs_rootfs_dkms)
	fresh rootfs-dkms "$inputs" && return 0
	log "rootfs-dkms: rootfs + $DKMS_PACKAGES + linux-headers-$KVER"
	derive rootfs-dkms "$C/rootfs" "$inputs" rootfs_dkms_script
}
rootfs_dkms_script() {
	local t=$1 initrd
	initrd=$(sha256sum <"$t/boot/initrd.img-$KVER")
	mkdir -p "$t/tmp/kmodctl-debs"
	cp "$(deb_of "linux-headers-$KVER")" "$(deb_of "linux-headers-${KVER%-*}-common")" "$C"/debs/linux-kbuild-*.deb "$t/tmp/kmodctl-debs/"
	# shellcheck disable=SC2086
	in_tree "$t" sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends "$@" /tmp/kmodctl-debs/*.deb' sh $DKMS_PACKAGES >/dev/null
	[ "$(sha256sum <"$t/boot/initrd.img-$KVER")" = "$initrd" ] || { log "rootfs-dkms: installing the DKMS packages changed the initrd"; exit 1; }
	post_rootfs_dkms "$t"
}
# post_rootfs_dkms ROOT checks the DKMS tree and removes a DKMS signing key:
# dkms 3.0.10 generates /var/lib/dkms/mok.key and mok.pub when it first
# signs a module (none exists after the install today: no module is
# built), and a key shared by every copy of a fixture is no key.
post_rootfs_dkms() {
	local r=$1 f v want
	for f in var/lib/dkms/mok.key var/lib/dkms/mok.pub; do
		if [ -e "$r/$f" ] || [ -L "$r/$f" ]; then log "rootfs-dkms: remove /$f"; rm -f "$r/$f"; fi
		[ ! -e "$r/$f" ] || { log "rootfs-dkms: /$f remains"; exit 1; }
	done
	for f in usr/sbin/dkms usr/bin/gcc usr/bin/make usr/bin/openssl usr/include/stdio.h "usr/src/linux-headers-$KVER/Module.symvers" \
		"usr/src/linux-headers-$KVER/scripts/sign-file" "usr/lib/linux-kbuild-$SERIES/scripts/sign-file" "lib/modules/$KVER/build"; do
		[ -e "$r/$f" ] || [ -L "$r/$f" ] || { log "rootfs-dkms: /$f is missing"; exit 1; }
	done
	[ "$(readlink "$r/lib/modules/$KVER/build")" = "/usr/src/linux-headers-$KVER" ] ||
		{ log "rootfs-dkms: /lib/modules/$KVER/build does not point at /usr/src/linux-headers-$KVER"; exit 1; }
	want=$(dpkg-deb -f "$(deb_of "linux-image-$KVER")" Version)
	v=$(dpkg-query --admindir="$r/var/lib/dpkg" -W -f='${Version}' "linux-headers-$KVER")
	[ "$v" = "$want" ] || { log "rootfs-dkms: linux-headers-$KVER is $v, the kernel is $want"; exit 1; }
	v=$(dpkg-query --admindir="$r/var/lib/dpkg" -W -f='${Version}' "linux-kbuild-$SERIES")
	dpkg --compare-versions "$v" ge "$want" || { log "rootfs-dkms: linux-kbuild-$SERIES is $v, older than the kernel's $want"; exit 1; }
}

# rootfs-dracut: rootfs with dracut instead of initramfs-tools (purged);
# dracut's trigger regenerates /boot/initrd.img-KVER.
inputs_rootfs_dracut() { (echo "rootfs-dracut v2 $KVER"; inputs_of "$C/rootfs"; declare -f rootfs_dracut_script) | sha256sum | cut -d' ' -f1; }
rootfs_dracut() {
	local inputs
	inputs=$(inputs_rootfs_dracut)
	fresh rootfs-dracut "$inputs" && return 0
	log "rootfs-dracut: rootfs with dracut for initramfs-tools (dracut generates the initrd: about a minute)"
	derive rootfs-dracut "$C/rootfs" "$inputs" rootfs_dracut_script
}
rootfs_dracut_script() {
	local t=$1 before
	before=$(stat -c %Y "$t/boot/initrd.img-$KVER")
	# One transaction, so dracut's trigger generates the initrd once:
	# initramfs-tools and what only it needed (klibc) purged.
	in_tree "$t" sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends --purge --autoremove dracut initramfs-tools- initramfs-tools-core-' >/dev/null
	[ ! -e "$t/usr/sbin/mkinitramfs" ] || { log "rootfs-dracut: initramfs-tools is still installed"; exit 1; }
	# dracut's postinst regenerates the initrd only when asked by a kernel
	# hook; generate it explicitly so it is dracut's whatever the package does.
	if [ "$(stat -c %Y "$t/boot/initrd.img-$KVER")" = "$before" ]; then
		in_tree "$t" dracut -q --force "/boot/initrd.img-$KVER" "$KVER"
	fi
}

# compressed: .ko.xz (CRC32 check, as the kernel needs), .ko.zst and .ko.gz
# copies of a signed Debian module (dummy) and of a test module, and their
# uncompressed .ko.
# kernel_dummy is the kernel's dummy module, as packaged (.ko or .ko.xz).
kernel_dummy() { ls "$C/kernel/root/lib/modules/$KVER/kernel/drivers/net/dummy.ko"* | head -1; }
decompressed() { case $1 in *.xz) xz -dc "$1" ;; *) cat "$1" ;; esac; }
inputs_compressed() { cat "$(kernel_dummy)" "$C/testmods/kmodtest_param.ko" | sha256sum | cut -d' ' -f1; }
compressed() {
	local src=("$(kernel_dummy)" "$C/testmods/kmodtest_param.ko")
	local inputs
	inputs=$(inputs_compressed)
	fresh compressed "$inputs" && return 0
	log "compress sample modules"
	begin compressed
	local f n
	for f in "${src[@]}"; do
		n=$(basename "${f%.xz}")
		decompressed "$f" >"$C/compressed/$n"
		f=$C/compressed/$n
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
	# Kernel-independent: an alternate-kernel cache takes its parent's.
	if [ -n "$PARENT" ] && [ -s "$PARENT/foreign.sha256" ]; then
		begin foreign
		cp -a "$PARENT/foreign/." "$C/foreign/"
		stamp foreign
		return 0
	fi
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

# initrd: the initrd images boot tests and listers use, each from a Debian
# tool: the image initramfs-tools' kernel hook generated in rootfs (zstd),
# the same archive as mkinitramfs -c gzip|xz compresses it (mkinitramfs's own
# commands), dracut's from rootfs-dracut (Debian's default: gzip,
# --no-hostonly), the zstd image behind a synthetic early-microcode cpio, and
# the fixture kernel to boot them with. Nothing is generated twice: an
# initramfs generation takes about a minute on 2 cores.
#
# A derived cache (KMODCTL_FIXTURES_PARENT: the alternate-kernel run, which
# is -short) gets no gzip and xz variants: they differ from the zstd image
# only in compression, -short reads none of them, and compressing about
# 130 MB with xz is most of this step (both caches at once: 75 s).
initrd_variants() { if [ -n "$PARENT" ]; then echo "zstd"; else echo "zstd gzip xz"; fi; }
inputs_initrd() { (echo "initrd v2 $KVER${PARENT:+ $(initrd_variants)}"; inputs_of "$C/rootfs" "$C/rootfs-dracut" "$C/kernel") | sha256sum | cut -d' ' -f1; }
initrd() {
	local inputs
	inputs=$(inputs_initrd)
	fresh initrd "$inputs" && return 0
	apt_install cpio
	log "initrd images"
	local t0=$SECONDS
	# Built aside and moved in at the end: boot tests running meanwhile see
	# the old images until then.
	OUT=$(mktemp -d "$C/.initrd.XXXXXX")
	TMPS+=("$OUT")
	local tools=$C/rootfs/boot/initrd.img-$KVER
	cp "$tools" "$OUT/initramfs-tools-zstd.img"
	# mkinitramfs's compressors (initramfs-tools 0.142): gzip without a
	# level (pigz is not in the tree), xz --check=crc32 --threads=0.
	local variants checks="initramfs-tools-zstd:28b52ffd dracut:1f8b"
	variants=$(initrd_variants)
	if [[ " $variants " == *" gzip "* ]]; then
		zstd -q -dc "$tools" | gzip >"$OUT/initramfs-tools-gzip.img"
		checks+=" initramfs-tools-gzip:1f8b"
	fi
	if [[ " $variants " == *" xz "* ]]; then
		zstd -q -dc "$tools" | xz --check=crc32 --threads=0 >"$OUT/initramfs-tools-xz.img"
		checks+=" initramfs-tools-xz:fd377a585a"
	fi
	cp "$C/rootfs-dracut/boot/initrd.img-$KVER" "$OUT/dracut.img"
	chmod 0644 "$OUT"/*.img
	# The compressor each image must start with (the tools fall back quietly).
	local f magic
	for f in $checks; do
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
	log "initrd built in $((SECONDS - t0)) s"
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
inputs_cloudimg() { inputs_mkcloudimg rootfs "$CLOUDIMG_SIZE"; }
inputs_cloudimg_dkms() { inputs_mkcloudimg rootfs-dkms "$CLOUDIMG_DKMS_SIZE"; }
inputs_mkcloudimg() { (cat "$C/$1.sha256" "$C/$1.meta"; echo "$KVER $2 $CLOUDIMG_BOOT_MIB $CLOUDIMG_DISK_GUID ${CLOUDIMG_PART_GUIDS[*]} $CLOUDIMG_BOOT_UUID $CLOUDIMG_ROOT_UUID v1") | sha256sum | cut -d' ' -f1; }

# mkcloudimg NAME ROOTFS SIZE BASE builds component NAME: BASE.raw (SIZE) and
# BASE.qcow2 from the rootfs component ROOTFS.
mkcloudimg() {
	local name=$1 src=$2 size=$3 base=$4 inputs
	inputs=$(inputs_mkcloudimg "$src" "$size")
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

# The components a set needs, in build order (each after what it derives
# from), and the seconds each typically takes on 2 cores (for the
# estimate; a cached component takes about none).
SET_ALL="deps kernel base rootfs rootfs-dkms testmods compressed foreign rootfs-dracut initrd cloudimg cloudimg-dkms"
SET_EXAMPLE="deps kernel base rootfs rootfs-dkms testmods cloudimg-dkms"
SET_ALT="deps kernel rootfs rootfs-dkms testmods compressed foreign rootfs-dracut initrd"
declare -A TYPICAL=([deps]=25 [kernel]=8 [base]=35 [rootfs]=60 [rootfs-dkms]=45 [testmods]=15 [compressed]=3
	[foreign]=15 [rootfs-dracut]=75 [initrd]=15 [cloudimg]=20 [cloudimg-dkms]=30)

# needs NAME lists what component NAME is built from.
needs() {
	case $1 in
	rootfs) [ -n "$PARENT" ] && echo kernel || echo "kernel base" ;;
	rootfs-dkms | rootfs-dracut) echo rootfs ;;
	testmods) echo rootfs-dkms ;;
	compressed) echo "kernel testmods" ;;
	initrd) echo "kernel rootfs rootfs-dracut" ;;
	cloudimg) echo rootfs ;;
	cloudimg-dkms) echo rootfs-dkms ;;
	esac
}

build() {
	case $1 in
	deps) deps ;;
	kernel) kernel ;;
	base) base ;;
	rootfs) rootfs ;;
	rootfs-dkms) rootfs_dkms ;;
	rootfs-dracut) rootfs_dracut ;;
	testmods) testmods ;;
	compressed) compressed ;;
	foreign) foreign ;;
	initrd) initrd ;;
	cloudimg) cloudimg ;;
	cloudimg-dkms) cloudimg_dkms ;;
	*) log "unknown component $1"; exit 2 ;;
	esac
}

# closure lists the components and everything they need, in the order of
# SET_ALL.
closure() {
	local -A want=()
	local todo=("$@") c d
	while [ ${#todo[@]} -gt 0 ]; do
		c=${todo[0]}
		todo=("${todo[@]:1}")
		[ -z "${want[$c]-}" ] || continue
		want[$c]=1
		for d in $(needs "$c"); do todo+=("$d"); done
	done
	for c in $SET_ALL; do
		[ -z "${want[$c]-}" ] || echo "$c"
	done
	for c in "$@"; do
		[[ " $SET_ALL " == *" $c "* ]] || { log "unknown component $c"; exit 2; }
	done
}

# uptodate NAME succeeds when component NAME is built, checked and of
# the current inputs (the components it derives from must be up to date).
uptodate() {
	local f=inputs_${1//-/_} inputs=
	if declare -F "$f" >/dev/null; then inputs=$("$f" 2>/dev/null) || return 1; fi
	if [ -n "$inputs" ]; then fresh "$1" "$inputs"; else fresh "$1"; fi
}

main() {
	local args=("$@") comps=() c
	[ ${#args[@]} -gt 0 ] || args=(all)
	for c in "${args[@]}"; do
		case $c in
		all) comps+=($SET_ALL) ;;
		example) comps+=($SET_EXAMPLE) ;;
		alt) comps+=($SET_ALT) ;;
		*) comps+=("$c") ;;
		esac
	done
	mapfile -t comps < <(closure "${comps[@]}")
	kver
	debs
	# The plan: what is not up to date, or derives from what will be
	# rebuilt.
	local todo=() left=0 d stale
	local -A rebuild=()
	for c in "${comps[@]}"; do
		[ "$c" != deps ] || continue
		stale=
		for d in $(needs "$c"); do [ -z "${rebuild[$d]-}" ] || stale=1; done
		[ -n "$stale" ] || uptodate "$c" || stale=1
		if [ -n "$stale" ]; then rebuild[$c]=1; todo+=("$c"); left=$((left + ${TYPICAL[$c]})); fi
	done
	if [ ${#todo[@]} -gt 0 ]; then
		log "to build in $C (kernel $KVER): ${todo[*]}; about $(((left + 59) / 60)) min on 2 cores"
	fi
	local t0 i=0
	for c in "${comps[@]}"; do
		t0=$SECONDS
		build "$c"
		if [ -n "${rebuild[$c]-}" ]; then
			i=$((i + 1))
			left=$((left - ${TYPICAL[$c]}))
			[ $left -ge 0 ] || left=0
			log "[$i/${#todo[@]}] $c ready after $((SECONDS - t0)) s; about $left s left"
		fi
	done
	log "ready in $C (kernel $KVER)"
}

main "$@"
