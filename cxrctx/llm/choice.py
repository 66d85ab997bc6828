"""Score a closed set of answers by their log-probabilities (a calibrated choice).

A caller that wants one of a few answers (e.g. "positive" / "negative") builds the request
with `choice_request`: the messages, `choices`, and a JSON Schema `{"choice": enum}` as the
constrained fallback. An engine that returns log-probabilities (llama.cpp, vLLM, an
OpenAI-compatible server that supports `logprobs`) decodes one token, reads its top
log-probabilities and answers `{"choice": best, "probs": {choice: p, ...}}` (`probs`
renormalised over the choices); an engine that cannot (or a server that refuses) answers
the constrained JSON `{"choice": ...}` without `probs`, so the caller still gets a valid
answer, just no probability. The layer knows nothing about what the choices mean.

A top token counts for a choice when its text (stripped, lower-cased, leading quote
dropped) is a non-empty prefix of the choice, so choices must start differently
("positive" / "negative", "left" / "right" / "bilateral").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cxrctx.llm.base import ChatRequest
from cxrctx.llm.jsonutil import extract_json

#: top log-probabilities asked for the one scored token
TOP_LOGPROBS = 20


class ChoiceAnswer(BaseModel):
    """One choice; `probs` = the choices' probabilities when the engine scored them."""

    model_config = ConfigDict(extra="forbid")

    choice: str
    probs: dict[str, float] | None = Field(
        None, description="P(choice) renormalised over the choices; null = not scored"
    )

    def prob(self, choice: str) -> float | None:
        return None if self.probs is None else self.probs.get(choice)


def choice_schema(choices: Sequence[str]) -> dict[str, Any]:
    """The constrained fallback answer: `{"choice": one of choices}`."""
    return {
        "type": "object",
        "properties": {"choice": {"type": "string", "enum": list(choices)}},
        "required": ["choice"],
        "additionalProperties": False,
    }


def check_choices(choices: Sequence[str]) -> tuple[str, ...]:
    """Choices must be ≥ 2, distinct, and differ in their first letter (one scored token)."""
    cs = tuple(choices)
    firsts = [c.strip().lower()[:1] for c in cs]
    if len(cs) < 2 or len(set(firsts)) != len(cs) or "" in firsts:
        raise ValueError(f"choices must be ≥ 2 and start with different letters (got {cs})")
    return cs


def choice_request(
    messages: list[dict[str, str]], choices: Sequence[str], key: str = ""
) -> ChatRequest:
    """A request that asks for one of `choices` (scored where the engine can)."""
    cs = check_choices(choices)
    return ChatRequest(messages=messages, json_schema=choice_schema(cs), key=key, choices=cs)


def probs_from_top(top: Mapping[str, float], choices: Sequence[str]) -> dict[str, float] | None:
    """P(choice) from one token's top log-probabilities, renormalised over the choices;
    None when no top token starts any choice (the engine then falls back)."""
    mass = dict.fromkeys(choices, 0.0)
    for token, lp in top.items():
        t = token.strip().lower().lstrip("\"'")
        if not t:
            continue
        for c in choices:
            if c.lower().startswith(t):
                mass[c] += math.exp(lp)
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return {c: round(m / total, 6) for c, m in mass.items()}


def scored_text(probs: Mapping[str, float]) -> str:
    """The engine's answer text for a scored choice (parsed by `parse_choice`)."""
    best = max(probs, key=lambda c: probs[c])
    return json.dumps({"choice": best, "probs": dict(probs)})


def parse_choice(text: str, choices: Sequence[str]) -> ChoiceAnswer:
    """A ChoiceAnswer from an engine's text; ValueError when the choice is not one asked."""

    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise ValueError("answer is not a JSON object")
    ans = ChoiceAnswer.model_validate(obj)
    choice = ans.choice.strip().lower()
    by_lower = {c.lower(): c for c in choices}
    if choice not in by_lower:
        raise ValueError(f"choice {ans.choice!r} is not one of {', '.join(choices)}")
    if ans.probs is not None and set(ans.probs) != set(choices):
        raise ValueError("probs do not cover exactly the choices asked")
    return ChoiceAnswer(choice=by_lower[choice], probs=ans.probs)
