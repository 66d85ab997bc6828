"""The structure-reports run: records → report items → the structuring task → rows.

Phases, each a small function: `load_reports` (a build-priors output folder, or a table
file with id / findings / impression), `iter_items` (one item per record, and with
`priors=True` one per prior study that is not itself a record; missing ids, repeated ids
and empty reports become failure items), `run_task` (the shared runner: identical
texts asked once, cache, one repair with the check's reason, failure rows),
`StructuredRows` (task results → structured / failure rows, counted; in `rows.py`) and
the manifest.
`structure_reports` is the stage; `structure_items` the library core with a model,
`structure_items_rules` without one (the embedded default: `cxrctx.structure.rules`).

With a model, each item carries the rules' checked draft: the model rewrites it (prompt
v2), and an answer that fails the check after its repair falls back to the draft
(`structured_by="rules"`, `fallback_reason`; counted as `rules_fallback` and
`fallback_<reason>`), never to nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from cxrctx import jsonl
from cxrctx.errors import CxrctxError
from cxrctx.io import config_hash, input_file, open_stage, stage_inputs, write_stage_manifest
from cxrctx.llm.base import Engine, Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.runner import (
    Executor,
    TaskProgress,
    TaskStats,
    engine_identity,
    run_task,
    sampling_json,
)
from cxrctx.llm.sink import MemorySink, ShardSink, Sink
from cxrctx.llm.spec import EngineSpec, make_engine
from cxrctx.llm.task import schema_sha256_of
from cxrctx.models import Manifest
from cxrctx.output_policy import prepare_output
from cxrctx.progress import as_callback, progress_arg
from cxrctx.structure.check import CHECK_VERSION, COVERAGE_MIN, SUPPORT_MIN, WINDOW
from cxrctx.structure.rows import (
    COST,
    COUNTS,
    TABLES,
    StructuredRows,
)
from cxrctx.structure.rows import FAILURE_SCHEMA as FAILURE_SCHEMA  # re-exported
from cxrctx.structure.rows import STRUCTURED_SCHEMA as STRUCTURED_SCHEMA  # re-exported
from cxrctx.structure.rules import RULES_VERSION, structure_by_rules
from cxrctx.structure.task import (
    StructuredAnswer,
    StructureItem,
    StructurePrompt,
    StructureTask,
    load_structure_prompt,
)

STAGE = "structure-reports"
STRUCTURE_SCHEMA_VERSION = 1  # columns structured_by, fallback_reason added (additive)
ROWS_PER_SHARD = 50_000
EMPTY = "empty_report: no findings and no impression"
MISSING_ID = "missing_id: the row has no study id"
DUPLICATE_ID = "duplicate_id: the study id occurs again (first occurrence kept)"


class StructureRunConfig(BaseModel):
    """How a structure-reports run was configured (the manifest's `config`)."""

    model_config = ConfigDict(extra="forbid")

    backend: str
    model: str
    prompt_version: int
    prompt_sha256: str
    schema_sha256: str
    sampling: dict[str, Any]
    input: str
    sections: list[str]
    priors: bool
    limit: int | None
    batch_size: int
    check: dict[str, Any]
    rules_version: int = RULES_VERSION
    rewrites_draft: bool = False  # the model rewrote the rules' draft (prompt v2+)
    engine_options: dict[str, Any]


# ---------------------------------------------------------------------------- inputs


@dataclass
class LoadedReports:
    """Reports to structure: `frame` has id (str), findings, impression and, from a
    build-priors folder, `priors` (list of study_id / findings / impression)."""

    frame: pl.DataFrame
    inputs: list[Any] = field(default_factory=list)
    kind: str = "records"


def _records(p: Path) -> LoadedReports:
    """A build-priors folder, checked against its manifest (stage, schema, sha256)."""
    st = open_stage(p, "build-priors")
    files = st.shard_files()
    if not files:
        raise CxrctxError(f"{st.dir}: the build-priors manifest lists no records shards")
    lf = pl.scan_parquet(files)
    names = lf.collect_schema().names()
    missing = [c for c in ("study_id", "findings", "impression", "priors") if c not in names]
    if missing:
        raise CxrctxError(f"{files[0].parent}: records lack column(s) {', '.join(missing)}")
    prior = pl.col("priors").list.eval(
        pl.struct(
            pl.element().struct.field("study_id"),
            pl.element().struct.field("findings"),
            pl.element().struct.field("impression"),
        )
    )
    frame = lf.select(
        pl.col("study_id").cast(pl.String).alias("id"),
        pl.col("findings").cast(pl.String),
        pl.col("impression").cast(pl.String),
        prior.alias("priors"),
    ).collect()
    return LoadedReports(frame, stage_inputs(st))


def _table(p: Path, id_column: str) -> LoadedReports:
    readers: dict[str, Callable[[Path], pl.DataFrame]] = {
        ".parquet": pl.read_parquet,
        ".jsonl": jsonl.read_frame,
        ".ndjson": jsonl.read_frame,
        ".csv": lambda f: pl.read_csv(f, infer_schema=False),
    }
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise CxrctxError(
            f"{p}: unsupported input type (use a build-priors dir, .parquet, .csv or .jsonl)"
        )
    try:
        df = reader(p)
    except CxrctxError:
        raise
    except Exception as e:
        raise CxrctxError(f"{p}: cannot read ({type(e).__name__}: {str(e)[:200]})") from e
    missing = [c for c in (id_column, "findings", "impression") if c not in df.columns]
    if missing:
        raise CxrctxError(
            f"{p}: no column(s) {', '.join(missing)} (columns: {', '.join(df.columns)})"
        )
    frame = df.select(
        pl.col(id_column).cast(pl.String).alias("id"),
        pl.col("findings").cast(pl.String),
        pl.col("impression").cast(pl.String),
    )
    return LoadedReports(frame, [input_file(p, p.name)], "file")


def load_reports(path: str | os.PathLike, *, id_column: str = "id") -> LoadedReports:
    """The reports of a build-priors output folder, or of a table file (columns
    `id_column`, findings, impression)."""
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: input not found")
    return _records(p) if p.is_dir() else _table(p, id_column)


def _clean(text: str | None) -> str:
    return (text or "").strip()


def iter_items(
    frame: pl.DataFrame, priors: bool = False, chunk: int = 10_000
) -> Iterator[StructureItem]:
    """One item per report row, in order, then (with `priors`) one per prior study that is
    not a record of the input, each prior once."""
    seen: set[str] = set()
    for start in range(0, frame.height, chunk):
        part = frame.slice(start, chunk)
        for rid, f, i in zip(part["id"], part["findings"], part["impression"], strict=True):
            if rid is None or rid in seen:
                yield StructureItem(
                    rid or "", "", "", problem=MISSING_ID if rid is None else DUPLICATE_ID
                )
                continue
            seen.add(rid)
            f, i = _clean(f), _clean(i)
            yield StructureItem(rid, f, i, problem=None if f or i else EMPTY)
    if not priors or "priors" not in frame.columns:
        return
    for plist in frame["priors"].to_list():
        for p in plist or []:
            pid = None if p["study_id"] is None else str(p["study_id"])
            if pid is None or pid in seen:
                continue
            seen.add(pid)
            f, i = _clean(p["findings"]), _clean(p["impression"])
            yield StructureItem(pid, f, i, role="prior", problem=None if f or i else EMPTY)


# ---------------------------------------------------------------------------- core


@dataclass
class StructureResult:
    """Outputs of one structuring pass: counts, failures by reason code, provenance; the
    tables in memory (`frames`) for `structure_items`, on disk for `structure_reports`."""

    counts: dict[str, int]
    reasons: dict[str, int]
    provenance: dict[str, Any]
    stats: TaskStats | None = None
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    cost: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)


