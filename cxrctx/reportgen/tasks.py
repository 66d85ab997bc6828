"""The report aggregator and the consistency judge as LLM tasks on `cxrctx.llm.run_task`.

Both share the labeler's failure policy: identical requests sent once, answers cached
by content hash, one repair request for an unusable answer, then a counted failure
(the aggregator falls back to the deterministic merge for that study; the judge leaves
the study unscored). An empty input is a failure without a model call: an aggregator
with no regional statement, a judge asked to score an empty generated report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxrctx.llm.base import ChatRequest, Engine, Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.prompt import PromptFile, load_prompt_file
from cxrctx.llm.runner import Executor, TaskResult, TaskStats, run_task
from cxrctx.llm.task import AnswerError, Task

CRITERIA = ("clinical_accuracy", "findings_completeness", "linguistic_quality", "report_structure")
Score = Annotated[int, Field(ge=1, le=5, strict=True)]


def load_report_prompt(name: str, version: int = 1) -> PromptFile:
    """A report-side prompt (aggregate_report, consistency_judge) and its file's sha256."""
    return load_prompt_file(name, version, required=("system", "user_template"))


def _messages(prompt: PromptFile, user: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": prompt.data["system"]},
        {"role": "user", "content": user},
    ]


# ---------------------------------------------------------------------------- aggregator


class AggregatedReport(BaseModel):
    """The aggregator's answer: one findings paragraph (whitespace collapsed, not empty)."""

    model_config = ConfigDict(extra="forbid")
    report: str = Field(min_length=1)

    @field_validator("report", mode="before")
    @classmethod
    def _collapse(cls, v: object) -> object:
        return " ".join(v.split()) if isinstance(v, str) else v


@dataclass(frozen=True)
class AggregateItem:
    study_id: str
    regions: tuple[tuple[str, str], ...]  # (roi, statement) with a non-empty statement
    lesions: tuple[str, ...]


class AggregatorTask(Task[AggregateItem, AggregatedReport]):
    """Merge the ROI statements of one study into one report."""

    name = "aggregate-report"
    answer_model = AggregatedReport

    def __init__(self, prompt: PromptFile | None = None):
        self.prompt = prompt or load_report_prompt("aggregate_report")
        self.prompt_sha256 = self.prompt.sha256

    def local_answer(self, item: AggregateItem) -> AggregatedReport | None:
        if not item.regions:
            raise AnswerError("no region produced a statement: nothing to aggregate")
        return None

    def request(self, item: AggregateItem) -> ChatRequest:
        regions = "\n".join(f"- {roi}: {text}" for roi, text in item.regions)
        user = self.prompt.data["user_template"].format(
            regions=regions, lesions=", ".join(item.lesions) or "none"
        )
        return ChatRequest(_messages(self.prompt, user), json_schema=self.request_schema(item))


def aggregate_item(row: dict[str, Any]) -> AggregateItem:
    regions = tuple((x["roi"], x["text"]) for x in row["roi_sentences"] if x["text"])
    return AggregateItem(str(row["study_id"]), regions, tuple(row["predicted_lesions"]))


def aggregate_reports(
    rows: list[dict[str, Any]],
    engine: Engine,
    *,
    sampling: Sampling | None = None,
    cache_dir: str | os.PathLike | None = None,
    prompt: PromptFile | None = None,
    executor: Executor | None = None,
) -> tuple[int, str, TaskStats]:
    """Replace each row's merged `report` by the LLM aggregate; a study whose answer stays
    unusable keeps the merge and gets `aggregator_error`. Returns (failures, prompt sha, stats)."""
    task = AggregatorTask(prompt)
    name = f"llm:{getattr(engine, 'backend', '?')}/{getattr(engine, 'model', '?')}"
    results: list[TaskResult[AggregateItem, AggregatedReport]] = []
    with ResultCache(cache_dir, writer="aggregate") as cache:
        stats = run_task(
            task,
            [aggregate_item(r) for r in rows],
            engine,
            cache=cache,
            sampling=sampling or Sampling(temperature=0.0, max_tokens=512),
            on_batch=results.extend,
            executor=executor,
        )
    for row, res in zip(rows, results, strict=True):
        if res.answer is not None:
            row["report"], row["aggregator"] = res.answer.report, name
        else:
            row["aggregator_error"] = (res.error or "failed")[:200]
    return stats.failed, task.prompt_sha256, stats


# ---------------------------------------------------------------------------- judge


class JudgeAnswer(BaseModel):
    """The judge's four 1-5 scores and a one-sentence rationale."""

    model_config = ConfigDict(extra="forbid")
    clinical_accuracy: Score
    findings_completeness: Score
    linguistic_quality: Score
    report_structure: Score
    rationale: str


@dataclass(frozen=True)
class JudgeItem:
    key: str
    generated: str
    reference: str


class JudgeTask(Task[JudgeItem, JudgeAnswer]):
    """Score one generated report against its reference on the four criteria."""

    name = "consistency-judge"
    answer_model = JudgeAnswer

    def __init__(self, prompt: PromptFile | None = None):
        self.prompt = prompt or load_report_prompt("consistency_judge")
        self.prompt_sha256 = self.prompt.sha256

    def local_answer(self, item: JudgeItem) -> JudgeAnswer | None:
        if not item.generated.strip():
            raise AnswerError("empty generated report: not judged")
        return None

    def request(self, item: JudgeItem) -> ChatRequest:
        user = self.prompt.data["user_template"].format(
            reference=item.reference, generated=item.generated
        )
        return ChatRequest(_messages(self.prompt, user), json_schema=self.request_schema(item))


def judge_reports(
    engine: Engine,
    pairs: list[tuple[str, str, str]],
    *,
    sampling: Sampling | None = None,
    cache_dir: str | os.PathLike | None = None,
    executor: Executor | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]], str]:
    """Judge (key, generated, reference) pairs: (per-study scores, (key, reason) failures,
    prompt sha256)."""
    task = JudgeTask()
    per: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []

    def collect(results: list[TaskResult[JudgeItem, JudgeAnswer]]) -> None:
        for r in results:
            if r.answer is None:
                failed.append((r.item.key, r.error or "failed"))
            else:
                per.append({"id": r.item.key, **r.answer.model_dump(include=set(CRITERIA))})

    with ResultCache(cache_dir, writer="judge") as cache:
        run_task(
            task,
            [JudgeItem(*p) for p in pairs],
            engine,
            cache=cache,
            on_batch=collect,
            sampling=sampling or Sampling(temperature=0.0, max_tokens=256),
            executor=executor,
        )
    return per, failed, task.prompt_sha256
