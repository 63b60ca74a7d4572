# Two commands set everything up on a fresh clone:
#   make test   create .venv, install, run the whole test suite
#   make demo   create .venv, install, the shipped test bed model answers questions about fresh clips
# make test also runs test-av (the readers' tests on the lowest and highest PyAV allowed) and test-lmms
# (lmms-eval's entry point, in its own environment build/lmms, created once by `make lmms`).
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

# lmms-eval lives in its own environment (LMMS_VENV), installed as README "lmms-eval" says: torch first, then
# ".[lmms]" with the constraints file, then torchvision removed where it does not load (a CPU-only torch).
# tests/test_lmms_eval.py runs lmms-eval's own entry point there (make test-lmms; make test runs it).
LMMS_VENV  ?= build/lmms
LMMS_STAMP := $(LMMS_VENV)/.installed

# The readers' tests on the lowest and the highest PyAV that setup.py allows (av>=12,<19: change both together).
# Each version is pip-installed alone under build/av-VERSION and put first on PYTHONPATH of .venv's python.
AV_VERSIONS ?= 12.0.0 18.1.0

.PHONY: install test test-av test-lmms lmms demo tiny bench gpu-check gpu-check-dry npu-check npu-check-dry clean

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

test: install $(LMMS_STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-av test-lmms

build/av-%/.installed:
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --target build/av-$* "av==$*"
	@touch $@

test-av: install $(foreach v,$(AV_VERSIONS),build/av-$(v)/.installed)
	@for v in $(AV_VERSIONS); do \
	  echo "tests/test_readers.py with PyAV $$v"; \
	  PYTHONPATH=build/av-$$v $(BIN)/python -c "import av, sys; sys.exit(av.__version__ != '$$v' and f'PyAV {av.__version__} loaded, not $$v')" && \
	  PYTHONPATH=build/av-$$v $(BIN)/python -m pytest -q tests/test_readers.py || exit 1; \
	done

lmms: $(LMMS_STAMP)

$(LMMS_STAMP): setup.py
	@test -x $(LMMS_VENV)/bin/python || $(PYTHON) -m venv $(LMMS_VENV)
	@$(LMMS_VENV)/bin/python -c "import torch" 2>/dev/null || $(LMMS_VENV)/bin/pip install --quiet --disable-pip-version-check $(TORCH)
	@$(LMMS_VENV)/bin/python -c "import torch; print(f'torch=={torch.__version__}')" > $(LMMS_VENV)/constraints.txt
	$(LMMS_VENV)/bin/pip install --quiet --disable-pip-version-check -c $(LMMS_VENV)/constraints.txt -e ".[lmms]" "pytest>=8"
	@$(LMMS_VENV)/bin/python -c "import torchvision" >/dev/null 2>&1 || $(LMMS_VENV)/bin/pip uninstall --quiet -y torchvision
	@touch $@

# lmms-eval's entry point on a local task, checked against `ppllava infer` (tests/test_lmms_eval.py)
test-lmms: $(LMMS_STAMP)
	PPLLAVA_REQUIRE_LMMS=1 $(LMMS_VENV)/bin/python -m pytest -q tests/test_lmms_eval.py

# the tiny recipe end to end: a tiny random model and synthetic clips (build/tiny), then training (build/tiny/run)
tiny: install
	$(BIN)/ppllava testbed tiny --out build/tiny
	$(BIN)/ppllava train --config configs/train/tiny.yaml

demo: install
	@mkdir -p build
	$(BIN)/ppllava demo --out build/demo_relevance.png

bench: install
	$(BIN)/ppllava bench ops

# on a machine with one NVIDIA GPU (TORCH= a CUDA build): Triton kernel tests, both ops' parity against a CPU record
# made first, the test bed's against the committed CPU golden, bench ops and bench e2e at 7B shape, within 8 minutes,
# one JSON report; gpu-check-dry starts every step and skips the GPU ones
gpu-check: install
	$(BIN)/ppllava gpu-check --out build/gpu-check.json

gpu-check-dry: install
	$(BIN)/ppllava gpu-check --dry-run --out build/gpu-check-dry.json

# the same on one Ascend NPU, without the Triton tests (TORCH= the torch matching torch-npu, EXTRAS=dev,npu, CANN's
# set_env.sh sourced: README "Ascend NPU"); npu-check-dry starts every step and skips the NPU ones
npu-check: install
	$(BIN)/ppllava npu-check --out build/npu-check.json

npu-check-dry: install
	$(BIN)/ppllava npu-check --dry-run --out build/npu-check-dry.json

clean:
	rm -rf $(VENV) build *.egg-info
