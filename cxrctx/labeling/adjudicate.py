"""Adjudicate the ambiguous mentions: the exemplar vote (no model) or the model's
calibrated choice guided by the same exemplars.

The rules settle most lesions; what they mark *ambiguous* (a hedge, a borderline phrase,
conflicting mentions, sides that differ) is where labels go wrong, and the convention
that decides them lives in labeled data, not in the wording. So each ambiguous mention
gets the k most similar labeled mentions of the same lesion from the user's examples
(`cxrctx.labeling.exemplars`, never from the same document), and then either

- `vote` (default, no model): P(positive) = the exemplars' similarity-weighted vote;
- `llm`: the model sees the mention's sentences, the reason, and the exemplars with
  their gold status, and the two answers ("positive" / "negative") are scored by their
  log-probabilities (`cxrctx.llm.choice`); P(positive) is the renormalised probability.
  An engine without log-probabilities answers the constrained choice (P = 1 or 0, no
  confidence). A mention whose model answer stays unusable keeps the vote's decision and
  is counted (`adjudication_llm_failed`), never dropped.

Status = positive when P(positive) ≥ the threshold (chosen on labeled data: for the vote
`calibrate` on the examples, leave-one-document-out; for the model, given and recorded).
The row's `confidence` is the probability of the status written (P or 1 − P); the
location stays the rules' (the sides of the positive mentions). Rows decided here say
source "vote" or "llm" and keep the rules' evidence.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx.labeling.exemplars import (
    DEFAULT_K,
    Exemplar,
    ExemplarIndex,
    Mention,
    ambiguous_mentions,
    calibrate,
    vote,
)
from cxrctx.llm.base import PROVENANCE_COLUMNS, ChatRequest, Engine, Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.choice import ChoiceAnswer, choice_request, parse_choice
from cxrctx.llm.prompt import load_prompt_file
from cxrctx.llm.runner import TaskProgress, run_task
from cxrctx.llm.task import AnswerError, Task
from cxrctx.vocab import LESIONS

CHOICES = ("positive", "negative")
EXAMPLE_CHARS = 200  # an exemplar's sentences in the prompt, cut (prompt tokens = CPU time)
DEFAULT_PROMPT_VERSION = 1


class Adjudicator(str, enum.Enum):
    """Who settles the ambiguous mentions when `--examples` is given."""

    vote = "vote"
    llm = "llm"


class AdjudicationConfig(BaseModel):
    """What decided the ambiguous mentions (stored in the run config)."""

    model_config = ConfigDict(extra="forbid")

    adjudicator: Adjudicator
    examples: str = Field(description="The examples file")
    examples_sha256: str
    exemplars: int = Field(description="Ambiguous mentions with gold in the examples")
    k: int
    threshold: float = Field(description="P(positive) ≥ threshold → positive")
    threshold_source: str = Field(
        description="How the threshold was chosen: calibrated on the examples "
        "(leave-one-document-out micro-F1) or given (chosen on development data)"
    )
    prompt_sha256: str | None = None
    model: str | None = None


# ---------------------------------------------------------------------------- prompt


@dataclass(frozen=True)
class AdjudicationPrompt:
    """`prompts/label_lesions/adjudicate_vN.json`."""

    data: dict[str, Any]
    sha256: str
    path: str

    def messages(self, m: Mention, exemplars: Sequence[Exemplar]) -> list[dict[str, str]]:
        d = self.data
        why = "; ".join(d["reasons"].get(r, r) for r in m.reasons) or "unclear"
        ex = "\n".join(
            d["example_template"].format(
                sentence=e.mention.sentence_text[:EXAMPLE_CHARS], gold=e.gold
            )
            for e in exemplars
        )
        sentences = "\n".join(f"- {' '.join(s.split())}" for s in m.sentences)
        user = d["user_template"].format(
            lesion=m.lesion, reasons=why, examples=ex or d["no_examples"], sentences=sentences
        )
        return [
            {"role": "system", "content": "\n".join(d["system"])},
            {"role": "user", "content": user},
        ]


def load_adjudication_prompt(version_or_path: int | str | None = None) -> AdjudicationPrompt:
    """The adjudication prompt (`prompts/label_lesions/adjudicate_vN.json` or a file)."""
    v = DEFAULT_PROMPT_VERSION if version_or_path is None else version_or_path
    f = load_prompt_file(
        "label_lesions",
        v,
        stem="adjudicate_v",
        required=("system", "reasons", "example_template", "user_template"),
    )
    return AdjudicationPrompt(f.data, f.sha256, f.path)


# ---------------------------------------------------------------------------- task


@dataclass(frozen=True, eq=False)
class MentionItem:
    mention: Mention
    exemplars: tuple[Exemplar, ...]

    @property
    def id(self) -> str:
        return f"{self.mention.doc_id}:{self.mention.lesion}"


class MentionChoiceTask(Task[MentionItem, ChoiceAnswer]):
    """Positive or negative for one ambiguous mention, scored by log-probabilities."""

    name = "adjudicate-mention"
    answer_model = ChoiceAnswer

    def __init__(self, prompt: AdjudicationPrompt):
        self.prompt = prompt
        self.prompt_sha256 = prompt.sha256

    def request(self, item: MentionItem) -> ChatRequest:
        msgs = self.prompt.messages(item.mention, item.exemplars)
        return choice_request(msgs, CHOICES, key=item.id)

    def parse(self, item: MentionItem, text: str, finish_reason: str = "stop") -> ChoiceAnswer:
        try:
            return parse_choice(text, CHOICES)
        except ValueError as e:
            raise AnswerError(f"unusable choice: {str(e)[:120]}") from e

    def repair(self, item: MentionItem, request: ChatRequest, text: str, reason: str) -> None:
        return None  # a one-word choice has nothing to repair; the vote decides instead


# ---------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    p_positive: float
    scored: bool
    source: str
    note: str


@dataclass
class Adjudication:
    """Decisions keyed by (doc id, lesion), and counts for the manifest."""

    decisions: dict[tuple[str, str], Decision]
    counts: dict[str, int]
    #: provenance of the model's rows (backend, model, prompt / schema sha256, sampling)
    provenance: dict[str, Any] | None = None


def vote_decisions(
    mentions: Sequence[Mention], index: ExemplarIndex
) -> dict[tuple[str, str], tuple[Decision, tuple[Exemplar, ...]]]:
    """The exemplar vote of every mention that has exemplars (and its exemplars)."""
    out = {}
    for m, ex in zip(mentions, index.neighbours(mentions), strict=True):
        p = vote(ex)
        if p is not None:
            note = f"{len(ex)} exemplars vote P(positive)={p:.2f}"
            out[(m.doc_id, m.lesion)] = (Decision(p, True, "vote", note), tuple(ex))
    return out


def adjudicate(
    docs: pl.DataFrame,
    index: ExemplarIndex,
    *,
    adjudicator: Adjudicator | str = Adjudicator.vote,
    engine: Engine | None = None,
    prompt: AdjudicationPrompt | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[TaskProgress], None] | None = None,
) -> Adjudication:
    """Decide the ambiguous mentions of `docs` (id, text) with `index`'s exemplars."""
    # first occurrence of an id only, as the labelers keep it (a repeated id is a failure)
    first = docs.unique("id", keep="first", maintain_order=True).drop_nulls("id")
    mentions = [
        m
        for i, t in zip(first["id"].to_list(), first["text"].to_list(), strict=True)
        if t and t.strip()
        for m in ambiguous_mentions(str(i), t)
    ]
    voted = vote_decisions(mentions, index)
    counts = {
        "adjudication_mentions": len(mentions),
        "adjudication_no_exemplars": len(mentions) - len(voted),
        "adjudication_llm_failed": 0,
        "adjudication_llm_unscored": 0,
        "adjudication_prompt_tokens": 0,
        "adjudication_completion_tokens": 0,
    }
    decisions = {k: d for k, (d, _) in voted.items()}
    prov = None
    if Adjudicator(adjudicator) is Adjudicator.llm:
        if engine is None:
            raise ValueError("the llm adjudicator needs an engine")
        task = MentionChoiceTask(prompt or load_adjudication_prompt())
        items = [
            MentionItem(m, ex)
            for m in mentions
            if (ex := voted.get((m.doc_id, m.lesion), (None, ()))[1])
        ]
        with ResultCache(cache_dir) as cache:
            stats = run_task(
                task,
                items,
                engine,
                cache=cache,
                sampling=Sampling(max_tokens=8),
                on_batch=lambda rs: _take(rs, decisions, counts),
                progress=progress,
                total=len(items),
            )
        counts["adjudication_prompt_tokens"] = stats.prompt_tokens
        counts["adjudication_completion_tokens"] = stats.completion_tokens
        prov = {k: stats.provenance.get(k) for k in PROVENANCE_COLUMNS}
    return Adjudication(decisions, counts, prov)


