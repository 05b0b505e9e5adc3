# One command each: `make test` builds .venv from scratch (CPU torch first, so nothing pulls a CUDA build) and runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: setup test test-fast lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q $(TORCH) -e '.[test,serve]'
	# open_clip_torch is only a data oracle for the tokenizer tests; --no-deps keeps torchvision (and a CUDA torch) out.
	$(PY) -m pip install -q --no-deps open_clip_torch==3.3.0
	touch $@

setup: $(VENV)/.installed

# The whole suite: what CI runs (.ci/run).
test: setup
	$(PY) -m pytest -q

# The fast tier for the edit-and-test loop, under 2 minutes on 2 CPU cores: the suite less the tests marked `full` and
# the modules in FAST_SKIP (tests/conftest.py). It is not a substitute for `make test`.
test-fast: setup
	$(PY) -m pytest -q --fast

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV)
