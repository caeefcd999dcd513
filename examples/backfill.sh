#!/bin/sh
# Backfill: re-run last week's slots of the daily token-cleanup job (examples/scheduled-jobs.yaml)
# once each; slots that already ran are not run again. See README.md#backfill.
set -eu
NS=${NS:-my-team}
FROM=$(date -u -d '7 days ago' +%Y-%m-%dT00:00:00Z)
TO=$(date -u +%Y-%m-%dT00:00:00Z)

# What would run (nothing changes):
kube-beat backfill token-cleanup -n "$NS" --from "$FROM" --to "$TO" --dry-run

# Run them, at most two unfinished at once:
kube-beat backfill token-cleanup -n "$NS" --from "$FROM" --to "$TO" --max-parallel 2

# Progress:
kubectl get scheduledjob token-cleanup -n "$NS" -o jsonpath='{.status.backfill}{"\n"}'

# The same through the HTTP API (needs patch on the ScheduledJob):
#   curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
#     -d "{\"from\": \"$FROM\", \"to\": \"$TO\", \"maxParallel\": 2}" \
#     http://kube-beat:8080/api/v1/jobs/$NS/token-cleanup/backfill
#   curl -s -H "Authorization: Bearer $TOKEN" http://kube-beat:8080/api/v1/jobs/$NS/token-cleanup/backfills
