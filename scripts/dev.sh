#!/usr/bin/env bash
# dev.sh installs the locally built plugin (make plugin: bin/packer-plugin-kmod,
# version <x.y.z>-dev) into Packer's plugin folder with the pinned Packer
# (make packer: bin/packer), the way a release is installed:
#
#   bin/packer plugins install --path bin/packer-plugin-kmod github.com/kmodctl/kmod
#
# Packer keeps it as <plugin dir>/github.com/kmodctl/kmod/
# packer-plugin-kmod_v<version>_x5.0_<os>_<arch> plus its _SHA256SUM file, and
# loads only plugins installed that way. The plugin dir is $PACKER_PLUGIN_PATH
# when set, else $PACKER_CONFIG_DIR/plugins, else ~/.config/packer/plugins
# (root's own under plain sudo: use sudo -E to keep yours).
#
# Env: BIN (default <repo>/bin), PACKER_PLUGIN_PATH, PACKER_CONFIG_DIR.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$root/bin}
export CHECKPOINT_DISABLE=1

packer=$BIN/packer
plugin=$BIN/packer-plugin-kmod
source_addr=github.com/kmodctl/kmod

for f in "$packer" "$plugin"; do
	if [[ ! -x $f ]]; then
		echo "dev.sh: $f is missing (make packer plugin)" >&2
		exit 1
	fi
done

if [[ -n ${PACKER_PLUGIN_PATH:-} ]]; then
	mkdir -p "$PACKER_PLUGIN_PATH"
	where="PACKER_PLUGIN_PATH=$PACKER_PLUGIN_PATH"
elif [[ -n ${PACKER_CONFIG_DIR:-} ]]; then
	where="PACKER_CONFIG_DIR=$PACKER_CONFIG_DIR (plugins/)"
else
	where="the default plugin folder (~/.config/packer/plugins)"
fi
echo "dev.sh: installing $("$plugin" describe | sed -n 's/.*"version":"\([^"]*\)".*/\1/p') into $where" >&2
"$packer" plugins install --path "$plugin" "$source_addr"
"$packer" plugins installed | grep -F "/$source_addr/" || {
	echo "dev.sh: packer plugins installed does not list $source_addr" >&2
	exit 1
}
