#!/usr/bin/env bash
# A real, local Kubernetes control plane: etcd + kube-apiserver v1.20.2 built from Debian's source
# package (no kubelet; kube-controller-manager from the same source, started only by `up` with
# KB_CONTROLLERS=1, for the tests that need the Job, Deployment, garbage-collection and
# ClusterRole-aggregation controllers). See docs/development.md.
#
#   hack/control-plane.sh build            build/cache kube-apiserver and kubectl (once per machine)
#   hack/control-plane.sh up [DIR]         start etcd + apiserver, write DIR/kubeconfig and DIR/env
#                                          (KB_CONTROLLERS=1: also kube-controller-manager)
#   hack/control-plane.sh down [DIR]       stop what `up` started in DIR
#   hack/control-plane.sh env [DIR]        print the shell exports for DIR
#   hack/control-plane.sh restart-apiserver [DIR]   stop and start the apiserver (fault suite)
#
# If KUBECONFIG already points at a reachable cluster, `up` uses it and builds nothing.
# Extra static-token users for tests: KB_TOKEN_USERS="name=group1|group2 name2=" (written to
# DIR/tokens.csv with token <name>-token, ':' in the name spelled '-'; names may be service
# accounts, system:serviceaccount:NS:NAME; tokens only ever reach the loopback apiserver).
source "$(dirname "$0")/lib.sh"

cmd=${1:-}
dir=${2:-$KB_STATE/cp}

