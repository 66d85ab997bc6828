"""Pydantic contracts of the labeler: the model's answer, output rows, run config, eval report.

The answer is keyed by lesion and holds only the candidate lesions of one report, so a
normal report costs a few dozen output tokens; lesions that are not asked are filled
in as negative ("not mentioned") by code. `reasoning` comes before the answer fields,
which is the chain-of-thought order the grammar enforces.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model, field_validator

from cxrctx.models import Lesion, Location, Status
from cxrctx.vocab import LESIONS

REASONING_MAX_CHARS = 120


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _norm(v: object) -> str:
    return " ".join(str(v).strip().lower().replace("_", " ").split())


class LesionAnswer(_Strict):
    """One candidate lesion: reasoning first, then the answer."""

    # lenient where the meaning is unambiguous: case and underscores in the enums, an
    # over-long reasoning (cut to REASONING_MAX_CHARS)

    reasoning: str = Field(
        max_length=REASONING_MAX_CHARS,
        description="Quote the report words, say affirmed / hedged / negated and the side",
    )
    status: Status
    location: Location

    @field_validator("status", "location", mode="before")
    @classmethod
    def _enum_spelling(cls, v: object) -> object:
        return _norm(v) if isinstance(v, str) else v

    @field_validator("reasoning", mode="before")
    @classmethod
    def _cut_reasoning(cls, v: object) -> object:
        return v.strip()[:REASONING_MAX_CHARS] if isinstance(v, str) else v


@lru_cache(maxsize=1)
def _answer_model() -> type[BaseModel]:
    """The answer model with all 14 lesions (aliased by name, in the fixed lesion order)."""
    fields: dict[str, Any] = {n.replace(" ", "_"): (LesionAnswer, Field(alias=n)) for n in LESIONS}
    return create_model(  # type: ignore[call-overload,no-any-return]
        "LabelAnswer",
        __config__=ConfigDict(extra="forbid", title="LabelAnswer"),
        __doc__=ANSWER_DESCRIPTION,
        **fields,
    )


@lru_cache(maxsize=1)
def _full_schema() -> dict[str, Any]:
    from cxrctx.llm.task import json_schema

    return json_schema(_answer_model())


ANSWER_DESCRIPTION = (
    "One entry per candidate lesion of the report; lesions not present are negative. "
    "Entry fields are generated in the order reasoning, status, location (reasoning first)."
)


def answer_schema(
    candidates: tuple[str, ...] | list[str] = LESIONS, *, required: bool = True
) -> dict[str, Any]:
    """JSON Schema of the answer for `candidates`: the schema generated from the answer
    model, narrowed to the candidates (one model, not one per candidate set: pydantic
    models cost memory, and a corpus has thousands of candidate sets).

    The published schema (`schemas/lesion_answer.schema.json`) is the generic one: all 14
    lesions optional. Each request narrows it to the report's candidates, all required,
    so the constrained decoder writes exactly those entries in the fixed lesion order.
    """
    full = _full_schema()
    names = [n for n in LESIONS if n in set(candidates)]
    props = full["properties"]
    return {
        **full,
        "properties": {n: props[n] for n in names},
        "required": names if required else [],
    }


class LabelAnswer(RootModel[dict[Lesion, LesionAnswer]]):
    """The model's answer for one report: lesion name → LesionAnswer, candidates only."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return answer_schema(LESIONS, required=False)


class LabelRow(_Strict):
    """One output row of `labels/part-*.parquet`: the LesionLabel columns plus provenance."""

    id: str
    lesion: str
    status: Status
    location: Location
    rationale: str
    source: Literal["llm", "not_candidate", "no_candidate"] = Field(
        description="llm: decided by the model; not_candidate: the lexicon pre-pass found no "
        "expression of this lesion (negative); no_candidate: the report mentions none of the 14 "
        "(LLM not called, all negative)"
    )
    llm_called: bool
    text_sha256: str
    backend: str
    model: str
    prompt_sha256: str
    schema_sha256: str
    sampling: str = Field(description="Sampling parameters as canonical JSON")


class DocumentRow(_Strict):
    """One row per input document of `documents/part-*.parquet`."""

    id: str
    text_sha256: str
    status: Literal["labeled", "skipped", "failed", "empty"]
    candidates: list[str]
    llm_called: bool
    cached: bool
    attempts: int
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    raw_text: str | None = Field(description="The model's last raw answer")
    error: str | None


class FailureRow(_Strict):
    """A document that got no labels, and why (never turned into negatives)."""

    id: str
    reason: str
    raw_text: str | None
    attempts: int
    transient: bool = Field(
        False,
        description="A transient engine error (5xx, 429, timeout, connection refused, "
        "malformed body): not cached, so re-running the command asks again",
    )


class LabelRunConfig(_Strict):
    """What a label-lesions run was asked to do (stored in the manifest)."""

    backend: str
    model: str
    prompt_version: int
    prompt_sha256: str
    schema_sha256: str
    sampling: dict[str, Any]
    input: str | None = None
    sections: list[str] | None = None
    id_column: str | None = None
    text_column: str | None = None
    shard: str | None = None
    limit: int | None = None
    batch_size: int
    prepass: bool
    engine_options: dict[str, Any] = Field(default_factory=dict)


class LesionScore(_Strict):
    lesion: str
    tp: int
    fp: int
    fn: int
    tn: int
    support: int = Field(description="Gold positives")
    precision: float | None
    recall: float | None
    f1: float | None
    agreement: float = Field(description="Fraction of documents where pred and gold status agree")
    kappa: float | None = Field(description="Cohen's kappa of status")
    location_n: int = Field(0, description="True positives whose gold has a location")
    location_accuracy: float | None = None


class EvalReport(_Strict):
    """Per-lesion and averaged scores of predicted labels against a gold (or another run)."""

    gold_kind: str
    n_docs: int = Field(description="Documents scored (in both pred and gold)")
    n_pred_only: int
    n_gold_only: int = Field(
        description="Gold documents without predictions (e.g. failures); not scored"
    )
    lesions: list[LesionScore]
    micro_precision: float | None
    micro_recall: float | None
    micro_f1: float | None
    macro_precision: float | None
    macro_recall: float | None
    macro_f1: float | None = Field(description="Mean F1 over lesions with gold support > 0")
    location_accuracy: float | None
    options: dict[str, Any] = Field(default_factory=dict)
