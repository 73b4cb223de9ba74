#!/usr/bin/env bash
# Fails listing the files gofmt would change.
set -euo pipefail
cd "$(dirname "$0")/.."
files="$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.bin/*'))"
if [[ -n "$files" ]]; then
  echo "gofmt needs to be run on:"
  echo "$files"
  exit 1
fi
