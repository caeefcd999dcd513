#!/usr/bin/env bash
# Create (once per machine, cached by the hash of the requirements file) a virtualenv and print
# its directory. Default: the test Celery worker's (tests/celery_app/requirements.txt); the
# benchmark passes bench/requirements.txt (Celery beat, RedBeat, matplotlib).
source "$(dirname "$0")/lib.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
req="$root/${1:-tests/celery_app/requirements.txt}"
hash=$(sha256sum "$req" | cut -c1-12)
prefix=celery-venv
[ -n "${1:-}" ] && prefix="$(basename "$(dirname "$req")")-venv"
venv="$KB_CACHE/$prefix-$hash"
exec 9>"$KB_CACHE/.celery-venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  log "creating the virtualenv in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv"
