#!/usr/bin/env bash
# Builds the roomkeeper container image as an OCI archive, without Docker or
# any other container engine, and without pulling a base image: the binary,
# the Debian libraries it links, CA certificates, a nonroot user (65532), no
# shell (scripts/oci-image.py says exactly what is inside). Reproducible: the
# same binary and packages give the same digest.
#
#   bash scripts/image.sh [--binary PATH] [--out FILE] [--tag TAG]
#
# Without --binary it builds `cargo build --release --locked -p roomkeeper`.
# The archive defaults to target/image/roomkeeper-<version>.oci.tar. Push or
# load it with
#   skopeo copy oci-archive:FILE docker://ghcr.io/roomkeeper/roomkeeper:<version>
#   podman load -i FILE          # or: docker load -i FILE (Docker 25+)
# With a Docker engine, the Dockerfile builds the same contents from
# rust:1.95-bookworm and distroless; tests/tests/image.rs runs this one with
# runc.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "image.sh: $*" >&2; exit 2; }

binary=""
out=""
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --out) out="${2:?--out needs a file}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

. scripts/lib.sh
version="$(workspace_version)"
out="${out:-target/image/roomkeeper-$version.oci.tar}"
command -v python3 >/dev/null 2>&1 || die "python3 is needed to assemble the image"
command -v ldd >/dev/null 2>&1 || die "ldd is needed to find the libraries the binary links"
command -v dpkg >/dev/null 2>&1 || die "dpkg is needed: the image takes its libraries from Debian packages"

binary="$(release_binary "$binary")"

revision="$(git rev-parse HEAD 2>/dev/null || true)"
# Timestamps in the image: the commit's time, so a rebuild of the same commit
# gives the same digest.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH
echo "==> assembling the OCI image ($binary)"
python3 scripts/oci-image.py --binary "$binary" --license LICENSE --version "$version" \
  --tag "${tag:-$version}" --revision "$revision" --out "$out"
