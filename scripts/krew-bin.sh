#!/usr/bin/env bash
# Builds the pinned `krew` (the kubectl plugin manager) that the release test
# installs the plugin with (tests/tests/release.rs), from its public Go module
# (tests/krew-bin/go.mod, with go.sum): no release download, only the Go
# module proxy. About a minute.
#
# Output: ${ROOMKEEPER_KREW_BIN:-$HOME/.cache/roomkeeper/krew/<version>/krew}
# A binary already there is not rebuilt (delete it to rebuild).
# The last line printed is the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."

mods="$PWD/tests/krew-bin"
version="$(awk '($1 == "require" && $2 == "sigs.k8s.io/krew") {print $3; exit} ($1 == "sigs.k8s.io/krew" && $2 ~ /^v/) {print $2; exit}' "$mods/go.mod")"
if [ -z "$version" ]; then
  echo "cannot read the pinned krew version from $mods/go.mod" >&2
  exit 1
fi
out="${ROOMKEEPER_KREW_BIN:-$HOME/.cache/roomkeeper/krew/${version}/krew}"

if [ -x "$out" ]; then
  echo "==> krew ${version}: cached at $out"
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "go is not installed: krew cannot be built" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
echo "==> building krew ${version} -> $out ($(go version))"
start=$SECONDS
# -mod=readonly: go.mod and go.sum are committed and must not drift during a build.
(cd "$mods" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -trimpath \
  -ldflags="-s -w -X sigs.k8s.io/krew/internal/version.gitTag=${version}" \
  -o "$out.tmp" sigs.k8s.io/krew/cmd/krew)
mv "$out.tmp" "$out"
echo "==> krew built in $((SECONDS - start)) s"
echo "$out"
