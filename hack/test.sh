#!/usr/bin/env bash
# `make test`: install what is missing, start what the tests need, lint, run every test tier,
# tear down what was started.
# `hack/test.sh chaos` (`make chaos`): the same set-up, then only the full fault-injection matrix
# (tests/chaos/ with KB_CHAOS=full), which rewrites the results table in docs/reliability.md;
# `hack/test.sh chaos fault_matrix_rabbitmq` runs one broker's matrix.
# `hack/test.sh compat` (`make compat`): the same set-up, then the whole Celery version matrix
# (tests/compat.rs, hack/compat.sh); `make test` runs its short matrix with everything else.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
mode=${1:-all}

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
fi
apt_install curl openssl chromium chromium-driver prometheus lua5.1 qemu-user-static

hack/services.sh
export KB_CELERY_VENV; KB_CELERY_VENV=$(hack/celery-venv.sh)
# The source schedulers' own libraries, for the import fidelity tests (tests/migration.rs).
export KB_MIGRATION_VENV; KB_MIGRATION_VENV=$(hack/celery-venv.sh tests/migration/requirements.txt)
# Build into the cache, keyed by the compiler (as hack/image.sh does): a clean clone then
# compiles kube-beat and its tests, not the ~400 dependencies again. Cargo's fingerprints decide
# what is rebuilt, so a changed Cargo.lock or source is still compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$KB_CACHE/test-target-$(rustc -V | sha256sum | cut -c1-12)}"

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/kube-beat-test.XXXXXX")
cleanup() {
  local rc=$?
  hack/control-plane.sh down "$run_dir/cp" >/dev/null 2>&1 || true
  hack/control-plane.sh down "$run_dir/cp-tenants" >/dev/null 2>&1 || true
  hack/control-plane.sh down "$run_dir/cp-install" >/dev/null 2>&1 || true

  hack/control-plane.sh down "$run_dir/cp-upgrade" >/dev/null 2>&1 || true
  # Databases and broker queues made by this run's tests (they use the kbt prefix).
  psql -h 127.0.0.1 -U postgres -d postgres -Atc "select datname from pg_database where datname like 'kbt\_%'" 2>/dev/null \
    | while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true; done
  if command -v rabbitmqctl >/dev/null; then
    rabbitmqctl -q list_queues name 2>/dev/null | grep -E '^(kbt-|kubebeat\.sent\.kbt-)' | while read -r q; do rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$run_dir"
  exit $rc
}
trap cleanup EXIT

if [ "$mode" = all ]; then
  log "lint: cargo fmt --check, cargo clippy"
  cargo fmt --all -- --check
  # Both builds: the release one (no crash points) and the tests' one (with them).
  cargo clippy --all-targets --locked -- -D warnings
  cargo clippy --all-targets --locked --features failpoints -- -D warnings
fi

# The tests build kube-beat with its crash points (KUBE_BEAT_CRASH_AT, src/failpoint.rs): the
# fault suite (tests/chaos/) kills leaders with them. Every cargo test below uses the same
# features, so the binary is built once.
features=(--features failpoints)

# The Helm chart's ServiceAccount as a static-token user: tests/chart.rs runs the operator with
# exactly the chart's RBAC.
# And the API test's users (tests/api.rs): an admin, a namespace reader and a namespace editor.
# And the install suite's users (tests/install.rs), bound only to the built-in `edit` / `view`.
export KB_TOKEN_USERS="system:serviceaccount:kube-beat-rbac:kube-beat=system:serviceaccounts|system:serviceaccounts:kube-beat-rbac|system:authenticated kbt-api-admin=system:masters kbt-api-reader=kbt-api-users kbt-api-editor=kbt-api-users kbt-edit= kbt-view="
hack/control-plane.sh up "$run_dir/cp"
source "$run_dir/cp/env"
export KB_PG_BASE="${KB_PG_BASE:-postgres://postgres@127.0.0.1:5432}"
export KB_REDIS_URL="${KB_REDIS_URL:-redis://127.0.0.1:6379}"
export KB_AMQP_URL="${KB_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}"

