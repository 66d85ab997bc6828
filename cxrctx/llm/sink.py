"""Where a task's rows go, batch by batch: memory (library calls) or Parquet parts on disk.

`ShardSink` streams each batch as a row group into `part-NNNNN.parquet` (a temporary
file renamed into place when the part is complete), so a stage's memory does not grow
with the number of documents. Same rows and batch size in ⇒ same bytes out: the writer
options are those of `cxrctx.io.write_parquet`. `MemorySink` keeps the frames.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import polars as pl
import pyarrow.parquet as pq

from cxrctx.io import TMP_SUFFIX, host_name, sha256_file, shard_name
from cxrctx.models import ShardInfo


class Sink(Protocol):
    def add(self, rows: list[dict[str, Any]]) -> None: ...


def frame(rows: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


class MemorySink:
    """Collects the rows as polars frames (one per batch)."""

    def __init__(self, schema: dict[str, Any]):
        self.schema = schema
        self.frames: list[pl.DataFrame] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.frames.append(frame(rows, self.schema))

    def frame(self) -> pl.DataFrame:
        return pl.concat(self.frames) if self.frames else pl.DataFrame(schema=self.schema)


class ShardSink:
    """Streams rows into `directory/part-NNNNN.parquet`, a new part every `rows_per_shard`
    rows; `part` pins one part number (a `--shard i/n` slice writes exactly part i, named
    `part-0000i-of-0000n.parquet` when `of` = n is given).
    `close()` renames the parts into place and returns their ShardInfo (paths relative to
    `relative_to`); `abort()` removes the unfinished temporary file."""

    def __init__(
        self,
        directory: str | os.PathLike,
        schema: dict[str, Any],
        *,
        rows_per_shard: int = 1_000_000,
        part: int | None = None,
        of: int | None = None,
        relative_to: str | os.PathLike | None = None,
    ):
        self.dir = Path(directory)
        self.schema = schema
        self.arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
        self.rows_per_shard = rows_per_shard
        self.part = part
        self.of = of if part is not None else None
        self.base = Path(relative_to) if relative_to is not None else self.dir
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._rows = 0
        self._index = part if part is not None else 0
        self.infos: list[ShardInfo] = []
        self.dir.mkdir(parents=True, exist_ok=True)

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            final = self.dir / shard_name(self._index, self.of)
            # named like every cxrctx temp file (owner host and pid), so the output policy's
            # one stale-temp sweep (`remove_stale_tmp`) knows when its writer is gone
            self._tmp = final.with_name(
                f".{final.name}~{host_name()}~{os.getpid()}~part{TMP_SUFFIX}"
            )
            self._writer = pq.ParquetWriter(
                self._tmp,
                self.arrow_schema,
                compression="zstd",
                compression_level=3,
                use_dictionary=True,
                write_statistics=True,
                store_schema=True,
            )
            self._rows = 0
        return self._writer

    def add(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        table = frame(rows, self.schema).to_arrow().replace_schema_metadata(None)
        self._open().write_table(table.cast(self.arrow_schema))
        self._rows += table.num_rows
        if self.part is None and self._rows >= self.rows_per_shard:
            self._finish_part()

    def _finish_part(self) -> None:
        assert self._writer is not None and self._tmp is not None
        self._writer.close()
        final = self.dir / shard_name(self._index, self.of)
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, final)
        self.infos.append(
            ShardInfo(
                path=os.path.relpath(final, self.base), rows=self._rows, sha256=sha256_file(final)
            )
        )
        self._writer, self._tmp = None, None
        self._index += 1

    def close(self) -> list[ShardInfo]:
        """Finish the last part (an empty run still writes one part, so readers find the
        schema) and, when not pinned to one part, remove stale parts of a larger earlier run."""
        if self._writer is not None or not self.infos:
            self._open()
            self._finish_part()
        if self.part is None:
            keep = {Path(i.path).name for i in self.infos}
            for stale in self.dir.glob("part-*.parquet"):
                if stale.name not in keep:
                    stale.unlink()
        return self.infos

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
