"""The LLM labeler: documents → candidates → the lesion task → label rows (+ cache).

Phases, each a small function: `iter_label_items` (ids, empty texts, pre-pass candidates),
`run_task` (the shared LLM runner: de-duplication, cache, repair, failure rows) and
`LabelRows` (one batch of task results → label / document / failure rows, counted).
`label_documents` is the library core (a frame of id/text in, a LabelResult out, or rows
streamed to sinks); the stage (`cxrctx.labeling.stage.label_lesions`) adds the input, the
output folder and the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.labeling.models import FailureRow, answer_schema
from cxrctx.labeling.prompt import LabelPrompt, load_prompt
from cxrctx.labeling.tables import (
    COUNTS,
    DUPLICATE_ID,
    EMPTY,
    MISSING_ID,
    TABLES,
    LabelResult,
    document_row,
    model_result,
)
from cxrctx.labeling.task import LabelItem, LesionTask
from cxrctx.llm.base import PROVENANCE_COLUMNS, Engine, Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.runner import (
    Executor,
    TaskProgress,
    TaskResult,
    engine_identity,
    run_task,
    sampling_json,
)
from cxrctx.llm.sink import MemorySink, Sink
from cxrctx.llm.task import Task
from cxrctx.vocab import LESIONS

NOT_CANDIDATE = "not mentioned: no expression of this lesion in the report (lexicon pre-pass)"
NO_CANDIDATE = (
    "not mentioned: the report mentions none of the 14 lesions (lexicon pre-pass; LLM not called)"
)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def iter_label_items(
    docs: pl.DataFrame, prompt: LabelPrompt, prepass: bool = True, chunk: int = 10_000
) -> Iterator[LabelItem]:
    """One LabelItem per input row, in order; read in slices so memory stays flat.

    An empty text, a missing or a repeated id becomes an item with a `problem` (a
    failure row, never a model call); without the pre-pass every lesion is a candidate."""
    seen: set[str] = set()
    for start in range(0, docs.height, chunk):
        part = docs.slice(start, chunk)
        for doc_id, text in zip(part["id"].to_list(), part["text"].to_list(), strict=True):
            t = (text or "").strip()
            if doc_id is None or doc_id in seen:
                problem = MISSING_ID if doc_id is None else DUPLICATE_ID
                yield LabelItem("" if doc_id is None else doc_id, "", "", (), problem)
                continue
            seen.add(doc_id)
            if not t:
                yield LabelItem(doc_id, "", "", (), EMPTY)
                continue
            cands = tuple(prompt.candidates(t)) if prepass else LESIONS
            yield LabelItem(doc_id, t, _sha(t), cands)


def _label(
    item: LabelItem,
    lesion: str,
    ans: dict[str, str],
    source: str,
    called: bool,
    prov: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": item.id,
        "lesion": lesion,
        "status": ans["status"],
        "location": ans["location"],
        "rationale": ans["reasoning"],
        "source": source,
        "llm_called": called,
        "text_sha256": item.text_sha256,
        **prov,
        "evidence": [],
        "clarity": None,
    }


def _doc_row(item: LabelItem, status: str, r: TaskResult | None) -> dict[str, Any]:
    return document_row(item.id, item.text_sha256, status, item.candidates, r)


class LabelRows:
    """Turns each batch of task results into label, document and failure rows for the sinks,
    counting every document exactly once (`counts`)."""

    def __init__(self, sinks: dict[str, Sink], provenance: dict[str, Any]):
        self.sinks = sinks
        self.prov = {k: provenance[k] for k in PROVENANCE_COLUMNS}
        self.counts = dict.fromkeys(COUNTS, 0)
        self._not_candidate = {
            "status": "negative",
            "location": "not mentioned",
            "reasoning": NOT_CANDIDATE,
        }

    def __call__(self, results: list[TaskResult[LabelItem, Any]]) -> None:
        labels: list[dict[str, Any]] = []
        docs: list[dict[str, Any]] = []
        fails: list[dict[str, Any]] = []
        for r in results:
            self.counts["documents"] += 1
            self._one(r, labels, docs, fails)
        self.sinks["labels"].add(labels)
        self.sinks["documents"].add(docs)
        self.sinks["failures"].add(fails)

    def fail(self, fails: list[dict[str, Any]], item: LabelItem, r: TaskResult) -> None:
        fails.append(
            FailureRow(
                id=item.id,
                reason=r.error or "failed",
                raw_text=r.raw_text,
                attempts=r.attempts,
                transient=r.transient,
            ).model_dump()
        )

    def _one(self, r: TaskResult, labels: list, docs: list, fails: list) -> None:
        item: LabelItem = r.item
        c = self.counts
        if item.problem is not None:
            c[{EMPTY: "empty", MISSING_ID: "missing_id"}.get(item.problem, "duplicate_id")] += 1
            self.fail(fails, item, r)
            if item.problem == EMPTY:
                docs.append(_doc_row(item, "empty", None))
            return
        if not item.candidates:
            c["no_candidate"] += 1
            c["labeled"] += 1
            docs.append(_doc_row(item, "skipped", None))
            skip = {**self._not_candidate, "reasoning": NO_CANDIDATE}
            labels.extend(
                _label(item, les, skip, "no_candidate", False, self.prov) for les in LESIONS
            )
            return
        c["llm_called"] += 1
        c["cached"] += r.cached
        if r.answer is None:
            c["failed"] += 1
            c["transient_failed"] += r.transient
            self.fail(fails, item, r)
            docs.append(_doc_row(item, "failed", r))
            return
        c["labeled"] += 1
        docs.append(_doc_row(item, "labeled", r))
        ans = r.answer.model_dump(mode="json")
        for les in LESIONS:
            if les in ans:
                labels.append(_label(item, les, ans[les], "llm", True, self.prov))
            else:
                labels.append(
                    _label(item, les, self._not_candidate, "not_candidate", True, self.prov)
                )


def label_documents(
    docs: pl.DataFrame,
    engine: Engine,
    *,
    sampling: Sampling | None = None,
    cache_dir: str | os.PathLike | None = None,
    prompt: LabelPrompt | int | str | None = None,
    batch_size: int | None = None,
    prepass: bool = True,
    progress: Callable[[TaskProgress], None] | None = None,
    cache_writer: str = "main",
    executor: Executor | None = None,
    sinks: dict[str, Sink] | None = None,
) -> LabelResult:
    """Label every document of `docs` (columns `id`, `text`) with `engine`.

    Identical texts are sent once; finished results are appended to the cache under
    `cache_dir` after every batch, so a re-run (or a run after a crash) only asks the
    engine for what is missing. Documents whose answer stays invalid after one repair
    request become failure rows, not negatives. With `sinks` (name → Sink for labels,
    documents, failures) rows are streamed there per batch instead of kept in memory.
    """
    if "id" not in docs.columns or "text" not in docs.columns:
        raise CxrctxError(f"documents need columns id and text (got {', '.join(docs.columns)})")
    lp = prompt if isinstance(prompt, LabelPrompt) else load_prompt(prompt)
    docs = docs.select(pl.col("id").cast(pl.String), pl.col("text").cast(pl.String))
    memory = {name: MemorySink(schema) for name, schema in TABLES.items()}
    task = LesionTask(lp)
    sampling = sampling or Sampling()
    rows = LabelRows(dict(sinks or memory), task_provenance(task, engine, sampling))
    with ResultCache(cache_dir, writer=cache_writer) as cache:
        stats = run_task(
            task,
            iter_label_items(docs, lp, prepass),
            engine,
            cache=cache,
            sampling=sampling,
            executor=executor,
            batch_size=batch_size,
            on_batch=rows,
            progress=progress,
            total=docs.height,
        )
    return model_result(rows.counts, stats, memory if not sinks else None)


def task_provenance(task: Task, engine: Engine, sampling: Sampling) -> dict[str, Any]:
    """The provenance columns of a model's rows: engine, prompt and schema sha256, sampling."""
    return {
        **engine_identity(engine),
        "prompt_sha256": task.prompt_sha256,
        "schema_sha256": task.schema_sha256,
        "sampling": sampling_json(sampling),
    }


def llm_dry_run(docs: pl.DataFrame, lp: LabelPrompt, prepass: bool) -> dict[str, Any]:
    """What an llm run would send for the first non-empty document."""
    first = next((t for t in docs["text"].to_list() if t and t.strip()), None)
    info: dict[str, Any] = {
        "documents": docs.height,
        "schema": answer_schema(LESIONS, required=False),
    }
    if first is not None:
        cands = lp.candidates(first.strip()) if prepass else list(LESIONS)
        info["candidates"] = cands
        info["messages"] = lp.messages(first.strip(), cands)
        info["request_schema"] = answer_schema(cands)
    return info
