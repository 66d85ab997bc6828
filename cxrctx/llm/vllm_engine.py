"""GPU offline batch engine: in-process `vllm.LLM`, one `llm.chat` call per batch.

Structured output uses the current API, `SamplingParams(structured_outputs=
StructuredOutputsParams(json=schema))`, with `max_tokens` always set (vLLM defaults it to
16). Prefix caching is on, so the shared system prompt is computed once per GPU. A
request with `choices` decodes one token with `logprobs` and scores the choices
(`cxrctx.llm.choice`); when none of them is among the top tokens it is re-run constrained.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, Sampling
from cxrctx.llm.choice import TOP_LOGPROBS, probs_from_top, scored_text

INSTALL_HINT = (
    "the vllm backend needs vLLM and a CUDA GPU: pip install 'cxrctx[vllm]' on a GPU machine"
)


class VllmEngine:
    OPTIONS: tuple[str, ...] = (
        "tensor_parallel_size",
        "dtype",
        "max_model_len",
        "gpu_memory_utilization",
        "seed",
        "enable_prefix_caching",
        "trust_remote_code",
    )
    backend = "vllm"
    default_batch_size = 2048

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = 8192,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        trust_remote_code: bool = False,
    ):
        try:
            import vllm
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError as e:
            raise CxrctxError(INSTALL_HINT) from e
        if not _gpu_available():
            raise CxrctxError(f"no CUDA GPU visible; {INSTALL_HINT}")
        self.model = model
        self._vllm = vllm
        self._so_params = StructuredOutputsParams
        self.engine_args: dict[str, Any] = {
            "model": model,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            "enable_prefix_caching": enable_prefix_caching,
            "trust_remote_code": trust_remote_code,
        }
        if max_model_len:
            self.engine_args["max_model_len"] = max_model_len
        try:
            self.llm = vllm.LLM(**self.engine_args)
        except Exception as e:
            raise CxrctxError(f"vLLM could not load {model}: {e}") from e

    def sampling_params(self, req: ChatRequest, sampling: Sampling) -> Any:
        """The SamplingParams of one request (separate so tests can inspect it)."""
        kw: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        }
        if req.choices:
            kw.update(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
        elif req.json_schema is not None:
            kw["structured_outputs"] = self._so_params(json=req.json_schema)
        return self._vllm.SamplingParams(**kw)

    def _score(self, req: ChatRequest, c: Any) -> str | None:
        """The scored-choice answer from vLLM's first-token logprobs, or None (fall back)."""
        first = (getattr(c, "logprobs", None) or [None])[0] or {}
        top = {getattr(lp, "decoded_token", "") or "": float(lp.logprob) for lp in first.values()}
        probs = probs_from_top(top, req.choices or ())
        return None if probs is None else scored_text(probs)

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        if not requests:
            return []
        if any(r.choices for r in requests):
            return self._complete_choices(requests, sampling)
        return self._complete(requests, sampling)

    def _complete_choices(
        self, requests: Sequence[ChatRequest], sampling: Sampling
    ) -> list[Completion]:
        """Scored choices first; the unscored ones re-run as constrained requests."""
        out = self._complete(requests, sampling)
        redo = []
        for i, (req, c) in enumerate(zip(requests, out, strict=True)):
            if req.choices and c.finish_reason != "error":
                text = self._score(req, c.extra.pop("raw", None))
                if text is not None:
                    c.text, c.extra["scored"] = text, True
                    continue
                redo.append(i)
        if redo:
            plain = [replace(requests[i], choices=None) for i in redo]
            for i, c in zip(redo, self._complete(plain, sampling), strict=True):
                out[i] = c
        return out

    def _complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        params = [self.sampling_params(r, sampling) for r in requests]
        t0 = time.perf_counter()
        try:
            outs = self.llm.chat(
                [list(r.messages) for r in requests], sampling_params=params, use_tqdm=False
            )
        except Exception as e:
            err = f"{type(e).__name__}: {str(e)[:300]}"
            return [
                Completion(text="", finish_reason="error", error=err, error_kind="transient")
                for _ in requests
            ]
        per_req = (time.perf_counter() - t0) / len(requests)
        result = []
        for o in outs:
            c = o.outputs[0]
            result.append(
                Completion(
                    text=c.text,
                    finish_reason=c.finish_reason or "stop",
                    prompt_tokens=len(o.prompt_token_ids or []),
                    completion_tokens=len(c.token_ids or []),
                    latency_s=per_req,
                    extra={"raw": c} if any(r.choices for r in requests) else {},
                )
            )
        return result

    def close(self) -> None:
        self.llm = None


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
