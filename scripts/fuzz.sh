#!/usr/bin/env bash
# Runs every Fuzz* target of the module for the given time each.
set -euo pipefail
t=${1:-60s}
cd "$(dirname "$0")/.."
fail=0
while read -r pkg; do
	for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $f ($t)"
		go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" || fail=1
	done
done < <(go list ./...)
exit $fail
