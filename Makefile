# Two commands set up everything on a fresh machine (see README.md):
#   make book   build the website into _build/html
#   make test   run every test: pytest for `companion`, nbval for every chapter in _toc.yml
# Both create .venv, install PyTorch first and then the locked versions of everything else
# (requirements/lock.txt, hash-checked); `make test` also installs the offline data sets and
# models (python -m companion.resources install). `make setup` is the reader's path: the
# environment and the resources, no tests.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 is a small CPU wheel where a local one exists; elsewhere pip picks the default build.
TORCH_SPEC ?= torch==2.13.0
# Stable outputs: set iteration order and the thread count the stored outputs were made with.
export PYTHONHASHSEED := 0
export COMPANION_THREADS ?= 2
# A chapter's claims about its outputs (companion.check) fail the tests; in a reader's own
# run they only warn.
export COMPANION_CHECKS ?= strict
PYTEST_NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	--nbval-cell-timeout 600

LOCK := requirements/lock.txt
# LATEST=1 installs the newest versions pyproject.toml allows instead of the lock (make test-latest).
LATEST ?= 0
UV_SPEC ?= uv==0.13.9
# Where `make lock` finds the CPU build of torch: pip's find-links folder when one is set,
# else PyTorch's CPU index (a plain PyPI torch on Linux pulls CUDA packages into the lock).
TORCH_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--index-strategy \
	unsafe-best-match --extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: env setup resources lock book test test-latest test-companion test-book notebooks reproduce clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
ifeq ($(LATEST),1)
	$(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		-c $(VENV)/torch-constraint.txt -e ".[book,test]"
else
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
endif
	$(BIN)/python -m pip check
	touch $@

# The reader's set-up: the environment and every data set and model, no tests.
setup: resources
	@echo "Ready: open a chapter with $(BIN)/jupyter lab book/"

resources: env
	$(BIN)/python -m companion.resources install

# Refresh the lock: the newest versions pyproject.toml allows (torch as TORCH_SPEC, not
# listed: the Makefile installs it first), with the sha256 of every file. Then re-run the
# chapters whose outputs changed (make notebooks) and make test.
lock:
	test -x .venv-lock/bin/uv || ($(PYTHON) -m venv .venv-lock && \
		.venv-lock/bin/python -m pip install --quiet "$(UV_SPEC)")
	echo "$(TORCH_SPEC)" > .venv-lock/torch-constraint.txt
	.venv-lock/bin/uv pip compile pyproject.toml --extra book --extra test --generate-hashes \
		--python $(PYTHON) --no-emit-package torch -c .venv-lock/torch-constraint.txt \
		$(TORCH_SOURCE) --custom-compile-command "make lock" -o $(LOCK)

book: env
	$(BIN)/jupyter-book build --all -W -n --keep-going .
	@echo "The site is in _build/html/index.html"

test: resources
	$(BIN)/python -m pytest tests $$($(BIN)/python tools/toc.py) $(PYTEST_NBVAL) --book --durations=25

# Drift check (not part of .ci/run): the same suite in .venv-latest with the newest versions
# pyproject.toml allows, torch kept at TORCH_SPEC.
test-latest:
	rm -f .venv-latest/.installed
	$(MAKE) test VENV=.venv-latest LATEST=1

test-companion: resources
	$(BIN)/python -m pytest tests

# make test-book NB=book/attention.ipynb
test-book: resources
	$(BIN)/python -m pytest $(or $(NB),$$($(BIN)/python tools/toc.py)) $(PYTEST_NBVAL)

# Re-execute notebooks and store their outputs: make notebooks NB=book/attention.ipynb
notebooks: resources
	$(BIN)/python tools/store_outputs.py $(or $(NB),$$($(BIN)/python tools/toc.py))

# Rerun every recipe into runs/KEY (the CPU time of each is in the README's recipe table and in
# its results.json or recipe.json). The shipped copies are left alone; REPLACE_SHIPPED=1 replaces
# them (then run tools/register_checkpoints.py for the checkpoints). Override the threads with
# COMPANION_THREADS (the shipped runs record theirs).
RECIPES := book-gpt book-bert bert-standard-init bert-ablation book-gpt-choice polarity-search polarity-plain \
	polarity-full polarity-lora polarity-decoder twitter-ner oanc-pos peoples-daily-ner \
	peoples-daily-cws reviews-zh neural-lm-zh peft-compare prompt-grid instruct \
	rag codegen triples distill prune-recover adversarial continual draft
REPLACE_SHIPPED ?= 0
reproduce: resources
	set -e; for recipe in $(RECIPES); do \
		$(BIN)/python -m companion.recipes $$recipe $(if $(filter 1,$(REPLACE_SHIPPED)),--replace-shipped); \
	done

clean:
	rm -rf _build .pytest_cache

# Check the built website in a headless browser (not part of `make test`): build the site, serve
# _build/html on 127.0.0.1, load every page at 1280 px and 390 px with Chromium and fail on
# broken internal links, MathJax errors, requests leaving 127.0.0.1, horizontal overflow at
# 390 px and code cells that scroll at desktop width; screenshots and report.txt go to
# _build/site-check/. About 1.5 minutes once installed (the first run also installs Debian's
# chromium and fonts-noto-cjk, which needs root, and playwright into $(SITE_VENV): a few minutes).
SITE_VENV ?= .venv-site
PLAYWRIGHT_SPEC ?= playwright==1.65.2
CHROMIUM ?= /usr/bin/chromium

.PHONY: site-check
site-check:
	test -x $(BIN)/jupyter-book || $(MAKE) env
	(test -x $(CHROMIUM) && fc-list 2>/dev/null | grep -q "Noto Sans CJK") || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-noto-cjk)
	test -x $(SITE_VENV)/bin/python || $(PYTHON) -m venv $(SITE_VENV)
	$(SITE_VENV)/bin/python -c "import playwright" 2>/dev/null || \
		$(SITE_VENV)/bin/python -m pip install --quiet "$(PLAYWRIGHT_SPEC)"
	$(SITE_VENV)/bin/python tools/site_check.py --jupyter-book $(BIN)/jupyter-book --chromium $(CHROMIUM)
