"""Embedded CPU engine: llama.cpp through llama-cpp-python, JSON constrained by a grammar.

The grammar is compiled from the request's JSON Schema (cached per schema). Grammar
sampling over a 150k-token vocabulary roughly halves decoding speed on a CPU, so the
default `grammar="fallback"` first decodes freely and keeps the answer only when it
parses and conforms to the schema; otherwise the same request is re-run under the
grammar, so every answer is still schema-valid. `grammar="always"` constrains every
request, `"never"` none. A request with `choices` decodes one token and scores the
choices by its top log-probabilities (`cxrctx.llm.choice`), else falls back to the
constrained choice. Requests run one after another in-process;
llama.cpp reuses the KV cache of the longest common prompt prefix, so a fixed system
prompt is evaluated once, not once per document.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, Sampling
from cxrctx.llm.choice import TOP_LOGPROBS, probs_from_top, scored_text
from cxrctx.llm.jsonutil import extract_json, schema_errors, strip_code_fences

log = logging.getLogger(__name__)


def free_threads() -> tuple[int, str]:
    """Threads to use when the user gave none: the CPUs this process may run on minus the
    current load (1-minute average), at least 1. llama.cpp's threads spin-wait for each
    other, so oversubscribing a busy CPU is far slower than using fewer threads."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    n = max(1, min(cpus, int(cpus - load)))
    why = f"{cpus} CPU(s) available, 1-min load {load:.1f}"
    return n, why + ("; the machine is loaded: 1 thread" if n == 1 and cpus > 1 else "")


class LlamaCppEngine:
    OPTIONS: tuple[str, ...] = (
        "n_ctx",
        "n_threads",
        "n_batch",
        "seed",
        "n_gpu_layers",
        "chat_format",
        "verbose",
        "grammar",
    )
    backend = "llamacpp"
    default_batch_size = 8

    def __init__(
        self,
        model: str,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        n_gpu_layers: int = 0,
        chat_format: str | None = None,
        verbose: bool = False,
        grammar: str = "fallback",
    ):
        if grammar not in ("fallback", "always", "never"):
            raise CxrctxError(f"grammar must be fallback, always or never (got {grammar!r})")
        self.grammar_mode = grammar
        try:
            import llama_cpp
        except ImportError as e:
            raise CxrctxError(
                "the llamacpp backend needs llama-cpp-python: pip install 'cxrctx[llamacpp]'"
            ) from e
        path = Path(model)
        if not path.is_file():
            raise CxrctxError(
                f"{model}: GGUF model file not found (the llamacpp backend takes a .gguf path)"
            )
        self.model = str(path)
        self._llama_cpp = llama_cpp
        if n_threads is None:
            n_threads, why = free_threads()
            log.info("llamacpp: %d thread(s) (%s; --threads overrides)", n_threads, why)
        else:
            log.info("llamacpp: %d thread(s) (--threads)", n_threads)
        self.n_threads = n_threads
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_batch=n_batch,
                seed=seed,
                n_gpu_layers=n_gpu_layers,
                chat_format=chat_format,
                verbose=verbose,
            )
        except Exception as e:  # llama.cpp raises ValueError for unreadable models
            raise CxrctxError(f"{model}: llama.cpp could not load the model: {e}") from e
        self._grammars: dict[str, Any] = {}

    def _grammar(self, schema: dict[str, Any]) -> Any:
        # property order matters (reasoning before answers): never sort keys here
        key = json.dumps(schema)
        g = self._grammars.get(key)
        if g is None:
            g = self._llama_cpp.LlamaGrammar.from_json_schema(key, verbose=False)
            self._grammars[key] = g
        return g

    def _call(self, req: ChatRequest, sampling: Sampling, constrained: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "messages": req.messages,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        if constrained and req.json_schema is not None:
            kwargs["grammar"] = self._grammar(req.json_schema)
        elif req.json_schema is not None:
            kwargs["stop"] = ["\n```"]  # end of a fenced answer: do not pay for chatter after it
        return dict(self.llm.create_chat_completion(**kwargs))  # type: ignore[arg-type]

    def _scored(self, req: ChatRequest, sampling: Sampling, t0: float) -> Completion | None:
        """The choices of `req` scored from the first answer token's log-probabilities, or
        None (no choice among the top tokens: the caller falls back to the constrained
        answer). The logits are read by a logits processor during one greedy token, so the
        model needs no `logits_all` (which would hold n_ctx x vocabulary floats)."""
        import numpy as np

        assert req.choices
        grabbed: list[Any] = []

        def grab(_ids: Any, logits: Any) -> Any:
            if not grabbed:
                grabbed.append(np.array(logits, dtype=np.float64, copy=True))
            return logits

        resp = self.llm.create_chat_completion(
            messages=req.messages,  # type: ignore[arg-type]
            temperature=0.0,
            max_tokens=1,
            logits_processor=self._llama_cpp.LogitsProcessorList([grab]),
        )
        if not grabbed:
            return None
        z = grabbed[0]
        logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        top_ids = np.argpartition(-logp, TOP_LOGPROBS)[:TOP_LOGPROBS]
        top: dict[str, float] = {}
        for i in top_ids:
            tok = self.llm.detokenize([int(i)]).decode("utf-8", errors="ignore")
            top[tok] = float(np.logaddexp(top.get(tok, -np.inf), logp[i]))
        probs = probs_from_top(top, req.choices)
        if probs is None:
            return None
        usage = dict(resp.get("usage") or {})  # type: ignore[call-overload,union-attr]
        return Completion(
            text=scored_text(probs),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 1)),
            latency_s=time.perf_counter() - t0,
            extra={"scored": True},
        )

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        out: list[Completion] = []
        for req in requests:
            t0 = time.perf_counter()
            try:
                if req.choices:
                    scored = self._scored(req, sampling, t0)
                    if scored is not None:
                        out.append(scored)
                        continue
                constrained = self.grammar_mode == "always"
                resp = self._call(req, sampling, constrained)
                text = strip_code_fences(resp["choices"][0]["message"].get("content") or "")
                usage = dict(resp.get("usage") or {})
                if (
                    req.json_schema is not None
                    and self.grammar_mode == "fallback"
                    and not _conforms(text, req.json_schema)
                ):
                    first = usage
                    resp = self._call(req, sampling, True)
                    constrained = True
                    text = resp["choices"][0]["message"].get("content") or ""
                    usage = dict(resp.get("usage") or {})
                    for k in ("prompt_tokens", "completion_tokens"):
                        usage[k] = int(usage.get(k, 0)) + int(first.get(k, 0))
                choice = resp["choices"][0]
                out.append(
                    Completion(
                        text=text,
                        finish_reason=choice.get("finish_reason") or "stop",
                        prompt_tokens=int(usage.get("prompt_tokens", 0)),
                        completion_tokens=int(usage.get("completion_tokens", 0)),
                        latency_s=time.perf_counter() - t0,
                        extra={"grammar": constrained},
                    )
                )
            except Exception as e:  # one bad request must not sink the batch
                out.append(
                    Completion(
                        text="",
                        finish_reason="error",
                        latency_s=time.perf_counter() - t0,
                        error=f"{type(e).__name__}: {e}",
                        error_kind="rejected",  # e.g. a prompt longer than the context
                    )
                )
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.close()
            except Exception:
                pass
            self.llm = None  # type: ignore[assignment]


def _conforms(text: str, schema: dict[str, Any]) -> bool:
    try:
        return not schema_errors(extract_json(text), schema)
    except ValueError:
        return False
