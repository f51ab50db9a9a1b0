# modelpress — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-ray demo demo-text test test-all compile clean bench-compression bench-distributed bench-byom bench-text serve bench-serving bench-serving-peers bench-batch

help: ## List every target with what it does
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "modelpress needs Python 3.11; set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@# user_code/ on the import path, as the images put it on PYTHONPATH (user_code/README.md)
	$(PY) -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "modelpress_user_code.pth").write_text(str(pathlib.Path("user_code").resolve()) + "\n")'
	@touch $(STAMP)

# Ray Train (the second distributed engine, ~600 MB) is an extra: the tests install it, the demo does not
RAY_STAMP := $(VENV)/.installed-ray
$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,ray]'
	@touch $(RAY_STAMP)

install: $(STAMP) ## Create .venv and install modelpress with pinned dependencies (make install-ray: Ray too)

install-ray: $(RAY_STAMP) ## Also install the ray extra (Ray Train: distributed-train's engine ray)

demo: $(STAMP) ## Run the optimise pipeline locally on the built-in digits dataset
	$(PY) pipelines/run_local.py optimise --config configs/local.yaml

demo-text: $(STAMP) ## Run the optimise pipeline on text: made-up reviews (reviews.csv), configs/text.yaml
	@test -f reviews.csv || $(PY) -c 'from modelpress.data.text import write_reviews; print("wrote", write_reviews("reviews.csv", 3000))'
	$(PY) pipelines/run_local.py optimise --config configs/text.yaml

test: $(RAY_STAMP) ## Run the test suite (slow tests excluded; see test-all)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(RAY_STAMP) ## Run every test, slow ones included
	$(PY) -m pytest $(PYTEST_ARGS)

compile: $(STAMP) ## Compile every pipeline for every target into build/pipelines/
	$(PY) pipelines/compile.py --target all

clean: ## Remove build outputs and local runs (keeps .venv)
	rm -rf build local_outputs .pytest_cache

bench-compression: $(STAMP) ## Measure every compression variant of the reference model (~15 min)
	$(PY) benchmarks/compression.py --config configs/compression.yaml

bench-byom: $(STAMP) ## A torchvision ResNet-18 checkpoint through the optimise pipeline with epochs 0 (~7 min)
	$(PY) benchmarks/byom.py

bench-text: $(STAMP) ## A BERT-style teacher, its ONNX variants and a distilled student on review texts (~15 min)
	$(PY) benchmarks/text.py

bench-distributed: $(RAY_STAMP) ## DDP throughput for 1..cores processes, scaling efficiency, gradient bytes (~2 min)
	$(PY) benchmarks/distributed.py

serve: $(STAMP) ## Serve model_repository/ (what the demo deployed) on 127.0.0.1:8000, metrics on :8002
	$(VENV)/bin/modelpress serve --repository model_repository

bench-serving: $(STAMP) ## Batching vs no batching vs a naive server, plus hot reload under load (~6 min)
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/serving.py --dense-mlp --reload-requests 0 --output benchmarks/results/serving-dense-mlp.json

bench-batch: $(STAMP) ## batch-predict vs a bare ONNX Runtime loop over the same arrays (~2 min)
	$(PY) benchmarks/batch.py --small

bench-serving-peers: $(STAMP) ## modelpress (HTTP, gRPC) beside NVIDIA Triton and KServe; own venv build/peers-venv (~6 min)
	PYTHON=$(PYTHON) bash benchmarks/peers/setup.sh
	$(PY) benchmarks/serving.py --peers

# Container images (containers/<name>/Dockerfile). Tags are immutable commit ids: Vertex's
# cache key includes the image string, so a rebuilt `latest` would return stale results.
REGISTRY ?= europe-west4-docker.pkg.dev/PROJECT/modelpress
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null)
PLATFORM ?= linux/amd64
IMAGES := cpu gpu serve
# A default (commit) tag on a tree with uncommitted changes would name code it does not hold.
TREE_CHANGES = $(if $(filter file,$(origin TAG)),$(shell git status --porcelain 2>/dev/null | head -n 1))
.PHONY: images $(addprefix image-,$(IMAGES))

images: $(addprefix image-,$(IMAGES)) ## Build and push the cpu, gpu, serve images as $(REGISTRY)/<name>:$(TAG) (docker)

$(addprefix image-,$(IMAGES)): image-%:
	$(if $(filter latest,$(TAG)),$(error TAG=latest is refused: tag images immutably, e.g. TAG=$$(git rev-parse --short HEAD), the default))
	$(if $(TAG),,$(error TAG is empty: run in a git checkout, or pass TAG=<version>))
	$(if $(findstring /PROJECT/,$(REGISTRY)/),$(error REGISTRY=$(REGISTRY) names no project: pass REGISTRY=<region>-docker.pkg.dev/<your-project>/<repository>))
	$(if $(TREE_CHANGES),$(error uncommitted changes: an image tagged $(TAG) would not hold commit $(TAG); commit first, or pass TAG=<version>))
	docker build --platform $(PLATFORM) --file containers/$*/Dockerfile --tag $(REGISTRY)/$*:$(TAG) .
	docker push $(REGISTRY)/$*:$(TAG)

# NVIDIA's Triton for serving.container: triton (docs/vertex.md): Vertex pulls only from Artifact Registry.
TRITON_TAG ?= 25.01-py3
.PHONY: mirror-triton
mirror-triton: ## Copy nvcr.io/nvidia/tritonserver:$(TRITON_TAG) into $(REGISTRY) (serving.container: triton; docker)
	$(if $(filter latest,$(TRITON_TAG)),$(error TRITON_TAG=latest is refused: name a release, e.g. TRITON_TAG=25.01-py3))
	$(if $(findstring /PROJECT/,$(REGISTRY)/),$(error REGISTRY=$(REGISTRY) names no project: pass REGISTRY=<region>-docker.pkg.dev/<your-project>/<repository>))
	docker pull --platform $(PLATFORM) nvcr.io/nvidia/tritonserver:$(TRITON_TAG)
	docker tag nvcr.io/nvidia/tritonserver:$(TRITON_TAG) $(REGISTRY)/tritonserver:$(TRITON_TAG)
	docker push $(REGISTRY)/tritonserver:$(TRITON_TAG)
