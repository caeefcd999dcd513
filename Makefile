# kube-beat developer entry points. `make demo` and `make test` do all the set-up themselves.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test compat chaos fuzz bench demo demo-down generate verify lint cluster-up cluster-down services clean image dist chart

all: build

build:
	$(CARGO) build --release

## test: lint + unit + integration + e2e against a real apiserver, Postgres, Redis, RabbitMQ, Celery
test:
	hack/test.sh

## compat: the Celery version matrix, every series (4.4, 5.2, 5.3, 5.4, 5.5, 5.7) on Redis and
## RabbitMQ; `make test` runs the oldest that can run here and the newest
compat:
	hack/compat.sh

## chaos: the full fault-injection matrix (3 replicas, every fault); rewrites docs/reliability.md
chaos:
	hack/test.sh chaos

## fuzz: cargo-fuzz on the parsers and decoders, FUZZ_SECONDS (60) per target
fuzz:
	hack/fuzz.sh

## bench: kube-beat vs Celery beat and RedBeat (N = 1k/10k/100k); writes bench/results/
bench:
	hack/bench.sh $(BENCH_ARGS)

## demo: control plane, services, Celery worker, CRDs, examples and the operator, end to end
demo:
	hack/demo.sh

demo-down:
	hack/demo.sh down

## image: OCI image FROM scratch (static binary + CA certificates) with buildah → target/image/
## (ARCH=arm64 for the other architecture)
image:
	hack/image.sh

## dist: static release binaries for linux/amd64 and linux/arm64, the worker-side guard's wheel
## (python/) + checksums → dist/
dist:
	hack/dist.sh

## chart: lint and package the Helm chart → dist/kube-beat-<version>.tgz (+ checksums)
chart:
	hack/chart.sh

## generate: regenerate the CRD YAML (checked for drift by the tests)
generate:
	$(CARGO) run --quiet -- crd > crds/kube-beat-crds.yaml
	$(CARGO) run --quiet -- crd --helm > charts/kube-beat/templates/crds.yaml

## verify: fail if generated files are out of date
verify:
	$(CARGO) run --quiet -- crd | diff -u crds/kube-beat-crds.yaml -
	$(CARGO) run --quiet -- crd --helm | diff -u charts/kube-beat/templates/crds.yaml -

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings

cluster-up:
	hack/control-plane.sh up

cluster-down:
	hack/control-plane.sh down

services:
	hack/services.sh

clean:
	$(CARGO) clean
