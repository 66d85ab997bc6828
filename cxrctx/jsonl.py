"""JSON Lines, read and written through `jsonlines` in this one module.

Every JSONL file of the project goes through here: the LLM result cache, `records.jsonl`,
the `jsonl` export, the trainer's `metrics.jsonl`, and `.jsonl` table inputs. No other
module opens a JSONL file by hand.

Writers produce compact UTF-8 lines (`{"a":1,"b":"é"}`, keys in the order given), the bytes
polars' `write_ndjson` produced before, so released files keep their checksums.
Readers come in two kinds, for two policies:
- `read_frame` (user inputs) raises a one-line `CxrctxError` naming the file and line of the
  first bad line: nothing is silently dropped;
- `scan` (the append-only result cache) skips and counts bad lines in a `BadLines`: a torn
  last line after a kill, a blank or non-JSON line, a line that is not a JSON object; the
  caller counts the lines its own check refuses (e.g. a cache key that is not hex).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import jsonlines
import polars as pl

from cxrctx.errors import CxrctxError

Row = dict[str, Any]


@dataclass
class BadLines:
    """Lines a tolerant reader skipped, by reason."""

    torn: int = 0  # a last line without its newline: an append cut short by a kill
    invalid: int = 0  # not UTF-8, not JSON, or not a JSON object (blank lines included)
    rejected: int = 0  # a JSON object the caller's own check refused

    @property
    def total(self) -> int:
        return self.torn + self.invalid + self.rejected

    def __str__(self) -> str:
        parts = [f"{n} {what}" for what, n in vars(self).items() if n]
        return ", ".join(parts) or "none"


def writer(fh: IO[bytes], *, sort_keys: bool = False, compact: bool = True) -> jsonlines.Writer:
    """A jsonlines writer over an open binary file (closing it leaves `fh` open).

    `compact`: `{"a":1}` (the project's files); otherwise `{"a": 1}` (`json.dumps` style)."""
    return jsonlines.Writer(fh, compact=compact, sort_keys=sort_keys)


def write(path: str | os.PathLike, rows: Iterable[Row], **kw: Any) -> int:
    """Write `rows` as JSON Lines to `path` (a temp path: callers make it atomic); the count."""
    n = 0
    with open(path, "wb") as fh, writer(fh, **kw) as w:
        for row in rows:
            w.write(row)
            n += 1
    return n


def append(path: str | os.PathLike, rows: Iterable[Row], **kw: Any) -> None:
    """Append `rows` to `path` (created if missing)."""
    with open_append(path) as fh, writer(fh, **kw) as w:
        w.write_all(rows)


def open_append(path: str | os.PathLike) -> IO[bytes]:
    """`path` opened for appending; a torn last line is ended first, so that its remains
    cannot swallow the next line written."""
    fh = open(path, "ab")
    if fh.tell() > 0:
        with open(path, "rb") as r:
            r.seek(-1, os.SEEK_END)
            if r.read(1) != b"\n":
                fh.write(b"\n")
    return fh


def write_frame(df: pl.DataFrame, path: str | os.PathLike, chunk_rows: int = 10_000) -> int:
    """One JSON object per row of `df`, columns in order (temporal columns must already be
    strings: JSON has no datetime). Rows become Python objects through Arrow, a chunk at a
    time (faster than polars' `iter_rows`, bounded memory)."""
    batches = df.to_arrow().to_batches(max_chunksize=chunk_rows)
    return write(path, (row for b in batches for row in b.to_pylist()))


def scan(path: str | os.PathLike, bad: BadLines) -> Iterator[tuple[int, Row]]:
    """(byte offset, object) of each good line of `path`; bad lines are skipped and counted."""
    at = [0, 0]  # offset of the line being parsed, offset of the next line

    def complete_lines() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            for line in fh:
                at[0], at[1] = at[1], at[1] + len(line)
                if line.endswith(b"\n"):
                    yield line
                else:
                    bad.torn += 1

    reader = jsonlines.Reader(complete_lines())
    while True:
        try:
            row = reader.read(type=dict)
        except EOFError:
            return
        except jsonlines.InvalidLineError:
            bad.invalid += 1
            continue
        yield at[0], row


def read_at(fh: IO[bytes], offset: int) -> Row | None:
    """The JSON object on the line at `offset` of an open binary file; None if it is not one."""
    fh.seek(offset)
    try:
        row: Row = jsonlines.Reader([fh.readline()]).read(type=dict)
    except (jsonlines.InvalidLineError, EOFError):
        return None
    return row


def read_rows(path: str | os.PathLike, *, n_rows: int | None = None) -> list[Row]:
    """Every row of a JSONL file (blank lines skipped); a bad line is a `CxrctxError` naming
    the file and line. `n_rows`: stop after that many rows."""
    rows: list[Row] = []
    with open(path, "rb") as fh, jsonlines.Reader(fh) as reader:
        try:
            for row in reader.iter(type=dict, skip_empty=True):
                rows.append(row)
                if n_rows is not None and len(rows) >= n_rows:
                    break
        except jsonlines.InvalidLineError as e:
            why = str(e).split(" (line ")[0].split(":")[0]
            raise CxrctxError(f"{path}: line {e.lineno}: {why}") from e
    return rows


def read_frame(path: str | os.PathLike, *, n_rows: int | None = None) -> pl.DataFrame:
    """A JSONL table as a frame (column types from every row, missing keys null)."""
    rows = read_rows(path, n_rows=n_rows)
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def count_rows(path: str | os.PathLike) -> int:
    """Non-blank lines: a cheap row count for manifest checks (no parsing)."""
    with open(Path(path), "rb") as fh:
        return sum(1 for line in fh if line.strip())
