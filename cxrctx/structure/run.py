"""The structure-reports run: records → report items → the structuring task → rows.

Phases, each a small function: `load_reports` (a build-priors output folder, or a table
file with id / findings / impression), `iter_items` (one item per record, and with
`priors=True` one per prior study that is not itself a record; missing ids, repeated ids
and empty reports become failure items), `run_task` (the shared runner: identical
texts asked once, cache, one repair with the check's reason, failure rows),
`StructuredRows` (task results → structured / failure rows, counted) and the manifest.
`structure_reports` is the stage; `structure_items` the library core.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    TaskResult,
    TaskStats,
    engine_identity,
    run_task,
    sampling_json,
)
from cxrctx.llm.sink import MemorySink, ShardSink, Sink
from cxrctx.llm.spec import EngineSpec, make_engine
from cxrctx.models import Manifest
from cxrctx.output_policy import prepare_output
from cxrctx.progress import as_callback, progress_arg
from cxrctx.structure.check import CHECK_VERSION, COVERAGE_MIN, SUPPORT_MIN, WINDOW
from cxrctx.structure.task import (
    StructureItem,
    StructurePrompt,
    StructureTask,
    check_answer,
    load_structure_prompt,
    reason_code,
)
from cxrctx.vocab import SRRG_ORGAN_KEYS, SRRG_ORGANS

STAGE = "structure-reports"
STRUCTURE_SCHEMA_VERSION = 1
ROWS_PER_SHARD = 50_000
EMPTY = "empty_report: no findings and no impression"
MISSING_ID = "missing_id: the row has no study id"
DUPLICATE_ID = "duplicate_id: the study id occurs again (first occurrence kept)"
PROV = ("backend", "model", "prompt_sha256", "schema_sha256", "sampling")

STRUCTURED_SCHEMA: dict[str, Any] = {
    "id": pl.String, "study_id": pl.Int64, "role": pl.String, "text_sha256": pl.String,
    "structured_findings": pl.String, "structured_impression": pl.String,
    "structured_report": pl.String,
    **{SRRG_ORGAN_KEYS[o]: pl.List(pl.String) for o in SRRG_ORGANS},
    "impression_items": pl.List(pl.String),
    "n_bullets": pl.Int64, "n_source_sentences": pl.Int64, "min_support": pl.Float64,
    "coverage": pl.Float64, "repaired": pl.Boolean, "attempts": pl.Int64, "cached": pl.Boolean,
    "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "latency_s": pl.Float64,
    **{k: pl.String for k in PROV},
}  # fmt: skip
FAILURE_SCHEMA: dict[str, Any] = {
    "id": pl.String, "study_id": pl.Int64, "role": pl.String, "reason_code": pl.String,
    "reason": pl.String, "raw_text": pl.String, "attempts": pl.Int64, "transient": pl.Boolean,
}  # fmt: skip
COST = ("llm_documents", "llm_calls", "prompt_tokens", "output_tokens")
TABLES = {"structured": STRUCTURED_SCHEMA, "failures": FAILURE_SCHEMA}
COUNTS = (
    "reports", "records", "priors", "structured", "passed_first_time", "passed_after_repair",
    "cached", "failed", "transient_failed", "empty", "missing_id", "duplicate_id",
    "unique_texts", "engine_requests", "repair_requests", "prompt_tokens", "completion_tokens",
)  # fmt: skip


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
        pl.struct(pl.element().struct.field("study_id"), pl.element().struct.field("findings"),
                  pl.element().struct.field("impression"))
    )  # fmt: skip
    frame = lf.select(
        pl.col("study_id").cast(pl.String).alias("id"), pl.col("findings").cast(pl.String),
        pl.col("impression").cast(pl.String), prior.alias("priors"),
    ).collect()  # fmt: skip
    return LoadedReports(frame, stage_inputs(st))


def _table(p: Path, id_column: str) -> LoadedReports:
    readers: dict[str, Callable[[Path], pl.DataFrame]] = {".parquet": pl.read_parquet, ".jsonl": jsonl.read_frame, ".ndjson": jsonl.read_frame,
               ".csv": lambda f: pl.read_csv(f, infer_schema=False)}  # fmt: skip
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
        pl.col(id_column).cast(pl.String).alias("id"), pl.col("findings").cast(pl.String),
        pl.col("impression").cast(pl.String),
    )  # fmt: skip
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


# ---------------------------------------------------------------------------- rows


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
        fails.append({"id": item.id, "study_id": _study_id(item), "role": item.role,
                      "reason_code": code, "reason": reason, "raw_text": r.raw_text,
                      "attempts": r.attempts, "transient": r.transient})  # fmt: skip
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
        if r.answer is None or check is None or not check.passed:
            c["failed"] += 1
            c["transient_failed"] += r.transient
            why = check.reason if check is not None else (r.error or "failed")
            self._fail(fails, r, why)
            return
        c["structured"] += 1
        c["passed_after_repair" if r.attempts > 1 else "passed_first_time"] += 1
        rows.append(self._row(r, check.figures()))

    def _row(self, r: TaskResult, fig: dict[str, Any]) -> dict[str, Any]:
        item: StructureItem = r.item
        ans = r.answer
        assert ans is not None
        organs = ans.organs()
        return {
            "id": item.id, "study_id": _study_id(item), "role": item.role,
            "text_sha256": item.text_sha256, "structured_findings": ans.render_findings(),
            "structured_impression": ans.render_impression(),
            "structured_report": ans.render_report(),
            **{SRRG_ORGAN_KEYS[o]: organs[o] for o in SRRG_ORGANS},
            "impression_items": list(ans.impression),
            **{k: fig[k] for k in ("n_bullets", "n_source_sentences", "min_support", "coverage")},
            "repaired": r.attempts > 1, "attempts": r.attempts, "cached": r.cached,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "latency_s": r.latency_s, **self.prov,
        }  # fmt: skip


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


def _provenance(task: StructureTask, engine: Engine, sampling: Sampling) -> dict[str, Any]:
    return {**engine_identity(engine), "prompt_sha256": task.prompt_sha256,
            "schema_sha256": task.schema_sha256, "sampling": sampling_json(sampling)}  # fmt: skip


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
    become structured rows, the rest failure rows. Finished answers go to the cache
    under `cache_dir` after every batch, so a re-run asks only for what is missing."""
    sp = prompt if isinstance(prompt, StructurePrompt) else load_structure_prompt(prompt)
    task = StructureTask(sp)
    sampling = sampling or Sampling(max_tokens=768)
    memory = {name: MemorySink(schema) for name, schema in TABLES.items()}
    rows = StructuredRows(dict(sinks or memory), _provenance(task, engine, sampling))
    with ResultCache(cache_dir, writer="main") as cache:
        stats = run_task(task, items, engine, cache=cache, sampling=sampling, executor=executor,
                         batch_size=batch_size, on_batch=rows, progress=progress, total=total)  # fmt: skip
    counts = {**rows.counts, "unique_texts": stats.unique_requests, "engine_requests": stats.requests,
              "repair_requests": stats.repairs, "prompt_tokens": stats.prompt_tokens,
              "completion_tokens": stats.completion_tokens}  # fmt: skip
    counts.update({f"failed_{k}": v for k, v in sorted(rows.reasons.items())})
    frames = {} if sinks else {name: s.frame() for name, s in memory.items()}
    return StructureResult(
        counts, dict(rows.reasons), stats.provenance, stats, frames, dict(rows.cost)
    )


