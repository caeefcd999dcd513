#!/usr/bin/env bash
# `make image`: build the OCI image FROM scratch with buildah (no Docker engine needed) and export
# it as an OCI archive.
#   hack/image.sh [TAG]   → image kube-beat:TAG in buildah's storage and target/image/kube-beat.oci.tar
#   ARCH=arm64 hack/image.sh   the same for another architecture (cross-compiled)
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
tag=${1:-$(crate_version)}
apt_install buildah ca-certificates

# The image is for this machine's architecture, or ARCH (amd64 / arm64: the release workflow
# builds each on its own runner and joins them into one multi-arch manifest).
arch=${ARCH:-$(uname -m)}
log "building a statically linked kube-beat (release, $(rust_target "$arch"))"
target=$(rust_target "$arch")
bin=$(build_static "$target")
platform=linux/$(go_arch "$target")

ctx=target/image/context
rm -rf "$ctx" && mkdir -p "$ctx"
cp "$bin" "$ctx/kube-beat"
strip_binary "$target" "$ctx/kube-beat"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
echo "nonroot:x:65532:65532:nonroot:/:/sbin/nologin" >"$ctx/passwd"
echo "nonroot:x:65532:" >"$ctx/group"
echo "hosts: files dns" >"$ctx/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ctx/hosts"
cp image/Containerfile "$ctx/"

log "buildah bud kube-beat:$tag ($platform)"
buildah --storage-driver vfs bud --quiet --platform "$platform" -f "$ctx/Containerfile" -t "kube-beat:$tag" "$ctx" >/dev/null
rm -f target/image/kube-beat.oci.tar
buildah --storage-driver vfs push --quiet "kube-beat:$tag" "oci-archive:target/image/kube-beat.oci.tar:kube-beat:$tag"
log "image kube-beat:$tag → target/image/kube-beat.oci.tar ($(du -h target/image/kube-beat.oci.tar | cut -f1))"
