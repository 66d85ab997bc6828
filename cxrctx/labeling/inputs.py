"""The label-lesions input: documents (id, text) from a build-priors output or a table
file, cut to `--limit` and to one `--shard` slice i/n.

From build-priors records the text is the chosen sections (default findings and
impression). With the default sections, a study whose findings and impression are both
empty falls back to `last_paragraph` (free text after the last header, where some
reports keep their only finding), so every study with text gets labels; the `section`
column says which sections a document's text came from. A study whose only text is in
header sections (examination, indication, history, technique, comparison) is
"header_only": it is not read (an indication names the question, not a finding) but gets
14 `not_mentioned` rows with section `header_only`, the truthful reading of a report that
states no finding, and is counted and listed as such in documents/. A study with no text
at all is an "empty" document: counted and listed in failures/, never silently absent."""

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
from cxrctx.llm.base import PROVENANCE_COLUMNS
from cxrctx.vocab import HEADER_ONLY, LESIONS, SECTIONS

#: the records column the default sections fall back to (also a --sections choice)
FALLBACK_SECTION = "last_paragraph"
HEADER_ONLY_WHY = (
    "not mentioned: the report has no findings, impression or final paragraph, only header "
    "sections (an indication names the question, not a finding)"
)


@dataclass
class LoadedInput:
    """The documents (id, text), the input files for the manifest, the input kind
    ("records": a build-priors output, "file": a table), and the rows rejected for size."""

    docs: pl.DataFrame
    inputs: list[Any] = field(default_factory=list)
    kind: str = "file"
    too_large: pl.DataFrame | None = None
    max_report_bytes: int = MAX_REPORT_BYTES
    header_only: list[str] = field(default_factory=list)

    def reject_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(failure rows, document rows) of the texts over the cap: never labeled, never
        sent to a model, each counted as `too_large`."""
        fails: list[dict[str, Any]] = []
        docs: list[dict[str, Any]] = []
        rows = self.too_large.iter_rows(named=True) if self.too_large is not None else ()
        for r in rows:
            why = f"{TOO_LARGE}: {too_large_detail(r['text_bytes'], self.max_report_bytes)}"
            fails.append(
                {
                    "id": r["id"] or "",
                    "reason": why,
                    "raw_text": None,
                    "attempts": 0,
                    "transient": False,
                }
            )
            docs.append(_unread_doc(r["id"] or "", "too_large", why))
        return fails, docs

    def write_rejects(self, sinks: dict[str, Any], counts: dict[str, int]) -> None:
        """Add the over-size rows to a run's failures and documents tables and counts."""
        fails, docs = self.reject_rows()
        sinks["failures"].add(fails)
        sinks["documents"].add(docs)
        counts["too_large"] = len(fails)
        counts["documents"] = counts.get("documents", 0) + len(fails)

    def write_header_only(
        self, sinks: dict[str, Any], counts: dict[str, int], provenance: dict[str, Any]
    ) -> None:
        """Add the header-only studies: 14 `not_mentioned` rows each (section header_only,
        the run's provenance), a documents row with status header_only; they count as
        labeled documents and, apart, as `header_only`."""
        prov = {k: provenance.get(k) for k in PROVENANCE_COLUMNS}
        rows: list[dict[str, Any]] = [
            {
                "id": doc_id,
                "lesion": lesion,
                "status": "negative",
                "location": "not mentioned",
                "rationale": HEADER_ONLY_WHY,
                "source": "not_mentioned",
                "llm_called": False,
                "text_sha256": "",
                **prov,
                "evidence": [],
                "clarity": "clear",
                "confidence": None,
                "section": HEADER_ONLY,
            }
            for doc_id in self.header_only
            for lesion in LESIONS
        ]
        sinks["labels"].add(rows)
        sinks["documents"].add([_unread_doc(i, HEADER_ONLY, None) for i in self.header_only])
        n = len(self.header_only)
        counts["header_only"] = n
        for k in ("documents", "labeled"):
            counts[k] = counts.get(k, 0) + n
        counts["not_mentioned"] = counts.get("not_mentioned", 0) + n * len(LESIONS)


