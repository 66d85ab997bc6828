"""Pydantic contracts of the labeler: the model's answer, output rows, run config, eval report.

The answer is keyed by lesion and holds only the candidate lesions of one report, so a
normal report costs a few dozen output tokens; lesions that are not asked are filled
in as negative ("not mentioned") by code. `reasoning` comes before the answer fields,
which is the chain-of-thought order the grammar enforces.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model, field_validator

from cxrctx.limits import MAX_REPORT_BYTES
from cxrctx.llm.base import Sampling
from cxrctx.llm.task import json_schema
from cxrctx.models import Lesion, Location, Status
from cxrctx.vocab import LESIONS

REASONING_MAX_CHARS = 120


#: Record sections a build-priors input is labeled from, in this order.
DEFAULT_SECTIONS: tuple[str, ...] = ("findings", "impression")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Labeler(str, enum.Enum):
    """Who labels a report. rules: the deterministic reading, no model. cot / short: the
    hybrid labeler (rules first, the model only for the lesions the rules leave ambiguous,
    with or without a short reasoning field). llm: the model for every candidate lesion."""

    cot = "cot"
    short = "short"
    llm = "llm"
    rules = "rules"

    @property
    def hybrid(self) -> bool:
        return self in (Labeler.cot, Labeler.short)


class LabelLesionsConfig(BaseModel):
    """The options of one label-lesions run (what `cxrctx label-lesions` parses), validated
    before any input is read. Which labeler runs and the engine are arguments of
    `label_lesions`, not options: the engine is a live object, not configuration."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    sections: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SECTIONS),
        description="Record sections to label (build-priors input)",
    )
    id_column: str = Field("id", description="Id column of a table input")
    text_column: str = Field("text", description="Text column of a table input")
    shard: str | None = Field(None, description="Label slice i of n, as 'i/n'")
    limit: int | None = Field(None, ge=1, description="Only the first N documents")
    dry_run: bool = Field(False, description="Say what would be sent (or read); write nothing")
    overwrite: bool = Field(False, description="Replace another run's output in OUT")
    sampling: Sampling = Field(default_factory=Sampling)
    batch_size: int | None = Field(None, ge=1, description="Documents per engine call")
    prepass: bool = Field(True, description="llm: ask only about the lexicon's candidates")
    prompt: int | str | Path | None = Field(
        None, description="Prompt version or file (hybrid: a hybrid prompt version or file)"
    )
    cache_dir: Path | None = Field(None, description="Answers a re-run reuses (default OUT/cache)")
    max_report_bytes: int = Field(
        MAX_REPORT_BYTES,
        ge=1,
        description="A text larger than this is a too_large failure row, never labeled or sent",
    )
    examples: Path | None = Field(
        None, description="Labeled reports whose exemplars decide the ambiguous readings (rules)"
    )
    adjudicator: Literal["vote", "llm"] = Field(
        "vote", description="With examples: the exemplars' kNN vote, or the model's scored choice"
    )
    k: int = Field(5, ge=1, description="With examples: exemplars per ambiguous reading")
    threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="With examples: P(positive) >= threshold is positive (vote default: "
        "calibrated on the examples; model default 0.5)",
    )
    uncertain: Literal["positive", "negative", "keep"] = Field(
        "positive", description="Hedged positive readings left undecided: positive, negative, keep"
    )

    @field_validator("sampling", mode="before")
    @classmethod
    def _default_sampling(cls, v: object) -> object:
        return Sampling() if v is None else v


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


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Evidence(_Frozen):
    """Where a label's evidence is: character offsets [start, end) into the labeled text
    (the document text with surrounding whitespace stripped; its sha256 is text_sha256)."""

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    text: str | None = Field(None, description="The evidence sentence (credentialed outputs only)")


Clarity = Literal["clear", "ambiguous"]


#: a label row's status: `uncertain` only in runs with `--uncertain keep`
LabelStatus = Literal["positive", "negative", "uncertain"]


