"""The hybrid labeler: rules first, the LLM only for the lesions the rules cannot settle.

Every document is read by the rules (`cxrctx.labeling.rules.read_report`). Lesions whose
reading is *clear* keep it (source "rules", or "not_mentioned" when the lexicon finds no
expression). The *ambiguous* ones (hedge, borderline phrase, conflicting mentions, an
unsettled scope, sides that differ) go to the model in one request per document, which
sees only their evidence sentences and the rule reading as a hint (never the whole
report) and answers in the label-lesions answer schema restricted to the asked lesions:
with a short `reasoning` first (`Labeler.cot`) or status/location only
(`Labeler.short`). Those rows say source "llm" and keep the rules' evidence offsets.

Failure policy: when the model's answer for a document stays unusable after the one
repair request, the document is a failure row (like the LLM-only path); it never falls
back silently to the rule reading, and its other lesions are not written either, so a
labeled document always has its 14 rows decided as documented. A re-run retries it
(transient errors are not cached).

The prompt is versioned data (`prompts/label_lesions/hybrid_vN.json`); every LLM row
records its sha256, the answer schema's sha256, the model and the sampling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.labeling.llm_labeler import LabelRows, iter_label_items, task_provenance
from cxrctx.labeling.models import (
    LabelAnswer,
    Labeler,
    LabelRunConfig,
    RulesReading,
    answer_schema,
)
from cxrctx.labeling.parse import validate_lesion_answer
from cxrctx.labeling.rules import read_report, reading_rows, rules_provenance
from cxrctx.labeling.tables import TABLES, LabelResult, document_row, model_result
from cxrctx.labeling.task import LabelItem
from cxrctx.llm.base import ChatRequest, Engine, Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.prompt import PromptFile, load_prompt_file
from cxrctx.llm.runner import Executor, TaskProgress, TaskResult, run_task
from cxrctx.llm.sink import MemorySink, Sink
from cxrctx.llm.task import REPAIR_ECHO_CHARS, AnswerError, Task, parse_json_object
from cxrctx.llm.task import schema_sha256_of as _schema_sha
from cxrctx.vocab import LESIONS, lexicon

__all__ = [
    "HybridItem",
    "HybridPrompt",
    "HybridTask",
    "label_documents_hybrid",
    "load_hybrid_prompt",
]

DEFAULT_HYBRID_VERSION = 1
SHORT_DESCRIPTION = "One entry per lesion asked: its status and location only."
HYBRID_COUNTS = ("rules", "llm", "not_mentioned", "ambiguous", "llm_changed", "llm_failed_lesions")


# ---------------------------------------------------------------------------- prompt


@dataclass(frozen=True)
class HybridPrompt(PromptFile):
    """A loaded hybrid prompt version (see prompts/label_lesions/hybrid_v1.json)."""

    def system(self, mode: Labeler) -> str:
        return "\n".join([*self.data["system"], self.data["modes"][mode.value]])

    def block(self, reading: RulesReading, lesion: str) -> str:
        r = reading.get(lesion)
        why = self.data["reasons"]
        sentences = "\n".join(f"- {' '.join((e.text or '').split())}" for e in r.evidence)
        return self.data["lesion_template"].format(
            lesion=lesion,
            status=r.status,
            location=r.location,
            reasons="; ".join(why.get(x, x) for x in r.reasons) or "unclear",
            sentences=sentences,
        )

    def messages(self, item: HybridItem, mode: Labeler) -> list[dict[str, str]]:
        assert item.reading is not None
        blocks = "\n".join(self.block(item.reading, les) for les in item.asked)
        user = self.data["user_template"].format(blocks=blocks, lesions=", ".join(item.asked))
        return [{"role": "system", "content": self.system(mode)}, {"role": "user", "content": user}]


def load_hybrid_prompt(version_or_path: int | str | Path | None = None) -> HybridPrompt:
    """`prompts/label_lesions/hybrid_v{N}.json` (default the current version) or a file."""
    v = DEFAULT_HYBRID_VERSION if version_or_path is None else version_or_path
    need = ("system", "modes", "reasons", "lesion_template", "user_template", "repair_template")
    f = load_prompt_file("label_lesions", v, stem="hybrid_v", required=need)
    if set(f.data["modes"]) < {"cot", "short"}:
        raise CxrctxError(f"{f.path}: hybrid prompt lacks modes cot/short")
    return HybridPrompt(data=f.data, sha256=f.sha256, path=f.path)


# ---------------------------------------------------------------------------- task


@dataclass(frozen=True, eq=False)
class HybridItem(LabelItem):
    """A document with its rule reading; `asked` = the ambiguous lesions (model questions).
    `candidates` are the lesions the lexicon finds mentioned."""

    reading: RulesReading | None = None
    asked: tuple[str, ...] = ()


def short_schema(lesions: tuple[str, ...]) -> dict[str, Any]:
    """The answer schema for `lesions` without the reasoning field (short mode)."""
    schema = answer_schema(lesions)
    props = {}
    for name, entry in schema["properties"].items():
        e = {k: v for k, v in entry.items() if k != "description"}
        e["properties"] = {k: v for k, v in e["properties"].items() if k != "reasoning"}
        e["required"] = [k for k in e.get("required", []) if k != "reasoning"]
        props[name] = e
    return {**schema, "description": SHORT_DESCRIPTION, "properties": props}


class HybridTask(Task[HybridItem, LabelAnswer]):
    """Status and location of a document's ambiguous lesions, from their evidence sentences."""

    name = "label-lesions-hybrid"
    answer_model = LabelAnswer

    def __init__(self, prompt: HybridPrompt, mode: Labeler = Labeler.cot):
        if not mode.hybrid:
            raise ValueError("HybridTask runs the hybrid modes (cot, short) only")
        self.prompt = prompt
        self.mode = mode
        self.prompt_sha256 = prompt.sha256

    @property
    def schema_sha256(self) -> str:
        return _schema_sha(self._schema(tuple(LESIONS), required=False))

    def _schema(self, lesions: tuple[str, ...], required: bool = True) -> dict[str, Any]:
        schema = answer_schema(lesions) if self.mode is Labeler.cot else short_schema(lesions)
        return schema if required else {**schema, "required": []}

    def local_answer(self, item: HybridItem) -> LabelAnswer | None:
        if item.problem is not None:
            raise AnswerError(item.problem)
        return None if item.asked else LabelAnswer({})

    def request(self, item: HybridItem) -> ChatRequest:
        return ChatRequest(
            messages=self.prompt.messages(item, self.mode), json_schema=self._schema(item.asked)
        )

    def parse(self, item: HybridItem, text: str, finish_reason: str = "stop") -> LabelAnswer:
        return self._validate(parse_json_object(text, finish_reason), item.asked)

    def _validate(self, obj: Any, asked: tuple[str, ...]) -> LabelAnswer:
        if self.mode is Labeler.short and isinstance(obj, dict):
            obj = {
                k: ({"reasoning": "", **v} if isinstance(v, dict) else v) for k, v in obj.items()
            }
        return validate_lesion_answer(obj, asked)

    def repair(
        self, item: HybridItem, request: ChatRequest, text: str, reason: str
    ) -> ChatRequest | None:
        note = self.prompt.data["repair_template"].format(
            reason=reason, lesions=", ".join(item.asked)
        )
        msgs = [
            *request.messages,
            {"role": "assistant", "content": text[:REPAIR_ECHO_CHARS]},
            {"role": "user", "content": note},
        ]
        return ChatRequest(messages=msgs, json_schema=request.json_schema, key=request.key)

    def load_answer(self, item: HybridItem, data: Any) -> LabelAnswer:
        try:
            return self._validate(data, item.asked)
        except AnswerError as e:
            raise ValueError(e.reason) from e


