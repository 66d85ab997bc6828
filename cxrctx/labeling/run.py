"""The label-lesions run: documents → candidates → engine → validated labels (+ cache).

`label_documents` is the library core (a frame of id/text in, a LabelResult out);
`label_lesions` adds input loading, sharding, output files and the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import (
    SHARD_PATTERN,
    input_file,
    read_shards,
    shard_paths,
    write_manifest,
    write_parquet,
    write_shards,
)
from cxrctx.labeling.cache import ResultCache, cache_key
from cxrctx.labeling.models import FailureRow, LabelRow, LabelRunConfig, answer_schema
from cxrctx.labeling.parse import parse_answer
from cxrctx.labeling.prompt import LabelPrompt, load_prompt, schema_sha256
from cxrctx.llm.base import ChatRequest, Completion, Engine, Sampling
from cxrctx.models import LABEL_SCHEMA_VERSION, Manifest
from cxrctx.vocab import LESIONS

log = logging.getLogger(__name__)

DEFAULT_SECTIONS: tuple[str, ...] = ("findings", "impression")
DEFAULT_BATCH = {"llamacpp": 8, "openai": 64, "vllm": 2048, "fake": 64}
NOT_CANDIDATE = "not mentioned: no expression of this lesion in the report (lexicon pre-pass)"
NO_CANDIDATE = (
    "not mentioned: the report mentions none of the 14 lesions (lexicon pre-pass; LLM not called)"
)

LABEL_COLUMNS = [f for f in LabelRow.model_fields]
DOC_SCHEMA = {
    "id": pl.String, "text_sha256": pl.String, "status": pl.String, "candidates": pl.List(pl.String),
    "llm_called": pl.Boolean, "cached": pl.Boolean, "attempts": pl.Int64, "finish_reason": pl.String,
    "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "latency_s": pl.Float64,
    "raw_text": pl.String, "error": pl.String,
}  # fmt: skip
FAIL_SCHEMA = {"id": pl.String, "reason": pl.String, "raw_text": pl.String, "attempts": pl.Int64}
LABEL_SCHEMA = {c: (pl.Boolean if c == "llm_called" else pl.String) for c in LABEL_COLUMNS}


@dataclass
class LabelResult:
    """Outputs of one labeling pass. `labels` has 14 rows per labeled document."""

    labels: pl.DataFrame
    documents: pl.DataFrame
    failures: pl.DataFrame
    counts: dict[str, int]
    provenance: dict[str, Any]


@dataclass
class _Unique:
    text: str
    sha: str
    candidates: list[str]
    key: str
    result: dict[str, Any] | None = None
    cached: bool = False


@dataclass
class ProgressHook:
    """Called after each batch with (docs_done, docs_total, tokens_done)."""

    fn: Callable[[int, int, int], None] | None = None

    def __call__(self, done: int, total: int, tokens: int) -> None:
        if self.fn is not None:
            self.fn(done, total, tokens)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sampling_json(sampling: Sampling) -> str:
    return json.dumps(sampling.as_dict(), sort_keys=True, separators=(",", ":"))


def _attempt(
    engine: Engine,
    prompt: LabelPrompt,
    items: list[_Unique],
    sampling: Sampling,
) -> list[dict[str, Any]]:
    """Run one batch with one repair retry; return a cache entry per item."""
    reqs = []
    msgs = []
    for u in items:
        m = prompt.messages(u.text, u.candidates)
        msgs.append(m)
        reqs.append(ChatRequest(messages=m, json_schema=answer_schema(u.candidates), key=u.key))
    first = engine.complete(reqs, sampling)
    if len(first) != len(reqs):
        raise RuntimeError(f"engine returned {len(first)} completions for {len(reqs)} requests")
    entries: list[dict[str, Any]] = []
    retry_idx: list[int] = []
    reasons: list[str] = []
    for i, (u, c) in enumerate(zip(items, first, strict=True)):
        e = _entry(u, [c])
        if c.finish_reason == "error":
            reason = f"engine error: {c.error}"
            parsed = None
        else:
            parsed, reason = parse_answer(c.text, u.candidates, c.finish_reason)
        if parsed is not None:
            e.update(status="labeled", answer={k: dataclasses.asdict(v) for k, v in parsed.items()})
        else:
            e.update(status="failed", error=reason)
            retry_idx.append(i)
            reasons.append(reason or "")
        entries.append(e)
    if retry_idx:
        repair = []
        for i, reason in zip(retry_idx, reasons, strict=True):
            u, c = items[i], first[i]
            m = (
                msgs[i]
                if c.finish_reason == "error"
                else prompt.repair_messages(msgs[i], c.text, reason, u.candidates)
            )
            repair.append(ChatRequest(messages=m, json_schema=reqs[i].json_schema, key=u.key))
        # a truncated answer gets room to finish on its repair attempt
        s2 = dataclasses.replace(sampling, max_tokens=sampling.max_tokens * 2)
        second = engine.complete(repair, s2)
        for i, c in zip(retry_idx, second, strict=True):
            u = items[i]
            e = _entry(u, [first[i], c])
            if c.finish_reason == "error":
                parsed, reason = None, f"engine error: {c.error}"
            else:
                parsed, reason = parse_answer(c.text, u.candidates, c.finish_reason)
            if parsed is not None:
                e.update(
                    status="labeled", answer={k: dataclasses.asdict(v) for k, v in parsed.items()}
                )
            else:
                e.update(
                    status="failed", error=f"{reason} (after repair; first: {entries[i]['error']})"
                )
            entries[i] = e
    return entries


def _entry(u: _Unique, comps: list[Completion]) -> dict[str, Any]:
    last = comps[-1]
    return {
        "key": u.key,
        "text_sha256": u.sha,
        "candidates": u.candidates,
        "status": "failed",
        "answer": None,
        "raw_text": last.text,
        "finish_reason": last.finish_reason,
        "prompt_tokens": sum(c.prompt_tokens for c in comps),
        "completion_tokens": sum(c.completion_tokens for c in comps),
        "latency_s": round(sum(c.latency_s for c in comps), 6),
        "attempts": len(comps),
        "error": None,
    }


def label_documents(
    docs: pl.DataFrame,
    engine: Engine,
    *,
    sampling: Sampling | None = None,
    cache_dir: str | os.PathLike | None = None,
    prompt: LabelPrompt | int | str | None = None,
    batch_size: int | None = None,
    prepass: bool = True,
    progress: Callable[[int, int, int], None] | None = None,
    cache_writer: str = "main",
) -> LabelResult:
    """Label every document of `docs` (columns `id`, `text`) with `engine`.

    Identical texts are sent once; finished results are appended to the cache under
    `cache_dir` after every batch, so a re-run (or a run after a crash) only asks the
    engine for what is missing. Documents whose answer stays invalid after one repair
    retry become failure rows, not negatives.
    """
    if "id" not in docs.columns or "text" not in docs.columns:
        raise CxrctxError(f"documents need columns id and text (got {', '.join(docs.columns)})")
    sampling = sampling or Sampling()
    prompt = prompt if isinstance(prompt, LabelPrompt) else load_prompt(prompt)
    batch_size = batch_size or DEFAULT_BATCH.get(getattr(engine, "backend", ""), 16)
    schema_sha = schema_sha256()
    samp = _sampling_json(sampling)
    prov = {
        "backend": str(getattr(engine, "backend", "?")),
        "model": str(getattr(engine, "model", "?")),
        "prompt_sha256": prompt.sha256,
        "schema_sha256": schema_sha,
        "sampling": samp,
    }
    ids = docs["id"].cast(pl.String).to_list()
    texts = docs["text"].cast(pl.String).to_list()

    uniq: dict[str, _Unique] = {}
    doc_sha: list[str | None] = []
    failures: list[FailureRow] = []
    seen_ids: set[str] = set()
    dup_id: set[int] = set()
    for i, (doc_id, text) in enumerate(zip(ids, texts, strict=True)):
        t = (text or "").strip()
        if doc_id is None or doc_id in seen_ids:
            dup_id.add(i)
            doc_sha.append(None)
            continue
        seen_ids.add(doc_id)
        if not t:
            doc_sha.append(None)
            continue
        sha = _sha(t)
        doc_sha.append(sha)
        if sha not in uniq:
            cands = prompt.candidates(t) if prepass else list(LESIONS)
            key = cache_key(text_sha256=sha, prepass=prepass, **prov)
            uniq[sha] = _Unique(t, sha, cands, key)

    cache = ResultCache(cache_dir, writer=cache_writer)
    todo: list[_Unique] = []
    for u in uniq.values():
        if not u.candidates:
            continue
        hit = cache.get(u.key)
        if hit is not None:
            u.result, u.cached = hit, True
        else:
            todo.append(u)
    total = len(todo)
    done = tokens = 0
    if progress:
        progress(0, total, 0)
    try:
        for start in range(0, total, batch_size):
            batch = todo[start : start + batch_size]
            entries = _attempt(engine, prompt, batch, sampling)
            cache.put_many(entries)
            for u, e in zip(batch, entries, strict=True):
                u.result = e
                tokens += e["prompt_tokens"] + e["completion_tokens"]
            done += len(batch)
            if progress:
                progress(done, total, tokens)
    finally:
        cache.close()

    label_rows: list[dict[str, Any]] = []
    doc_rows: list[dict[str, Any]] = []
    counts = dict.fromkeys(
        (
            "documents",
            "labeled",
            "llm_called",
            "no_candidate",
            "cached",
            "failed",
            "empty",
            "duplicate_id",
            "unique_texts",
            "engine_requests",
        ),
        0,
    )
    counts["documents"] = len(ids)
    counts["unique_texts"] = len(uniq)
    counts["engine_requests"] = sum(u.result["attempts"] for u in todo if u.result)
    for i, (doc_id, sha) in enumerate(zip(ids, doc_sha, strict=True)):
        doc_id = "" if doc_id is None else doc_id
        if i in dup_id:
            counts["duplicate_id"] += 1
            failures.append(
                FailureRow(
                    id=doc_id,
                    reason="duplicate id (first occurrence kept)",
                    raw_text=None,
                    attempts=0,
                )
            )
            continue
        if sha is None:
            counts["empty"] += 1
            failures.append(FailureRow(id=doc_id, reason="empty text", raw_text=None, attempts=0))
            doc_rows.append(_doc_row(doc_id, "", "empty", [], False, False, None))
            continue
        u = uniq[sha]
        if not u.candidates:
            counts["no_candidate"] += 1
            counts["labeled"] += 1
            doc_rows.append(_doc_row(doc_id, sha, "skipped", [], False, False, None))
            for lesion in LESIONS:
                label_rows.append(
                    _label(
                        doc_id,
                        lesion,
                        "negative",
                        "not mentioned",
                        NO_CANDIDATE,
                        "no_candidate",
                        False,
                        sha,
                        prov,
                    )
                )
            continue
        e = u.result
        assert e is not None
        counts["llm_called"] += 1
        counts["cached"] += int(u.cached)
        if e["status"] != "labeled":
            counts["failed"] += 1
            failures.append(
                FailureRow(
                    id=doc_id,
                    reason=e["error"] or "failed",
                    raw_text=e["raw_text"],
                    attempts=e["attempts"],
                )
            )
            doc_rows.append(_doc_row(doc_id, sha, "failed", u.candidates, True, u.cached, e))
            continue
        counts["labeled"] += 1
        doc_rows.append(_doc_row(doc_id, sha, "labeled", u.candidates, True, u.cached, e))
        ans = e["answer"]
        for lesion in LESIONS:
            j = ans.get(lesion)
            if j is None:
                label_rows.append(
                    _label(
                        doc_id,
                        lesion,
                        "negative",
                        "not mentioned",
                        NOT_CANDIDATE,
                        "not_candidate",
                        True,
                        sha,
                        prov,
                    )
                )
            else:
                label_rows.append(
                    _label(
                        doc_id,
                        lesion,
                        j["status"],
                        j["location"],
                        j["reasoning"],
                        "llm",
                        True,
                        sha,
                        prov,
                    )
                )
    labels = (
        pl.DataFrame(label_rows, schema=LABEL_SCHEMA, orient="row")
        if label_rows
        else pl.DataFrame(schema=LABEL_SCHEMA)
    )
    documents = (
        pl.DataFrame(doc_rows, schema=DOC_SCHEMA) if doc_rows else pl.DataFrame(schema=DOC_SCHEMA)
    )
    fails = (
        pl.DataFrame([f.model_dump() for f in failures], schema=FAIL_SCHEMA)
        if failures
        else pl.DataFrame(schema=FAIL_SCHEMA)
    )
    return LabelResult(
        labels=labels, documents=documents, failures=fails, counts=counts, provenance=prov
    )


def _label(
    doc_id: str,
    lesion: str,
    status: str,
    location: str,
    rationale: str,
    source: str,
    called: bool,
    sha: str,
    prov: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": doc_id, "lesion": lesion, "status": status, "location": location, "rationale": rationale,
        "source": source, "llm_called": called, "text_sha256": sha, **prov,
    }  # fmt: skip


def _doc_row(
    doc_id: str,
    sha: str,
    status: str,
    cands: list[str],
    called: bool,
    cached: bool,
    e: dict[str, Any] | None,
) -> dict[str, Any]:
    e = e or {}
    return {
        "id": doc_id, "text_sha256": sha, "status": status, "candidates": cands, "llm_called": called,
        "cached": cached, "attempts": e.get("attempts", 0), "finish_reason": e.get("finish_reason"),
        "prompt_tokens": e.get("prompt_tokens", 0), "completion_tokens": e.get("completion_tokens", 0),
        "latency_s": e.get("latency_s", 0.0), "raw_text": e.get("raw_text"), "error": e.get("error"),
    }  # fmt: skip


# ---------------------------------------------------------------------------- inputs


@dataclass
class LoadedInput:
    docs: pl.DataFrame
    inputs: list[Any] = field(default_factory=list)
    kind: str = "file"


def load_documents(
    path: str | os.PathLike,
    *,
    sections: tuple[str, ...] | list[str] = DEFAULT_SECTIONS,
    id_column: str = "id",
    text_column: str = "text",
) -> LoadedInput:
    """Read documents (id, text) from a build-priors output dir or a Parquet/CSV/JSONL file."""
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: input not found")
    if p.is_dir():
        rec_dir = p / "records" if (p / "records").is_dir() else p
        files = shard_paths(rec_dir)
        if not files:
            raise CxrctxError(
                f"{p}: no records/part-*.parquet (expected a build-priors output directory)"
            )
        df = read_shards(rec_dir)
        missing = [c for c in ("study_id", *sections) if c not in df.columns]
        if missing:
            raise CxrctxError(f"{rec_dir}: records lack column(s) {', '.join(missing)}")
        parts = [
            pl.when(pl.col(s).is_not_null() & (pl.col(s).str.strip_chars() != ""))
            .then(pl.lit(f"{s.upper()}: ") + pl.col(s).str.strip_chars())
            .otherwise(None)
            for s in sections
        ]
        docs = df.select(
            pl.col("study_id").cast(pl.String).alias("id"),
            pl.concat_str(parts, separator="\n\n", ignore_nulls=True).alias("text"),
        )
        return LoadedInput(docs, [input_file(f, os.path.relpath(f, p)) for f in files], "records")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(p)
        elif suffix in (".csv", ".tsv"):
            df = pl.read_csv(p, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
        elif suffix in (".jsonl", ".ndjson"):
            df = pl.read_ndjson(p)
        else:
            raise CxrctxError(
                f"{p}: unsupported input type (use a build-priors dir, .parquet, .csv or .jsonl)"
            )
    except CxrctxError:
        raise
    except Exception as e:
        raise CxrctxError(f"{p}: cannot read ({type(e).__name__}: {str(e)[:200]})") from e
    for col in (id_column, text_column):
        if col not in df.columns:
            raise CxrctxError(
                f"{p}: no column {col!r} (columns: {', '.join(df.columns)}); use --id-column/--text-column"
            )
    docs = df.select(
        pl.col(id_column).cast(pl.String).alias("id"),
        pl.col(text_column).cast(pl.String).alias("text"),
    )
    return LoadedInput(docs, [input_file(p, p.name)], "file")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError as e:
        raise CxrctxError(f"--shard must look like i/n, e.g. 0/4 (got {spec!r})") from e
    if n < 1 or not 0 <= i < n:
        raise CxrctxError(f"--shard {spec}: need 0 <= i < n")
    return i, n


def shard_slice(docs: pl.DataFrame, shard: tuple[int, int] | None) -> pl.DataFrame:
    """Contiguous, deterministic slice i of n (input order); the n slices partition the input."""
    if shard is None:
        return docs
    i, n = shard
    lo, hi = i * docs.height // n, (i + 1) * docs.height // n
    return docs.slice(lo, hi - lo)


# ---------------------------------------------------------------------------- the run


@dataclass
class LabelRun:
    out_dir: Path
    result: LabelResult | None
    manifest: Manifest | None
    dry_run: dict[str, Any] | None = None
    seconds: float = 0.0


def label_lesions(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    backend: str,
    model: str,
    engine_options: dict[str, Any] | None = None,
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
    progress: Callable[[int, int, int], None] | None = None,
    engine: Engine | None = None,
) -> LabelRun:
    """Label an input (build-priors dir or table file) into OUT_DIR; resumable via OUT_DIR/cache."""
    t0 = time.perf_counter()
    sampling = sampling or Sampling()
    bad = [
        s
        for s in sections
        if s
        not in (
            "examination",
            "indication",
            "history",
            "technique",
            "comparison",
            "findings",
            "impression",
        )
    ]
    if bad:
        raise CxrctxError(f"unknown section(s) {', '.join(bad)}")
    lp = load_prompt(prompt)
    loaded = load_documents(
        input_path, sections=sections, id_column=id_column, text_column=text_column
    )
    docs = loaded.docs
    if limit is not None:
        docs = docs.head(limit)
    sh = parse_shard(shard)
    docs = shard_slice(docs, sh)
    out = Path(out_dir)
    if dry_run:
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
        return LabelRun(out, None, None, dry_run=info, seconds=time.perf_counter() - t0)

    opts = dict(engine_options or {})
    if engine is None:
        from cxrctx.llm import get_engine

        engine = get_engine(backend, model, **opts)
        own = True
    else:
        own = False
    try:
        writer = f"shard-{sh[0]:05d}-of-{sh[1]:05d}" if sh else "main"
        result = label_documents(
            docs, engine, sampling=sampling, cache_dir=out / "cache", prompt=lp, batch_size=batch_size,
            prepass=prepass, progress=progress, cache_writer=writer,
        )  # fmt: skip
    finally:
        if own:
            engine.close()
    cfg = LabelRunConfig(
        backend=backend, model=model, prompt_version=lp.version, prompt_sha256=lp.sha256,
        schema_sha256=schema_sha256(), sampling=sampling.as_dict(), input=str(input_path),
        sections=list(sections) if loaded.kind == "records" else None,
        id_column=id_column if loaded.kind == "file" else None,
        text_column=text_column if loaded.kind == "file" else None, shard=shard, limit=limit,
        batch_size=batch_size or DEFAULT_BATCH.get(backend, 16), prepass=prepass,
        engine_options={k: v for k, v in opts.items() if k not in ("responder",) and _jsonable(v)},
    )  # fmt: skip
    manifest = write_outputs(out, result, cfg, loaded.inputs, sh)
    return LabelRun(out, result, manifest, seconds=time.perf_counter() - t0)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def write_outputs(
    out: Path,
    result: LabelResult,
    cfg: LabelRunConfig,
    inputs: list[Any],
    shard: tuple[int, int] | None,
) -> Manifest:
    """labels/, documents/, failures/ (one part per shard when sharded) and the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    shards, tables = [], []
    for name, df, target in (
        ("labels", result.labels, shards),
        ("documents", result.documents, tables),
        ("failures", result.failures, tables),
    ):
        if shard is None:
            target.extend(write_shards(df, out / name, rows_per_shard=14 * 20000, relative_to=out))
        else:
            path = out / name / SHARD_PATTERN.format(shard[0])
            info = write_parquet(df, path)
            target.append(info.model_copy(update={"path": os.path.relpath(path, out)}))
    manifest = Manifest(
        tool_version=__version__,
        stage="label-lesions",
        schema_version=LABEL_SCHEMA_VERSION,
        config=cfg.model_dump(mode="json"),
        inputs=inputs,
        shards=shards,
        tables=tables,
        counts=result.counts,
        extra={"provenance": result.provenance},
    )
    name = (
        "manifest.json"
        if shard is None
        else f"manifest-shard-{shard[0]:05d}-of-{shard[1]:05d}.json"
    )
    write_manifest(manifest, out / name)
    return manifest
