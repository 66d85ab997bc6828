"""Rows of a structure-reports run: the output tables' columns, the counts, and
`StructuredRows`, which turns each structured or failed report into its row (counting
every report exactly once; a model answer that fails the check falls back to the rules'
draft when the item carries one)."""

from __future__ import annotations

from typing import Any

import polars as pl

from cxrctx.llm.base import PROVENANCE_COLUMNS
from cxrctx.llm.runner import TaskResult
from cxrctx.llm.sink import Sink
from cxrctx.structure.check import CheckResult
from cxrctx.structure.task import StructuredAnswer, StructureItem, check_answer, reason_code
from cxrctx.vocab import SRRG_ORGAN_KEYS, SRRG_ORGANS

PROV = PROVENANCE_COLUMNS

STRUCTURED_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "study_id": pl.Int64,
    "role": pl.String,
    "text_sha256": pl.String,
    "structured_findings": pl.String,
    "structured_impression": pl.String,
    "structured_report": pl.String,
    **{SRRG_ORGAN_KEYS[o]: pl.List(pl.String) for o in SRRG_ORGANS},
    "impression_items": pl.List(pl.String),
    "n_bullets": pl.Int64,
    "n_source_sentences": pl.Int64,
    "min_support": pl.Float64,
    "coverage": pl.Float64,
    "repaired": pl.Boolean,
    "attempts": pl.Int64,
    "cached": pl.Boolean,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "latency_s": pl.Float64,
    "structured_by": pl.String,
    "fallback_reason": pl.String,
    **{k: pl.String for k in PROV},
}
FAILURE_SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "study_id": pl.Int64,
    "role": pl.String,
    "reason_code": pl.String,
    "reason": pl.String,
    "raw_text": pl.String,
    "attempts": pl.Int64,
    "transient": pl.Boolean,
}
COST = ("llm_documents", "llm_calls", "prompt_tokens", "output_tokens")
TABLES = {"structured": STRUCTURED_SCHEMA, "failures": FAILURE_SCHEMA}
COUNTS = (
    "reports",
    "records",
    "priors",
    "structured",
    "passed_first_time",
    "passed_after_repair",
    "cached",
    "failed",
    "transient_failed",
    "empty",
    "missing_id",
    "duplicate_id",
    "by_rules",
    "by_model",
    "rules_fallback",
    "unique_texts",
    "engine_requests",
    "repair_requests",
    "prompt_tokens",
    "completion_tokens",
)


def _study_id(item: StructureItem) -> int | None:
    return int(item.id) if item.id.isdigit() else None


class StructuredRows:
    """Turns each batch of task results into structured and failure rows, counting every
    report exactly once (`counts`, failures by reason code in `reasons`)."""

    def __init__(self, sinks: dict[str, Sink], provenance: dict[str, Any]):
        self.sinks = sinks
        self.prov = {k: provenance[k] for k in PROV}
        self.counts = dict.fromkeys(COUNTS, 0)
        self.reasons: dict[str, int] = {}
        self.fallbacks: dict[str, int] = {}  # reason code of each rewrite that fell back
        self.cost = dict.fromkeys(COST, 0)

    def __call__(self, results: list[TaskResult[StructureItem, Any]]) -> None:
        rows: list[dict[str, Any]] = []
        fails: list[dict[str, Any]] = []
        for r in results:
            self._one(r, rows, fails)
            self._cost(r)
        self.sinks["structured"].add(rows)
        self.sinks["failures"].add(fails)

    def _cost(self, r: TaskResult) -> None:
        """What the model was asked, once per unique text; a cached answer keeps the
        tokens it cost when asked, so a plan reads the same from a warm cache."""
        if not r.called or r.duplicate:
            return
        self.cost["llm_documents"] += 1
        self.cost["llm_calls"] += r.attempts
        self.cost["prompt_tokens"] += r.prompt_tokens
        self.cost["output_tokens"] += r.completion_tokens

    def _fail(self, fails: list, r: TaskResult, reason: str) -> None:
        item: StructureItem = r.item
        code = reason_code(reason)
        fails.append(
            {
                "id": item.id,
                "study_id": _study_id(item),
                "role": item.role,
                "reason_code": code,
                "reason": reason,
                "raw_text": r.raw_text,
                "attempts": r.attempts,
                "transient": r.transient,
            }
        )
        if item.problem is None:
            self.reasons[code] = self.reasons.get(code, 0) + 1

    def _one(self, r: TaskResult, rows: list, fails: list) -> None:
        item: StructureItem = r.item
        c = self.counts
        c["reports"] += 1
        c["records" if item.role == "record" else "priors"] += 1
        if item.problem is not None:
            c[reason_code(item.problem).replace("empty_report", "empty")] += 1
            self._fail(fails, r, item.problem)
            return
        c["cached"] += r.cached
        check = check_answer(item, r.answer) if r.answer is not None else None
        if r.answer is not None and check is not None and check.passed:
            c["passed_after_repair" if r.attempts > 1 else "passed_first_time"] += 1
            self._structured(rows, item, r.answer, check, by="model", r=r)
            return
        why = check.reason if check is not None else (r.error or "failed")
        if item.draft is not None and item.draft_check is not None and item.draft_check.passed:
            code = reason_code(why)
            self.fallbacks[code] = self.fallbacks.get(code, 0) + 1
            c["rules_fallback"] += 1
            self._structured(rows, item, item.draft, item.draft_check, by="rules", r=r, why=why)
            return
        c["failed"] += 1
        c["transient_failed"] += r.transient
        self._fail(fails, r, why)

    def add_rules(self, item: StructureItem, rows: list, fails: list) -> None:
        """One report structured by the rules alone (no model run)."""
        if item.problem is not None or item.draft is None or item.draft_check is None:
            self._one(TaskResult(item, None, error=item.problem), rows, fails)
            return
        if not item.draft_check.passed:
            self._one(TaskResult(item, None, error=item.draft_check.reason), rows, fails)
            return
        self.counts["reports"] += 1
        self.counts["records" if item.role == "record" else "priors"] += 1
        self.counts["passed_first_time"] += 1
        self._structured(rows, item, item.draft, item.draft_check, by="rules")

    def _structured(
        self,
        rows: list,
        item: StructureItem,
        ans: StructuredAnswer,
        check: CheckResult,
        *,
        by: str,
        r: TaskResult | None = None,
        why: str | None = None,
    ) -> None:
        self.counts["structured"] += 1
        self.counts[f"by_{by}"] += 1
        fig = check.figures()
        organs = ans.organs()
        rows.append(
            {
                "id": item.id,
                "study_id": _study_id(item),
                "role": item.role,
                "text_sha256": item.text_sha256,
                "structured_findings": ans.render_findings(),
                "structured_impression": ans.render_impression(),
                "structured_report": ans.render_report(),
                **{SRRG_ORGAN_KEYS[o]: organs[o] for o in SRRG_ORGANS},
                "impression_items": list(ans.impression),
                **{
                    k: fig[k]
                    for k in ("n_bullets", "n_source_sentences", "min_support", "coverage")
                },
                "repaired": r is not None and r.attempts > 1 and why is None,
                "attempts": r.attempts if r else 0,
                "cached": r.cached if r else False,
                "prompt_tokens": r.prompt_tokens if r else 0,
                "completion_tokens": r.completion_tokens if r else 0,
                "latency_s": r.latency_s if r else 0.0,
                "structured_by": by,
                "fallback_reason": why,
                **self.prov,
            }
        )
