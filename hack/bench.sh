#!/usr/bin/env bash
# `make bench`: kube-beat against Celery beat and RedBeat on this machine (bench/bench.py).
# Everything it needs is set up here: services, a control plane of its own, the release build,
# the peers' virtualenv. Extra arguments go to bench/bench.py (e.g. --n 1000 --workloads aligned,
# or --scale apply --n 10000 for the scale scenarios of bench/scale.py).
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

hack/services.sh
command -v redis-cli >/dev/null || apt_install redis-tools
# --profile (the sustained scenario's CPU profiles) samples with perf.
if [[ " $* " == *" --profile "* ]] && ! command -v perf >/dev/null; then apt_install linux-perf; fi
venv=$(hack/celery-venv.sh bench/requirements.txt)
cp_dir="$KB_STATE/bench-cp"
hack/control-plane.sh up "$cp_dir"
source "$cp_dir/env"
# Postgres as a deployment runs it: this machine's starts with autovacuum off, under which every
# table kube-beat rewrites per run only grows (docs/operations.md#postgres). BENCH_AUTOVACUUM=as-is
# measures the server as found; otherwise autovacuum is on for the run and what was found is
# restored at the end (ALTER SYSTEM and a reload: it is a server-wide setting).
pg=(psql -h 127.0.0.1 -U postgres -d postgres -Atq)
restore_pg=true
if [ "${BENCH_AUTOVACUUM:-on}" = on ] && [ "$("${pg[@]}" -c 'SHOW autovacuum')" = off ]; then
  "${pg[@]}" -c 'ALTER SYSTEM SET autovacuum = on' -c 'SELECT pg_reload_conf()' >/dev/null
  restore_pg='"${pg[@]}" -c "ALTER SYSTEM RESET autovacuum" -c "SELECT pg_reload_conf()" >/dev/null'
  log "Postgres autovacuum on for this run (restored to off at the end)"
fi
trap 'eval "$restore_pg"; hack/control-plane.sh down "$cp_dir" >/dev/null 2>&1 || true' EXIT
"$KUBECTL" apply --server-side --force-conflicts -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/scheduledjobs.kubebeat.io crd/taskfunctions.kubebeat.io crd/schedulecalendars.kubebeat.io >/dev/null
# KUBE_BEAT=<binary>: measure that build instead (e.g. the previous commit's, for a before/after).
if [ -z "${KUBE_BEAT:-}" ]; then
  log "building kube-beat (release)"
  cargo build --release --quiet
  KUBE_BEAT="$PWD/target/release/kube-beat"
fi
export KUBE_BEAT BENCH_PYTHON="$venv/bin/python"
# The scale scenarios (--scale ...) are bench/scale.py's; the bursts, bench/bench.py's.
script=bench/bench.py
[[ " $* " == *" --scale "* || " $* " == *" --scale="* ]] && script=bench/scale.py
"$venv/bin/python" "$script" "$@"
