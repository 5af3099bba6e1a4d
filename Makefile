# semdlm: `make demo` runs every stage that exists end to end on CPU; `make test` runs the test suite.
# Both create .venv and install the package (editable, with the dev extra) when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out

.PHONY: demo test install bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest tests -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 bash scripts/demo.sh $(DEMO)

bench: $(STAMP)
	$(PY) bench/preprocess.py
	$(PY) bench/neighbors.py
	$(PY) -m bench.kernels
	$(PY) -m bench.sampler

clean:
	rm -rf $(DEMO) .pytest_cache
