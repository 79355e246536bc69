# `make demo` and `make test` are the two commands a newcomer runs; both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TARGETS ?= onnx,openvino,executorch
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# torch is installed first and pinned: executorch and torchao do not pin it, and any other
# torch version pulls gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip check
	touch $@

demo: setup
	$(BIN)/edge convert vit_tiny_digits --target $(TARGETS) -o out/demo --progress
	$(BIN)/edge bench out/demo/* --warmup 10 --iters 200

test: setup
	$(BIN)/python -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/runtime_overhead.py

clean:
	rm -rf out .pytest_cache
