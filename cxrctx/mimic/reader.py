"""Report files → columns: the report index, and a pool that reads reports early.

The pool is started (and every chunk submitted) before the CSVs are parsed, so the main
process does its columnar work while the workers read files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import polars as pl

from cxrctx.mimic import layout as L
from cxrctx.mimic.reports import (
    META_FIELDS,
    Chunk,
    mp_context,
    process_chunk,
    quiet_fork,
    temporal_chunk,
)
from cxrctx.mimic.sections import FIELDS

SERIAL_BELOW = 2000  # reports; below this, sectioning runs in-process (no pool start-up)


class ReportReader:
    """Reads and sections reports in worker processes, started early.

    The pool is started (and every chunk submitted) before the CSVs are parsed, so the
    main process does its columnar work while the workers read files; `collect()` then
    gathers the columns in input order. Small inputs run in-process at `collect()`.
    """

    def __init__(
        self,
        root: Path,
        zip_path: Path | None,
        index: pl.DataFrame,
        workers: int,
        max_bytes: int,
    ) -> None:
        zp = str(zip_path) if zip_path is not None else None
        rels = index["report_path"].to_list()
        linked = frozenset(index.filter("linked")["report_path"].to_list())
        self.n = len(rels)
        self.serial = workers <= 1 or len(rels) < SERIAL_BELOW
        size = 2000 if self.serial else max(500, min(4000, len(rels) // (workers * 8) + 1))
        self.chunks: list[Chunk] = [
            (str(root), zp, rels[i : i + size], max_bytes, linked & set(rels[i : i + size]))
            for i in range(0, len(rels), size)
        ]
        self._stack = contextlib.ExitStack()
        self._futures: list[Future] = []
        if not self.serial:
            self._stack.enter_context(quiet_fork())
            self._pool = self._stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=mp_context())
            )
            self._futures = [self._pool.submit(process_chunk, c) for c in self.chunks]

    def collect(self, on_progress: Callable[[int], None] | None = None) -> dict[str, list]:
        cols: dict[str, list] = {k: [] for k in (*META_FIELDS, *FIELDS)}
        results = (
            (f.result() for f in self._futures)
            if not self.serial
            else map(process_chunk, self.chunks)
        )
        for res, chunk in zip(results, self.chunks, strict=True):
            for k, v in res.items():
                cols[k].extend(v)
            if on_progress:
                on_progress(len(chunk[2]))
        return cols

    def temporal(self, pairs: list[tuple[str | None, str | None]]) -> list[bool]:
        """`has_temporal_reference(findings, impression)` per pair, on the same pool.

        Asked only for the records that have no prior study (the only ones the flag can
        concern), after the prior join: most records never pay for the regexes."""
        size = 4000
        chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
        results: Iterable[list[bool]]
        if self.serial or len(pairs) < SERIAL_BELOW:
            results = map(temporal_chunk, chunks)
        else:
            results = self._pool.map(temporal_chunk, chunks)
        return [flag for chunk in results for flag in chunk]

    def close(self) -> None:
        for f in self._futures:
            f.cancel()
        self._stack.close()


def report_source(lay: L.MimicLayout, rel: str) -> str:
    """Where a report lives, for reject rows: the zip entry or the path under the root."""
    return f"{lay.reports_zip.name}: {rel}" if lay.reports_zip is not None else rel


def report_index(lay: L.MimicLayout) -> pl.DataFrame:
    """study_id, subject_id, report_path, linked for every report present (at least one)."""
    if lay.reports_zip is not None:
        idx = L.zip_report_index(lay.reports_zip)
        data = [(sid, subj, name, False) for sid, (name, subj) in idx.items()]
    else:
        assert lay.files_dir is not None
        data = [(sid, subj, rel, ln) for subj, sid, rel, ln in L.iter_report_files(lay.files_dir)]
    if not data:
        raise L.no_reports_error(lay.root, lay.reports_zip)
    df = pl.DataFrame(
        data,
        schema={
            "study_id": pl.Int64,
            "subject_id": pl.Int64,
            "report_path": pl.String,
            "linked": pl.Boolean,
        },
        orient="row",
    )
    return df.unique("study_id", keep="first").sort("study_id")