have_all() { [ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$K8S_BIN/kube-controller-manager" ] && [ -x "$K8S_BIN/kubectl" ]; }

build() {
  if have_all; then return 0; fi
  # The lock lives in a subshell so daemons started later never inherit (and hold) it.
  ( flock 9; build_locked ) 9>"$KB_CACHE/.k8s-build.lock"
}

build_locked() {
  if have_all; then return 0; fi
  apt_install golang-go etcd-server rsync dpkg-dev golang-github-modern-go-reflect2-dev openssl curl
  mkdir -p "$K8S_BIN"
  local work="$KB_CACHE/build-k8s"
  rm -rf "$work"; mkdir -p "$work"
  # kubectl of the same version, straight from Debian's binary package (no build needed).
  if [ ! -x "$K8S_BIN/kubectl" ]; then
    (cd "$work" && apt-get download "kubernetes-client=$K8S_DEB_VERSION" >/dev/null 2>&1) \
      || { enable_deb_src; as_root apt-get update -qq; (cd "$work" && apt-get download "kubernetes-client=$K8S_DEB_VERSION"); }
    dpkg -x "$work"/kubernetes-client_*.deb "$work/kc"
    install -m 0755 "$work/kc/usr/bin/kubectl" "$K8S_BIN/kubectl"
  fi
  if [ ! -x "$K8S_BIN/kube-apiserver" ] || [ ! -x "$K8S_BIN/kube-controller-manager" ]; then
    enable_deb_src
    as_root apt-get update -qq
    log "fetching the kubernetes $K8S_DEB_VERSION source package"
    (cd "$work" && apt-get source -qq "kubernetes=$K8S_DEB_VERSION" >/dev/null)
    local src
    src=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
    [ -n "$src" ] || die "apt-get source kubernetes produced no source tree"
    # The vendored reflect2 v1.0.1 crashes under Go >= 1.18; Debian's v1.0.2 does not.
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
    rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod"
    mkdir -p "$src/.go/src/k8s.io" "$work/home"
    ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
    log "building kube-apiserver and kube-controller-manager (a few minutes, once per machine)"
    (cd "$src" && GOPATH="$src/.go" CGO_ENABLED=0 HOME="$work/home" make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$work/build.log" 2>&1) \
      || { tail -30 "$work/build.log"; die "kubernetes build failed (log: $work/build.log)"; }
    install -m 0755 "$src/_output/bin/kube-apiserver" "$K8S_BIN/kube-apiserver"
    install -m 0755 "$src/_output/bin/kube-controller-manager" "$K8S_BIN/kube-controller-manager"
  fi
  rm -rf "$work"
  log "kube-apiserver, kube-controller-manager and kubectl $K8S_VERSION cached in $K8S_BIN"
}

enable_deb_src() {
  local f=/etc/apt/sources.list.d/debian.sources
  if [ -f $f ] && ! grep -q 'deb-src' $f; then
    as_root sed -i 's/^Types: deb$/Types: deb deb-src/' $f
  elif [ -f /etc/apt/sources.list ] && ! grep -q '^deb-src' /etc/apt/sources.list; then
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' | as_root tee -a /etc/apt/sources.list >/dev/null
  fi
}

reachable() { "$KUBECTL" --kubeconfig "$1" --request-timeout=5s get --raw /readyz >/dev/null 2>&1; }

up() {
  mkdir -p "$dir"
  KUBECTL=$(command -v kubectl || true)
  if [ -n "${KUBECONFIG:-}" ] && [ -n "$KUBECTL" ] && reachable "$KUBECONFIG"; then
    log "using the existing cluster from KUBECONFIG=$KUBECONFIG"
    write_env "$KUBECONFIG" "$KUBECTL" external
    return 0
  fi
  build
  apt_install etcd-server openssl
  KUBECTL="$K8S_BIN/kubectl"
  if [ -f "$dir/apiserver.pid" ] && kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null && reachable "$dir/kubeconfig"; then
    log "control plane already running in $dir"; return 0
  fi
  down >/dev/null 2>&1 || true
  mkdir -p "$dir/etcd" "$dir/certs"
  local etcd_port etcd_peer api_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  /usr/bin/etcd --data-dir "$dir/etcd" --name kube-beat-test \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "kube-beat-test=http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  [ -f "$dir/sa.key" ] || { openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null; openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null; }
  local admin_token
  admin_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$admin_token,kube-beat-admin,uid-admin,\"system:masters\"" >"$dir/tokens.csv"
  for u in ${KB_TOKEN_USERS:-}; do
    local name=${u%%=*} groups=${u#*=}
    echo "${name//:/-}-token,$name,uid-${name//:/-},\"${groups//|/,}\"" >>"$dir/tokens.csv"
  done
  # Kept as a script so `restart-apiserver` (the fault suite) starts it exactly the same way.
  cat >"$dir/apiserver.sh" <<EOF
#!/bin/sh
exec "$K8S_BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \\
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \\
  --cert-dir="$dir/certs" --token-auth-file="$dir/tokens.csv" --authorization-mode=RBAC \\
  --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \\
  --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.0.0.0/24 \\
  --insecure-port=0
EOF
  chmod +x "$dir/apiserver.sh"
  : >"$dir/apiserver.log"
  start_apiserver
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$api_port
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $admin_token
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
EOF
  wait_for "kube-apiserver /readyz (log: $dir/apiserver.log)" 90 reachable "$dir/kubeconfig"
  # The bootstrap controller creates `default` shortly after /readyz; wait so callers can use it.
  wait_for "namespace default" 30 "$KUBECTL" --kubeconfig "$dir/kubeconfig" get namespace default
  if [ "${KB_CONTROLLERS:-0}" = 1 ]; then start_controller_manager; fi
  write_env "$dir/kubeconfig" "$KUBECTL" local
  log "control plane up: https://127.0.0.1:$api_port (state in $dir)"
}

# The Job, Deployment/ReplicaSet, garbage-collection, namespace, ServiceAccount and
# ClusterRole-aggregation controllers, for the install tests (tests/install.rs). Without a kubelet
# and a scheduler, the controllers that manage nodes, volumes, cloud routes and load balancers
# would only log errors, so they are off.
start_controller_manager() {
  local port; port=$(free_port)
  # Its own copy of the admin kubeconfig: a test that edits $KUBECONFIG cannot cut it off.
  cp "$dir/kubeconfig" "$dir/controller-manager.kubeconfig"
  mkdir -p "$dir/controller-manager-certs"
  "$K8S_BIN/kube-controller-manager" --kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/controller-manager.kubeconfig" --authentication-skip-lookup \
    --bind-address=127.0.0.1 --secure-port="$port" --port=0 \
    --cert-dir="$dir/controller-manager-certs" --leader-elect=false \
    --service-account-private-key-file="$dir/sa.key" --root-ca-file="$dir/certs/apiserver.crt" \
    --use-service-account-credentials=false \
    --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-pv-protection,-pvc-protection,-ttl,-csrsigning,-csrapproving,-csrcleaner,-horizontalpodautoscaling' \
    >"$dir/controller-manager.log" 2>&1 &
  echo $! >"$dir/controller-manager.pid"
  wait_for "kube-controller-manager /healthz (log: $dir/controller-manager.log)" 60 \
    curl -sfk "https://127.0.0.1:$port/healthz"
  # Up is not enough: the tests need the built-in `edit` role's rules aggregated (empty until the
  # clusterrole-aggregation controller's first pass).
  wait_for "the ClusterRole aggregation (log: $dir/controller-manager.log)" 60 \
    sh -c "'$KUBECTL' --kubeconfig '$dir/kubeconfig' get clusterrole edit -o jsonpath='{.rules[*].resources}' | grep -q deployments"
  log "kube-controller-manager up (log: $dir/controller-manager.log)"
}

start_apiserver() {
  "$dir/apiserver.sh" >>"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
}

# Stop the apiserver (SIGTERM, as a rolling restart would), start it again on the same port and
# etcd, and wait until it serves. Used by the fault-injection suite.
restart_apiserver() {
  [ -f "$dir/apiserver.pid" ] && [ -x "$dir/apiserver.sh" ] || die "no control plane of ours in $dir"
  KUBECTL="$K8S_BIN/kubectl"
  local pid; pid=$(cat "$dir/apiserver.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  start_apiserver
  wait_for "kube-apiserver /readyz after restart" 90 reachable "$dir/kubeconfig"
}

write_env() {
  cat >"$dir/env" <<EOF
export KUBECONFIG=$1
export KUBECTL=$2
export KB_CLUSTER=$3
export KB_CP_DIR=$dir
EOF
}

down() {
  for p in controller-manager apiserver etcd; do
    if [ -f "$dir/$p.pid" ]; then
      local pid; pid=$(cat "$dir/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$p.pid"
    fi
  done
  rm -rf "$dir/etcd"
}

case "$cmd" in
  build) build ;;
  up) up ;;
  down) down ;;
  restart-apiserver) restart_apiserver ;;
  env) cat "$dir/env" ;;
  *) echo "usage: $0 build|up|down|env|restart-apiserver [DIR]" >&2; exit 2 ;;
esac
