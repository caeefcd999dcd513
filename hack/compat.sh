#!/usr/bin/env bash
# The Celery version matrix (tests/compat.rs): the migration plan's four jobs on a worker of each
# supported Celery release series, over Redis and RabbitMQ. Each series' worker lives in its own
# cached virtualenv (hack/celery-venv.sh <series> → tests/compat/celery-<series>.txt).
#   hack/compat.sh                 `make compat`: every series (set-up as `make test`, then them)
#   hack/compat.sh --prepare all   create (or find cached) the virtualenvs of every series
#   hack/compat.sh --short-skips   `make test`'s short matrix, the oldest series that can run here
#                                  and the newest: prepares their virtualenvs and prints the
#                                  `cargo test --skip` arguments that leave out the others
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

# Keep in step with the celery_series! list at the end of tests/compat.rs.
SERIES=(4.4 5.2 5.3 5.4 5.5 5.7)

# Why a series cannot run here (empty when it can): only an interpreter it needs can be missing.
unavailable() {
  hack/celery-venv.sh --interpreter "$1" 2>&1 >/dev/null || true
}

prepare() {
  local v
  for v in "$@"; do
    log "Celery $v: $(hack/celery-venv.sh "$v")"
  done
}

case "${1:-}" in
  --prepare)
    [ "${2:-}" = all ] || die "usage: hack/compat.sh --prepare all"
    prepare "${SERIES[@]}"
    ;;
  --short-skips)
    oldest=
    for v in "${SERIES[@]}"; do
      why=$(unavailable "$v")
      if [ -z "$why" ]; then oldest=$v; break; fi
      log "Celery $v: not in this run's matrix: ${why#*error: }"
    done
    short=("$oldest" "${SERIES[-1]}")
    log "Celery version matrix (short): ${short[*]}; \`make compat\` runs ${SERIES[*]}"
    prepare "${short[@]}"
    for v in "${SERIES[@]}"; do
      case " ${short[*]} " in *" $v "*) ;; *) printf -- '--skip\ncelery_%s::\n' "${v/./_}" ;; esac
    done
    ;;
  "")
    exec hack/test.sh compat
    ;;
  *) die "usage: hack/compat.sh [--prepare all | --short-skips]" ;;
esac
