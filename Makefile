# Two commands set everything up on a fresh clone:
#   make test   create .venv, install, run the whole test suite
#   make demo   create .venv, install, the shipped test bed model answers questions about fresh clips
# TORCH picks the torch build installed first (e.g. TORCH="torch==2.13.0 --index-url ..." for CUDA);
# the package is then installed with a constraints file so that build is never replaced.
# With the dev extra, open_clip_torch is added with --no-deps (no torchvision, which breaks transformers' imports
# on CPU-only machines): tests/test_align.py compares align's losses with its open_clip/loss.py, loaded on its own.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(EXTRAS)
OPEN_CLIP ?= open_clip_torch==3.3.0
OPEN_CLIP_STAMP := $(VENV)/.installed-$(subst ==,-,$(OPEN_CLIP))
comma := ,

.PHONY: install test demo tiny bench gpu-check gpu-check-dry clean

install: $(STAMP) $(if $(filter dev,$(subst $(comma), ,$(EXTRAS))),$(OPEN_CLIP_STAMP))

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	@$(BIN)/python -c "import torch; print(f'torch=={torch.__version__}')" > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

# `pip check` then reports open_clip_torch's requirements (torchvision, timm, ftfy) missing: on purpose
$(OPEN_CLIP_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -c $(VENV)/constraints.txt "$(OPEN_CLIP)"
	@touch $@

test: install
	$(BIN)/python -m pytest -q

# the tiny recipe end to end: a tiny random model and synthetic clips (build/tiny), then training (build/tiny/run)
tiny: install
	$(BIN)/ppllava testbed tiny --out build/tiny
	$(BIN)/ppllava train --config configs/train/tiny.yaml

demo: install
	@mkdir -p build
	$(BIN)/ppllava demo --out build/demo_relevance.png

bench: install
	$(BIN)/ppllava bench ops

# on a machine with one NVIDIA GPU (TORCH= a CUDA build): Triton kernel tests, parity against the CPU golden, bench ops
# and bench e2e at 7B shape, within 8 minutes, one JSON report; gpu-check-dry starts every step and skips the GPU ones
gpu-check: install
	$(BIN)/ppllava gpu-check --out build/gpu-check.json

gpu-check-dry: install
	$(BIN)/ppllava gpu-check --dry-run --out build/gpu-check-dry.json

clean:
	rm -rf $(VENV) build *.egg-info
