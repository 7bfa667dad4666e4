#!/usr/bin/env bash
# tools.sh builds the pinned project tools from the Go module proxy:
#   bin/packer      Packer, pinned in tools/packer/go.mod
#   bin/packer-sdc  packer-sdc, pinned (packer-plugin-sdk) in tools/sdc/go.mod
#   bin/oras        the oras CLI, pinned in tools/oras/go.mod (the independent
#                   OCI client of the bundle tests)
#
# Usage: scripts/tools.sh [packer|packer-sdc|oras|all]   (default: all)
# Prints the absolute path of each requested binary on stdout; progress goes
# to stderr. A binary is rebuilt only when it is missing or its stamp (pinned
# version, hash of the tools go.mod/go.sum, Go version) changed, so repeated
# calls cost a fraction of a second. Builds are pure Go (CGO_ENABLED=0),
# -trimpath, and -mod=readonly: the committed go.sum decides every module, and
# a missing entry is an error instead of a silent network lookup.
#
# To move a pin, edit the require line in tools/<x>/go.mod with an exact
# version and run `GOFLAGS=-mod=mod go mod tidy` there. Ask the proxy for
# exact versions only: it refuses @latest and version lists for some modules.
#
# Env: BIN (output dir, default <repo>/bin), GO (default go).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$root/bin}
GO=${GO:-go}
export CGO_ENABLED=0 GOWORK=off CHECKPOINT_DISABLE=1
# Checksums come from go.sum/sum.golang.org as usual; never from the caller's
# -mod=mod (GOFLAGS), which could rewrite the tools' go.mod.
export GOFLAGS="-buildvcs=false"

log() { echo "tools.sh: $*" >&2; }

# build NAME MODDIR MODULE PKG
build() {
	local name=$1 moddir=$root/tools/$2 module=$3 pkg=$4
	local out=$BIN/$name stampf=$BIN/.$name.stamp
	local want stamp have=""
	want=$(cd "$moddir" && "$GO" list -m -f '{{.Version}}' "$module")
	stamp="$module $want
$(cd "$moddir" && sha256sum go.mod go.sum)
$("$GO" env GOVERSION) CGO_ENABLED=$CGO_ENABLED"
	if [[ -x $out && -f $stampf ]]; then
		have=$(<"$stampf")
	fi
	if [[ $have != "$stamp" ]]; then
		log "building $name $want (module $module) ..."
		local start=$SECONDS tmp
		tmp=$(mktemp "$BIN/.$name.XXXXXX")
		if ! (cd "$moddir" && "$GO" build -mod=readonly -trimpath -o "$tmp" "$pkg"); then
			rm -f "$tmp"
			return 1
		fi
		# The binary must carry the pinned module version.
		local got
		got=$("$GO" version -m "$tmp" | awk -v m="$module" '($1=="mod"||$1=="dep") && $2==m {print $3; exit}')
		if [[ $got != "$want" ]]; then
			rm -f "$tmp"
			log "$name: built $module ${got:-?}, want $want"
			return 1
		fi
		mv -f "$tmp" "$out"
		printf '%s\n' "$stamp" >"$stampf"
		log "built $out in $((SECONDS - start))s"
	fi
	echo "$out"
}

what=${1:-all}
mkdir -p "$BIN"
# Serialize concurrent callers (parallel make, two shells) on one checkout.
exec 9>"$BIN/.tools.lock"
flock 9

case $what in
packer | all | packer-sdc | oras) ;;
*)
	echo "usage: $0 [packer|packer-sdc|oras|all]" >&2
	exit 2
	;;
esac
if [[ $what == packer || $what == all ]]; then
	build packer packer github.com/hashicorp/packer github.com/hashicorp/packer
fi
if [[ $what == packer-sdc || $what == all ]]; then
	build packer-sdc sdc github.com/hashicorp/packer-plugin-sdk \
		github.com/hashicorp/packer-plugin-sdk/cmd/packer-sdc
fi
if [[ $what == oras || $what == all ]]; then
	build oras oras oras.land/oras oras.land/oras/cmd/oras
fi
