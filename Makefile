# Two entry points for a fresh machine (README): `make run` and `make test`.
# Both create/update .venv and install everything (ffmpeg included) first; a second call skips the
# installs in seconds because each install step is a stamp file rebuilt only when its inputs change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1
# dvc stages call `python -m components...`: the venv's python must come first on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install ffmpeg run test test-fast bench bench-official ui clean-cache help image e2e proof

help:
	@echo "make run    - dvc repro on the embedded sample data (installs first)"
	@echo "make test   - lint + format check + the full test suite (installs first)"
	@echo "make test-fast - the unit tests only (not the slow end-to-end ones): under 2 minutes on 2 cores"
	@echo "make bench  - the benchmarks (prints ratios against their baselines)"
	@echo "make bench-official XKD_OFFICIAL=/path/to/XKD - ours vs the official code, side by side (no path: how to get it)"
	@echo "make proof  - does XKD learn? 3 seeds x {XKD, MAE-only, no alignment, mismatched pairs} on AV-Digits + controls"
	@echo "make ui     - MLflow UI on http://127.0.0.1:5000 over the project's store (runs, registry); first the link to the runs"
	@echo "make image - build the project image (docker or podman; base pinned by digest; prints its size)"
	@echo "make e2e   - build the image, then run the KFP DAG and a 2-node TrainJob command in containers"

install: ffmpeg $(STAMP)

# ffmpeg/ffprobe: taken from PATH when present, else Debian's package (root) - the binaries ffmpeg-python drives.
ffmpeg:
	@if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing ffmpeg (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	else echo "error: ffmpeg/ffprobe not on PATH and cannot apt-get install them (not root); install FFmpeg and retry" >&2; exit 1; fi

# Pinned install: pyproject.toml pins the direct dependencies, requirements.lock every transitive runtime one
# (what the image installs), requirements-test.lock the test tools on top.
$(STAMP): pyproject.toml requirements.lock requirements-test.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -c requirements-test.lock -e '.[test]'
	@touch $(STAMP)

run: install
	$(BIN)/dvc repro

test: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The edit-test loop: modules marked `pytestmark = pytest.mark.slow` (real extraction of many files, pretraining
# runs, the kfp local run, dvc runs) are left to `make test`.
test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

bench: install
	$(BIN)/python -m benchmarks.extraction
	$(BIN)/python -m benchmarks.spectrograms
	$(BIN)/python -m benchmarks.photometric

# Side by side with an official checkout on disk (never fetched here; CC-BY-NC, never vendored): XKD_OFFICIAL=path
bench-official: install
	XKD_OFFICIAL="$(XKD_OFFICIAL)" $(BIN)/python -m benchmarks.official

# Issue 13's proof of learning on the AV-Digits corpus (configs/avdigits.yaml; pipelines/proof.py):
# outputs/proof/{proof.md,learning_curves.png,summary.json}. PROOF_ARGS e.g. "--seeds 0 --steps 300".
proof: install
	$(BIN)/python -m pipelines.proof $(PROOF_ARGS)

# Register a local dataset copy: check it against data/splits, dvc add it, push to the DVC remote.
# make data DATASET=ucf101 SRC=/path/to/UCF-101 [REMOTE=/path/or/url] [SPLIT=1]
.PHONY: data
data: install
	@test -n "$(DATASET)" -a -n "$(SRC)" || { echo "usage: make data DATASET=<name> SRC=<folder> [REMOTE=...]" >&2; exit 2; }
	$(BIN)/python -m components.register_data --dataset "$(DATASET)" --src "$(SRC)" \
	  $(if $(REMOTE),--remote "$(REMOTE)") $(if $(SPLIT),--split $(SPLIT))

# Browse runs, nested evaluations and the model registry. Loopback only: the store holds no auth.
# First the experiment's address in the model-training view (MLflow 3 opens experiments in its GenAI view).
UI_STORE = $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}
ui: install
	@$(BIN)/python -m xkd.tracking.ui_url --backend-store-uri "$(UI_STORE)" --host 127.0.0.1 --port 5000
	$(BIN)/mlflow ui --backend-store-uri "$(UI_STORE)" --host 127.0.0.1 --port 5000

# The project image (container/build_image.sh: IMAGE, BASE_IMAGE=NAME@sha256:..., BASE_TAG, ENGINE).
image:
	container/build_image.sh

# In containers, on the image just built: the KFP DAG through kfp.local.DockerRunner (compared with dvc repro)
# and the TrainJob's command as two nodes on one network, on a root-owned then a group-writable volume.
e2e: install image
	$(BIN)/python tests/e2e/containers.py

clean-cache:
	rm -rf data/cache outputs
