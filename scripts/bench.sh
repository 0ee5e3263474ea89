#!/usr/bin/env bash
# The benchmark matrix of docs/benchmarks.md: builds the release binary, then
# runs roomkeeper against etcd, Redis and NATS JetStream in the same run for each
# configuration the issue sets a target for, writing one JSON file each.
#
#   scripts/bench.sh                 # all three runs, results in target/bench/
#   OUT=/tmp/b DURATION=20 ROUNDS=5 scripts/bench.sh hot   # only the hot run
#
# Configurations: hot (hot catalog, 64 clients), wide (wide catalog, 256
# clients), kill (leader SIGKILLed under load, hot catalog, 64 clients),
# soldout (roomkeeper only, every order refused: what a refusal costs; not in
# the default set), sweep (hot catalog at 8..256 clients, every peer at each
# count, with an SVG of orders/s and p99 against clients; not in the default
# set: it takes six times as long as hot).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-target/bench}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-3}"
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(hot wide kill)

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# Redis's own load tool drives the `redis-benchmark` target (issue 14).
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
# The bench's etcd client (etcd-client) compiles etcd's protobuf API when it is
# built: protoc and the protobuf well-known types.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "==> missing ${need_apt[*]} (not root): a missing peer is SKIPPED; without protoc the build fails"
  fi
fi

# The NATS JetStream peer (issue 14) is built from its Go module, as the
# Kubernetes test binaries are, and cached; without Go it is SKIPPED.
NATS_VERSION=v2.15.3
if [ -z "${ROOMKEEPER_NATS_BIN:-}" ]; then
  if command -v nats-server >/dev/null 2>&1; then
    ROOMKEEPER_NATS_BIN="$(command -v nats-server)"
  elif command -v go >/dev/null 2>&1; then
    nats_dir="${XDG_CACHE_HOME:-$HOME/.cache}/roomkeeper/nats/$NATS_VERSION"
    if [ ! -x "$nats_dir/nats-server" ]; then
      echo "==> go install github.com/nats-io/nats-server/v2@$NATS_VERSION"
      GOBIN="$nats_dir" go install "github.com/nats-io/nats-server/v2@$NATS_VERSION"
    fi
    ROOMKEEPER_NATS_BIN="$nats_dir/nats-server"
  else
    echo "==> no nats-server and no Go toolchain: the nats peer is SKIPPED"
  fi
fi
export ROOMKEEPER_NATS_BIN="${ROOMKEEPER_NATS_BIN:-nats-server}"

echo "==> cargo build --release -p roomkeeper --features bench"
cargo build --release --locked -p roomkeeper --features bench
bin=target/release/roomkeeper
mkdir -p "$OUT"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
failed=()

for run in "${runs[@]}"; do
  case "$run" in
    hot)  args=(--catalog hot --clients 64) ;;
    wide) args=(--catalog wide --clients 256) ;;
    kill) args=(--scenario leader-kill --catalog hot --clients 64) ;;
    soldout) args=(--target roomkeeper --catalog sold-out --clients 64) ;;
    sweep) args=(--catalog hot --clients 8,16,32,64,128,256 --plot "$OUT/$stamp-sweep.svg") ;;
    *) echo "unknown run '$run' (hot, wide, kill, soldout, sweep)" >&2; exit 2 ;;
  esac
  json="$OUT/$stamp-$run.json"
  echo
  echo "==> roomkeeper bench ${args[*]} --duration-secs $DURATION --warmup-secs $WARMUP --rounds $ROUNDS"
  if ! "$bin" bench "${args[@]}" --duration-secs "$DURATION" --warmup-secs "$WARMUP" \
      --rounds "$ROUNDS" --json "$json" | tee "$OUT/$stamp-$run.txt"; then
    failed+=("$run")
  fi
done

echo
echo "==> results in $OUT/$stamp-*.json and .txt"
if [ ${#failed[@]} -gt 0 ]; then
  echo "==> roomkeeper FAILED in: ${failed[*]}" >&2
  exit 1
fi
