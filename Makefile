# Two commands set up everything on a fresh machine (see README.md):
#   make book   build the website into _build/html
#   make test   run every test: pytest for `companion`, nbval for every chapter in _toc.yml
# Both create .venv, install PyTorch first and then the rest; `make test` also installs the
# offline data sets and models (python -m companion.resources install).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 is a small CPU wheel where a local one exists; elsewhere pip picks the default build.
TORCH_SPEC ?= torch==2.13.0
# Stable outputs: set iteration order and the thread count the stored outputs were made with.
export PYTHONHASHSEED := 0
export COMPANION_THREADS ?= 2
PYTEST_NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	--nbval-cell-timeout 600

.PHONY: env resources book test test-companion test-book notebooks clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	touch $@

resources: env
	$(BIN)/python -m companion.resources install

book: env
	$(BIN)/jupyter-book build --all -W -n --keep-going .
	@echo "The site is in _build/html/index.html"

test: resources
	$(BIN)/python -m pytest tests $$($(BIN)/python tools/toc.py) $(PYTEST_NBVAL) --book

test-companion: resources
	$(BIN)/python -m pytest tests

# make test-book NB=book/attention.ipynb
test-book: resources
	$(BIN)/python -m pytest $(or $(NB),$$($(BIN)/python tools/toc.py)) $(PYTEST_NBVAL)

# Re-execute notebooks and store their outputs: make notebooks NB=book/attention.ipynb
notebooks: resources
	$(BIN)/python tools/store_outputs.py $(or $(NB),$$($(BIN)/python tools/toc.py))

clean:
	rm -rf _build .pytest_cache
