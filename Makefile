# model-fetcher: everything a fresh clone needs is installed by `make install` into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean
.DEFAULT_GOAL := install

# Targets owned by other parts of the tree (bench/, k8s/, container/, soak) live in mk/*.mk.
include mk/*.mk

install: $(STAMP)

# Re-install only when the project's metadata changes, so repeated runs cost nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# DEMO_FORMAT=gguf: a llama.cpp model (a GGUF split set) instead of safetensors shards.
DEMO_FORMAT ?= safetensors
demo: install
	$(BIN)/python -m devtools.demo --format $(DEMO_FORMAT)

# The manifests are checked (issue 6) and the bench harness smoke-tested with the suite.
test: install k8s-check $(BENCH_STAMP)
	env -u AWS_CA_BUNDLE $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check fetcher devtools tests bench
	$(BIN)/ruff format --check fetcher devtools tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo build *.egg-info .pytest_cache .mypy_cache .ruff_cache
