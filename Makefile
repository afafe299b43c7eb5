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

# --- the system's jobs (each target's recipe belongs to the issue that built it) ---
train: $(STAMP)
	$(VENV)/bin/ppfr-train --config $(CONFIG)

export: $(STAMP)
	$(VENV)/bin/ppfr-export --checkpoint runs/$(RUN)/checkpoint.pt --out artifacts/$(RUN)

serve: $(STAMP)
	$(VENV)/bin/ppfr-cloud serve --bundle artifacts/$(RUN) --db runs/gallery.sqlite --port 50051

demo: $(STAMP)
	@echo "demo: not built yet"

bench: $(STAMP)
	$(VENV)/bin/ppfr-bench

attack: $(STAMP)
	$(VENV)/bin/ppfr-attack
