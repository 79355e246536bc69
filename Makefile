# `make demo` and `make test` are the two commands a newcomer runs; both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TARGETS ?= onnx,openvino,executorch
PYTEST_ARGS ?= -n 2

.PHONY: setup web-setup demo test test-fast bench clean

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

# Chromium (Debian) and the pinned npm packages for the PWA and its browser test.
web-setup:
	-sh apps/web/setup.sh

demo: setup
	$(BIN)/edge convert vit_tiny_digits --target $(TARGETS) -o out/demo --progress
	$(BIN)/edge bench vit_tiny_digits --targets $(TARGETS) --warmup 10 --iters 200 -o out/demo-report
	@echo
	@echo "Report: open out/demo-report/report.html (also report.md, results.csv, results.json)"
	@echo "Phone:  $(BIN)/edge serve out/demo --host 0.0.0.0 --results out/demo-report/results.json"
	@echo "        then open the printed URL on the phone; its timings join the report as a 'browser' cell"

# In CI (CI=true) the browser test must run: a missing Chromium fails instead of skipping.
test: setup web-setup
	EDGE_REQUIRE_BROWSER=$(if $(CI),1,0) $(BIN)/python -m pytest -q -ra --durations=20 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/runtime_overhead.py

clean:
	rm -rf out .pytest_cache
