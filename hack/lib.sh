# Shared helpers for the dev/test scripts. Source it; do not run it.
# Everything expensive that never changes is cached outside the work tree, keyed by version.
set -euo pipefail

# CI and sudo can start us with a thin environment: find the usual toolchain locations.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

KB_CACHE="${KUBE_BEAT_CACHE:-$HOME/.cache/kube-beat}"
KB_STATE="${KUBE_BEAT_STATE:-${TMPDIR:-/tmp}/kube-beat-dev}"
K8S_VERSION="1.20.2"
K8S_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
K8S_BIN="$KB_CACHE/k8s-$K8S_VERSION"
mkdir -p "$KB_CACHE" "$KB_STATE"

log() { printf '[kube-beat] %s\n' "$*" >&2; }
die() { printf '[kube-beat] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# A free TCP port on loopback (the kernel picks it).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for DESCRIPTION SECONDS CMD...: poll until CMD succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && die "timed out after ${secs}s waiting for $what"
    sleep 0.3
  done
}

# build_static TARGET: a statically linked release kube-beat for TARGET (x86_64-unknown-linux-gnu
# or aarch64-unknown-linux-gnu); prints the binary's path. glibc, statically: files and DNS name
# resolution are built into libc since glibc 2.34, so the binary resolves names in an image that
# has no libc at all (the image test checks it). The build directory lives in the cache, keyed by
# the compiler: dependencies are compiled once per machine and target (cargo rebuilds what a
# Cargo.lock change touches), later builds recompile kube-beat only. Never with the `failpoints`
# feature: a release binary cannot be made to abort by an environment variable (checked here).
build_static() {
  local target=$1 key target_dir
  key=$(rustc -V | sha256sum | cut -c1-12)
  target_dir="$KB_CACHE/static-target-$key"
  local -a env=(RUSTFLAGS="-C target-feature=+crt-static")
  if [ "$target" != "$(rustc -vV | sed -n 's/^host: //p')" ]; then
    case "$target" in
      aarch64-unknown-linux-gnu)
        apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
        env+=(CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
              CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar) ;;
      x86_64-unknown-linux-gnu)
        apt_install gcc-x86-64-linux-gnu libc6-dev-amd64-cross
        env+=(CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc
              CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc AR_x86_64_unknown_linux_gnu=x86_64-linux-gnu-ar) ;;
      *) die "unsupported target $target" ;;
    esac
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
      log "rustup target add $target"
      rustup target add "$target" >&2
    fi
  fi
  env "${env[@]}" cargo build --release --locked --target "$target" --target-dir "$target_dir" >&2
  local bin="$target_dir/$target/release/kube-beat"
  ! grep -q KUBE_BEAT_CRASH_AT "$bin" || die "$bin has the crash points (failpoints feature) compiled in"
  echo "$bin"
}

# The Rust target of this machine's architecture (or of ARCH: amd64 / arm64).
rust_target() {
  case "${1:-$(uname -m)}" in
    x86_64|amd64) echo x86_64-unknown-linux-gnu ;;
    aarch64|arm64) echo aarch64-unknown-linux-gnu ;;
    *) die "unsupported architecture ${1:-$(uname -m)}" ;;
  esac
}

# The crate's version (the chart's appVersion and the image tag follow it).
crate_version() { grep -m1 '^version' "$(dirname "${BASH_SOURCE[0]}")/../Cargo.toml" | cut -d'"' -f2; }

# The Go/OCI architecture name of a Rust target (amd64, arm64).
go_arch() {
  case "$1" in
    x86_64-*) echo amd64 ;;
    aarch64-*) echo arm64 ;;
    *) die "unsupported target $1" ;;
  esac
}

# strip_binary TARGET FILE: strip with the target's binutils (the host's strip cannot read
# another architecture's ELF).
strip_binary() {
  local strip=strip
  [ "$(go_arch "$1")" = "$(go_arch "$(rust_target)")" ] || strip="$(echo "$1" | sed 's/-unknown//')-strip"
  "$strip" "$2"
}

# write_checksums DIR: DIR/checksums.txt in `sha256sum -c` format over every other file in DIR.
write_checksums() {
  (cd "$1" && find . -maxdepth 1 -type f ! -name checksums.txt -printf '%f\n' | LC_ALL=C sort \
    | xargs -r sha256sum >checksums.txt)
}
