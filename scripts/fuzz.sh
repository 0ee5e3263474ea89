#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 20), on the
# nightly toolchain: `scripts/fuzz.sh 600` is the long run. Installs
# cargo-fuzz from crates.io when it is missing. New inputs go to
# fuzz/corpus/<target> (not in git); a crash stops the run, leaves the input
# in fuzz/artifacts/<target>/ and exits non-zero (docs/security.md).
# ROOMKEEPER_FUZZ_SANITIZER: address (default) or none (faster to build and
# run; Rust's own checks and debug assertions still hold). SECONDS 0: skip.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
toolchain="${ROOMKEEPER_FUZZ_TOOLCHAIN:-nightly}"
sanitizer="${ROOMKEEPER_FUZZ_SANITIZER:-address}"
if [ "$secs" = 0 ]; then
  echo "==> fuzz: 0 seconds asked, fuzzing skipped"
  exit 0
fi
if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
  echo "==> fuzz: no $toolchain toolchain (rustup toolchain install $toolchain): fuzzing SKIPPED" >&2
  [ "${CI:-}" = true ] && exit 1
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  started=$(date +%s)
  cargo install cargo-fuzz --locked
  echo "==> cargo-fuzz installed in $(( $(date +%s) - started )) s"
fi
started=$(date +%s)
cargo "+$toolchain" fuzz build -O --debug-assertions -s "$sanitizer"
echo "==> fuzz targets built in $(( $(date +%s) - started )) s"
seeds_of() {
  case "$1" in
    playbook_yaml) echo "../examples" ;;
    drill_yaml) echo "../chaos/drills" ;;
    *) [ -d "seeds/$1" ] && echo "seeds/$1" ;;
  esac
}
for t in $(cargo "+$toolchain" fuzz list); do
  mkdir -p "corpus/$t"
  started=$(date +%s)
  log="corpus/$t.log"
  set +e
  # shellcheck disable=SC2046
  cargo "+$toolchain" fuzz run -O --debug-assertions -s "$sanitizer" "$t" "corpus/$t" $(seeds_of "$t") -- \
    -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1
  status=$?
  set -e
  grep -E "^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "==> fuzz target $t FAILED (exit $status): the input is in fuzz/artifacts/$t/" >&2
    exit "$status"
  fi
  echo "==> fuzz target $t: ${secs} s, no crash ($(( $(date +%s) - started )) s with start-up; corpus $(ls "corpus/$t" | wc -l) inputs)"
done
