"""LLM engines behind one interface, and the task layer on top of them.

- `get_engine("llamacpp" | "openai" | "vllm" | "fake", model, **options)` builds an
  engine (`Engine.complete(requests, sampling)`); the heavy library of each backend is
  imported only when that backend is chosen, and a missing library or GPU raises
  `CxrctxError` at once with the install hint. `fake` is for tests and the Python API.
- `EngineSpec` + `make_engine` (`cxrctx.llm.spec`): what the shared CLI options describe.
- `Task` (`cxrctx.llm.task`) + `run_task` (`cxrctx.llm.runner`): one kind of question and
  the one runner (batching, de-duplication, cache, repair, failure rows, progress).
"""

from __future__ import annotations

from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, Engine, Sampling
from cxrctx.llm.fake import FakeEngine
from cxrctx.llm.jsonutil import extract_json, strip_code_fences

BACKENDS: tuple[str, ...] = ("llamacpp", "openai", "vllm", "fake")

__all__ = [
    "BACKENDS",
    "ChatRequest",
    "Completion",
    "Engine",
    "Sampling",
    "extract_json",
    "get_engine",
    "strip_code_fences",
]


def get_engine(backend: str, model: str, **options: Any) -> Engine:
    """Build the engine for `backend`.

    Options per backend (unknown ones raise CxrctxError):
    - llamacpp: n_ctx, n_threads, n_batch, seed, n_gpu_layers, chat_format, verbose
    - openai: base_url, api_key_env, concurrency, timeout_s, max_retries, backoff_s,
      response_format ("auto" | "json_schema" | "json_object" | "none")
    - vllm: any field of the installed vLLM's `EngineArgs` (tensor_parallel_size, dtype,
      max_model_len, gpu_memory_utilization on a GPU, enforce_eager, ...) and
      kv_cache_space_gib on vLLM's CPU build
    - fake: responder (callable ChatRequest -> str | Completion), latency_s
    """
    options = {k: v for k, v in options.items() if v is not None}
    if backend == "llamacpp":
        from cxrctx.llm.llamacpp import LlamaCppEngine

        return LlamaCppEngine(model, **_check(backend, options, LlamaCppEngine.OPTIONS))
    if backend == "openai":
        from cxrctx.llm.openai_compat import OpenAIEngine

        return OpenAIEngine(model, **_check(backend, options, OpenAIEngine.OPTIONS))
    if backend == "vllm":
        from cxrctx.llm.vllm_engine import VllmEngine

        return VllmEngine(model, **options)  # checked against the installed vLLM's EngineArgs
    if backend == "fake":
        return FakeEngine(model, **_check(backend, options, FakeEngine.OPTIONS))
    raise CxrctxError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _check(backend: str, options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise CxrctxError(
            f"backend {backend!r} does not take option(s) {', '.join(bad)}; it takes {', '.join(allowed)}"
        )
    return options
