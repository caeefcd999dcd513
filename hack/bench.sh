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
# Server-wide settings this run changed (ALTER SYSTEM), reset at the end.
changed=()
set_pg() {
  "${pg[@]}" -c "ALTER SYSTEM SET $1 = '$2'" >/dev/null
  changed+=("$1")
}
restore_pg() {
  local s
  for s in "${changed[@]}"; do "${pg[@]}" -c "ALTER SYSTEM RESET $s" >/dev/null || true; done
  [ "${#changed[@]}" = 0 ] || "${pg[@]}" -c 'SELECT pg_reload_conf()' >/dev/null || true
}
# Set before any change, so that a failure between two changes still resets the first.
trap 'restore_pg; hack/control-plane.sh down "$cp_dir" >/dev/null 2>&1 || true' EXIT
if [ "${BENCH_AUTOVACUUM:-on}" = on ] && [ "$("${pg[@]}" -c 'SHOW autovacuum')" = off ]; then
  set_pg autovacuum on
  log "Postgres autovacuum on for this run (restored to off at the end)"
fi
# BENCH_PG_WAL=room: Postgres given room for its WAL, as docs/operations.md#postgres advises for
# high run rates (stock Debian: max_wal_size 1GB, which at 100,000 jobs a minute forces a
# checkpoint every ~30 s). Only settings a reload applies; reset at the end.
if [ "${BENCH_PG_WAL:-as-is}" = room ]; then
  set_pg max_wal_size 8GB
  set_pg checkpoint_timeout 15min
  set_pg wal_compression on
  log "Postgres max_wal_size 8GB, checkpoint_timeout 15min, wal_compression on for this run"
fi
[ "${#changed[@]}" = 0 ] || "${pg[@]}" -c 'SELECT pg_reload_conf()' >/dev/null
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
