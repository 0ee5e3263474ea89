#!/usr/bin/env bash
# Packs the roomkeeper binary into a release archive and renders the krew
# plugin manifest for it, with the archive's real sha256 (never a placeholder).
#
#   bash scripts/release.sh [--binary PATH] [--arch amd64|arm64] [--out DIR]
#                           [--base-url URL] [--archive PATH ...]
#
# Without --binary it builds `cargo build --release --locked -p roomkeeper`.
# The archive is <out>/roomkeeper-v<version>-linux-<arch>.tar.gz holding
# `roomkeeper` and `LICENSE`; the manifest is <out>/krew/roomkeeper.yaml,
# rendered from plugins/krew/roomkeeper.template.yaml. Archives for other
# platforms (built elsewhere) join the manifest with --archive; a platform
# without an archive is left out of the manifest rather than shipped with a
# made-up checksum. Check it with
#   kubectl krew install --manifest=<out>/krew/roomkeeper.yaml \
#     --archive=<out>/roomkeeper-v<version>-linux-<arch>.tar.gz
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "release.sh: $*" >&2; exit 2; }

binary=""
arch=""
out="dist"
base_url=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --arch) arch="${2:?--arch needs amd64 or arm64}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --base-url) base_url="${2:?--base-url needs a URL}"; shift 2 ;;
    --archive) extra+=("${2:?--archive needs a path}"); shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

. scripts/lib.sh
version="$(workspace_version)"
tag="v$version"
base_url="${base_url:-https://github.com/roomkeeper/roomkeeper/releases/download/$tag}"

if [ -z "$arch" ]; then
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) die "unknown machine $(uname -m): pass --arch amd64|arm64" ;;
  esac
fi
case "$arch" in amd64|arm64) ;; *) die "--arch must be amd64 or arm64, not $arch" ;; esac

binary="$(release_binary "$binary")"
[ -f LICENSE ] || die "LICENSE is missing"

mkdir -p "$out/krew"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$binary" "$stage/roomkeeper"
cp LICENSE "$stage/LICENSE"
archive="$out/roomkeeper-$tag-linux-$arch.tar.gz"
# Reproducible: fixed order, owner and mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -C "$stage" -cf - roomkeeper LICENSE | gzip -n -9 >"$archive"
echo "==> $archive"

# One sha256 per platform, from the archives we have.
declare -A sums=()
for a in "$archive" "${extra[@]}"; do
  [ -f "$a" ] || die "no archive $a"
  name="$(basename "$a")"
  case "$name" in
    "roomkeeper-$tag-linux-amd64.tar.gz") p=amd64 ;;
    "roomkeeper-$tag-linux-arm64.tar.gz") p=arm64 ;;
    *) die "$name is not named roomkeeper-$tag-linux-<amd64|arm64>.tar.gz" ;;
  esac
  listing="$(tar -tzf "$a")" || die "$name is not a gzip tar archive"
  for f in roomkeeper LICENSE; do
    grep -qx "$f" <<<"$listing" || die "$name does not hold $f"
  done
  sums[$p]="$(sha256sum "$a" | cut -d' ' -f1)"
done

manifest="$out/krew/roomkeeper.yaml"
python3 - "plugins/krew/roomkeeper.template.yaml" "$manifest" "$tag" "$base_url" \
  "${sums[amd64]:-}" "${sums[arm64]:-}" <<'PY'
import re, sys
template, dest, tag, base, amd64, arm64 = sys.argv[1:7]
sums = {"amd64": amd64, "arm64": arm64}
text = open(template).read()
head, sep, rest = text.partition("  platforms:\n")
if not sep:
    sys.exit("release.sh: the template has no `  platforms:` list")
blocks = re.split(r"(?m)^(?=    - selector:)", rest)
kept = []
for b in blocks:
    m = re.search(r"arch: (\w+)", b)
    if not m:
        kept.append(b)
        continue
    s = sums.get(m.group(1), "")
    if not s:
        continue
    b = b.replace("@SHA256@", s)
    kept.append(b)
if not any("sha256:" in b for b in kept):
    sys.exit("release.sh: no platform has an archive")
# The template's own header explains placeholders; the rendered file says where it came from.
body = re.sub(r"\A(?:#[^\n]*\n)+", "", head)
header = ("# krew plugin manifest, rendered by scripts/release.sh from\n"
          "# plugins/krew/roomkeeper.template.yaml with the archives' sha256.\n"
          "# Install: kubectl krew install --manifest=<this file>\n")
out = header + body + sep + "".join(kept)
out = out.replace("@VERSION@", tag).replace("@BASE_URL@", base)
if "@" in re.sub(r"#.*", "", out):
    sys.exit("release.sh: a placeholder is left in the manifest")
open(dest, "w").write(out)
PY
echo "==> $manifest"
for p in amd64 arm64; do
  [ -n "${sums[$p]:-}" ] && echo "    linux/$p sha256 ${sums[$p]}"
done
exit 0
