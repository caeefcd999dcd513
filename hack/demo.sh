#!/usr/bin/env bash
# `make demo`: from nothing to the operator running the example jobs on a local control plane.
#   hack/demo.sh        bring everything up, show it, leave it running
#   hack/demo.sh down   stop everything the demo started
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

demo="$KB_STATE/demo"
ns=kube-beat-demo
db=kube_beat_demo
mkdir -p "$demo"

stop_pid() { if [ -f "$1" ]; then kill "$(cat "$1")" 2>/dev/null || true; rm -f "$1"; fi; }

if [ "${1:-}" = down ]; then
  stop_pid "$demo/operator.pid"
  stop_pid "$demo/worker.pid"
  hack/control-plane.sh down "$demo/cp"
  log "demo stopped"
  exit 0
fi

hack/services.sh
export KB_CELERY_VENV; KB_CELERY_VENV=$(hack/celery-venv.sh)
hack/control-plane.sh up "$demo/cp"
source "$demo/cp/env"
log "building kube-beat"
cargo build --quiet
bin=target/debug/kube-beat

# A fresh database each time: the demo's control plane starts empty too.
stop_pid "$demo/operator.pid"
psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists $db with (force)"
psql -h 127.0.0.1 -U postgres -d postgres -qc "create database $db"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export BROKER_URL="redis://127.0.0.1:6379/0"
export RESULT_BACKEND="redis://127.0.0.1:6379/1"

stop_pid "$demo/worker.pid"
CELERY_BROKER_URL=$BROKER_URL CELERY_RESULT_BACKEND=$RESULT_BACKEND \
  KB_RECORD_DSN="postgresql://postgres@127.0.0.1:5432/$db" \
  nohup hack/celery-worker.sh celery,ad_queue demo-worker >"$demo/worker.log" 2>&1 &
echo $! >"$demo/worker.pid"

"$KUBECTL" apply --server-side --force-conflicts -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/scheduledjobs.kubebeat.io crd/taskfunctions.kubebeat.io crd/schedulecalendars.kubebeat.io >/dev/null
"$KUBECTL" get namespace $ns >/dev/null 2>&1 || "$KUBECTL" create namespace $ns >/dev/null
"$KUBECTL" apply -n $ns -f examples/

# Two demo-only jobs so something happens every few seconds: a heartbeat that succeeds and a
# job that always fails (its Events and FAILURE status show how failures surface).
"$KUBECTL" apply -f - >/dev/null <<'YAML'
apiVersion: kubebeat.io/v1alpha1
kind: TaskFunction
metadata: {name: demo-echo}
spec: {task: kb.echo, queue: celery, description: "Demo: returns its arguments."}
---
apiVersion: kubebeat.io/v1alpha1
kind: TaskFunction
metadata: {name: demo-fail}
spec: {task: kb.fail, queue: celery, description: "Demo: always raises ValueError."}
YAML
"$KUBECTL" apply -n $ns -f - >/dev/null <<'YAML'
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: demo-heartbeat}
spec: {taskFunction: demo-echo, schedule: {cron: "@every 10s"}, kwargs: {hello: world}}
---
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: demo-always-fails}
spec: {taskFunction: demo-fail, schedule: {interval: {seconds: 20}}, args: ["demo failure"]}
YAML

stop_pid "$demo/operator.pid"
POD_NAME=kube-beat-demo nohup "$bin" run --http-addr 127.0.0.1:18080 >"$demo/operator.log" 2>&1 &
echo $! >"$demo/operator.pid"

# The example jobs run hourly or daily: run each once now (the trigger annotation).
sleep 3
for job in domain-user-sync token-cleanup deployment-job-cleanup; do "$bin" trigger "$job" -n $ns; done

secs=${KB_DEMO_SECONDS:-65}
log "operator running (log: $demo/operator.log); watching for ${secs}s"
end=$((SECONDS + secs))
while [ $SECONDS -lt $end ]; do sleep 10; echo; "$KUBECTL" get scheduledjobs -n $ns; done
echo
"$KUBECTL" get taskfunctions
echo
log "operator log (the runbook's lines):"
grep -E "acquired leader|Dispatched job|executed successfully|failed" "$demo/operator.log" | tail -n 10 || true
echo
log "events on the failing job:"
"$KUBECTL" get events -n $ns --field-selector involvedObject.name=demo-always-fails || true
echo
log "execution history (Postgres):"
psql -h 127.0.0.1 -U postgres -d $db -c "select j.name, e.scheduled_for, e.trigger, e.state,
  e.finished_at - e.dispatched_at as took, left(coalesce(e.error, e.result::text), 50) as outcome
  from job_executions e join scheduled_jobs j on j.id = e.job_id order by e.id desc limit 10"
log "what the Celery worker ran:"
grep -E "succeeded in" "$demo/worker.log" | tail -n 4 || true
token=$(awk '/token:/ {print $2; exit}' "$KUBECONFIG")
log "the API (as the demo's admin):"
curl -s -H "Authorization: Bearer $token" http://127.0.0.1:18080/api/v1/scheduler/status | head -c 400; echo
cat <<TXT

The demo keeps running in the background.
  export KUBECONFIG=$KUBECONFIG
  $KUBECTL get scheduledjobs -n $ns
  tail -f $demo/operator.log $demo/worker.log
  dashboard: http://127.0.0.1:18080/  (sign in with the token $token)
  metrics:   curl -s http://127.0.0.1:18080/metrics | grep ^kube_beat_
Stop it with: make demo-down
TXT
