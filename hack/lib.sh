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