def iter_hybrid_items(docs: pl.DataFrame) -> Iterator[HybridItem]:
    """One HybridItem per input row (ids, empty texts as in label-lesions), read by the rules."""
    for it in iter_label_items(docs, cast(Any, None), prepass=False):
        if it.problem is not None:
            yield HybridItem(it.id, "", "", (), it.problem)
            continue
        reading = read_report(it.text)
        mentioned = tuple(r.lesion for r in reading.lesions if r.mentioned)
        yield HybridItem(
            it.id, it.text, it.text_sha256, mentioned, None, reading, tuple(reading.ambiguous())
        )


# ---------------------------------------------------------------------------- rows


class HybridRows(LabelRows):
    """Batch of hybrid results → 14 label rows per document (rules rows, with the asked
    lesions replaced by the model's answers), document and failure rows, counted."""

    def __init__(self, sinks: dict[str, Sink], provenance: dict[str, Any], mode: Labeler):
        super().__init__(sinks, provenance)
        self.rules_prov = rules_provenance()
        self.mode = mode
        self.counts.update(dict.fromkeys(HYBRID_COUNTS, 0))

    def _one(self, r: TaskResult, labels: list, docs: list, fails: list) -> None:
        item: HybridItem = r.item
        if item.problem is not None:
            super()._one(r, labels, docs, fails)
            return
        c = self.counts
        assert item.reading is not None
        if item.asked:
            c["llm_called"] += 1
            c["cached"] += r.cached
        if r.answer is None:
            c["failed"] += 1
            c["transient_failed"] += r.transient
            c["llm_failed_lesions"] += len(item.asked)
            self.fail(fails, item, r)
            docs.append(document_row(item.id, item.text_sha256, "failed", item.candidates, r))
            return
        c["labeled"] += 1
        c["no_candidate"] += int(not item.candidates)
        docs.append(
            document_row(
                item.id, item.text_sha256, "labeled", item.candidates, r if item.asked else None
            )
        )
        answers = r.answer.model_dump(mode="json")
        for row in reading_rows(item.id, item.reading, item.text_sha256, self.rules_prov):
            if row["clarity"] == "ambiguous":
                c["ambiguous"] += 1
            if row["lesion"] in item.asked:
                row = self._llm_row(row, answers[row["lesion"]])
            c[row["source"]] += 1
            labels.append(row)

    def _llm_row(self, row: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any]:
        if (ans["status"], ans["location"]) != (row["status"], row["location"]):
            self.counts["llm_changed"] += 1
        why = ans.get("reasoning") or f"llm ({self.mode.value} mode, no reasoning asked)"
        return {
            **row,
            **self.prov,
            "status": ans["status"],
            "location": ans["location"],
            "rationale": why,
            "source": "llm",
            "llm_called": True,
        }


