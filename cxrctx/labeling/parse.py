"""Turn one model answer into validated lesion judgements, or say precisely what is wrong.

Lenient where the meaning is unambiguous (code fences, text around the JSON, case and
underscores in names and enums, one wrapping object, over-long reasoning), strict where
guessing would invent labels: unknown lesions, lesions that were not asked (never taken
as positives), wrong enum values, missing candidates, duplicates. Those raise
AnswerError, which the runner turns into one repair request and then a failure row.
Entries are validated by the pydantic answer model (`LabelAnswer`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from cxrctx.labeling.models import LabelAnswer
from cxrctx.llm.task import AnswerError, parse_json_object, validation_reason
from cxrctx.vocab import LESIONS


def _norm(s: object) -> str:
    return " ".join(str(s).strip().lower().replace("_", " ").split())


def _canonical_keys(obj: dict[str, Any]) -> dict[str, Any]:
    """Lesion names in canonical spelling; one wrapping level ({"lesions": {...}}) removed."""
    if len(obj) == 1:
        ((k, inner),) = obj.items()
        if (
            _norm(k) not in LESIONS
            and isinstance(inner, dict)
            and inner
            and all(isinstance(v, dict) for v in inner.values())
        ):
            obj = inner
    out: dict[str, Any] = {}
    for key, entry in obj.items():
        name = _norm(key)
        if name in out:
            raise AnswerError(f"duplicate lesion {name!r}")
        out[name] = entry
    unknown = [k for k in out if k not in LESIONS]
    if unknown:
        raise AnswerError(f"unknown lesion(s): {', '.join(map(repr, unknown))}")
    return out


def validate_lesion_answer(obj: Any, candidates: tuple[str, ...] | list[str]) -> LabelAnswer:
    """Validate a decoded answer against the candidates' model (exactly those lesions)."""
    if not isinstance(obj, dict):
        raise AnswerError("answer is not a JSON object")
    data = _canonical_keys(obj)
    not_asked = [k for k in data if k not in candidates]
    if not_asked:
        raise AnswerError(
            f"answered lesion(s) that were not asked: {', '.join(not_asked)} "
            f"(asked: {', '.join(candidates) or 'none'})"
        )
    try:
        answer = LabelAnswer.model_validate(data)
    except ValidationError as e:
        raise AnswerError(validation_reason(e)) from e
    missing = [c for c in candidates if c not in answer.root]
    if missing:
        raise AnswerError(f"missing candidate lesion(s): {', '.join(missing)}")
    return answer


def parse_lesion_answer(
    text: str, candidates: tuple[str, ...] | list[str], finish_reason: str = "stop"
) -> LabelAnswer:
    """The validated answer in `text`, or AnswerError(reason)."""
    return validate_lesion_answer(parse_json_object(text, finish_reason), candidates)