def _provenance(task: StructureTask, engine: Engine, sampling: Sampling) -> dict[str, Any]:
    return {
        **engine_identity(engine),
        "prompt_sha256": task.prompt_sha256,
        "schema_sha256": task.schema_sha256,
        "sampling": sampling_json(sampling),
    }


def structure_items(
    items: Iterator[StructureItem] | list[StructureItem],
    engine: Engine,
    *,
    sampling: Sampling | None = None,
    cache_dir: str | os.PathLike | None = None,
    prompt: StructurePrompt | int | str | None = None,
    batch_size: int | None = None,
    progress: Callable[[TaskProgress], None] | None = None,
    executor: Executor | None = None,
    sinks: dict[str, Sink] | None = None,
    total: int | None = None,
) -> StructureResult:
    """Structure every item with `engine`; only answers passing the faithfulness check
    become structured rows. With a rewrite prompt (the default) the model rewrites the
    rules' draft of each item, and a failing answer falls back to that draft; with a
    from-scratch prompt (v1) a failing answer is a failure row. Finished answers go to the
    cache under `cache_dir` after every batch, so a re-run asks only for what is missing."""
    sp = prompt if isinstance(prompt, StructurePrompt) else load_structure_prompt(prompt)
    task = StructureTask(sp)
    if sp.rewrites:
        items = with_drafts(items)
    sampling = sampling or Sampling(max_tokens=768)
    memory = {name: MemorySink(schema) for name, schema in TABLES.items()}
    rows = StructuredRows(dict(sinks or memory), _provenance(task, engine, sampling))
    with ResultCache(cache_dir, writer="main") as cache:
        stats = run_task(
            task,
            items,
            engine,
            cache=cache,
            sampling=sampling,
            executor=executor,
            batch_size=batch_size,
            on_batch=rows,
            progress=progress,
            total=total,
        )
    counts = {
        **rows.counts,
        "unique_texts": stats.unique_requests,
        "engine_requests": stats.requests,
        "repair_requests": stats.repairs,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
    }
    counts.update({f"failed_{k}": v for k, v in sorted(rows.reasons.items())})
    counts.update({f"fallback_{k}": v for k, v in sorted(rows.fallbacks.items())})
    frames = {} if sinks else {name: s.frame() for name, s in memory.items()}
    return StructureResult(
        counts,
        dict(rows.reasons),
        stats.provenance,
        stats,
        frames,
        dict(rows.cost),
        dict(rows.fallbacks),
    )


