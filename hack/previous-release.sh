#!/usr/bin/env bash
# The previous release, for the upgrade test (tests/upgrade.rs): its source from git (the commit
# in hack/previous-release, the last one of chart version 0.1.0), its chart, and its kube-beat
# binary built once per machine into the cache. Prints two lines: the binary, the chart dir.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
commit=$(grep -v '^#' hack/previous-release | head -n1)
dir="$KB_CACHE/previous-$commit"
if [ ! -x "$dir/kube-beat" ]; then
  git cat-file -e "$commit^{commit}" 2>/dev/null \
    || die "commit $commit (hack/previous-release) is not in this clone: fetch the full history"
  rm -rf "$dir" && mkdir -p "$dir/src"
  git archive "$commit" | tar -x -C "$dir/src"
  log "building the previous release's kube-beat ($commit)"
  # Intermediate artifacts in the tests' build directory when given (CARGO_BUILD_BUILD_DIR), so
  # the dependencies it shares with this version are not compiled again; the binary itself goes
  # to a directory of its own and never replaces this version's target/debug/kube-beat.
  (cd "$dir/src" && env ${CARGO_TARGET_DIR:+CARGO_BUILD_BUILD_DIR="$CARGO_TARGET_DIR"} \
    cargo build --locked --bin kube-beat --target-dir "$dir/out") >&2
  cp "$dir/out/debug/kube-beat" "$dir/kube-beat"
fi
echo "$dir/kube-beat"
echo "$dir/src/charts/kube-beat"
