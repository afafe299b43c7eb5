# ppfr — every command a newcomer needs. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/dlib_ppfr_fd.yaml
RUN ?= $(basename $(notdir $(CONFIG)))
EXTRAS := train,edge,cloud,dev

.PHONY: setup test test-fast lint format train slim rekey export serve demo demo-sealed bench attack protos clean postgres bench-gallery

# The pretrained face model (dlib's ResNet) comes from the npm registry: `npm pack`, once (needs npm).
PRETRAINED := $(VENV)/share/ppfr/face-api/face_recognition_model.bin
SETUP := $(STAMP) $(PRETRAINED)

setup: $(SETUP)

# torch first and pinned: the CPU build on disk, never the multi-GB CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

$(PRETRAINED): | $(STAMP)
	$(PY) -m ppfr.train.pretrained fetch

# One pytest worker per core (pytest-xdist; tests/conftest.py pins each to its own), a test module on one
# worker, modules with slow tests first (conftest.py); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(SETUP)
	$(PYTEST) tests

# Everything but the tests marked slow (end-to-end runs, training, system tests): under 2 minutes.
test-fast: $(SETUP)
	$(PYTEST) -m "not slow" tests

lint: $(SETUP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(SETUP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: $(SETUP)
	$(PY) -m ppfr.protos.generate

clean:
	rm -rf runs artifacts .pytest_cache .ruff_cache

# --- the system's jobs (each target's recipe belongs to the issue that built it) ---
train: $(SETUP)
	$(VENV)/bin/ppfr-train --config $(CONFIG)
	$(if $(filter dlib_ppfr_fd,$(RUN)),$(MAKE) slim RUN=$(RUN))

# The shipped default's slimming after training (pretrained/README.md): a width-48 stem taught by dlib,
# then one residual block and a leaner router (16-wide reader, 3 Sinkhorn rounds), then dlib again.
SLIM = $(VENV)/bin/ppfr-train slim
slim: $(SETUP)
	$(SLIM) --from runs/$(RUN)/checkpoint.pt --out runs/$(RUN)_narrow --dlib-steps 1500
	$(SLIM) --from runs/$(RUN)_narrow/checkpoint.pt --out runs/$(RUN)_lean --keep-stem --depth 1 \
	  --router-reader 16 --router-sinkhorn 3 --router-steps 2000 --dlib-steps 1500
	$(SLIM) --from runs/$(RUN)_lean/checkpoint.pt --out runs/$(RUN)_slim --keep-stem --dlib-steps 1500 --seed 1

# The shipped default adapted to your own PPFR-FD key (docs/results.md, "Re-keying"), the key from
# KEY_FILE or PPFR_METHOD_KEY: make rekey KEY_FILE=method.key -> runs/dlib_ppfr_fd_rekeyed/
rekey: $(SETUP)
	$(VENV)/bin/ppfr-train rekey $(if $(KEY_FILE),--key-file $(KEY_FILE))

# Exports every trained run (runs/*/checkpoint.pt -> artifacts/<run>), parity-checks every config in
# EXPORT_CONFIGS without a run (default: the small configs, one per method; EXPORT_CONFIGS=configs for
# all, the paper ones are slow on CPU), prints payload bytes and parity per method. Without runs/$(RUN)
# (a fresh clone) it exports the shipped default pretrained/$(RUN) to artifacts/$(RUN), as `make demo` does.
# PPFR-FD's method key: the public demo key unless PPFR_METHOD_KEY is set or EXPORT_KEY says otherwise
# (EXPORT_KEY="--key-file method.key"); see docs/privacy.md, "Keys and renewable templates".
EXPORT_CONFIGS ?= $(wildcard configs/small_*.yaml)
EXPORT_KEY ?= $(if $(PPFR_METHOD_KEY),,--demo-key)
export: $(SETUP)
	@if [ ! -f runs/$(RUN)/checkpoint.pt ]; then \
	  test -f pretrained/$(RUN)/checkpoint.pt || { echo "no runs/$(RUN)/checkpoint.pt: run make train first" >&2; exit 2; }; \
	  echo "no runs/$(RUN): exporting the shipped default pretrained/$(RUN) (make train trains your own)"; \
	  $(VENV)/bin/ppfr-export --checkpoint pretrained/$(RUN)/checkpoint.pt --out artifacts/$(RUN) $(EXPORT_KEY) $(EXPORT_ARGS); \
	fi
	$(VENV)/bin/ppfr-export --all --runs runs --out artifacts --configs $(EXPORT_CONFIGS) $(EXPORT_KEY) $(EXPORT_ARGS)

serve: $(SETUP)
	$(VENV)/bin/ppfr-cloud serve --bundle artifacts/$(RUN) --db runs/$(RUN)/gallery.sqlite --port $(or $(PORT),50051)

# Trains (or reuses runs/$(RUN)), exports (or reuses artifacts/$(RUN)), serves, enrolls and verifies LFW
# faces through ppfr-edge, prints the summary and always stops the server. See docs/edge.md.
demo: $(SETUP)
	$(VENV)/bin/ppfr-demo --config $(CONFIG) --run $(RUN)

# Sealed edge (issue 27): the rgb bundle (dlib, nothing to train) on the edge, a fresh tenant key, a server
# that stores and matches only ciphertexts; same people and report as `make demo` (docs/cloud.md).
demo-sealed: $(SETUP)
	$(VENV)/bin/ppfr-demo --sealed

# BENCH_ARGS: e.g. --tiny, --methods rgb,ppfr_fd, --no-e2e (see ppfr-bench --help)
bench: $(SETUP)
	$(VENV)/bin/ppfr-bench $(BENCH_ARGS)

attack: $(SETUP)
	nice $(VENV)/bin/ppfr-attack --bundles-dir artifacts --white-box --threads 2 --out runs/attack $(ATTACK_ARGS)

# A local PostgreSQL 16 + pgvector (PyPI pgserver) for the shared gallery: prints its postgresql:// URL for
# `ppfr-cloud serve --db URL --keys FILE` (run two replicas on two ports), stops on Ctrl-C. docs/cloud.md.
postgres: $(STAMP)
	$(PY) -m ppfr.cloud.pglocal runs/postgres

# A deployment on this machine: PostgreSQL (pgserver), two replicas sharing it (gRPC + HTTP/JSON + /metrics)
# and a client spreading real-face calls over both (gRPC round_robin), then everything stops; non-zero exit on
# any failure. The same entry script (deploy/cluster.py) runs deploy/compose.yaml's containers. docs/cloud.md.
.PHONY: cluster
cluster: $(SETUP)
	$(PY) deploy/cluster.py up

# The gallery at 10k/100k/1M templates: SQLite and PostgreSQL, exact and compressed (runs/bench-gallery/gallery.{json,md,png}).
# GALLERY_ARGS: e.g. --sizes 10000,100000 --backends sqlite (see ppfr-bench gallery --help)
bench-gallery: $(STAMP)
	nice $(VENV)/bin/ppfr-bench gallery $(GALLERY_ARGS)

# INT8 recognizer of artifacts/$(RUN) (ONNX Runtime static quantization, calibrated on CelebA faces protected
# by the bundle's own front-end) -> recognizer.int8.onnx + manifest; serve it with `ppfr-cloud serve
# --precision int8`. QUANTIZE_ARGS: e.g. --evaluate --latency (LFW and batch-1 latency, fp32 vs int8).
.PHONY: quantize gpu-check gpu-check-pack
quantize: $(SETUP)
	nice $(PY) -m ppfr.export.quantize --bundle artifacts/$(RUN) $(QUANTIZE_ARGS)

# One command for a lent GPU machine (<= 8 minutes, one table, runs/gpu-check/gpu_check.json): every trained
# bundle's recognizer at batch 1..256 in PyTorch CUDA fp32/fp16/bf16, torch.compile, CUDA graphs, ONNX Runtime
# CUDA and TensorRT where importable, and training steps/s of the default recipe; CPU fallbacks elsewhere.
# It needs no ../shared and no .venv: run `make gpu-check-pack` here first and carry .gpu-check/ along.
GPU_PY := $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-pack: $(SETUP)
	$(PY) scripts/gpu_check.py pack