def with_drafts(items: Iterable[StructureItem]) -> Iterator[StructureItem]:
    """Each askable item with the rules' checked draft attached (what a model rewrites,
    and the fallback when its rewrite fails)."""
    for item in items:
        if item.problem is not None:
            yield item
            continue
        answer, check = structure_by_rules(item.findings, item.impression)
        yield replace(item, draft=answer, draft_check=check)


@lru_cache(maxsize=1)
def rules_provenance() -> dict[str, Any]:
    """Provenance of a rules row: no model, prompt or sampling; the schema it fills."""
    return {
        "backend": "rules",
        "model": f"rules-v{RULES_VERSION}",
        "prompt_sha256": None,
        "schema_sha256": schema_sha256_of(StructuredAnswer.model_json_schema()),
        "sampling": None,
    }


def _rules_batch(batch: list[StructureItem]) -> tuple[list, list, dict[str, int], dict[str, int]]:
    """Rows, failure rows, counts and failure reasons of one batch (run in a worker)."""
    rows = StructuredRows({}, rules_provenance())
    structured: list[dict[str, Any]] = []
    fails: list[dict[str, Any]] = []
    for item in with_drafts(batch):
        rows.add_rules(item, structured, fails)
    return structured, fails, rows.counts, rows.reasons


def structure_items_rules(
    items: Iterable[StructureItem],
    *,
    sinks: dict[str, Sink] | None = None,
    progress: Callable[[TaskProgress], None] | None = None,
    total: int | None = None,
    batch_size: int = 1_000,
    workers: int = 1,
) -> StructureResult:
    """Structure every item with the rules (no model): each report's checked draft becomes
    a structured row, a report whose draft fails the check a failure row. `workers` > 1
    spreads the batches over that many processes (rows keep the input order)."""
    memory = {name: MemorySink(schema) for name, schema in TABLES.items()}
    out = dict(sinks or memory)
    counts = dict.fromkeys(COUNTS, 0)
    reasons: dict[str, int] = {}
    results: Iterable[tuple[list, list, dict[str, int], dict[str, int]]]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers))
            results = pool.imap(_rules_batch, _batches(items, batch_size))
        else:
            results = map(_rules_batch, _batches(items, batch_size))
        for structured, fails, c, why in results:
            out["structured"].add(structured)
            out["failures"].add(fails)
            for k, v in c.items():
                counts[k] += v
            for k, v in why.items():
                reasons[k] = reasons.get(k, 0) + v
            if progress is not None:
                progress(TaskProgress(counts["reports"], total, 0, 0, 0, counts["failed"]))
    counts.update({f"failed_{k}": v for k, v in sorted(reasons.items())})
    frames = {} if sinks else {name: s.frame() for name, s in memory.items()}
    return StructureResult(
        counts, reasons, rules_provenance(), None, frames, dict.fromkeys(COST, 0)
    )


