# syntax=docker/dockerfile:1.7
# Lightweight vLLM runtime: vLLM's official image plus model-fetcher. The entrypoint fills the
# model cache (a PVC mounted at $MODEL_CACHE_DIR) from MinIO, verifies it, then execs
# `vllm serve $MODEL_CACHE_DIR <args>`, so vLLM becomes the container's main process and gets
# SIGTERM directly. Arguments given to the container (Kubernetes `args`) go to `vllm serve`:
#   args: ["--served-model-name", "mistral-24b", "--max-model-len", "32768"]
#
# Build from the repository root:
#   docker build -f container/vllm-runtime.Dockerfile -t vllm-runtime:dev .
# The weights never enter the image (that is the point: an 87 GB image does not fit on a
# 120 GB GPU node disk), so this image is only the size of vLLM's own.

# No HEALTHCHECK: Kubernetes ignores it; the pod probes vLLM's /health.
# checkov:skip=CKV_DOCKER_2: Kubernetes probes vLLM's /health instead (issue 6)

# ---- build: model-fetcher in its own venv, so vLLM's pinned dependencies stay untouched ----
FROM vllm/vllm-openai:v0.11.0 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.m[d] ./
COPY fetcher/ fetcher/
RUN python3 -m venv /opt/model-fetcher \
 && /opt/model-fetcher/bin/pip install . \
 && /opt/model-fetcher/bin/python -m compileall -q /opt/model-fetcher/lib

# ---- runtime ---------------------------------------------------------------------------------
FROM vllm/vllm-openai:v0.11.0 AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="vllm-runtime-model-fetcher" \
      org.opencontainers.image.description="vLLM serving a model that model-fetcher fills into a PVC at start" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/vllm/vllm-openai:v0.11.0"
COPY --from=build /opt/model-fetcher /opt/model-fetcher
# A symlink rather than PATH: the venv's python must not shadow the one vLLM runs on.
RUN ln -s /opt/model-fetcher/bin/model-fetcher /usr/local/bin/model-fetcher
# vLLM, Triton and the HF libraries write their caches under $HOME; /tmp is an emptyDir in
# the pod, so the root filesystem can stay read-only. Offline: the model comes from the PVC.
ENV MODEL_CACHE_DIR=/model-cache \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
USER 1000:1000
# sh only expands $MODEL_CACHE_DIR and is replaced (exec) by model-fetcher, which in turn
# execs vLLM: no shell stays between the kubelet's SIGTERM and vLLM.
ENTRYPOINT ["/bin/sh", "-c", "exec model-fetcher fetch -- vllm serve \"${MODEL_CACHE_DIR}\" \"$@\"", "vllm-runtime"]
CMD []
