#!/usr/bin/env bash
# Fetches the upstream Gateway API CRDs the operator's traffic router needs
# (HTTPRoute and BackendTLSPolicy, standard channel) from the Go module sigs.k8s.io/gateway-api via
# the Go module proxy, and caches them like scripts/k8s-test-bins.sh caches the
# Kubernetes binaries. No release downloads, no Docker.
#
# Output: ${ROOMKEEPER_GATEWAY_API_DIR:-$HOME/.cache/roomkeeper/gateway-api/<version>}
# holding gateway.networking.k8s.io_httproutes.yaml and
# gateway.networking.k8s.io_backendtlspolicies.yaml. Already there: not fetched
# again. The last line printed is the output directory.
set -euo pipefail

version="${ROOMKEEPER_GATEWAY_API_VERSION:-v1.6.3}"
out="${ROOMKEEPER_GATEWAY_API_DIR:-$HOME/.cache/roomkeeper/gateway-api/${version}}"
files=(gateway.networking.k8s.io_httproutes.yaml gateway.networking.k8s.io_backendtlspolicies.yaml)

have_all() {
  for f in "${files[@]}"; do [ -s "$out/$f" ] || return 1; done
}
if have_all; then
  echo "==> Gateway API ${version} CRDs: cached in $out"
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "go is not installed: the Gateway API CRDs cannot be fetched" >&2
  exit 1
fi
# `go mod download -json` prints the module's directory in the module cache;
# it needs no go.mod, so run it from an empty directory.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
dir="$(cd "$tmp" && go mod download -json "sigs.k8s.io/gateway-api@${version}" |
  sed -n 's/^[[:space:]]*"Dir":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')"
if [ -z "$dir" ] || [ ! -d "$dir/config/crd/standard" ]; then
  echo "sigs.k8s.io/gateway-api@${version}: no config/crd/standard in the module" >&2
  exit 1
fi
mkdir -p "$out"
for f in "${files[@]}"; do
  cp "$dir/config/crd/standard/$f" "$out/$f.tmp"
  mv "$out/$f.tmp" "$out/$f"
done
echo "==> Gateway API ${version} CRDs -> $out"
echo "$out"