def _batches(items: Iterable[StructureItem], size: int) -> Iterator[list[StructureItem]]:
    batch: list[StructureItem] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------- the stage


@dataclass
class StructureRun:
    out_dir: Path
    result: StructureResult
    manifest: Manifest
    seconds: float = 0.0


def run_key(
    loaded: LoadedReports,
    engine: Engine | EngineSpec | None,
    sp: StructurePrompt | None,
    sampling: Sampling | None,
    *,
    priors: bool,
    limit: int | None,
    id_column: str,
) -> str:
    """The config hash of a run: what decides its rows (model or rules version, prompt,
    sampling, input checksums, check thresholds), not how it is executed (batch size,
    executor)."""
    if engine is None:
        who: dict[str, Any] = {"backend": "rules", "model": f"rules-v{RULES_VERSION}"}
    elif isinstance(engine, EngineSpec):
        who = {"backend": engine.backend, "model": engine.model}
    else:
        ident = engine_identity(engine)
        who = {"backend": ident.get("backend"), "model": ident.get("model")}
    return config_hash(
        {
            **who,
            "prompt_sha256": sp.sha256 if sp else None,
            "sampling": sampling.as_dict() if sampling else None,
            "rules": RULES_VERSION,
            "inputs": sorted(i.sha256 for i in loaded.inputs),
            "kind": loaded.kind,
            "id_column": id_column if loaded.kind == "file" else None,
            "priors": priors,
            "limit": limit,
            "check": [CHECK_VERSION, SUPPORT_MIN, COVERAGE_MIN, WINDOW],
        }
    )


def _open_sinks(out: Path) -> dict[str, ShardSink]:
    """One sink per table (`prepare_output` already removed a killed run's temp parts)."""
    sinks = {}
    for name, schema in TABLES.items():
        sinks[name] = ShardSink(out / name, schema, rows_per_shard=ROWS_PER_SHARD, relative_to=out)
    return sinks


