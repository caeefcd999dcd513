#!/usr/bin/env bash
# `make chart`: lint the Helm chart and package it into dist/kube-beat-<chart version>.tgz (the
# release workflow pushes that archive to an OCI registry with `helm push`), then refresh
# dist/checksums.txt. The chart's version and appVersion must be the crate's version: the default
# image tag is the appVersion, and the release workflow pushes everything under the tag v<version>.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
helm=$(hack/helm.sh)
app=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/kube-beat/Chart.yaml)
[ "$app" = "$(crate_version)" ] || die "charts/kube-beat/Chart.yaml appVersion $app is not the crate version $(crate_version)"
# One version per release: the tag v<version> names the binaries, the image and the chart.
chart_version=$(sed -n 's/^version: *//p' charts/kube-beat/Chart.yaml)
[ "$chart_version" = "$(crate_version)" ] || die "charts/kube-beat/Chart.yaml version $chart_version is not the crate version $(crate_version)"
"$helm" lint --strict charts/kube-beat >&2
mkdir -p dist
"$helm" package charts/kube-beat --destination dist >&2
write_checksums dist
