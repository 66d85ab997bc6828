"""A deterministic in-process engine for tests and dry plumbing runs.

`responder(request) -> str | Completion` decides each answer, so tests can script
truncations, invalid JSON and slow calls without a model. `calls` counts requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from cxrctx.llm.base import ChatRequest, Completion, Sampling

Responder = Callable[[ChatRequest], "str | Completion"]


def minimal_instance(schema: dict[str, Any]) -> Any:
    """The simplest value valid under `schema` (first enum value, required keys only)."""
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    if t == "object":
        props = schema.get("properties", {})
        return {k: minimal_instance(props.get(k, {})) for k in schema.get("required", [])}
    if t == "array":
        return []
    if t in ("number", "integer"):
        return 0
    if t == "boolean":
        return False
    if t == "null":
        return None
    return "fake"


def _schema_answer(req: ChatRequest) -> str:
    """Default: a minimal schema-valid JSON answer (or "ok" for free-text requests)."""
    if req.json_schema is None:
        return "ok"
    return json.dumps(minimal_instance(req.json_schema))


class FakeEngine:
    OPTIONS: tuple[str, ...] = ("responder", "latency_s")
    backend = "fake"
    default_batch_size = 64

    def __init__(
        self, model: str = "fake", responder: Responder | None = None, latency_s: float = 0.0
    ):
        self.model = model
        self.responder = responder or _schema_answer
        self.latency_s = latency_s
        self.calls = 0
        self.batches: list[int] = []

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        self.batches.append(len(requests))
        out = []
        for req in requests:
            self.calls += 1
            t0 = time.perf_counter()
            if self.latency_s:
                time.sleep(self.latency_s)
            r = self.responder(req)
            if isinstance(r, Completion):
                out.append(r)
                continue
            n_prompt = sum(len(m["content"].split()) for m in req.messages)
            out.append(
                Completion(
                    text=r,
                    finish_reason="stop",
                    prompt_tokens=n_prompt,
                    completion_tokens=len(r.split()),
                    latency_s=time.perf_counter() - t0,
                )
            )
        return out

    def close(self) -> None:
        pass
