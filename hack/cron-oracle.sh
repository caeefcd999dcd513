#!/usr/bin/env bash
# Regenerate (or with --check, verify) tests/fixtures/cron_oracle.jsonl: what robfig/cron v3 —
# the parser Kubernetes CronJob uses — answers for every input in cron_oracle_inputs.tsv.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
apt_install golang-go golang-github-robfig-cron-dev
bin="$KB_CACHE/cron-oracle-$(sha256sum tests/cron_oracle/main.go | cut -c1-12)"
if [ ! -x "$bin" ]; then
  (cd tests/cron_oracle && GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$KB_CACHE/go-build" go build -o "$bin" .)
fi
out=$(mktemp)
"$bin" <tests/fixtures/cron_oracle_inputs.tsv >"$out"
if [ "${1:-}" = --check ]; then
  diff -u tests/fixtures/cron_oracle.jsonl "$out" >/dev/null \
    || { rm -f "$out"; die "tests/fixtures/cron_oracle.jsonl is out of date: run hack/cron-oracle.sh"; }
  rm -f "$out"
  log "cron oracle fixture matches robfig/cron"
else
  mv "$out" tests/fixtures/cron_oracle.jsonl
  log "wrote tests/fixtures/cron_oracle.jsonl ($(wc -l <tests/fixtures/cron_oracle.jsonl) cases)"
fi
