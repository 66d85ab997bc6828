"""The label-lesions run: documents → candidates → the lesion task → label rows (+ cache).

Phases, each a small function: `iter_items` (ids, empty texts, pre-pass candidates),
`run_task` (the shared LLM runner: de-duplication, cache, repair, failure rows),
`LabelRows` (one batch of task results → label / document / failure rows, counted) and,
for `label_lesions`, streaming Parquet output and the manifest (the input, its
`--limit` and `--shard` slice come from `cxrctx.labeling.inputs`).
`label_documents` is the library core (a frame of id/text in, a LabelResult out).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import (
    check_shard_slot,
    config_hash,
    prepare_output,
    read_shards,
    write_manifest,
)
from cxrctx.labeling.inputs import DEFAULT_SECTIONS, LoadedInput, parse_shard, select_documents
from cxrctx.labeling.models import FailureRow, LabelRow, LabelRunConfig, answer_schema
from cxrctx.labeling.prompt import LabelPrompt, load_prompt, schema_sha256
from cxrctx.labeling.task import LabelItem, LesionTask
from cxrctx.llm.base import Engine, Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.runner import (
    Executor,
    TaskProgress,
    TaskResult,
    TaskStats,
    driver_engine,
    run_task,
)
from cxrctx.llm.sink import MemorySink, ShardSink, Sink, remove_stale_tmp
from cxrctx.llm.spec import EngineSpec, make_engine
from cxrctx.models import LABEL_SCHEMA_VERSION, Manifest
from cxrctx.vocab import LESIONS

if TYPE_CHECKING:
    from cxrctx.labeling.hybrid import LabelMode

NOT_CANDIDATE = "not mentioned: no expression of this lesion in the report (lexicon pre-pass)"
NO_CANDIDATE = (
    "not mentioned: the report mentions none of the 14 lesions (lexicon pre-pass; LLM not called)"
)
EMPTY, MISSING_ID, DUPLICATE_ID = "empty text", "missing id", "duplicate id (first occurrence kept)"
LABEL_ROWS_PER_SHARD = 14 * 20_000

LABEL_COLUMNS = list(LabelRow.model_fields)
DOC_SCHEMA = {
    "id": pl.String, "text_sha256": pl.String, "status": pl.String, "candidates": pl.List(pl.String),
    "llm_called": pl.Boolean, "cached": pl.Boolean, "attempts": pl.Int64, "finish_reason": pl.String,
    "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "latency_s": pl.Float64,
    "raw_text": pl.String, "error": pl.String,
}  # fmt: skip
FAIL_SCHEMA = {"id": pl.String, "reason": pl.String, "raw_text": pl.String, "attempts": pl.Int64,
               "transient": pl.Boolean}  # fmt: skip
EVIDENCE_DTYPE = pl.List(pl.Struct({"start": pl.Int64, "end": pl.Int64, "text": pl.String}))
#: Column types of `labels/part-*.parquet` (every backend and mode; LabelRow's fields).
LABEL_FRAME_SCHEMA: dict[str, Any] = {
    **{c: pl.String for c in LABEL_COLUMNS}, "llm_called": pl.Boolean, "evidence": EVIDENCE_DTYPE,
    "confidence": pl.Float64,
}  # fmt: skip
LABEL_SCHEMA = LABEL_FRAME_SCHEMA
TABLES: dict[str, dict[str, Any]] = {
    "labels": LABEL_SCHEMA,
    "documents": DOC_SCHEMA,
    "failures": FAIL_SCHEMA,
}
COUNTS = (
    "documents", "labeled", "llm_called", "no_candidate", "cached", "failed", "transient_failed",
    "empty", "missing_id", "duplicate_id", "unique_texts", "engine_requests", "repair_requests",
    "prompt_tokens", "completion_tokens",
)  # fmt: skip


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


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def iter_items(
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


def _label(item: LabelItem, lesion: str, ans: dict[str, str], source: str,
           called: bool, prov: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    return {
        "id": item.id, "lesion": lesion, "status": ans["status"], "location": ans["location"],
        "rationale": ans["reasoning"], "source": source, "llm_called": called,
        "text_sha256": item.text_sha256, **prov, "evidence": [], "clarity": None,
    }  # fmt: skip


def _doc_row(item: LabelItem, status: str, r: TaskResult | None) -> dict[str, Any]:
    return {
        "id": item.id, "text_sha256": item.text_sha256, "status": status,
        "candidates": list(item.candidates), "llm_called": bool(r and r.called),
        "cached": bool(r and r.cached), "attempts": r.attempts if r else 0,
        "finish_reason": r.finish_reason if r else None,
        "prompt_tokens": r.prompt_tokens if r else 0, "completion_tokens": r.completion_tokens if r else 0,
        "latency_s": r.latency_s if r else 0.0, "raw_text": r.raw_text if r else None,
        "error": r.error if r else None,
    }  # fmt: skip


class LabelRows:
    """Turns each batch of task results into label, document and failure rows for the sinks,
    counting every document exactly once (`counts`)."""

    def __init__(self, sinks: dict[str, Sink], provenance: dict[str, Any]):
        self.sinks = sinks
        self.prov = {k: provenance[k] for k in ("backend", "model", "prompt_sha256",
                                                 "schema_sha256", "sampling")}  # fmt: skip
        self.counts = dict.fromkeys(COUNTS, 0)
        self._not_candidate = {"status": "negative", "location": "not mentioned",
                               "reasoning": NOT_CANDIDATE}  # fmt: skip

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

    def _fail(self, fails: list[dict[str, Any]], item: LabelItem, r: TaskResult) -> None:
        fails.append(FailureRow(id=item.id, reason=r.error or "failed", raw_text=r.raw_text,
                                attempts=r.attempts, transient=r.transient).model_dump())  # fmt: skip

    def _one(self, r: TaskResult, labels: list, docs: list, fails: list) -> None:
        item: LabelItem = r.item
        c = self.counts
        if item.problem is not None:
            c[{EMPTY: "empty", MISSING_ID: "missing_id"}.get(item.problem, "duplicate_id")] += 1
            self._fail(fails, item, r)
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
            self._fail(fails, item, r)
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
    rows = LabelRows(dict(sinks or memory), _provenance(task, engine, sampling))
    with ResultCache(cache_dir, writer=cache_writer) as cache:
        stats = run_task(
            task, iter_items(docs, lp, prepass), engine, cache=cache, sampling=sampling,
            executor=executor, batch_size=batch_size, on_batch=rows, progress=progress,
            total=docs.height,
        )  # fmt: skip
    counts = {**rows.counts, "unique_texts": stats.unique_requests,
              "engine_requests": stats.requests, "repair_requests": stats.repairs,
              "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens}  # fmt: skip
    frames = {} if sinks else {name: s.frame() for name, s in memory.items()}
    return LabelResult(counts, stats.provenance, stats, labels=frames.get("labels"),
                       documents=frames.get("documents"), failures=frames.get("failures"))  # fmt: skip


def _provenance(task: LesionTask, engine: Engine, sampling: Sampling) -> dict[str, Any]:
    from cxrctx.llm.runner import engine_identity, sampling_json

    return {**engine_identity(engine), "prompt_sha256": task.prompt_sha256,
            "schema_sha256": task.schema_sha256, "sampling": sampling_json(sampling)}  # fmt: skip


# ---------------------------------------------------------------------------- the run


@dataclass
class LabelRun:
    out_dir: Path
    result: LabelResult | None
    manifest: Manifest | None
    dry_run: dict[str, Any] | None = None
    seconds: float = 0.0


def _dry_run(docs: pl.DataFrame, lp: LabelPrompt, prepass: bool) -> dict[str, Any]:
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


def claim_output(
    out: Path, run_key: dict[str, Any], loaded: LoadedInput, sh: tuple[int, int] | None,
    overwrite: bool,
) -> None:  # fmt: skip
    """The shared output policy for label-lesions, before anything is written: a folder of
    the same configuration and inputs resumes (slices of one n join it), anything else is
    refused unless `overwrite`."""
    check_shard_slot(out, sh)  # whole-input runs and slices of other n never share a folder
    key = {**run_key, "inputs": [i.sha256 for i in loaded.inputs]}
    prepare_output(out, stage="label-lesions", config_hash=config_hash(key), overwrite=overwrite)


def _open_sinks(out: Path, shard: tuple[int, int] | None) -> dict[str, ShardSink]:
    sinks = {}
    for name, schema in TABLES.items():
        remove_stale_tmp(out / name)
        rows = LABEL_ROWS_PER_SHARD if name == "labels" else LABEL_ROWS_PER_SHARD // 14
        sinks[name] = ShardSink(out / name, schema, rows_per_shard=rows,
                                part=shard[0] if shard else None,
                                of=shard[1] if shard else None, relative_to=out)  # fmt: skip
    return sinks


def label_lesions(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: Engine | EngineSpec,
    sections: tuple[str, ...] | list[str] = DEFAULT_SECTIONS,
    id_column: str = "id",
    text_column: str = "text",
    shard: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    sampling: Sampling | None = None,
    batch_size: int | None = None,
    prepass: bool = True,
    prompt: int | str | None = None,
    progress: Callable[[TaskProgress], None] | None = None,
    executor: Executor | None = None,
    mode: str = "llm",
    overwrite: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> LabelRun:
    """Label an input (build-priors dir or table file) into `out`; resumable via out/cache.

    `engine` is a built Engine or an EngineSpec (built here, after the input checks, and
    closed at the end). Rows stream to out/labels, documents, failures per batch.
    `mode`: "llm" asks the model about every candidate lesion; "cot" / "short" run the
    hybrid labeler (`cxrctx.labeling.hybrid`: rules first, the model only for ambiguous
    lesions; `prompt` is then a hybrid prompt version or file). A build-priors input is
    checked against its manifest first; `out` follows the shared output policy (another
    run's folder is refused unless `overwrite`). `cache_dir` (default out/cache) holds the
    answers a re-run reuses."""
    from cxrctx.labeling import hybrid

    t0 = time.perf_counter()
    sampling = sampling or Sampling()
    hmode = hybrid.LabelMode(mode)
    lp: Any = (
        load_prompt(prompt) if hmode is hybrid.LabelMode.llm else hybrid.load_hybrid_prompt(prompt)
    )
    sh = parse_shard(shard)
    loaded = select_documents(input_path, list(sections), id_column, text_column, limit, sh)
    out_dir = Path(out)
    if dry_run:
        info = (
            _dry_run(loaded.docs, lp, prepass)
            if hmode is hybrid.LabelMode.llm
            else hybrid.hybrid_dry_run(loaded.docs, lp, hmode)
        )
        return LabelRun(out_dir, None, None, dry_run=info, seconds=time.perf_counter() - t0)
    spec = engine if isinstance(engine, EngineSpec) else None
    key = _run_key(engine, lp, sampling, sections, id_column, text_column, limit, prepass,
                   hmode.value, loaded)  # fmt: skip
    eng = _build_engine(executor, spec) if spec is not None else engine  # checks the route
    assert not isinstance(eng, EngineSpec)
    try:
        claim_output(out_dir, key, loaded, sh, overwrite)
        return _label_into(input_path, out_dir, eng, spec, loaded, lp, sh, sampling, t0,
                           batch_size=batch_size, prepass=prepass, progress=progress,
                           executor=executor, sections=sections, id_column=id_column,
                           text_column=text_column, shard=shard, limit=limit,
                           hmode=hmode, cache_dir=cache_dir)  # fmt: skip
    except OSError as e:
        raise CxrctxError(f"{out_dir}: cannot write the outputs ({e.strerror or e})") from e
    finally:
        if spec is not None:
            eng.close()


def _build_engine(executor: Executor | None, spec: EngineSpec) -> Engine:
    """The local executor's engine (`make_engine`), or a distributed executor's stand-in."""
    if callable(getattr(executor, "driver_engine", None)):
        return driver_engine(executor, spec)
    return make_engine(spec)


def _label_into(
    input_path: Any, out_dir: Path, eng: Engine, spec: EngineSpec | None, loaded: LoadedInput,
    lp: Any, sh: tuple[int, int] | None, sampling: Sampling, t0: float, *,
    batch_size: int | None, prepass: bool, progress: Callable[[TaskProgress], None] | None,
    executor: Executor | None, sections: Any, id_column: str, text_column: str,
    shard: str | None, limit: int | None, hmode: LabelMode,
    cache_dir: str | os.PathLike | None = None,
) -> LabelRun:  # fmt: skip
    """Stream the labels into out_dir's tables, then write the manifest (last)."""
    from cxrctx.labeling import hybrid

    sinks = _open_sinks(out_dir, sh)
    try:
        writer = f"shard-{sh[0]:05d}-of-{sh[1]:05d}" if sh else "main"
        label = label_documents if hmode is hybrid.LabelMode.llm else hybrid.label_documents_hybrid
        extra = {"prepass": prepass} if hmode is hybrid.LabelMode.llm else {"mode": hmode}
        result = label(
            loaded.docs, eng, sampling=sampling, cache_dir=cache_dir or out_dir / "cache", prompt=lp,
            batch_size=batch_size, progress=progress, cache_writer=writer,
            executor=executor, sinks=dict(sinks), **extra,
        )  # fmt: skip
    except BaseException:
        for s in sinks.values():
            s.abort()
        raise
    tables = {name: s.close() for name, s in sinks.items()}
    result.out = out_dir
    cfg = _run_config(input_path, loaded, lp, sampling, result, spec, sections, id_column,
                      text_column, shard, limit, prepass)  # fmt: skip
    cfg = (
        cfg.model_copy(update={"mode": hmode.value})
        if hmode is hybrid.LabelMode.llm
        else hybrid.hybrid_config(cfg, hmode, result)
    )
    manifest = write_manifest_for(out_dir, result, cfg, loaded.inputs, tables, sh)
    return LabelRun(out_dir, result, manifest, seconds=time.perf_counter() - t0)


def _run_key(engine: Engine | EngineSpec, lp: Any, sampling: Sampling, sections: Any,
             id_column: str, text_column: str, limit: int | None, prepass: bool, mode: str,
             loaded: LoadedInput) -> dict[str, Any]:  # fmt: skip
    """What decides a run's outputs (not the shard, the input's path or the batch size)."""
    from cxrctx.llm.runner import engine_identity

    rec = loaded.kind == "records"
    return {
        "engine": engine.public() if isinstance(engine, EngineSpec) else engine_identity(engine),
        "prompt_version": lp.version, "prompt_sha256": lp.sha256, "schema_sha256": schema_sha256(),
        "sampling": sampling.as_dict(), "sections": list(sections) if rec else None,
        "id_column": None if rec else id_column, "text_column": None if rec else text_column,
        "limit": limit, "prepass": prepass, "mode": mode,
    }  # fmt: skip


def _run_config(input_path: Any, loaded: LoadedInput, lp: Any, sampling: Sampling,
                result: LabelResult, spec: EngineSpec | None, sections: Any, id_column: str,
                text_column: str, shard: str | None, limit: int | None, prepass: bool) -> LabelRunConfig:  # fmt: skip
    prov = result.provenance
    return LabelRunConfig(
        backend=prov["backend"], model=prov["model"], prompt_version=lp.version,
        prompt_sha256=lp.sha256, schema_sha256=schema_sha256(), sampling=sampling.as_dict(),
        input=str(input_path), sections=list(sections) if loaded.kind == "records" else None,
        id_column=id_column if loaded.kind == "file" else None,
        text_column=text_column if loaded.kind == "file" else None, shard=shard, limit=limit,
        batch_size=result.stats.batch_size if result.stats else 0, prepass=prepass, mode=None,
        engine_options=spec.public() if spec is not None else {"base_url": prov.get("base_url")},
    )  # fmt: skip


def write_manifest_for(
    out: Path,
    result: LabelResult,
    cfg: LabelRunConfig,
    inputs: list[Any],
    tables: dict[str, list[Any]],
    shard: tuple[int, int] | None,
) -> Manifest:
    """The run's manifest (one per shard when sharded), written last: its presence says
    the labels, documents and failures tables are complete."""
    manifest = Manifest(
        tool_version=__version__, stage="label-lesions", schema_version=LABEL_SCHEMA_VERSION,
        config=cfg.model_dump(mode="json"), inputs=inputs, shards=tables["labels"],
        tables=[*tables["documents"], *tables["failures"]], counts=result.counts,
        extra={"provenance": result.provenance},
    )  # fmt: skip
    name = (
        "manifest.json"
        if shard is None
        else f"manifest-shard-{shard[0]:05d}-of-{shard[1]:05d}.json"
    )
    write_manifest(manifest, out / name)
    return manifest
