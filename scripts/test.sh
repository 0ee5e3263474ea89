#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need on a fresh
# Debian machine, then runs formatting, lint and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The bench's etcd client (etcd-client) compiles etcd's protobuf API when it is
# built: protoc and the protobuf well-known types.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
# The Kubernetes harness makes its CA and serving certificates with openssl.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The kubelet bridge gives pods network namespaces (ip) and enforces
# NetworkPolicy (nft); without them it falls back to loopback pods.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
# The alert rules are checked and unit-tested by promtool, and an end-to-end
# test scrapes a local cluster with a real Prometheus: both ship in Debian's
# prometheus package.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# The container image (scripts/image.sh) is assembled by python3 and checked
# by real OCI tools: skopeo reads it, umoci unpacks it, runc runs it.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v umoci >/dev/null 2>&1 || need_apt+=(umoci)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "==> missing ${need_apt[*]} (not root: the benchmark peers and the NetworkPolicy tests will be skipped loudly)"
  fi
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (release binary used by the end-to-end tests)"
cargo build --release --locked -p roomkeeper
echo "==> Kubernetes test binaries (kube-apiserver, kube-controller-manager, etcd)"
if command -v go >/dev/null 2>&1; then
  # Built once from the pinned Go modules in tests/k8s-bins, then cached.
  ROOMKEEPER_K8S_BIN_DIR="$(bash scripts/k8s-test-bins.sh | tee /dev/stderr | tail -n 1)"
  export ROOMKEEPER_K8S_BIN_DIR
else
  echo "==> go is missing: the Kubernetes harness tests will be SKIPPED loudly (and fail under CI)"
fi
echo "==> Gateway API CRDs (HTTPRoute, for the operator's traffic weights)"
if command -v go >/dev/null 2>&1; then
  # Read from the Go module sigs.k8s.io/gateway-api in the module cache, then cached.
  ROOMKEEPER_GATEWAY_API_DIR="$(bash scripts/gateway-api-crds.sh | tee /dev/stderr | tail -n 1)"
  export ROOMKEEPER_GATEWAY_API_DIR
else
  echo "==> go is missing: the traffic-router tests will be SKIPPED loudly (and fail under CI)"
fi
echo "==> helm (renders and lints the operator's chart, charts/roomkeeper-operator)"
if command -v go >/dev/null 2>&1; then
  # Built once from the pinned Go module in tests/helm-bin (about 3 minutes), then cached.
  ROOMKEEPER_HELM_BIN="$(bash scripts/helm-bin.sh | tee /dev/stderr | tail -n 1)"
  export ROOMKEEPER_HELM_BIN
else
  echo "==> go is missing: the Helm chart tests will be SKIPPED loudly (and fail under CI)"
fi
echo "==> krew (installs the release archive as a kubectl plugin, tests/tests/release.rs)"
if command -v go >/dev/null 2>&1; then
  # Built once from the pinned Go module in tests/krew-bin (about a minute), then cached.
  ROOMKEEPER_KREW_BIN="$(bash scripts/krew-bin.sh | tee /dev/stderr | tail -n 1)"
  export ROOMKEEPER_KREW_BIN
else
  echo "==> go is missing: the release test will be SKIPPED loudly (and fail under CI)"
fi
echo "==> cargo test"
ROOMKEEPER_BIN="$PWD/target/release/roomkeeper" cargo test --workspace --locked -- --test-threads=2
# Fuzzing last: installing cargo-fuzz and building the targets (their own
# workspace, nightly, sanitizer) is the slow part; each target then runs
# ROOMKEEPER_FUZZ_SECONDS (0 skips). docs/security.md has the timings.
echo "==> fuzzing: every cargo-fuzz target of fuzz/ for ${ROOMKEEPER_FUZZ_SECONDS:-15} s (scripts/fuzz.sh; a longer run: scripts/fuzz.sh 600)"
# Without AddressSanitizer here (our crates forbid unsafe; panics, debug
# assertions and the invariant oracle still hold): the cold build is what
# costs CI time. `scripts/fuzz.sh 600` keeps the sanitizer for long runs.
ROOMKEEPER_FUZZ_SANITIZER="${ROOMKEEPER_FUZZ_SANITIZER:-none}" bash scripts/fuzz.sh "${ROOMKEEPER_FUZZ_SECONDS:-15}"
