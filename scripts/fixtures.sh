#!/usr/bin/env bash
# Builds the test fixtures into a machine-wide cache outside the checkout, so a
# clean clone (CI) reuses them. Idempotent: each component is verified against
# the checksum list written when it was built and rebuilt only when missing or
# damaged. The kernel release is chosen once and recorded in $C/KVER; every
# later fixture derives from it and from the .debs kept in $C/debs.
#
#   KMODCTL_FIXTURES   cache folder (default /var/cache/kmodctl-fixtures)
#   components: deps kernel headers testmods compressed foreign (default: all)
set -euo pipefail

C=${KMODCTL_FIXTURES:-/var/cache/kmodctl-fixtures}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$C"

log() { printf 'fixtures: %s\n' "$*" >&2; }

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
# checksums and was built from the same inputs.
fresh() {
	[ -d "$C/$1" ] && [ -s "$C/$1.sha256" ] || return 1
	if [ $# -gt 1 ] && [ "$(cat "$C/$1.inputs" 2>/dev/null)" != "$2" ]; then return 1; fi
	(cd "$C" && sha256sum -c --quiet --strict "$1.sha256" >/dev/null 2>&1)
}
begin() { rm -rf "$C/$1" "$C/$1.sha256" "$C/$1.inputs"; mkdir -p "$C/$1"; }

deps() {
	apt_install kmod openssl xz-utils zstd gzip make gcc libc6-dev dpkg-dev ca-certificates
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

main() {
	local comps=("$@")
	[ ${#comps[@]} -gt 0 ] || comps=(deps kernel headers testmods compressed foreign)
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
		*) log "unknown component $c"; exit 2 ;;
		esac
	done
	log "ready in $C (kernel $KVER)"
}

main "$@"
