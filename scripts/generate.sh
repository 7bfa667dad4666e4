#!/usr/bin/env bash
# generate.sh makes every generated file of the Packer plugin, from any
# checkout folder name:
#
#   <component>/*/<x>.hcl2spec.go   go generate (packer-sdc mapstructure-to-hcl2)
#   docs-partials/                  packer-sdc struct-markdown, one run per config file
#   .web-docs/                      docs/ rendered with the partials (packer-sdc
#                                   renderdocs into .docs/), then compiled to
#                                   Packer's integration layout; .docs/ is removed.
#                                   The guides (docs/guides/*.mdx) go to
#                                   .web-docs/guides/ as rendered, where the
#                                   README's relative links find them
#
# Usage: scripts/generate.sh [generate|check]   (default: generate)
#   check  runs generate, then fails listing every generated file that differs
#          from git HEAD or is untracked.
#
# struct-markdown's quirk: it walks up from the file's absolute path for a
# folder whose name starts with "packer-plugin-" and dies ("Failed to guess
# project ROOT") when there is none. The checkout may have any name, so this
# script runs it on absolute paths through a temporary symlink
# <tmp>/packer-plugin-kmod -> <checkout>. For the same reason no
# `//go:generate packer-sdc struct-markdown` line may exist: `go generate`
# would run it from the real folder name. This script refuses to run if one
# does.
#
# Config files are the .go files (not tests, not *.hcl2spec.go) of the
# component folders that carry a `//go:generate packer-sdc mapstructure-to-hcl2`
# line. Output is deterministic: docs-partials/ and .web-docs/ are rebuilt
# from scratch, every list is sorted in the C locale.
#
# Env: BIN (tools dir, default <repo>/bin), GO (default go).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
BIN=${BIN:-$root/bin}
GO=${GO:-go}
export LC_ALL=C CHECKPOINT_DISABLE=1

# The plugin's name (packer-plugin-<name>) and integration identity.
plugin=kmod
integration_name="Kmod"
integration_org=kmodctl
integration_description="Customize Linux disk images offline through loop devices and a chroot, prove they boot in QEMU, and write raw, qcow2, vmdk and vhd images for cloud import."
repo_url="https://github.com/kmodctl/packer-plugin-kmod"

# Component folders (Go code) and docs folders (docs/<folder>/<slug>.mdx)
# with the integration's component type for each.
component_dirs=(builder provisioner post-processor datasource)
declare -A docs_type=(
	[builders]=builder
	[provisioners]=provisioner
	[post-processors]=post-processor
	[datasources]=data-source
)

log() { echo "generate.sh: $*" >&2; }
die() {
	log "$*"
	exit 1
}

tmp=""
cleanup() {
	if [[ -n $tmp ]]; then
		rm -rf -- "$tmp"
	fi
	rm -rf -- "$root/.docs"
}
trap cleanup EXIT

# present_component_dirs prints the component folders that exist.
present_component_dirs() {
	local d
	for d in "${component_dirs[@]}"; do
		if [[ -d $d ]]; then
			echo "$d"
		fi
	done
}

