# semdlm: `make demo` runs every stage that exists end to end on CPU; `make test` runs ruff, then the
# whole test suite (tests/unit, tests/integration and any other folder under tests/, in one pytest process:
# scripts/run_tests.sh); `make test-fast` runs tests/unit only (no DeepSpeed, no subprocess, no CLI runs; time: README);
# `make lint` runs ruff alone. All create .venv and install the package (editable, with the dev
# extra) when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out

# One intra-op thread: the tests' tensors are small, and torch's thread pool only oversubscribes a busy
# 2-core machine (about half the time of the default pool for make test-fast).
TEST_THREADS ?= 1
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=$(TEST_THREADS)

.PHONY: demo test test-fast lint install bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(TEST_ENV) PY=$(PY) bash scripts/run_tests.sh tests

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest tests/unit -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 bash scripts/demo.sh $(DEMO)

bench: $(STAMP)
	$(PY) bench/preprocess.py
	$(PY) bench/neighbors.py
	$(PY) -m bench.kernels
	$(PY) -m bench.sampler

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
