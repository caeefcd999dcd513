#!/usr/bin/env bash
# `make fuzz`: run each cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS (default 60).
# cargo-fuzz is installed into the cache (keyed by version); the toolchain is the machine's
# stable one, with RUSTC_BOOTSTRAP=1 for the sanitizer flags libFuzzer builds use.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."

version=0.13.2
root="$KB_CACHE/cargo-fuzz-$version"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz $version into $root (once)"
  cargo install --quiet --locked --root "$root" cargo-fuzz --version "$version"
fi
export PATH="$root/bin:$PATH" RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-60}
targets=${*:-$(cargo fuzz list --fuzz-dir fuzz)}
for t in $targets; do
  log "fuzzing $t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -max_len=4096
done
log "no crash in: $(echo $targets)"