class LabelRow(_Strict):
    """One output row of `labels/part-*.parquet`: the LesionLabel columns plus provenance."""

    id: str
    lesion: str
    status: LabelStatus = Field(
        description="positive / negative; uncertain = a hedged reading kept as such "
        "(only with --uncertain keep, see the manifest's config.uncertain)"
    )
    location: Location
    rationale: str
    source: Literal["rules", "llm", "vote", "not_mentioned", "not_candidate", "no_candidate"] = (
        Field(
            description="rules: decided by the rule reading; llm: decided by the model; "
            "vote: an ambiguous reading decided by the labeled exemplars' vote (--examples); "
            "not_mentioned: the lexicon finds no expression of this lesion (negative); "
            "not_candidate / no_candidate: the same for LLM-only runs (no_candidate: the report "
            "mentions none of the 14, LLM not called)"
        )
    )
    llm_called: bool
    text_sha256: str
    backend: str
    model: str | None = Field(description="Model name; null for the rules backend")
    prompt_sha256: str
    schema_sha256: str
    sampling: str = Field(description="Sampling parameters as canonical JSON")
    evidence: list[Evidence] = Field(
        default_factory=list, description="Evidence sentences (offsets into the labeled text)"
    )
    clarity: Clarity | None = Field(
        None, description="Rule reading: clear, or ambiguous (see the rationale for why)"
    )
    confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Probability of the status written, for ambiguous readings adjudicated "
        "with --examples (exemplar vote or the model's log-probabilities); null elsewhere",
    )
    section: str | None = Field(
        None,
        description="Report sections the labeled text came from (e.g. findings+impression; "
        "last_paragraph when findings and impression are empty; header_only when only header "
        "sections have text: not read, every lesion not_mentioned); null for table inputs",
    )


class LesionReading(_Frozen):
    """The rule reading of one lesion in one report."""

    lesion: str
    status: Status = Field(description="positive when any mention is affirmed or hedged")
    location: Location
    mentioned: bool = Field(description="The lexicon found at least one expression of it")
    clarity: Clarity
    reasons: list[str] = Field(
        default_factory=list,
        description="Why ambiguous: hedged, borderline, conflicting_mentions, scope_unsettled, "
        "sides_differ",
    )
    cues: list[str] = Field(default_factory=list, description="Cue words that decided the mentions")
    evidence: list[Evidence] = Field(
        default_factory=list, description="Sentences of the deciding mentions"
    )
    rationale: str


class RulesReading(_Frozen):
    """The rule reading of one report: 14 LesionReadings in LESIONS order."""

    lexicon_version: int
    lexicon_sha256: str
    lesions: list[LesionReading]

    def get(self, lesion: str) -> LesionReading:
        return next(r for r in self.lesions if r.lesion == lesion)

    def ambiguous(self) -> list[str]:
        """Lesions whose reading is ambiguous (what a hybrid labeler asks a model about)."""
        return [r.lesion for r in self.lesions if r.clarity == "ambiguous"]


class DocumentRow(_Strict):
    """One row per input document of `documents/part-*.parquet`."""

    id: str
    text_sha256: str
    status: Literal["labeled", "skipped", "failed", "empty", "too_large", "header_only"] = Field(
        description="header_only: text only in header sections (examination, indication, "
        "history, technique, comparison); not read, its 14 label rows are not_mentioned"
    )
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
    model: str | None
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
    lexicon_version: int | None = None
    lexicon_sha256: str | None = None
    mode: str | None = Field(
        None,
        description="cot / short: hybrid (rules, the model for ambiguous lesions); llm: the "
        "model for every candidate; null: the rules backend",
    )
    uncertain: Literal["positive", "negative", "keep"] = Field(
        "positive",
        description="Uncertainty policy for hedged readings: positive (default, what the "
        "trainer reads), negative, or keep (status=uncertain); consumers read it here",
    )
    adjudication: dict[str, Any] | None = Field(
        None,
        description="--examples: how the ambiguous readings were decided (adjudicator, "
        "examples sha256, k, threshold and how it was chosen)",
    )


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
    kappa: float | None = Field(
        description="Cohen's kappa of status; null when undefined (both sides use one class only)"
    )
    location_n: int = Field(0, description="True positives whose gold has a location")
    location_accuracy: float | None = None


class Interval(_Strict):
    low: float | None
    high: float | None


class BootstrapCI(_Strict):
    """Percentile bootstrap intervals, resampling documents with replacement."""

    n_boot: int
    seed: int
    level: float = 0.95
    unit: str = "document"
    overall: dict[str, Interval] = Field(
        description="micro_/macro_ precision, recall, f1 and location_accuracy"
    )
    lesions: dict[str, dict[str, Interval]] = Field(description="lesion -> precision / recall / f1")


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
    macro_f1: float | None = Field(
        description="Mean F1 over the lesions with gold support or predicted positives (a lesion "
        "with false positives but no gold support scores precision 0 and F1 0; its recall is "
        "undefined and left out of the macro recall)"
    )
    macro_lesions: list[str] = Field(
        default_factory=list, description="The lesions the macro averages are taken over"
    )
    fp_without_support: dict[str, int] = Field(
        default_factory=dict,
        description="Lesions predicted positive although the gold has no positive: their FP count",
    )
    location_accuracy: float | None
    location_confusion: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="gold location -> predicted location -> count, over true positives whose "
        "gold has a location",
    )
    ci: BootstrapCI | None = Field(None, description="Bootstrap confidence intervals")
    options: dict[str, Any] = Field(default_factory=dict)
