"""Any OpenAI-compatible chat endpoint (vLLM serve, llama.cpp server, hosted APIs).

Async client with bounded concurrency, per-request timeout, retries with exponential
backoff on 429 / 5xx / connection errors. Structured output is asked for with
`response_format: json_schema`; servers that reject it (llama.cpp's does) are switched,
once, to `{"type": "json_object", "schema": ...}`. The API key is read from the
environment variable named by `api_key_env` and is never logged or stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, Sampling
from cxrctx.llm.jsonutil import strip_code_fences

log = logging.getLogger(__name__)

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")


class OpenAIEngine:
    OPTIONS: tuple[str, ...] = (
        "base_url",
        "api_key_env",
        "concurrency",
        "timeout_s",
        "max_retries",
        "backoff_s",
        "response_format",
    )
    backend = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        response_format: str = "auto",
    ):
        try:
            import openai
        except ImportError as e:
            raise CxrctxError(
                "the openai backend needs the openai package: pip install openai"
            ) from e
        if response_format not in RESPONSE_FORMATS:
            raise CxrctxError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}")
        if concurrency < 1:
            raise CxrctxError("concurrency must be >= 1")
        self._openai = openai
        self.model = model
        self.base_url = base_url
        # Local servers (llama.cpp, vllm serve) accept any key; hosted APIs need the env var.
        self._api_key = os.environ.get(api_key_env) or ("sk-no-key" if base_url else None)
        if self._api_key is None:
            raise CxrctxError(
                f"environment variable {api_key_env} is not set (needed without --base-url)"
            )
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        # "auto" starts with json_schema and falls back for the rest of the run.
        self.format_mode = "json_schema" if response_format == "auto" else response_format
        self._auto = response_format == "auto"

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r})"

    def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None or self.format_mode == "none":
            return None
        if self.format_mode == "json_schema":
            return {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        return {"type": "json_object", "schema": schema}

    def _retryable(self, e: Exception) -> bool:
        o = self._openai
        if isinstance(
            e, (o.RateLimitError, o.APIConnectionError, o.APITimeoutError, o.InternalServerError)
        ):
            return True
        return isinstance(e, o.APIStatusError) and (e.status_code == 429 or e.status_code >= 500)

    def _rejects_json_schema(self, e: Exception) -> bool:
        """A server refusing `response_format: json_schema`. llama.cpp's server answers
        500 with a pydantic literal_error on body.response_format.type; others 400/422."""
        if not isinstance(e, self._openai.APIStatusError):
            return False
        msg = str(e).lower()
        return "response_format" in msg and ("json_schema" in msg or "json_object" in msg)

    async def _one(
        self, client: Any, sem: asyncio.Semaphore, req: ChatRequest, sampling: Sampling
    ) -> Completion:
        async with sem:
            t0 = time.perf_counter()
            attempt = 0
            while True:
                kwargs: dict[str, Any] = {
                    "model": self.model,
                    "messages": req.messages,
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p,
                    "max_tokens": sampling.max_tokens,
                }
                if sampling.seed is not None:
                    kwargs["seed"] = sampling.seed
                rf = self._response_format(req.json_schema)
                if rf is not None:
                    kwargs["response_format"] = rf
                try:
                    resp = await client.chat.completions.create(**kwargs)
                except Exception as e:
                    if (
                        self._auto
                        and self.format_mode == "json_schema"
                        and self._rejects_json_schema(e)
                    ):
                        log.info(
                            "server rejected response_format json_schema; using json_object + schema"
                        )
                        self.format_mode = "json_object"
                        continue
                    if self._retryable(e) and attempt < self.max_retries:
                        delay = self.backoff_s * (2**attempt) * (1 + 0.25 * random.random())
                        attempt += 1
                        await asyncio.sleep(delay)
                        continue
                    return Completion(
                        text="",
                        finish_reason="error",
                        latency_s=time.perf_counter() - t0,
                        error=f"{type(e).__name__}: {str(e)[:300]}",
                        extra={"retries": attempt},
                    )
                choice = resp.choices[0]
                usage = getattr(resp, "usage", None)
                return Completion(
                    text=strip_code_fences(choice.message.content or ""),
                    finish_reason=choice.finish_reason or "stop",
                    prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                    latency_s=time.perf_counter() - t0,
                    extra={"retries": attempt, "response_format": self.format_mode},
                )

    async def _run(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        client = self._openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, timeout=self.timeout_s, max_retries=0
        )
        sem = asyncio.Semaphore(self.concurrency)
        try:
            if self._auto and self.format_mode == "json_schema" and requests:
                # probe with the first request so a rejecting server is detected once, not N times
                first = await self._one(client, sem, requests[0], sampling)
                rest = await asyncio.gather(
                    *(self._one(client, sem, r, sampling) for r in requests[1:])
                )
                return [first, *rest]
            return list(
                await asyncio.gather(*(self._one(client, sem, r, sampling) for r in requests))
            )
        finally:
            await client.close()

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        return asyncio.run(self._run(requests, sampling))

    def close(self) -> None:
        pass
