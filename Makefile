# modelpress — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all compile clean bench-compression

help: ## List every target with what it does
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "modelpress needs Python 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install modelpress with pinned dependencies

demo: $(STAMP) ## Run the optimise pipeline locally on the built-in digits dataset
	$(PY) pipelines/run_local.py optimise --config configs/local.yaml

test: $(STAMP) ## Run the test suite (slow tests excluded; see test-all)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

compile: $(STAMP) ## Compile every pipeline for every target into build/pipelines/
	$(PY) pipelines/compile.py --target all

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf build local_outputs .pytest_cache

bench-compression: $(STAMP) ## Measure every compression variant of the reference model (~15 min)
	$(PY) benchmarks/compression.py --config configs/compression.yaml
