"""What happens to each slice of rule label rows before it is written: the `section`
column, the adjudication of the ambiguous readings (`--examples`, see
`cxrctx.labeling.adjudicate`) and the uncertainty policy (`--uncertain`, see
`cxrctx.labeling.policy`). One callable, so a labeler calls it once per slice."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.labeling.adjudicate import (
    AdjudicationConfig,
    AdjudicationPrompt,
    Adjudicator,
    adjudicate,
    apply_decisions,
    calibrate_vote,
    load_adjudication_prompt,
)
from cxrctx.labeling.exemplars import DEFAULT_K, ExemplarIndex, read_examples
from cxrctx.labeling.policy import UncertainPolicy, apply_policy
from cxrctx.labeling.tables import LABEL_FRAME_SCHEMA, LabelResult
from cxrctx.llm.base import Engine

COUNTS = (
    "uncertain",
    "adjudicated_vote",
    "adjudicated_llm",
    "adjudication_mentions",
    "adjudication_no_exemplars",
    "adjudication_llm_failed",
    "adjudication_llm_unscored",
    "adjudication_prompt_tokens",
    "adjudication_completion_tokens",
)


@dataclass
class LabelFinish:
    """Applied to every slice: `finish(part, docs_slice) -> part` (counts accumulate)."""

    uncertain: UncertainPolicy = UncertainPolicy.positive
    index: ExemplarIndex | None = None
    adjudication: AdjudicationConfig | None = None
    engine: Engine | None = None
    prompt: AdjudicationPrompt | None = None
    cache_dir: str | os.PathLike | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    def __call__(self, part: LabelResult, docs: pl.DataFrame) -> LabelResult:
        labels = part.labels
        if "section" in docs.columns and not labels.is_empty():
            sec = docs.select(pl.col("id").cast(pl.String), pl.col("section").alias("_sec"))
            labels = labels.join(sec.unique("id", keep="first"), on="id", how="left")
            labels = labels.with_columns(pl.col("_sec").alias("section")).drop("_sec")
        if self.index is not None and self.adjudication is not None and not labels.is_empty():
            a = self.adjudication
            adj = adjudicate(
                docs.select("id", "text"),
                self.index,
                adjudicator=a.adjudicator,
                engine=self.engine,
                prompt=self.prompt,
                cache_dir=self.cache_dir,
            )
            labels = apply_decisions(labels, adj, a.threshold)
            for k, v in adj.counts.items():
                self.counts[k] += v
            for src in ("vote", "llm"):
                self.counts[f"adjudicated_{src}"] += sum(
                    d.source == src for d in adj.decisions.values()
                )
        labels, n = apply_policy(labels, self.uncertain)
        self.counts["uncertain"] += n
        part.frames["labels"] = labels.select(list(LABEL_FRAME_SCHEMA)).cast(
            pl.Schema(LABEL_FRAME_SCHEMA)
        )
        return part

    def config(self) -> dict[str, Any]:
        """What the run config records: the policy and the adjudication (or None)."""
        adj = self.adjudication.model_dump(mode="json") if self.adjudication else None
        return {"uncertain": self.uncertain.value, "adjudication": adj}


def build_finish(
    *,
    uncertain: UncertainPolicy | str = UncertainPolicy.positive,
    examples: str | os.PathLike | None = None,
    adjudicator: Adjudicator | str = Adjudicator.vote,
    k: int = DEFAULT_K,
    threshold: float | None = None,
    engine: Engine | None = None,
    prompt: int | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    model: str | None = None,
    engine_needed: bool | None = None,
) -> LabelFinish:
    """The finishing step of a run. With `examples`: the exemplar index, and the threshold
    (given, or for the vote calibrated on the examples leave-one-document-out; the model's
    default 0.5 is recorded as such). The engine may be set later (`fin.engine`): give
    `model` (its name, for the config) and `engine_needed` then."""
    fin = LabelFinish(uncertain=UncertainPolicy(uncertain), cache_dir=cache_dir)
    if examples is None:
        return fin
    how = Adjudicator(adjudicator)
    has_engine = engine is not None if engine_needed is None else engine_needed
    if how is Adjudicator.llm and not has_engine:
        raise CxrctxError("--adjudicator llm needs --model")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise CxrctxError(f"--threshold must be between 0 and 1 (got {threshold})")
    index = ExemplarIndex.from_examples(examples, k=k)
    if index.size() == 0:
        raise CxrctxError(f"{examples}: no example has an ambiguous reading with a gold status")
    source = "given"
    if threshold is None and how is Adjudicator.vote:
        threshold, _ = calibrate_vote(index, read_examples(examples))
        source = "calibrated on the examples (leave-one-document-out micro-F1)"
    elif threshold is None:
        threshold, source = 0.5, "default 0.5 (not calibrated)"
    ap = load_adjudication_prompt(prompt) if how is Adjudicator.llm else None
    fin.index, fin.engine, fin.prompt = index, engine, ap
    fin.adjudication = AdjudicationConfig(
        adjudicator=how,
        examples=str(examples),
        examples_sha256=index.sha256,
        exemplars=index.size(),
        k=k,
        threshold=threshold,
        threshold_source=source,
        prompt_sha256=ap.sha256 if ap else None,
        model=getattr(engine, "model", model) if how is Adjudicator.llm else None,
    )
    return fin
