#!/usr/bin/env bash
# Create (once per machine, cached by the hash of the requirements file) a virtualenv and print
# its directory. Default: the test Celery worker's (tests/celery_app/requirements.txt); the
# benchmark passes bench/requirements.txt (Celery beat, RedBeat, matplotlib). A Celery version
# (`hack/celery-venv.sh 5.2`) means tests/compat/celery-5.2.txt, the version matrix's worker:
# its virtualenv is celery-5.2-venv-<hash>, so each version is installed once per machine.
# A requirements file may name the Python versions it needs (`# python: 3.8 3.9`): the first of
# them found (pyenv's, or python3.8 on the PATH) makes the virtualenv, and its version is part of
# the cache key. `hack/celery-venv.sh --interpreter 4.4` only prints that interpreter (exit 1 and
# the reason when there is none).
source "$(dirname "$0")/lib.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
only_interpreter=0
if [ "${1:-}" = --interpreter ]; then only_interpreter=1; shift; fi
arg="${1:-tests/celery_app/requirements.txt}"
if [[ "$arg" =~ ^[0-9]+\.[0-9]+$ ]]; then
  arg="tests/compat/celery-$arg.txt"
fi
req="$root/$arg"
[ -f "$req" ] || die "no requirements file $arg"
python=python3
wanted=$(sed -n 's/^# python: *//p' "$req")
if [ -n "$wanted" ]; then
  python=
  for v in $wanted; do
    # pyenv's own build first: its shim on the PATH answers only when that version is selected.
    for cand in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v" "python$v"; do
      if "$cand" -V >/dev/null 2>&1; then python=$(command -v "$cand"); break 2; fi
    done
  done
  [ -n "$python" ] || die "$arg needs CPython $wanted (see the file's header); none found: not on the PATH, not under ${PYENV_ROOT:-$HOME/.pyenv}/versions"
fi
if [ "$only_interpreter" = 1 ]; then echo "$python"; exit 0; fi
if [ -n "$wanted" ]; then
  hash=$({ cat "$req"; "$python" -V; } | sha256sum | cut -c1-12)
else
  hash=$(sha256sum "$req" | cut -c1-12)
fi
prefix=celery-venv
if [[ "$arg" == tests/compat/celery-*.txt ]]; then
  prefix="$(basename "$req" .txt)-venv"
elif [ -n "${1:-}" ]; then
  prefix="$(basename "$(dirname "$req")")-venv"
fi
venv="$KB_CACHE/$prefix-$hash"
exec 9>"$KB_CACHE/.celery-venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  log "creating the virtualenv in $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" 2>/dev/null || { apt_install python3-venv; rm -rf "$venv"; "$python" -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv"