def _take(results: list[Any], decisions: dict, counts: dict[str, int]) -> None:
    for r in results:
        key = (r.item.mention.doc_id, r.item.mention.lesion)
        ans: ChoiceAnswer | None = r.answer
        if ans is None:
            counts["adjudication_llm_failed"] += 1
            old = decisions[key]
            decisions[key] = Decision(
                old.p_positive, old.scored, "vote", f"{old.note}; llm answer unusable: {r.error}"
            )
            continue
        p = ans.prob("positive")
        if p is None:
            counts["adjudication_llm_unscored"] += 1
        scored = p is not None
        p = p if p is not None else float(ans.choice == "positive")
        note = f"llm P(positive)={p:.2f} with {len(r.item.exemplars)} exemplars"
        decisions[key] = Decision(p, scored, "llm", note if scored else note + " (unscored)")


def apply_decisions(labels: pl.DataFrame, adj: Adjudication, threshold: float) -> pl.DataFrame:
    """Label rows with the adjudicated rows' status, confidence, source and rationale set;
    every row gets the `confidence` column (null where nothing was adjudicated)."""
    if "confidence" not in labels.columns:
        labels = labels.with_columns(pl.lit(None, dtype=pl.Float64).alias("confidence"))
    if not adj.decisions:
        return labels
    keys = list(adj.decisions)
    d = pl.DataFrame(
        {
            "id": [k[0] for k in keys],
            "lesion": [k[1] for k in keys],
            "_p": [adj.decisions[k].p_positive for k in keys],
            "_scored": [adj.decisions[k].scored for k in keys],
            "_src": [adj.decisions[k].source for k in keys],
            "_note": [adj.decisions[k].note for k in keys],
        },
        schema={
            "id": pl.String,
            "lesion": pl.String,
            "_p": pl.Float64,
            "_scored": pl.Boolean,
            "_src": pl.String,
            "_note": pl.String,
        },
    )
    j = labels.join(d, on=["id", "lesion"], how="left")
    hit = pl.col("_p").is_not_null()
    pos = pl.col("_p") >= threshold
    status = pl.when(pos).then(pl.lit("positive")).otherwise(pl.lit("negative"))
    conf = pl.when(pos).then(pl.col("_p")).otherwise(1.0 - pl.col("_p"))
    j = j.with_columns(
        pl.when(hit).then(status).otherwise(pl.col("status")).alias("status"),
        pl.when(hit & pl.col("_scored"))
        .then(conf.round(4))
        .otherwise(pl.col("confidence"))
        .alias("confidence"),
        pl.when(hit).then(pl.col("_src")).otherwise(pl.col("source")).alias("source"),
        pl.when(hit)
        .then(pl.col("llm_called") | (pl.col("_src") == "llm"))
        .otherwise(pl.col("llm_called"))
        .alias("llm_called"),
        pl.when(hit)
        .then(
            pl.col("rationale")
            + pl.lit("; adjudicated: ")
            + pl.col("_note")
            + pl.lit(f" (threshold {threshold:g})")
        )
        .otherwise(pl.col("rationale"))
        .alias("rationale"),
    )
    loc = pl.when(hit & (pl.col("status") == "negative")).then(pl.lit("not mentioned"))
    j = j.with_columns(loc.otherwise(pl.col("location")).alias("location"))
    if adj.provenance:  # the model's rows say which model, prompt, schema and sampling
        llm = pl.col("_src") == "llm"
        j = j.with_columns(
            pl.when(llm).then(pl.lit(v, dtype=pl.String)).otherwise(pl.col(k)).alias(k)
            for k, v in adj.provenance.items()
        )
    return j.drop("_p", "_scored", "_src", "_note")


def calibrate_vote(
    index: ExemplarIndex, examples: pl.DataFrame
) -> tuple[float, dict[float, float]]:
    """The vote's threshold chosen on the examples (leave-one-document-out micro-F1)."""
    from cxrctx.labeling.rules import label_documents_rules

    docs = examples.select("id", "text")
    rows = label_documents_rules(docs).labels
    lesions = [c for c in examples.columns if c in LESIONS]
    gold = examples.unpivot(on=lesions, index="id", variable_name="lesion", value_name="status")
    gold = gold.filter(pl.col("status").is_not_null())
    adj = adjudicate(docs, index)
    probs = {k: d.p_positive for k, d in adj.decisions.items()}
    return calibrate(rows, gold, probs)


__all__ = [
    "DEFAULT_K",
    "Adjudication",
    "AdjudicationConfig",
    "Adjudicator",
    "adjudicate",
    "apply_decisions",
    "calibrate_vote",
    "load_adjudication_prompt",
]