"$KUBECTL" apply -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/scheduledjobs.kubebeat.io crd/taskfunctions.kubebeat.io crd/schedulecalendars.kubebeat.io >/dev/null
hack/cron-oracle.sh --check

if [ "$mode" = compat ]; then
  log "Celery version matrix (all series): tests/compat.rs"
  hack/compat.sh --prepare all
  cargo test --locked "${features[@]}" --test compat -- --include-ignored "${@:2}"
  exit 0
fi

if [ "$mode" = chaos ]; then
  log "fault matrix (full): results into docs/reliability.md"
  KB_CHAOS=full KB_CHAOS_REPORT="$PWD/docs/reliability.md" \
    cargo test --locked "${features[@]}" --test chaos -- --include-ignored --nocapture --test-threads 1 "${@:2}"
  exit 0
fi
# The short Celery version matrix: the oldest series that can run here and the newest.
compat_skips=$(hack/compat.sh --short-skips)
mapfile -t compat_skips <<<"$compat_skips"
log "tests: unit, integration and end-to-end (real apiserver, Postgres, brokers, Celery worker)"
cargo test --locked "${features[@]}" --all-targets -- --include-ignored --skip one_tenant_cannot_hurt_another \
  --skip with_controllers:: --skip helm_upgrade_and_rolling_update_from_the_previous_release "${compat_skips[@]}"

# The tenant-attack suite runs kube-beat over every namespace, so it gets an apiserver of its own:
# on the shared one it would also have to judge the thousands of objects the suites before it
# left behind, and its timing criterion (no run of the healthy job over 2 s late) measures kube-beat,
# not that backlog.
log "tenant-attack suite (its own control plane)"
hack/control-plane.sh down "$run_dir/cp" >/dev/null 2>&1 || true
hack/control-plane.sh up "$run_dir/cp-tenants"
source "$run_dir/cp-tenants/env"
"$KUBECTL" apply -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/scheduledjobs.kubebeat.io crd/taskfunctions.kubebeat.io crd/schedulecalendars.kubebeat.io >/dev/null
cargo test --locked "${features[@]}" --test tenants -- --include-ignored

# The install suite (tests/install.rs) needs the real controllers: the Job controller runs Helm's
# hook Job (its Pods run under the test kubelet, tests/common/kubelet.rs), and the
# clusterrole-aggregation controller folds the chart's roles into the built-in view/edit/admin.
# Its own control plane, with kube-controller-manager; the tenants' one is done with.
log "install suite (its own control plane, with kube-controller-manager)"
hack/control-plane.sh down "$run_dir/cp-tenants" >/dev/null 2>&1 || true
KB_CONTROLLERS=1 hack/control-plane.sh up "$run_dir/cp-install"
source "$run_dir/cp-install/env"
"$KUBECTL" apply -f crds/ >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/scheduledjobs.kubebeat.io crd/taskfunctions.kubebeat.io crd/schedulecalendars.kubebeat.io >/dev/null
cargo test --locked "${features[@]}" --test install -- --include-ignored with_controllers::

# The upgrade test installs the previous release's chart, CRDs included: on an apiserver of its
# own, so no other suite ever sees CRDs of another version.
log "upgrade suite (its own control plane)"
# Built here, not by the test: the test runs inside `cargo test`, which holds the build
# directory's lock that this build (sharing the directory for its dependencies) needs.
hack/previous-release.sh >/dev/null
hack/control-plane.sh down "$run_dir/cp-install" >/dev/null 2>&1 || true
hack/control-plane.sh up "$run_dir/cp-upgrade"
source "$run_dir/cp-upgrade/env"
cargo test --locked "${features[@]}" --test upgrade -- --include-ignored
