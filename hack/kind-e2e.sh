#!/usr/bin/env bash
# The README's Helm install, end to end, on a real cluster with kubelets (kind): what the local
# control plane cannot run (Pods). Used by .github/workflows/e2e-kind.yml for every supported
# Kubernetes version, and by anyone with kind and a Docker engine:
#   kind create cluster --image kindest/node:v1.31.2 && hack/kind-e2e.sh
# Builds the image (`make image`), loads it into the kind nodes, installs throwaway Postgres and
# Redis, installs the chart (migration hook, webhook, two replicas), applies the examples, waits
# for every ScheduledJob to be Ready, runs `helm test`, and checks that the admission webhook
# refuses a bad cron at `kubectl apply`.
source "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
cluster=${KIND_CLUSTER:-kind}
version=$(crate_version)
helm=$(hack/helm.sh)
image=ghcr.io/kube-beat/kube-beat:$version

hack/image.sh "$version"
apt_install skopeo
skopeo copy --quiet oci-archive:target/image/kube-beat.oci.tar "docker-archive:target/image/kube-beat.docker.tar:$image"
kind load image-archive target/image/kube-beat.docker.tar --name "$cluster"

kubectl apply -f hack/kind/dependencies.yaml
kubectl -n kube-beat-deps wait --for=condition=Available deploy/postgres deploy/redis --timeout=180s
kubectl create namespace kube-beat --dry-run=client -o yaml | kubectl apply -f -
kubectl -n kube-beat create secret generic kube-beat --dry-run=client -o yaml \
  --from-literal=database-url='postgres://postgres:kube-beat-demo@postgres.kube-beat-deps:5432/kube_beat' \
  --from-literal=broker-url='redis://redis.kube-beat-deps:6379/0' | kubectl apply -f -
"$helm" upgrade --install kube-beat charts/kube-beat -n kube-beat --wait --timeout 5m \
  --set image.pullPolicy=Never
"$helm" test kube-beat -n kube-beat --timeout 2m

kubectl apply -f examples/task-functions.yaml
kubectl create namespace my-team --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n my-team -f examples/scheduled-jobs.yaml
kubectl -n my-team wait --for=condition=Ready scheduledjob --all --timeout=120s
kubectl -n my-team get scheduledjobs

log "a bad cron must be refused at apply time"
if out=$(kubectl apply -n my-team -f - 2>&1 <<'YAML'
apiVersion: kubebeat.io/v1alpha1
kind: ScheduledJob
metadata: {name: bad-cron}
spec:
  taskFunction: cleanup-expired-sessions
  schedule: {cron: "61 * * * *"}
YAML
); then
  die "the webhook accepted a bad cron: $out"
fi
echo "$out" | grep -q "admission webhook" || die "refused, but not by the webhook: $out"
log "refused: $out"
log "kind e2e passed on $(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
