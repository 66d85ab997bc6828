"""The size cap on one report's text, shared by every stage that reads report text.

MIMIC-CXR reports are a few KB. A runaway file (a 52 MB "report") costs minutes of CPU and
gigabytes of memory in the rules, and would go whole to a model server; so a text larger
than the cap is rejected row by row (counted, with a reason), never read further or sent.
build-priors applies it to report files and zip entries, label-lesions to table rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # build-priors' report workers import this module: keep it light
    import polars as pl

#: default cap of one report text, in bytes (UTF-8)
MAX_REPORT_BYTES = 1 << 20
TOO_LARGE = "report_too_large"


def too_large_detail(size: int, max_bytes: int) -> str:
    """The one reason text for an over-size report (`size` bytes)."""
    return f"larger than {max_bytes:,} bytes ({size:,})"


def split_oversize(
    df: pl.DataFrame, text_column: str, max_bytes: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows within the cap, rows over it with an added `text_bytes` column), order kept."""
    import polars as pl

    size = pl.col(text_column).str.len_bytes().fill_null(0)
    over = size > max_bytes
    return df.filter(~over), df.filter(over).with_columns(size.alias("text_bytes"))
