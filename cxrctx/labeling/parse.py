"""Validate one model answer against the candidates; say precisely what is wrong.

Lenient where the meaning is unambiguous (code fences, text around the JSON, case and
underscores in names/enums, over-long reasoning), strict where guessing would invent
labels (unknown lesions, wrong enum values, missing candidates, duplicates): those
return a reason, which the runner turns into one repair retry and then a failure row.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrctx.labeling.models import REASONING_MAX_CHARS
from cxrctx.llm.jsonutil import extract_json
from cxrctx.vocab import LESIONS, LOCATIONS

_STATUSES = ("positive", "negative")


@dataclass(frozen=True)
class Judgement:
    lesion: str
    reasoning: str
    status: str
    location: str


def _norm(s: object) -> str:
    return " ".join(str(s).strip().lower().replace("_", " ").split())


def parse_answer(
    text: str, candidates: list[str], finish_reason: str = "stop"
) -> tuple[dict[str, Judgement] | None, str | None]:
    """Return (judgements by lesion, None) or (None, reason)."""
    if not text or not text.strip():
        return (
            None,
            "truncated (finish_reason=length) with no answer"
            if finish_reason == "length"
            else "empty answer",
        )
    try:
        obj = extract_json(text)
    except ValueError as e:
        if finish_reason == "length":
            return None, "truncated (finish_reason=length): answer JSON incomplete"
        return None, f"invalid JSON: {e}"
    if not isinstance(obj, dict):
        return None, "answer is not a JSON object"
    if len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        # tolerate one wrapping level such as {"lesions": {...}} / {"answer": {...}}
        ((k, inner),) = obj.items()
        if _norm(k) not in LESIONS and inner and all(isinstance(v, dict) for v in inner.values()):
            obj = inner
    out: dict[str, Judgement] = {}
    for key, entry in obj.items():
        name = _norm(key)
        if name not in LESIONS:
            return None, f"unknown lesion {key!r}"
        if name in out:
            return None, f"duplicate lesion {name!r}"
        if not isinstance(entry, dict):
            return None, f"lesion {name!r}: entry is not an object"
        status = _norm(entry.get("status", ""))
        location = _norm(entry.get("location", ""))
        if status not in _STATUSES:
            return None, f"lesion {name!r}: status {entry.get('status')!r} is not positive/negative"
        if location not in LOCATIONS:
            return (
                None,
                f"lesion {name!r}: location {entry.get('location')!r} is not one of {', '.join(LOCATIONS)}",
            )
        extra = set(entry) - {"reasoning", "status", "location"}
        if extra:
            return None, f"lesion {name!r}: unknown field(s) {', '.join(sorted(extra))}"
        reasoning = str(entry.get("reasoning", "")).strip()[:REASONING_MAX_CHARS]
        out[name] = Judgement(name, reasoning, status, location)
    missing = [c for c in candidates if c not in out]
    if missing:
        return None, f"missing candidate lesion(s): {', '.join(missing)}"
    return out, None
