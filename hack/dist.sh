#!/usr/bin/env bash
# `make dist`: the release binaries, statically linked, for linux/amd64 and linux/arm64 (the other
# one cross-compiled with Debian's cross toolchain), each in a reproducible tar.gz, and
# the worker-side guard's wheel (kube_beat_celery-<version>-py3-none-any.whl), and
# dist/checksums.txt (sha256sum format) over everything in dist/.
#   hack/dist.sh                 both architectures
#   DIST_ARCHES=amd64 hack/dist.sh   only these
# The release workflow (.github/workflows/release.yml) runs exactly this and attaches dist/ to
# the GitHub release.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
version=$(crate_version)
mkdir -p dist
# Reproducible archives: fixed owner, order and timestamps (the last commit's time).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
for arch in ${DIST_ARCHES:-amd64 arm64}; do
  target=$(rust_target "$arch")
  log "kube-beat $version for linux/$arch ($target)"
  bin=$(build_static "$target")
  stage=$(mktemp -d)
  name="kube-beat-$version-linux-$arch"
  mkdir -p "$stage/$name"
  cp "$bin" "$stage/$name/kube-beat"
  strip_binary "$target" "$stage/$name/kube-beat"
  cp README.md "$stage/$name/"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
    -C "$stage" -cf - "$name" | gzip -9n >"dist/$name.tar.gz"
  rm -rf "$stage"
done
# The worker-side guard (python/kube_beat_celery) as a wheel: pure Python, for every platform.
# Built in the source tree (pip's way): its build/ and .egg-info are removed after.
py=$(hack/celery-venv.sh python/build-requirements.txt)
log "kube-beat-celery $version (wheel)"
"$py/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  --no-index -w dist ./python >&2
rm -rf python/build python/*.egg-info
write_checksums dist
log "dist/: $(cd dist && ls | tr '\n' ' ')"
