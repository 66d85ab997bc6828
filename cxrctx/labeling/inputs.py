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
from cxrctx.vocab import SECTIONS


@dataclass
class LoadedInput:
    """The documents (id, text), the input files for the manifest, and the input kind
    ("records": a build-priors output, "file": a table)."""

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
    limit: int | None, shard: tuple[int, int] | None,
) -> LoadedInput:  # fmt: skip
    """The documents one run labels: `sections` checked, the first `limit`, then the slice."""
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise CxrctxError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    loaded = load_documents(
        input_path, sections=sections, id_column=id_column, text_column=text_column
    )
    docs = loaded.docs.head(limit) if limit is not None else loaded.docs
    loaded.docs = shard_slice(docs, shard)
    return loaded
