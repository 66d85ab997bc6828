"""The output contract of every labeler (rules, llm, hybrid): the label-lesions tables.

A label-lesions folder holds `labels/` (14 rows per labeled document), `documents/` (one row
per input document), `failures/` (documents that got no labels, and why) and, written last,
the manifest; this module owns their column types, the counts, the in-memory result
(`LabelResult`), the streaming sinks, the output policy and the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx.io import check_shard_slot, config_hash, read_shards, write_stage_manifest
from cxrctx.labeling.inputs import LoadedInput
from cxrctx.labeling.models import LabelRow, LabelRunConfig
from cxrctx.llm.runner import TaskResult, TaskStats
from cxrctx.llm.sink import ShardSink
from cxrctx.models import LABEL_SCHEMA_VERSION, Manifest
from cxrctx.output_policy import prepare_output

STAGE = "label-lesions"
#: Failure reasons of documents that are never labeled (no model call).
EMPTY, MISSING_ID, DUPLICATE_ID = "empty text", "missing id", "duplicate id (first occurrence kept)"
LABEL_ROWS_PER_SHARD = 14 * 20_000

LABEL_COLUMNS = list(LabelRow.model_fields)
DOC_SCHEMA = {
    "id": pl.String,
    "text_sha256": pl.String,
    "status": pl.String,
    "candidates": pl.List(pl.String),
    "llm_called": pl.Boolean,
    "cached": pl.Boolean,
    "attempts": pl.Int64,
    "finish_reason": pl.String,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "latency_s": pl.Float64,
    "raw_text": pl.String,
    "error": pl.String,
}
FAIL_SCHEMA = {
    "id": pl.String,
    "reason": pl.String,
    "raw_text": pl.String,
    "attempts": pl.Int64,
    "transient": pl.Boolean,
}
EVIDENCE_DTYPE = pl.List(pl.Struct({"start": pl.Int64, "end": pl.Int64, "text": pl.String}))
#: Column types of `labels/part-*.parquet` (every labeler; LabelRow's fields).
LABEL_FRAME_SCHEMA: dict[str, Any] = {
    **{c: pl.String for c in LABEL_COLUMNS},
    "llm_called": pl.Boolean,
    "evidence": EVIDENCE_DTYPE,
    "confidence": pl.Float64,
}
LABEL_SCHEMA = LABEL_FRAME_SCHEMA
TABLES: dict[str, dict[str, Any]] = {
    "labels": LABEL_SCHEMA,
    "documents": DOC_SCHEMA,
    "failures": FAIL_SCHEMA,
}
COUNTS = (
    "documents",
    "labeled",
    "llm_called",
    "no_candidate",
    "cached",
    "failed",
    "transient_failed",
    "empty",
    "missing_id",
    "duplicate_id",
    "unique_texts",
    "engine_requests",
    "repair_requests",
    "prompt_tokens",
    "completion_tokens",
)


class LabelResult:
    """Outputs of one labeling pass. `labels` has 14 rows per labeled document.

    The tables are in memory for `label_documents`; for `label_lesions` they were
    streamed to OUT and are read back from there on first access."""

    def __init__(
        self,
        counts: dict[str, int],
        provenance: dict[str, Any],
        stats: TaskStats | None = None,
        *,
        labels: pl.DataFrame | None = None,
        documents: pl.DataFrame | None = None,
        failures: pl.DataFrame | None = None,
        out: Path | None = None,
    ):
        self.counts = counts
        self.provenance = provenance
        self.stats = stats
        self.out = out
        given = {"labels": labels, "documents": documents, "failures": failures}
        self.frames = {k: v for k, v in given.items() if v is not None}

    def table(self, name: str) -> pl.DataFrame:
        if name not in self.frames:
            if self.out is None:
                return pl.DataFrame(schema=TABLES[name])
            self.frames[name] = read_shards(self.out / name)
        return self.frames[name]

    @property
    def labels(self) -> pl.DataFrame:
        return self.table("labels")

    @property
    def documents(self) -> pl.DataFrame:
        return self.table("documents")

    @property
    def failures(self) -> pl.DataFrame:
        return self.table("failures")


def model_result(
    row_counts: dict[str, int], stats: TaskStats, memory: dict[str, Any] | None
) -> LabelResult:
    """A model pass's result: the row counts plus the task layer's request and token counts;
    the tables come from `memory` sinks when nothing was streamed to OUT."""
    counts = {
        **row_counts,
        "unique_texts": stats.unique_requests,
        "engine_requests": stats.requests,
        "repair_requests": stats.repairs,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
    }
    frames = {name: s.frame() for name, s in (memory or {}).items()}
    return LabelResult(
        counts,
        stats.provenance,
        stats,
        labels=frames.get("labels"),
        documents=frames.get("documents"),
        failures=frames.get("failures"),
    )


@dataclass
class LabelRun:
    """What `label_lesions` did: the folder, the result and manifest (None for a dry run,
    whose `dry_run` says what would be sent or read) and the wall time."""

    out_dir: Path
    result: LabelResult | None
    manifest: Manifest | None
    dry_run: dict[str, Any] | None = None
    seconds: float = 0.0


def document_row(
    doc_id: str,
    text_sha256: str,
    status: str,
    candidates: list[str] | tuple[str, ...],
    r: TaskResult | None = None,
) -> dict[str, Any]:
    """One `documents/` row; `r` is the model call's result (None: no call was made)."""
    return {
        "id": doc_id,
        "text_sha256": text_sha256,
        "status": status,
        "candidates": list(candidates),
        "llm_called": bool(r and r.called),
        "cached": bool(r and r.cached),
        "attempts": r.attempts if r else 0,
        "finish_reason": r.finish_reason if r else None,
        "prompt_tokens": r.prompt_tokens if r else 0,
        "completion_tokens": r.completion_tokens if r else 0,
        "latency_s": r.latency_s if r else 0.0,
        "raw_text": r.raw_text if r else None,
        "error": r.error if r else None,
    }


