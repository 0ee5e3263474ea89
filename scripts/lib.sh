# Shared by the packaging scripts (release.sh, image.sh); sourced, not run.
# They run from the repository root and define die() before sourcing this.

# The workspace version, from Cargo.toml's [workspace.package].
workspace_version() {
  local v
  v="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
  [ -n "$v" ] || die "no version in Cargo.toml's [workspace.package]"
  echo "$v"
}

# The binary to package: the one given (checked to run here), else a fresh
# `cargo build --release --locked -p roomkeeper`.
release_binary() { # [path]
  local binary="${1:-}"
  if [ -z "$binary" ]; then
    echo "==> cargo build --release --locked -p roomkeeper" >&2
    cargo build --release --locked -p roomkeeper
    binary="target/release/roomkeeper"
  fi
  [ -x "$binary" ] || die "$binary is not an executable file"
  "$binary" --version >/dev/null 2>&1 || die "$binary does not run here (--version failed)"
  echo "$binary"
}
