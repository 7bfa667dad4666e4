#!/usr/bin/env bash
# Installs the Debian packages that building, fixtures and tests need. Fast
# when everything is present: apt runs only for what is missing.
# openssh-server: internal/sshtest runs its own /usr/sbin/sshd on a free port
# of 127.0.0.1 with its own config; an sshd the package may start on port 22
# (Debian does under systemd; containers' policy-rc.d usually forbids it) is
# not used by anything here.
# docker-registry: Debian's distribution 2.8.2, which the bundle tests start
# on 127.0.0.1 with their own config. The package's own service (port 5000,
# all interfaces) is disabled and stopped right after the install: nothing
# here listens beyond loopback.
# libdqlite-dev, libraft-dev, libsqlite3-dev: cmd/kmod-catalog, the only cgo
# binary (go-dqlite v1.11.5 against Debian 12's libdqlite 1.11.1).
# socat: a QEMU guest's guestfwd to the catalog runs it per connection
# (a tcp: guestfwd is one connection for the VM's life, which the catalog's
# handshake timeout closes before the guest speaks).
# `deps.sh bench` installs only what make bench needs beyond that:
# guestfs-tools, for virt-customize, the builder bench's comparison (it
# pulls libguestfs and its appliance's packages, so make test and make
# example do not install it).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ "${1:-}" = bench ]; then
	pkgs=(guestfs-tools)
else
	pkgs=(kmod openssl xz-utils zstd gzip make gcc libc6-dev dpkg-dev ca-certificates time
		mmdebstrap cpio lz4 bzip2 qemu-system-x86 qemu-utils
		fdisk gdisk e2fsprogs util-linux dosfstools xfsprogs btrfs-progs mtools
		openssh-server openssh-client qemu-user-static docker-registry curl
		libdqlite-dev libraft-dev libsqlite3-dev socat)
fi
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: apt-get install ${missing[*]}" >&2
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	if [[ " ${missing[*]} " == *" docker-registry "* ]]; then
		systemctl disable docker-registry.service >/dev/null 2>&1 || true
		systemctl stop docker-registry.service >/dev/null 2>&1 || true
		invoke-rc.d docker-registry stop >/dev/null 2>&1 || true
	fi
fi