def claim_output(
    out: Path,
    run_key: dict[str, Any],
    loaded: LoadedInput,
    sh: tuple[int, int] | None,
    overwrite: bool,
) -> None:
    """The shared output policy for label-lesions, before anything is written: a folder of
    the same configuration and inputs resumes (slices of one n join it), anything else is
    refused unless `overwrite`."""
    check_shard_slot(out, sh)  # whole-input runs and slices of other n never share a folder
    key = {**run_key, "inputs": [i.sha256 for i in loaded.inputs]}
    prepare_output(
        out,
        stage=STAGE,
        config_hash=config_hash(key),
        overwrite=overwrite,
        slot=f"shard-{sh[0]}-of-{sh[1]}" if sh else None,
    )  # slices share OUT


def open_sinks(out: Path, shard: tuple[int, int] | None) -> dict[str, ShardSink]:
    """One streaming Parquet sink per table under `out` (part i of n for a shard slice);
    `claim_output` already removed the temp parts a killed run left."""
    sinks = {}
    for name, schema in TABLES.items():
        rows = LABEL_ROWS_PER_SHARD if name == "labels" else LABEL_ROWS_PER_SHARD // 14
        sinks[name] = ShardSink(
            out / name,
            schema,
            rows_per_shard=rows,
            part=shard[0] if shard else None,
            of=shard[1] if shard else None,
            relative_to=out,
        )
    return sinks


def write_label_manifest(
    out: Path,
    result: LabelResult,
    cfg: LabelRunConfig,
    inputs: list[Any],
    tables: dict[str, list[Any]],
    shard: tuple[int, int] | None,
) -> Manifest:
    """The run's manifest (one per shard when sharded), written last: its presence says
    the labels, documents and failures tables are complete."""
    name = (
        "manifest.json"
        if shard is None
        else f"manifest-shard-{shard[0]:05d}-of-{shard[1]:05d}.json"
    )
    return write_stage_manifest(
        out,
        name=name,
        stage=STAGE,
        schema_version=LABEL_SCHEMA_VERSION,
        config=cfg.model_dump(mode="json"),
        inputs=inputs,
        shards=tables["labels"],
        tables=[*tables["documents"], *tables["failures"]],
        counts=result.counts,
        extra={"provenance": result.provenance},
    )
