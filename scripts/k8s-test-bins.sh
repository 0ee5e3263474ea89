#!/usr/bin/env bash
# Builds the pinned kube-apiserver, kube-controller-manager, kubectl and etcd that the
# Kubernetes end-to-end tests start (tests/src/k8s.rs), from their public Go
# modules (tests/k8s-bins/go.mod and tests/k8s-bins/etcd/go.mod, with go.sum).
# No Docker and no release downloads: only the Go module proxy.
#
# Output: ${ROOMKEEPER_K8S_BIN_DIR:-$HOME/.cache/roomkeeper/k8s-bins/<k8s>-<etcd>}
# Binaries already there are not rebuilt (delete the directory to rebuild).
# The last line printed is the output directory.
set -euo pipefail
cd "$(dirname "$0")/.."

mods="$PWD/tests/k8s-bins"
# The version a go.mod requires of a module, in a `require` line or block.
required() { # <go.mod> <module>
  awk -v m="$2" '($1 == "require" && $2 == m) {print $3; exit} ($1 == m && $2 ~ /^v/) {print $2; exit}' "$1"
}
k8s_version="$(required "$mods/go.mod" k8s.io/kubernetes)"
etcd_version="$(required "$mods/etcd/go.mod" go.etcd.io/etcd/server/v3)"
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ]; then
  echo "cannot read the pinned versions from $mods/go.mod and $mods/etcd/go.mod" >&2
  exit 1
fi
out="${ROOMKEEPER_K8S_BIN_DIR:-$HOME/.cache/roomkeeper/k8s-bins/${k8s_version}-${etcd_version}}"

if ! command -v go >/dev/null 2>&1; then
  echo "go is not installed: the Kubernetes test binaries cannot be built" >&2
  exit 1
fi
mkdir -p "$out"

# -mod=readonly: go.mod and go.sum are committed and must not drift during a build.
build() { # <module dir> <package> <output name> [extra -ldflags]
  local dir="$1" pkg="$2" name="$3" ldflags="-s -w ${4:-}"
  if [ -x "$out/$name" ]; then
    echo "==> $name: cached in $out"
    return
  fi
  echo "==> building $name ($pkg) ..."
  local start=$SECONDS
  (cd "$dir" && CGO_ENABLED=0 go build -mod=readonly -buildvcs=false -trimpath -ldflags="$ldflags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "==> $name built in $((SECONDS - start)) s"
}

echo "==> Kubernetes ${k8s_version}, etcd ${etcd_version} -> $out ($(go version))"
build "$mods/etcd" go.etcd.io/etcd/server/v3 etcd
# What `hack/lib/version.sh` stamps, so /version reports 1.37 and not v0.0.0-master.
minor="${k8s_version#v1.}"
minor="${minor%%.*}"
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=${k8s_version}"
k8s_ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
k8s_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
build "$mods" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver "$k8s_ldflags"
build "$mods" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager "$k8s_ldflags"
# kubectl: what the install page's commands run (tests/tests/install_page.rs).
build "$mods" k8s.io/kubernetes/cmd/kubectl kubectl "$k8s_ldflags"
echo "$out"
