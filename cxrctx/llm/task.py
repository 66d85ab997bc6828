"""An LLM task: build the request for an item, parse the answer into a pydantic model.

A task knows its prompt and its answer model and nothing about batching, caching,
retries or failure rows: `cxrctx.llm.runner.run_task` owns those, the same for every
task (lesion labeler, report aggregator, consistency judge, ...). The answer's JSON
Schema is generated from `answer_model` (`json_schema`), so the schema sent to the
constrained decoder, the published schema and the validator are one definition.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from cxrctx.llm.base import ChatRequest
from cxrctx.llm.jsonutil import extract_json

ItemT = TypeVar("ItemT")
AnswerT = TypeVar("AnswerT", bound=BaseModel)

#: how much of a bad answer goes back to the model in a repair request
REPAIR_ECHO_CHARS = 2000


class AnswerError(ValueError):
    """The model's answer is unusable; `reason` is one line, stored in the failure row."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of `model`, flattened for constrained decoders: `$ref`s inlined,
    per-field titles dropped (they cost tokens in grammar-less prompts and say nothing)."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})

    def clean(node: Any, top: bool = False) -> Any:
        if isinstance(node, list):
            return [clean(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            return clean(merged)
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "title" and not top:
                continue
            if k == "properties":
                out[k] = {name: clean(sub) for name, sub in v.items()}
            elif k in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
                out[k] = clean(v)
            else:
                out[k] = v
        return out

    return clean(raw, top=True)


def schema_sha256_of(schema: dict[str, Any]) -> str:
    """sha256 of the schema as `cxrctx schemas` writes it (indent 2, sorted keys, newline),
    so a published `schemas/*.schema.json` can be checked with sha256sum."""
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def validation_reason(err: ValidationError, limit: int = 3) -> str:
    """A pydantic error as one short line: `edema.status: Input should be ... (got 'maybe')`."""
    parts = []
    for e in err.errors()[:limit]:
        loc = ".".join(str(x) for x in e["loc"]) or "answer"
        got = "" if e["type"] in ("missing", "extra_forbidden") else f" (got {e['input']!r:.60})"
        msg = {"missing": "missing", "extra_forbidden": "not asked"}.get(e["type"], e["msg"])
        parts.append(f"{loc}: {msg}{got}")
    more = err.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_json_object(text: str, finish_reason: str = "stop") -> dict[str, Any]:
    """The first JSON object of `text`, or AnswerError saying why there is none."""
    if not text or not text.strip():
        raise AnswerError(
            "truncated (finish_reason=length) with no answer"
            if finish_reason == "length"
            else "empty answer"
        )
    try:
        obj = extract_json(text)
    except ValueError as e:
        if finish_reason == "length":
            raise AnswerError("truncated (finish_reason=length): answer JSON incomplete") from e
        raise AnswerError(f"invalid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise AnswerError("answer is not a JSON object")
    return obj


class Task(ABC, Generic[ItemT, AnswerT]):
    """One kind of LLM question. Subclasses set `name`, `answer_model`, `prompt_sha256`
    and implement `request`; `parse` and `repair` have sensible defaults.

    - `local_answer(item)`: an answer that needs no model (e.g. a report that mentions no
      lesion), or None; raise AnswerError for an item that cannot be asked at all.
    - `parse(item, text, finish_reason)`: the validated answer or AnswerError(reason).
    - `repair(item, request, text, reason)`: the one repair request (default: the bad
      answer and the reason go back to the model), or None for no repair.
    """

    name: ClassVar[str]
    answer_model: type[AnswerT]
    prompt_sha256: str

    @property
    def schema_sha256(self) -> str:
        return schema_sha256_of(json_schema(self.answer_model))

    def answer_model_for(self, item: ItemT) -> type[AnswerT]:
        """The answer model of one item (the labeler narrows it to the item's candidates)."""
        return self.answer_model

    def request_schema(self, item: ItemT) -> dict[str, Any]:
        """The JSON Schema sent with the item's request (generated from its answer model)."""
        return json_schema(self.answer_model_for(item))

    def local_answer(self, item: ItemT) -> AnswerT | None:
        return None

    @abstractmethod
    def request(self, item: ItemT) -> ChatRequest: ...

    def parse(self, item: ItemT, text: str, finish_reason: str = "stop") -> AnswerT:
        obj = parse_json_object(text, finish_reason)
        try:
            return self.answer_model_for(item).model_validate(obj)
        except ValidationError as e:
            raise AnswerError(validation_reason(e)) from e

    def repair(
        self, item: ItemT, request: ChatRequest, text: str, reason: str
    ) -> ChatRequest | None:
        note = (
            f"Your answer could not be used: {reason}. Answer again with only the JSON "
            "object that follows the required schema, nothing else."
        )
        messages = [
            *request.messages,
            {"role": "assistant", "content": text[:REPAIR_ECHO_CHARS]},
            {"role": "user", "content": note},
        ]
        return ChatRequest(messages=messages, json_schema=request.json_schema, key=request.key)

    def load_answer(self, item: ItemT, data: Any) -> AnswerT:
        """An answer stored in the cache, re-validated (a stale entry raises ValidationError)."""
        return self.answer_model_for(item).model_validate(data)

    def dump_answer(self, answer: AnswerT) -> Any:
        return answer.model_dump(mode="json", by_alias=True)
