#!/usr/bin/env bash
# Builds the first-boot agent (kmodctl, static, CGO off) for every
# architecture the plugin supports into provisioner/kmod/agents/, where the
# plugin embeds them (go build -tags embedagents). Each file is replaced
# atomically, so parallel builds (tests) never see a partial one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}
out="$ROOT/provisioner/kmod/agents"
mkdir -p "$out"
for arch in amd64 arm64; do
	tmp=$(mktemp "$out/.kmodctl-linux-$arch.XXXXXX")
	(cd "$ROOT" && CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -trimpath -ldflags "-s -w" -o "$tmp" ./cmd/kmodctl)
	mv -f "$tmp" "$out/kmodctl-linux-$arch"
done
