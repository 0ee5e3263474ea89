#!/usr/bin/env bash
# Builds the pinned `helm` that the Helm chart tests run (tests/tests/helm.rs)
# from its public Go module (tests/helm-bin/go.mod, with go.sum): no release
# download, no Docker, only the Go module proxy.
#
# Output: ${ROOMKEEPER_HELM_BIN:-$HOME/.cache/roomkeeper/helm/<version>/helm}
# A binary already there is not rebuilt (delete it to rebuild).
# The last line printed is the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."

mods="$PWD/tests/helm-bin"
# The version a go.mod requires of a module, in a `require` line or block.
required() { # <go.mod> <module>
  awk -v m="$2" '($1 == "require" && $2 == m) {print $3; exit} ($1 == m && $2 ~ /^v/) {print $2; exit}' "$1"
}
helm_version="$(required "$mods/go.mod" helm.sh/helm/v3)"
client_go="$(required "$mods/go.mod" k8s.io/client-go)"
if [ -z "$helm_version" ] || [ -z "$client_go" ]; then
  echo "cannot read the pinned helm and client-go versions from $mods/go.mod" >&2
  exit 1
fi
out="${ROOMKEEPER_HELM_BIN:-$HOME/.cache/roomkeeper/helm/${helm_version}/helm}"

if [ -x "$out" ]; then
  echo "==> helm ${helm_version}: cached at $out"
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "go is not installed: helm cannot be built" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"

# What helm's Makefile stamps: its version (so `helm version` reports it, and
# not "v3.22+unreleased") and the Kubernetes version its client-go speaks
# (.Capabilities.KubeVersion and lint's deprecation checks): client-go v0.N.x
# is Kubernetes 1.N.
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${helm_version}"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
done

echo "==> building helm ${helm_version} (Kubernetes 1.${k8s_minor} client) -> $out ($(go version))"
start=$SECONDS
# -mod=readonly: go.mod and go.sum are committed and must not drift during a build.
(cd "$mods" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -trimpath -ldflags="$ldflags" \
  -o "$out.tmp" helm.sh/helm/v3/cmd/helm)
mv "$out.tmp" "$out"
echo "==> helm built in $((SECONDS - start)) s"
echo "$out"