def _unread_doc(doc_id: str, status: str, error: str | None) -> dict[str, Any]:
    """The documents row of a document never read nor sent to a model (too large, or a
    header-only study)."""
    return {
        "id": doc_id,
        "text_sha256": "",
        "status": status,
        "candidates": [],
        "llm_called": False,
        "cached": False,
        "attempts": 0,
        "finish_reason": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "latency_s": 0.0,
        "raw_text": None,
        "error": error,
    }


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
        docs = df.select(
            pl.col("study_id").cast(pl.String).alias("id"), *section_text(df, sections)
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


def _has(s: str) -> pl.Expr:
    return pl.col(s).is_not_null() & (pl.col(s).str.strip_chars() != "")


def section_text(df: pl.DataFrame, sections: tuple[str, ...] | list[str]) -> list[pl.Expr]:
    """`text` (the sections' text, headed) and `section` (which sections had text, joined
    with "+"; null for none) of records; the default sections fall back to last_paragraph,
    and a study with text only in the other (header) sections gets section header_only
    and no text."""
    secs = list(sections)
    parts = [
        pl.when(_has(s)).then(pl.lit(f"{s.upper()}: ") + pl.col(s).str.strip_chars()) for s in secs
    ]
    names = [pl.when(_has(s)).then(pl.lit(s)) for s in secs]
    text = pl.concat_str(parts, separator="\n\n", ignore_nulls=True)
    section = pl.concat_str(names, separator="+", ignore_nulls=True)
    if tuple(secs) == DEFAULT_SECTIONS and FALLBACK_SECTION in df.columns:
        use = ~pl.any_horizontal([_has(s) for s in secs]) & _has(FALLBACK_SECTION)
        text = pl.when(use).then(pl.col(FALLBACK_SECTION).str.strip_chars()).otherwise(text)
        section = pl.when(use).then(pl.lit(FALLBACK_SECTION)).otherwise(section)
        body = [*secs, FALLBACK_SECTION]
        headers = [s for s in SECTIONS if s not in body and s in df.columns]
        if headers:
            only = ~pl.any_horizontal([_has(s) for s in body]) & pl.any_horizontal(
                [_has(s) for s in headers]
            )
            section = pl.when(only).then(pl.lit(HEADER_ONLY)).otherwise(section)
    section = pl.when(section == "").then(None).otherwise(section)
    return [text.fill_null("").alias("text"), section.alias("section")]


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
    input_path: str | os.PathLike,
    sections: list[str],
    id_column: str,
    text_column: str,
    limit: int | None,
    shard: tuple[int, int] | None,
    max_report_bytes: int = MAX_REPORT_BYTES,
) -> LoadedInput:
    """The documents one run labels: `sections` checked, the first `limit`, then the slice;
    texts over `max_report_bytes` are set apart (`too_large`) as build-priors does."""
    if max_report_bytes < 1:
        raise CxrctxError("--max-report-bytes must be >= 1")
    allowed = (*SECTIONS, FALLBACK_SECTION)
    bad = [s for s in sections if s not in allowed]
    if bad:
        raise CxrctxError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    loaded = load_documents(
        input_path, sections=sections, id_column=id_column, text_column=text_column
    )
    docs = shard_slice(loaded.docs.head(limit) if limit is not None else loaded.docs, shard)
    if "section" in docs.columns:
        header = pl.col("section") == HEADER_ONLY
        loaded.header_only = docs.filter(header)["id"].to_list()
        docs = docs.filter(~header.fill_null(False))
    loaded.docs, loaded.too_large = split_oversize(docs, "text", max_report_bytes)
    loaded.max_report_bytes = max_report_bytes
    return loaded