# ---------------------------------------------------------------------------- library


def label_documents_hybrid(
    docs: pl.DataFrame,
    engine: Engine,
    *,
    mode: Labeler | str = Labeler.cot,
    sampling: Sampling | None = None,
    cache_dir: str | os.PathLike | None = None,
    prompt: HybridPrompt | int | str | None = None,
    batch_size: int | None = None,
    progress: Callable[[TaskProgress], None] | None = None,
    cache_writer: str = "main",
    executor: Executor | None = None,
    sinks: dict[str, Sink] | None = None,
) -> LabelResult:
    """Label every document of `docs` (columns id, text): rules, then `engine` for the
    ambiguous lesions only. Same tables as `label_documents`; counts add rules / llm /
    not_mentioned (label rows per path), ambiguous, llm_changed and llm_failed_lesions."""
    if "id" not in docs.columns or "text" not in docs.columns:
        raise CxrctxError(f"documents need columns id and text (got {', '.join(docs.columns)})")
    hm = Labeler(mode)
    hp = prompt if isinstance(prompt, HybridPrompt) else load_hybrid_prompt(prompt)
    docs = docs.select(pl.col("id").cast(pl.String), pl.col("text").cast(pl.String))
    memory = {name: MemorySink(schema) for name, schema in TABLES.items()}
    task = HybridTask(hp, hm)
    sampling = sampling or Sampling()
    rows = HybridRows(dict(sinks or memory), task_provenance(task, engine, sampling), hm)
    with ResultCache(cache_dir, writer=cache_writer) as cache:
        stats = run_task(
            task,
            iter_hybrid_items(docs),
            engine,
            cache=cache,
            sampling=sampling,
            executor=executor,
            batch_size=batch_size,
            on_batch=cast(Any, rows),
            progress=progress,
            total=docs.height,
        )
    return model_result(rows.counts, stats, memory if not sinks else None)


def hybrid_dry_run(docs: pl.DataFrame, hp: HybridPrompt, mode: Labeler) -> dict[str, Any]:
    """What a hybrid run would send for the first document with an ambiguous lesion."""
    task = HybridTask(hp, mode)
    info: dict[str, Any] = {"documents": docs.height, "schema": task._schema(LESIONS, False)}
    for item in iter_hybrid_items(docs.head(1000)):
        if item.asked:
            info["candidates"] = list(item.asked)
            info["messages"] = hp.messages(item, mode)
            info["request_schema"] = task._schema(item.asked)
            break
    return info


def hybrid_config(cfg: LabelRunConfig, mode: Labeler, result: LabelResult) -> LabelRunConfig:
    """The run config of a hybrid run: mode, lexicon, the hybrid answer schema's sha256."""
    lex = lexicon()
    return cfg.model_copy(
        update={
            "mode": mode.value,
            "lexicon_version": lex.version,
            "lexicon_sha256": lex.sha256,
            "schema_sha256": result.provenance.get("schema_sha256", cfg.schema_sha256),
        }
    )