@progress_arg("structure-reports")
def structure_reports(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: Engine | EngineSpec | None = None,
    priors: bool = False,
    id_column: str = "id",
    limit: int | None = None,
    sampling: Sampling | None = None,
    batch_size: int | None = None,
    prompt: int | str | None = None,
    progress: Callable[[TaskProgress], None] | bool | None = None,
    executor: Executor | None = None,
    overwrite: bool = False,
    workers: int = 1,
) -> StructureRun:
    """Structure the reports of `input_path` into `out` (structured/, failures/, cache/,
    manifest.json). Without `engine` the rules structure every report (the embedded
    default); with one (an Engine, or an EngineSpec built here after the input checks and
    closed at the end) the model rewrites the rules' draft, resumable through out/cache.
    `out` follows the shared output policy: the same configuration resumes, another
    run's folder is refused unless `overwrite`. `workers`: processes for the rules (a
    model run spreads over `executor` instead)."""
    progress = as_callback(progress)
    t0 = time.perf_counter()
    if engine is not None:
        sampling = sampling or Sampling(max_tokens=768)
    sp = load_structure_prompt(prompt) if engine is not None else None
    loaded = load_reports(input_path, id_column=id_column)
    frame = loaded.frame.head(limit) if limit is not None else loaded.frame
    out_dir = Path(out)
    key = run_key(loaded, engine, sp, sampling, priors=priors, limit=limit, id_column=id_column)
    prepare_output(out_dir, stage=STAGE, config_hash=key, overwrite=overwrite)
    sinks = _open_sinks(out_dir)
    total = None if priors else frame.height
    try:
        if engine is None:
            result = structure_items_rules(
                iter_items(frame, priors),
                sinks=dict(sinks),
                progress=progress,
                total=total,
                workers=workers,
            )
        else:
            assert sp is not None and sampling is not None
            result = _model_rows(
                frame,
                engine,
                sp,
                sampling,
                out_dir,
                dict(sinks),
                priors=priors,
                batch_size=batch_size,
                progress=progress,
                executor=executor,
                total=total,
            )
    except BaseException:
        for s in sinks.values():
            s.abort()
        raise
    tables = {name: s.close() for name, s in sinks.items()}
    cfg = _config(input_path, sp, sampling, result, engine, priors, limit)
    manifest = _write_manifest(out_dir, loaded.inputs, tables, cfg, result)
    return StructureRun(out_dir, result, manifest, seconds=time.perf_counter() - t0)


def _write_manifest(
    out_dir: Path, inputs: list, tables: dict, cfg: StructureRunConfig, result: StructureResult
) -> Manifest:
    """The run's manifest (shards, failure table, counts, provenance), written last."""
    return write_stage_manifest(
        out_dir,
        stage=STAGE,
        schema_version=STRUCTURE_SCHEMA_VERSION,
        config=cfg.model_dump(mode="json"),
        inputs=inputs,
        shards=tables["structured"],
        tables=tables["failures"],
        counts=result.counts,
        extra={
            "provenance": result.provenance,
            "failures_by_reason": result.reasons,
            "fallbacks_by_reason": result.fallbacks,
        },
    )


def _model_rows(
    frame: pl.DataFrame,
    engine: Engine | EngineSpec,
    sp: StructurePrompt,
    sampling: Sampling,
    out_dir: Path,
    sinks: dict[str, Sink],
    *,
    priors: bool,
    **run: Any,
) -> StructureResult:
    """The model's pass: build the engine from a spec (closed at the end), then
    `structure_items` into `sinks`, cached under out_dir/cache."""
    eng = make_engine(engine) if isinstance(engine, EngineSpec) else engine
    try:
        return structure_items(
            iter_items(frame, priors),
            eng,
            sampling=sampling,
            cache_dir=out_dir / "cache",
            prompt=sp,
            sinks=sinks,
            **run,
        )
    finally:
        if isinstance(engine, EngineSpec):
            eng.close()


def _config(
    input_path: Any,
    sp: StructurePrompt | None,
    sampling: Sampling | None,
    result: StructureResult,
    engine: Engine | EngineSpec | None,
    priors: bool,
    limit: int | None,
) -> StructureRunConfig:
    prov = result.provenance
    spec = engine if isinstance(engine, EngineSpec) else None
    return StructureRunConfig(
        backend=prov["backend"],
        model=prov["model"],
        prompt_version=sp.version if sp else 0,
        prompt_sha256=sp.sha256 if sp else "",
        schema_sha256=prov["schema_sha256"],
        sampling=sampling.as_dict() if sampling else {},
        input=str(input_path),
        sections=["findings", "impression"],
        priors=priors,
        limit=limit,
        batch_size=result.stats.batch_size if result.stats else 0,
        check={
            "version": CHECK_VERSION,
            "support_min": SUPPORT_MIN,
            "coverage_min": COVERAGE_MIN,
            "window": WINDOW,
        },
        rules_version=RULES_VERSION,
        rewrites_draft=bool(sp and sp.rewrites),
        engine_options=spec.public()
        if spec is not None
        else {"base_url": prov.get("base_url")}
        if engine is not None
        else {},
    )
