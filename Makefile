# The two commands of the README:
#   make demo   install everything (pinned) and run the local end-to-end demo
#   make test   install everything (pinned) and run lint, type checks and the whole test suite
# Both start from nothing but python3.11 on PATH; scripts/bootstrap.sh does the install.

VENV := .venv
BIN := $(VENV)/bin
# The demo keeps its registry and BentoML store inside the checkout, not in $HOME.
export MODELRAIL_REGISTRY ?= $(CURDIR)/.modelrail/registry
export BENTOML_HOME ?= $(CURDIR)/.modelrail/bentoml
# Offline by default (see DESIGN.md): no telemetry from onnxruntime or BentoML.
export ORT_DISABLE_TELEMETRY := 1
export BENTOML_DO_NOT_TRACK := true

.PHONY: demo test test-quick lint install install-cluster clean

demo: install
	$(BIN)/modelrail demo

test: install install-cluster lint
	$(BIN)/pytest

# The fast subset: everything but the end-to-end tests that start real servers.
test-quick: install lint
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

install:
	@./scripts/bootstrap.sh

# The one-node cluster's upstream programs (etcd, Kubernetes, CoreDNS, CNI plugins, the
# Gateway API CRDs) and the Pulumi CLI with its Kubernetes provider, built from their Go
# modules once per machine into ~/.cache/modelrail/upstream (cold: ~30 min on 2 cores;
# cached: under a second). `make demo` does not need them.
CLUSTER_COMPONENTS := etcd kube-apiserver kube-controller-manager kube-scheduler kubelet \
	kube-proxy kubectl coredns cni-plugins gateway-api-crds pulumi pulumi-resource-kubernetes
install-cluster:
	@./scripts/upstream/build.sh $(CLUSTER_COMPONENTS)

clean:
	rm -rf $(VENV) .modelrail .mypy_cache .pytest_cache .ruff_cache
