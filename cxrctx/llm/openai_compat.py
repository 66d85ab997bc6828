"""Any OpenAI-compatible chat endpoint (vLLM serve, llama.cpp server, an approved cloud route).

Async client with bounded concurrency and a per-request timeout. Errors are sorted by
what a re-run can do about them (`Completion.error_kind`):

- transient (429, 5xx, timeout, connection refused): retried here with exponential
  backoff, waiting at least the server's `Retry-After`; still failing = a failure of this
  run that is not cached;
- rejected (400, 413, 422): this one request is refused, a final failure row;
- permanent (401, 403, 404): the key, the model or the URL is wrong; no retry, and every
  request after the first such answer is not sent (the runner stops the run);
- a malformed HTTP 200 (no choices, no message, a text body, a JSON array, list content)
  is a transient failure row, never a traceback.

The first request an engine sends goes alone: a refusing server costs one request, and
a server that rejects `response_format: json_schema` (llama.cpp's does) is detected once
and switched to `{"type": "json_object", "schema": ...}` for the rest of the run. The API
key is read from the environment variable named by `api_key_env`; it is never logged
and `secrets()` lets the runner scrub it from everything written.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from cxrctx.errors import CxrctxError
from cxrctx.llm.base import ChatRequest, Completion, ErrorKind, Sampling
from cxrctx.llm.jsonutil import strip_code_fences
from cxrctx.llm.spec import check_api_key_env, check_route

log = logging.getLogger(__name__)

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
PERMANENT_STATUS = (401, 403, 404)
MAX_RETRY_AFTER_S = 120.0
LOCAL_NO_KEY = "sk-no-key"


def _retry_after(e: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), if any."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return float(ra)
    except ValueError:
        pass
    try:  # an HTTP date
        return max(0.0, email.utils.parsedate_to_datetime(ra).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def completion_from(resp: Any, t0: float, extra: dict[str, Any]) -> Completion:
    """A Completion from a response object, or a transient error for a malformed body."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        what = type(resp).__name__ if choices is None else "no choices"
        return _error(f"malformed response from the server: {what}", "transient", t0)
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None) if message is not None else None
    if message is None or not (content is None or isinstance(content, str)):
        what = "no message" if message is None else f"content is a {type(content).__name__}"
        return _error(f"malformed response from the server: {what}", "transient", t0)
    usage = getattr(resp, "usage", None)
    return Completion(
        text=strip_code_fences(content or ""),
        finish_reason=str(getattr(choices[0], "finish_reason", None) or "stop"),
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        latency_s=time.perf_counter() - t0,
        extra=extra,
    )


def _error(msg: str, kind: ErrorKind, t0: float, retries: int = 0) -> Completion:
    return Completion(
        text="", finish_reason="error", latency_s=time.perf_counter() - t0, error=msg,
        error_kind=kind, extra={"retries": retries},
    )  # fmt: skip


class OpenAIEngine:
    OPTIONS: tuple[str, ...] = (
        "base_url", "api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s",
        "response_format", "allow_public_api",
    )  # fmt: skip
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
        allow_public_api: bool = False,
    ):
        try:
            import openai
        except ImportError as e:
            raise CxrctxError(
                "the openai backend needs the openai package: pip install openai"
            ) from e
        if not base_url:
            raise CxrctxError(
                "the openai backend needs an explicit base_url (--base-url); it never defaults to a public API"
            )
        check_route(base_url, allow_public_api)
        check_api_key_env(api_key_env)
        if response_format not in RESPONSE_FORMATS:
            raise CxrctxError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}")
        if concurrency < 1:
            raise CxrctxError("concurrency must be >= 1")
        self._openai = openai
        self.model = model
        self.base_url = base_url
        # local servers (llama.cpp, vllm serve) accept any key
        self._api_key = os.environ.get(api_key_env) or LOCAL_NO_KEY
        self.concurrency = concurrency
        self.default_batch_size = max(64, 32 * concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        # "auto" starts with json_schema and falls back for the rest of the run
        self.format_mode = "json_schema" if response_format == "auto" else response_format
        self._auto = response_format == "auto"
        self._probed = False
        self._refused: str | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIEngine(model={self.model!r}, base_url={self.base_url!r})"

    def secrets(self) -> list[str]:
        """Strings to scrub from everything written (the API key)."""
        return [self._api_key] if self._api_key != LOCAL_NO_KEY and len(self._api_key) >= 6 else []

    def _scrub(self, text: str) -> str:
        for s in self.secrets():
            text = text.replace(s, "[REDACTED]")
        return text

    def _response_format(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None or self.format_mode == "none":
            return None
        if self.format_mode == "json_schema":
            return {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        return {"type": "json_object", "schema": schema}

    def _kind(self, e: Exception) -> ErrorKind:
        o = self._openai
        if isinstance(e, o.APIStatusError):
            code = e.status_code
            if code in PERMANENT_STATUS:
                return "permanent"
            return "transient" if code == 429 or code >= 500 or code == 408 else "rejected"
        return "transient"  # connection refused, timeout, malformed body

    def _rejects_json_schema(self, e: Exception) -> bool:
        """A server refusing `response_format: json_schema`. llama.cpp's server answers
        500 with a pydantic literal_error on body.response_format.type; others 400/422."""
        if not isinstance(e, self._openai.APIStatusError):
            return False
        msg = str(e).lower()
        return "response_format" in msg and ("json_schema" in msg or "json_object" in msg)

    def _kwargs(self, req: ChatRequest, sampling: Sampling) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": req.messages, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
        }  # fmt: skip
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        rf = self._response_format(req.json_schema)
        if rf is not None:
            kwargs["response_format"] = rf
        return kwargs

    async def _one(
        self, client: Any, sem: asyncio.Semaphore, req: ChatRequest, sampling: Sampling
    ) -> Completion:
        async with sem:
            t0 = time.perf_counter()
            attempt = 0
            while True:
                if self._refused is not None:
                    return _error(f"not sent: {self._refused}", "permanent", t0)
                try:
                    resp = await client.chat.completions.create(**self._kwargs(req, sampling))
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
                    kind = self._kind(e)
                    msg = self._scrub(f"{type(e).__name__}: {str(e)[:300]}")
                    if kind == "transient" and attempt < self.max_retries:
                        delay = self.backoff_s * (2**attempt) * (1 + 0.25 * random.random())
                        wait = _retry_after(e)
                        if wait is not None:
                            delay = max(delay, min(wait, MAX_RETRY_AFTER_S))
                        attempt += 1
                        await asyncio.sleep(delay)
                        continue
                    if kind == "permanent":
                        self._refused = msg
                    return _error(msg, kind, t0, attempt)
                extra = {"retries": attempt, "response_format": self.format_mode}
                return completion_from(resp, t0, extra)

    async def _run(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        client = self._openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key, timeout=self.timeout_s, max_retries=0
        )
        sem = asyncio.Semaphore(self.concurrency)
        try:
            head: list[Completion] = []
            rest = list(requests)
            if not self._probed and rest:
                # the engine's first request goes alone: a refusing server costs one request
                head = [await self._one(client, sem, rest.pop(0), sampling)]
                self._probed = head[0].finish_reason != "error" or head[0].error_kind == "permanent"
            tail = await asyncio.gather(*(self._one(client, sem, r, sampling) for r in rest))
            return [*head, *tail]
        finally:
            await client.close()

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        return asyncio.run(self._run(requests, sampling))

    def close(self) -> None:
        pass
