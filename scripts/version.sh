#!/usr/bin/env bash
# Prints the plugin version from its one source, version/version.go: the
# default VERSION of make build, make release, make demo and make dev.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
v="$(sed -n 's/^var version = "\(.*\)"$/\1/p' "$root/version/version.go")"
[[ -n "$v" ]] || { echo "scripts/version.sh: no 'var version = \"...\"' line in version/version.go" >&2; exit 1; }
echo "$v"
