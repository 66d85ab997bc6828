"""Per-report Python sectioning vs the same sectioner over whole columns (polars kernels).

    python benchmarks/section_columnar.py ROOT            # ROOT = a synthetic or real MIMIC-CXR root

Reads every files/**/s*.txt report of ROOT into memory, then times, in one process and
alternating, `cxrctx.mimic.sections.parse_report` on each text and `section_texts` below
on the whole column, checks that both give the same fields for every report, and prints
JSON. `section_texts` finds header lines with one anchored regex over all lines of all
reports, maps each *distinct* header spelling to its canonical name once, and groups
lines between headers; reports with an underscore separator line, and the
`last_paragraph` of reports without findings and impression, go through `parse_report`.
It exists to measure whether build-priors should section columnar (it does not, see
BENCHMARKS.md); it is not used by the tool.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl

from cxrctx.mimic.sections import (
    _BOTH,
    _IGNORED,
    _ONE_PARAGRAPH,
    FIELDS,
    canonical_header,
    parse_report,
)

#: Every character for which `str.isspace()` is true (Python's `\s` and `str.split()`).
_WS_CHARS = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_WS = "".join(f"\\x{{{ord(c):x}}}" for c in _WS_CHARS)
_WS_NO_NL = "".join(f"\\x{{{ord(c):x}}}" for c in _WS_CHARS if c != "\n")
_HEADER_HEAD = r"^[ \t]*([A-Z][A-Z0-9 ()/,\&'\-]{0,60}):"
_HEADER_LINE = _HEADER_HEAD + rf"(?:[{_WS_NO_NL}]|$)"
_BLANK_LINE = r"^[ \t]*$"
_PREAMBLE = ""  # name of the text before the first header


_WS_NOT_SPACE = "".join(f"\\x{{{ord(c):x}}}" for c in _WS_CHARS if c != " ")
#: Whitespace that is not already one single space (single spaces are left alone: fast).
_WS_TO_FIX = rf"[{_WS}]{{2,}}|[{_WS_NOT_SPACE}]"


def _norm_ws(expr: pl.Expr) -> pl.Expr:
    """`" ".join(text.split())` as an expression."""
    return expr.str.replace_all(_WS_TO_FIX, " ").str.strip_chars(" ")


def section_texts(texts: pl.Series) -> pl.DataFrame:
    """One row per text (same order) with the `FIELDS` columns; null text → all null."""
    t = texts.str.replace_all("\r\n", "\n", literal=True).str.replace_all("\r", "\n", literal=True)
    df = pl.DataFrame({"text": t}).with_row_index("rid")
    present = pl.col("text").is_not_null()
    separated = pl.col("text").str.contains("________", literal=True)
    single = df.filter(present & ~separated)
    simple = single.select("rid").join(_assemble(_pieces(single)), on="rid", how="left")
    fallback = df.filter(present & separated)
    # last_paragraph exists only without findings and impression: let the reference say.
    need_last = simple.filter(pl.col("findings").is_null() & pl.col("impression").is_null())
    need_last = need_last.select("rid").join(df, on="rid")
    redo = pl.concat([fallback, need_last]).unique("rid", keep="first")
    parsed = _parse_in_python(redo)
    simple = simple.join(parsed.select("rid"), on="rid", how="anti")
    out = pl.concat([simple.select("rid", *FIELDS), parsed], how="vertical_relaxed")
    return df.select("rid").join(out, on="rid", how="left", maintain_order="left").drop("rid")


def _parse_in_python(df: pl.DataFrame) -> pl.DataFrame:
    rows = [parse_report(text) for text in df["text"]]
    cols = {f: [r[i] for r in rows] for i, f in enumerate(FIELDS)}
    return pl.DataFrame(
        {"rid": df["rid"], **cols}, schema={"rid": pl.UInt32, **{f: pl.String for f in FIELDS}}
    )


def _pieces(df: pl.DataFrame) -> pl.DataFrame:
    """(rid, name, content) per non-empty section piece, in report and text order."""
    lines = df.select("rid", ("\n" + pl.col("text")).str.split("\n").alias("line")).explode("line")
    raw = lines["line"].str.extract(_HEADER_LINE, 1)
    spellings = raw.drop_nulls().unique().to_list()
    names = {h: n for h in spellings if (n := canonical_header(h)) is not None}
    hdr = raw.replace_strict(names, default=None, return_dtype=pl.String)
    first = (lines["rid"] != lines["rid"].shift(1)).fill_null(True)
    is_hdr = hdr.is_not_null()
    start = first | is_hdr
    row = pl.int_range(pl.len(), dtype=pl.UInt32)
    line = pl.col("line")
    lines = lines.with_columns(
        start.alias("start"),
        start.cum_sum().alias("piece"),
        (row - pl.when(start).then(row).forward_fill()).alias("pos"),
        pl.when(first).then(pl.lit(_PREAMBLE)).otherwise(hdr).forward_fill().alias("name"),
        # a header line's text starts after its colon, the first ':' on the line
        pl.when(is_hdr)
        .then(line.str.slice(line.str.find(":", literal=True) + 1))
        .otherwise(line)
        .alias("line"),
    )
    blank = (line.str.contains(_BLANK_LINE) & (pl.col("pos") >= 1)).cast(pl.UInt32)
    seen = blank.cum_sum()
    lines = lines.with_columns(
        (seen - pl.when(pl.col("start")).then(seen).forward_fill()).alias("blanks")
    )
    keep = ~pl.col("name").is_in(list(_ONE_PARAGRAPH)) | (pl.col("blanks") == 0)
    pieces = (
        lines.filter(keep)
        .group_by("piece", maintain_order=True)
        .agg(pl.col("rid").first(), pl.col("name").first(), line.alias("content"))
        .with_columns(pl.col("content").list.join(" "))
    )
    return pieces.with_columns(_norm_ws(pl.col("content"))).filter(
        (pl.col("content") != "") & ~pl.col("name").is_in([_PREAMBLE, _IGNORED])
    )


def _assemble(pieces: pl.DataFrame) -> pl.DataFrame:
    """Pieces → one row per report with the FIELDS columns (last_paragraph left null)."""
    joined = pieces.group_by("rid", "name", maintain_order=True).agg(
        pl.col("content").str.join(" ")
    )
    wide = joined.pivot(on="name", index="rid", values="content")
    for name in (*FIELDS, _BOTH):
        if name not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.String).alias(name))
    ind = pl.col("indication")
    reason = _norm_ws(ind.str.splitn("//", 2).struct.field("field_1"))
    return wide.select(
        pl.col("rid").cast(pl.UInt32),
        pl.col("examination"),
        ind,
        pl.when(ind.str.contains("//", literal=True) & (reason != ""))
        .then(reason)
        .alias("reason_for_exam"),
        pl.col("history"),
        pl.col("technique"),
        pl.col("comparison"),
        pl.coalesce("findings", _BOTH).alias("findings"),
        pl.coalesce("impression", _BOTH).alias("impression"),
        pl.col("addendum"),
        pl.lit(None, pl.String).alias("last_paragraph"),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    texts = [p.read_text("utf-8") for p in sorted(a.root.glob("files/p*/p*/s*.txt"))]
    column = pl.Series(texts, dtype=pl.String)
    py_s, col_s = [], []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        ref = [parse_report(t) for t in texts]
        t1 = time.perf_counter()
        got = section_texts(column)
        t2 = time.perf_counter()
        py_s.append(t1 - t0)
        col_s.append(t2 - t1)
    same = sum(tuple(r) == g for r, g in zip(ref, got.iter_rows(), strict=True))
    res = {
        "reports": len(texts),
        "python_s": round(min(py_s), 3),
        "columnar_s": round(min(col_s), 3),
        "columnar_speedup": round(min(py_s) / min(col_s), 2),
        "identical": f"{same}/{len(texts)}",
        "polars_threads": pl.thread_pool_size(),
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
