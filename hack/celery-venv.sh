#!/usr/bin/env bash
# Create (once per machine, cached by the hash of requirements.txt) the virtualenv of the test
# Celery worker, and print its directory.
source "$(dirname "$0")/lib.sh"
req="$(cd "$(dirname "$0")/.." && pwd)/tests/celery_app/requirements.txt"
hash=$(sha256sum "$req" | cut -c1-12)
venv="$KB_CACHE/celery-venv-$hash"
exec 9>"$KB_CACHE/.celery-venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  log "creating the Celery virtualenv in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; rm -rf "$venv"; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv"
