# Two commands set everything up on a fresh clone:
#   make test   create .venv, install, run the whole test suite
#   make demo   create .venv, install, the shipped test bed model answers questions about fresh clips
# TORCH picks the torch build installed first (e.g. TORCH="torch==2.13.0 --index-url ..." for CUDA);
# the package is then installed with a constraints file so that build is never replaced.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= dev
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	@$(BIN)/python -c "import torch; print(f'torch=={torch.__version__}')" > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	@mkdir -p build
	$(BIN)/ppllava demo --out build/demo_relevance.png

bench: install
	$(BIN)/ppllava bench ops

clean:
	rm -rf $(VENV) build *.egg-info
