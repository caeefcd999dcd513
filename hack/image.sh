#!/usr/bin/env bash
# `make image`: build the OCI image FROM scratch with buildah (no Docker engine needed) and export
# it as an OCI archive.
#   hack/image.sh [TAG]   → image kube-beat:TAG in buildah's storage and target/image/kube-beat.oci.tar
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
tag=${1:-$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)}
apt_install buildah ca-certificates

log "building a statically linked kube-beat (release)"
# glibc, statically: files and DNS name resolution are built into libc since glibc 2.34, so the
# binary resolves names in an image that has no libc at all (the image test checks it).
# The build directory lives in the cache, keyed by the compiler: the dependencies are compiled
# once per machine (cargo rebuilds what a Cargo.lock change touches), later builds recompile
# kube-beat only.
key=$(rustc -V | sha256sum | cut -c1-12)
target_dir="$KB_CACHE/static-target-$key"
# Without the `failpoints` feature (it is not a default one): the image cannot be made to abort
# by an environment variable; checked on the binary below.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
  --target x86_64-unknown-linux-gnu --target-dir "$target_dir"
bin="$target_dir/x86_64-unknown-linux-gnu/release/kube-beat"
! grep -q KUBE_BEAT_CRASH_AT "$bin" || die "$bin has the crash points (failpoints feature) compiled in"

ctx=target/image/context
rm -rf "$ctx" && mkdir -p "$ctx"
cp "$bin" "$ctx/kube-beat"
strip "$ctx/kube-beat" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
echo "nonroot:x:65532:65532:nonroot:/:/sbin/nologin" >"$ctx/passwd"
echo "nonroot:x:65532:" >"$ctx/group"
echo "hosts: files dns" >"$ctx/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ctx/hosts"
cp image/Containerfile "$ctx/"

log "buildah bud kube-beat:$tag"
buildah --storage-driver vfs bud --quiet -f "$ctx/Containerfile" -t "kube-beat:$tag" "$ctx" >/dev/null
rm -f target/image/kube-beat.oci.tar
buildah --storage-driver vfs push --quiet "kube-beat:$tag" "oci-archive:target/image/kube-beat.oci.tar:kube-beat:$tag"
log "image kube-beat:$tag → target/image/kube-beat.oci.tar ($(du -h target/image/kube-beat.oci.tar | cut -f1))"