# config_files prints the config files, relative to the root, sorted.
config_files() {
	local dirs
	mapfile -t dirs < <(present_component_dirs)
	((${#dirs[@]})) || return 0
	find "${dirs[@]}" -type f -name '*.go' ! -name '*_test.go' ! -name '*.hcl2spec.go' -print0 |
		xargs -0 -r grep -l -E '^//go:generate packer-sdc mapstructure-to-hcl2( |$)' |
		sort
}

step_hcl2spec() {
	local dirs offending f
	mapfile -t dirs < <(present_component_dirs)
	if ((${#dirs[@]} == 0)); then
		log "no component folders (${component_dirs[*]}); nothing to go generate"
		return
	fi
	offending=$(grep -rln --include='*.go' -E '^//go:generate .*struct-markdown' "${dirs[@]}" || true)
	if [[ -n $offending ]]; then
		die "remove the '//go:generate packer-sdc struct-markdown' line from:
$offending
(it dies outside a packer-plugin-* folder; this script runs struct-markdown itself)"
	fi
	# A *.hcl2spec.go whose source file is gone would never be rewritten.
	while IFS= read -r f; do
		if [[ ! -f ${f%.hcl2spec.go}.go ]]; then
			log "removing orphaned $f"
			rm -f -- "$f"
		fi
	done < <(find "${dirs[@]}" -type f -name '*.hcl2spec.go' | sort)
	local pkgs=()
	for f in "${dirs[@]}"; do
		pkgs+=("./$f/...")
	done
	log "go generate ${pkgs[*]}"
	# go:generate lines call packer-sdc by name: ours comes first on PATH.
	PATH="$BIN:$PATH" "$GO" generate "${pkgs[@]}"
}

step_partials() {
	local files f link
	mapfile -t files < <(config_files)
	rm -rf -- docs-partials
	if ((${#files[@]} == 0)); then
		log "no config files; no docs-partials"
		return
	fi
	tmp=$(mktemp -d)
	link=$tmp/packer-plugin-$plugin
	ln -s "$root" "$link"
	for f in "${files[@]}"; do
		log "struct-markdown $f"
		# Absolute path through the symlink: struct-markdown's walk up finds
		# packer-plugin-$plugin and writes docs-partials/ there (= here).
		(cd "$link" && "$sdc" struct-markdown "$link/$f")
	done
	rm -rf -- "$tmp"
	tmp=""
}

step_renderdocs() {
	rm -rf -- .docs
	[[ -d docs ]] || die "no docs/ folder"
	mkdir -p docs-partials
	log "renderdocs docs -> .docs"
	local out
	if ! out=$("$sdc" renderdocs -src docs -partials docs-partials -dst .docs 2>&1); then
		printf '%s\n' "$out" >&2
		die "renderdocs failed (an @include names a partial that is not generated?)"
	fi
}

# strip_header FILE prints FILE without its YAML front matter (a first line
# "---" through the next "---") and without the H1 title that follows it:
# on the integrations site the page title comes from metadata.hcl, and
# Packer's own component READMEs start at the "Type:" line.
strip_header() {
	awk '
		NR == 1 && $0 == "---" { fm = 1; next }
		fm { if ($0 == "---") fm = 0; next }
		!started && /^[[:space:]]*$/ { next }
		!started && !h1 && /^# / { h1 = 1; next }
		{ started = 1; print }
		END { if (fm) { print "unterminated front matter in " FILENAME > "/dev/stderr"; exit 1 } }
	' "$1"
}

# component_name FILE prints the HCL name from the doc's "Type: `name`" line.
component_name() {
	sed -n 's/^Type: `\([^`]*\)`.*$/\1/p' "$1" | head -n 1
}

step_webdocs() {
	local out=.web-docs folder type f slug name
	local components=()
	rm -rf -- "$out"
	mkdir -p "$out"
	[[ -f .docs/README.md ]] || die "docs/README.md is missing (the integration's main page)"
	strip_header .docs/README.md >"$out/README.md"
	for folder in $(printf '%s\n' "${!docs_type[@]}" | sort); do
		[[ -d .docs/$folder ]] || continue
		type=${docs_type[$folder]}
		while IFS= read -r f; do
			slug=$(basename "$f" .mdx)
			[[ $slug == index ]] && continue
			name=$(component_name "$f")
			[[ -n $name ]] || die "docs/$folder/$slug.mdx has no 'Type: \`<name>\`' line"
			mkdir -p "$out/components/$type/$slug"
			strip_header "$f" >"$out/components/$type/$slug/README.md"
			components+=("$type"$'\t'"$name"$'\t'"$slug")
		done < <(find ".docs/$folder" -maxdepth 1 -type f -name '*.mdx' | sort)
	done
	{
		echo "# Generated by scripts/generate.sh (make generate) from docs/; do not edit."
		echo "# Format: https://github.com/hashicorp/integration-template#metadata-configuration"
		echo "integration {"
		echo "  name        = \"$integration_name\""
		echo "  description = \"$integration_description\""
		echo "  identifier  = \"packer/$integration_org/$plugin\""
		echo "  flags       = []"
		echo "  docs {"
		echo "    process_docs    = true"
		echo "    readme_location = \"./README.md\""
		echo "    external_url    = \"$repo_url\""
		echo "  }"
		local c
		for c in "${components[@]}"; do
			IFS=$'\t' read -r type name slug <<<"$c"
			echo "  component {"
			echo "    type = \"$type\""
			echo "    name = \"$name\""
			echo "    slug = \"$slug\""
			echo "  }"
		done
		echo "}"
	} >"$out/metadata.hcl"
	# Guides: rendered as they are (front matter and title kept: no
	# metadata.hcl entry gives them one), at the path docs/README.md links
	# them by.
	local guides=0
	if [[ -d .docs/guides ]]; then
		mkdir -p "$out/guides"
		while IFS= read -r f; do
			cp -- "$f" "$out/guides/"
			guides=$((guides + 1))
		done < <(find .docs/guides -maxdepth 1 -type f -name '*.mdx' | sort)
	fi
	# Every relative .mdx link of a generated page must resolve inside
	# .web-docs (a guide or page added to docs/ but not generated fails here).
	local link page
	while IFS= read -r page; do
		while IFS= read -r link; do
			[[ -f $(dirname "$page")/$link ]] || die "$page links $link, which is not generated into $out"
		done < <(grep -o '](\([^)#:]*\.mdx\)' "$page" | sed 's/^](//' | sort -u)
	done < <(find "$out" -type f \( -name '*.md' -o -name '*.mdx' \) | sort)
	log "wrote $out (components: ${#components[@]}, guides: $guides)"
}

generate() {
	sdc=$(BIN=$BIN GO=$GO bash "$root/scripts/tools.sh" packer-sdc)
	step_hcl2spec
	step_partials
	step_renderdocs
	step_webdocs
	rm -rf -- .docs
}

# check lists generated files that differ from HEAD or are untracked.
check() {
	git rev-parse --verify -q HEAD >/dev/null || die "check: not a git checkout with a HEAD commit"
	local paths=(':(glob)**/*.hcl2spec.go' docs-partials .web-docs)
	local changed untracked
	changed=$(git diff --name-status HEAD -- "${paths[@]}")
	untracked=$(git ls-files --others -- "${paths[@]}")
	if [[ -z $changed && -z $untracked ]]; then
		log "generated files match HEAD"
		return 0
	fi
	{
		echo "generated files are out of date: run 'make generate' and commit the result."
		if [[ -n $changed ]]; then
			echo "differ from HEAD (M modified, D deleted, A staged new):"
			sed 's/^/  /' <<<"$changed"
		fi
		if [[ -n $untracked ]]; then
			echo "untracked:"
			sed 's/^/  /' <<<"$untracked"
		fi
		if [[ -n $changed ]]; then
			git --no-pager diff --stat HEAD -- "${paths[@]}"
		fi
	} >&2
	return 1
}

case ${1:-generate} in
generate) generate ;;
check)
	generate
	check
	;;
*)
	echo "usage: $0 [generate|check]" >&2
	exit 2
	;;
esac