# ---------------------------------------------------------------------------- the stage


@dataclass
class StructureRun:
    out_dir: Path
    result: StructureResult
    manifest: Manifest
    seconds: float = 0.0


def run_key(
    loaded: LoadedReports, engine: Engine | EngineSpec, sp: StructurePrompt, sampling: Sampling,
    *, priors: bool, limit: int | None, id_column: str,
) -> str:  # fmt: skip
    """The config hash of a run: what decides its rows (model, prompt, sampling, input
    checksums, check thresholds), not how it is executed (batch size, executor)."""
    if isinstance(engine, EngineSpec):
        who: dict[str, Any] = {"backend": engine.backend, "model": engine.model}
    else:
        ident = engine_identity(engine)
        who = {"backend": ident.get("backend"), "model": ident.get("model")}
    return config_hash({
        **who, "prompt_sha256": sp.sha256, "sampling": sampling.as_dict(),
        "inputs": sorted(i.sha256 for i in loaded.inputs), "kind": loaded.kind,
        "id_column": id_column if loaded.kind == "file" else None, "priors": priors,
        "limit": limit, "check": [CHECK_VERSION, SUPPORT_MIN, COVERAGE_MIN, WINDOW],
    })  # fmt: skip


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
    engine: Engine | EngineSpec,
    priors: bool = False,
    id_column: str = "id",
    limit: int | None = None,
    sampling: Sampling | None = None,
    batch_size: int | None = None,
    prompt: int | str | None = None,
    progress: Callable[[TaskProgress], None] | bool | None = None,
    executor: Executor | None = None,
    overwrite: bool = False,
) -> StructureRun:
    """Structure the reports of `input_path` into `out` (structured/, failures/, cache/,
    manifest.json); resumable through out/cache. `engine` is an Engine or an EngineSpec
    (built here after the input checks and closed at the end). `out` follows the shared
    output policy: the same configuration resumes, another run's folder is refused unless
    `overwrite`."""
    progress = as_callback(progress)
    t0 = time.perf_counter()
    sampling = sampling or Sampling(max_tokens=768)
    sp = load_structure_prompt(prompt)
    loaded = load_reports(input_path, id_column=id_column)
    frame = loaded.frame.head(limit) if limit is not None else loaded.frame
    out_dir = Path(out)
    spec = engine if isinstance(engine, EngineSpec) else None
    key = run_key(loaded, engine, sp, sampling, priors=priors, limit=limit, id_column=id_column)
    prepare_output(out_dir, stage=STAGE, config_hash=key, overwrite=overwrite)
    eng = make_engine(spec) if spec is not None else engine
    assert not isinstance(eng, EngineSpec)
    sinks = _open_sinks(out_dir)
    try:
        result = structure_items(
            iter_items(frame, priors), eng, sampling=sampling, cache_dir=out_dir / "cache",
            prompt=sp, batch_size=batch_size, progress=progress, executor=executor,
            sinks=dict(sinks), total=None if priors else frame.height,
        )  # fmt: skip
    except BaseException:
        for s in sinks.values():
            s.abort()
        raise
    finally:
        if spec is not None:
            eng.close()
    tables = {name: s.close() for name, s in sinks.items()}
    cfg = _config(input_path, sp, sampling, result, spec, priors, limit)
    manifest = write_stage_manifest(
        out_dir,
        stage=STAGE, schema_version=STRUCTURE_SCHEMA_VERSION,
        config=cfg.model_dump(mode="json"), inputs=loaded.inputs, shards=tables["structured"],
        tables=tables["failures"], counts=result.counts,
        extra={"provenance": result.provenance, "failures_by_reason": result.reasons},
    )  # fmt: skip
    return StructureRun(out_dir, result, manifest, seconds=time.perf_counter() - t0)


def _config(input_path: Any, sp: StructurePrompt, sampling: Sampling, result: StructureResult,
            spec: EngineSpec | None, priors: bool, limit: int | None) -> StructureRunConfig:  # fmt: skip
    prov = result.provenance
    return StructureRunConfig(
        backend=prov["backend"], model=prov["model"], prompt_version=sp.version,
        prompt_sha256=sp.sha256, schema_sha256=prov["schema_sha256"], sampling=sampling.as_dict(),
        input=str(input_path), sections=["findings", "impression"], priors=priors, limit=limit,
        batch_size=result.stats.batch_size if result.stats else 0,
        check={"version": CHECK_VERSION, "support_min": SUPPORT_MIN,
               "coverage_min": COVERAGE_MIN, "window": WINDOW},
        engine_options=spec.public() if spec is not None else {"base_url": prov.get("base_url")},
    )  # fmt: skip
