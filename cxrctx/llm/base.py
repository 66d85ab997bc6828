"""The one small interface every LLM engine implements.

The LLM layer knows nothing about lesions: callers (labeler, report aggregator,
consistency judge) bring messages and an optional JSON Schema; engines return text.
Heavy engines (vllm, llama_cpp) are imported lazily inside their modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

#: the provenance columns every LLM-written (or LLM-stage) output row carries
PROVENANCE_COLUMNS = ("backend", "model", "prompt_sha256", "schema_sha256", "sampling")


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters recorded in every output row's provenance."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to run. `json_schema` constrains the output when the engine can."""

    messages: list[dict[str, str]]
    json_schema: dict[str, Any] | None = None
    key: str = ""  # caller's id for the request (cache key / document id)
    #: a closed answer set: engines that return log-probabilities score these
    #: (`cxrctx.llm.choice`); others answer the constrained `json_schema`
    choices: tuple[str, ...] | None = None


ErrorKind = Literal["transient", "rejected", "permanent"]


@dataclass
class Completion:
    """One engine answer. On failure `finish_reason == "error"` and `error_kind` says what
    the runner does with it: `transient` (5xx, 429, timeout, connection refused, a
    malformed body: a failure for this run, never cached, retried by a re-run),
    `rejected` (the server refused this one request, e.g. 400: a final failure row) or
    `permanent` (401/403/404: the whole run stops after the first one)."""

    text: str
    finish_reason: str = "stop"  # stop | length | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    error_kind: ErrorKind | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """`backend`, `model` (and `base_url` where there is one) enter every cache key."""

    backend: str
    model: str

    def complete(self, requests: Sequence[ChatRequest], sampling: Sampling) -> list[Completion]:
        """Run a batch; one Completion per request, same order. Never raises for one bad request."""
        ...

    def close(self) -> None: ...
