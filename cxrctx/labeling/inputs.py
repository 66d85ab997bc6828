"""The label-lesions input: documents (id, text) from a build-priors output or a table
file, cut to `--limit` and to one `--shard` slice i/n."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx import jsonl
from cxrctx.errors import CxrctxError
from cxrctx.io import input_file, open_stage
from cxrctx.labeling.models import DEFAULT_SECTIONS
from cxrctx.limits import MAX_REPORT_BYTES, TOO_LARGE, split_oversize, too_large_detail
from cxrctx.vocab import SECTIONS


@dataclass
class LoadedInput:
    """The documents (id, text), the input files for the manifest, the input kind
    ("records": a build-priors output, "file": a table), and the rows rejected for size."""

    docs: pl.DataFrame
    inputs: list[Any] = field(default_factory=list)
    kind: str = "file"
    too_large: pl.DataFrame | None = None
    max_report_bytes: int = MAX_REPORT_BYTES

    def reject_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(failure rows, document rows) of the texts over the cap: never labeled, never
        sent to a model, each counted as `too_large`."""
        fails: list[dict[str, Any]] = []
        docs: list[dict[str, Any]] = []
        rows = self.too_large.iter_rows(named=True) if self.too_large is not None else ()
        for r in rows:
            why = f"{TOO_LARGE}: {too_large_detail(r['text_bytes'], self.max_report_bytes)}"
            fails.append({"id": r["id"] or "", "reason": why, "raw_text": None, "attempts": 0,
                          "transient": False})  # fmt: skip
            docs.append({"id": r["id"] or "", "text_sha256": "", "status": "too_large",
                         "candidates": [], "llm_called": False, "cached": False, "attempts": 0,
                         "finish_reason": None, "prompt_tokens": 0, "completion_tokens": 0,
                         "latency_s": 0.0, "raw_text": None, "error": why})  # fmt: skip
        return fails, docs

    def write_rejects(self, sinks: dict[str, Any], counts: dict[str, int]) -> None:
        """Add the over-size rows to a run's failures and documents tables and counts."""
        fails, docs = self.reject_rows()
        sinks["failures"].add(fails)
        sinks["documents"].add(docs)
        counts["too_large"] = len(fails)
        counts["documents"] = counts.get("documents", 0) + len(fails)


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
        st = open_stage(p, "build-priors")  # refuses an unfinished or altered output
        files = st.shard_files()
        df = st.read()
        missing = [c for c in ("study_id", *sections) if c not in df.columns]
        if missing:
            raise CxrctxError(f"{st.dir}: records lack column(s) {', '.join(missing)}")
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
        inputs = [input_file(f, os.path.relpath(f, st.dir)) for f in files]
        return LoadedInput(docs, inputs, "records")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(p)
        elif suffix in (".csv", ".tsv"):
            df = pl.read_csv(p, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
        elif suffix in (".jsonl", ".ndjson"):
            df = jsonl.read_frame(p)
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
    """`--shard i/n` as (i, n), checked; None for the whole input."""
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


def select_documents(
    input_path: str | os.PathLike, sections: list[str], id_column: str, text_column: str,
    limit: int | None, shard: tuple[int, int] | None, max_report_bytes: int = MAX_REPORT_BYTES,
) -> LoadedInput:  # fmt: skip
    """The documents one run labels: `sections` checked, the first `limit`, then the slice;
    texts over `max_report_bytes` are set apart (`too_large`) as build-priors does."""
    if max_report_bytes < 1:
        raise CxrctxError("--max-report-bytes must be >= 1")
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise CxrctxError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    loaded = load_documents(
        input_path, sections=sections, id_column=id_column, text_column=text_column
    )
    docs = loaded.docs.head(limit) if limit is not None else loaded.docs
    loaded.docs, loaded.too_large = split_oversize(shard_slice(docs, shard), "text", max_report_bytes)
    loaded.max_report_bytes = max_report_bytes
    return loaded
