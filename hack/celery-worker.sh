#!/usr/bin/env bash
# Run the test Celery worker in the foreground (tests and the demo start it).
#   CELERY_BROKER_URL=... CELERY_RESULT_BACKEND=... KB_RECORD_DSN=... hack/celery-worker.sh QUEUES [NAME]
source "$(dirname "$0")/lib.sh"
queues=${1:-celery}
name=${2:-kbworker-$$}
venv=${KB_CELERY_VENV:-$("$(dirname "$0")/celery-venv.sh")}
cd "$(dirname "$0")/../tests/celery_app"
exec "$venv/bin/celery" -A kb_worker worker -Q "$queues" -n "$name@%h" \
  --pool "${KB_CELERY_POOL:-threads}" --concurrency "${KB_CELERY_CONCURRENCY:-8}" \
  --loglevel "${KB_CELERY_LOGLEVEL:-INFO}" --without-mingle --without-gossip
