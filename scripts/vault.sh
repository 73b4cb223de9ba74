#!/usr/bin/env bash
# Builds the Vault server the demo and the end-to-end suite run against, from
# source through the Go module proxy (nothing prebuilt is downloaded), and
# caches it at .bin/vault. The first build takes ~12 minutes on 2 cores.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.bin/vault"
want="$(grep -oE 'github.com/hashicorp/vault v[0-9]+\.[0-9]+\.[0-9]+' "$root/tools/vault/go.mod" | head -1 | cut -d" " -f2)"

if [[ -x "$bin" && "$("$bin" version 2>/dev/null)" == *"Vault $want"* ]]; then
  exit 0
fi

mkdir -p "$root/.bin"
echo "==> Building Vault $want from source into .bin/vault (first time only, ~12 min on 2 cores)"
start=$SECONDS
(
  cd "$root/tools/vault"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" github.com/hashicorp/vault
) &
pid=$!
trap 'kill $pid 2>/dev/null || true' INT TERM
# A heartbeat so a person (or CI log) can tell it is still working.
while kill -0 "$pid" 2>/dev/null; do
  sleep 30
  kill -0 "$pid" 2>/dev/null && echo "    ... still building Vault ($((SECONDS - start))s elapsed)"
done
wait "$pid"
mv "$bin.tmp" "$bin"
echo "==> Vault built in $((SECONDS - start))s: $("$bin" version)"
