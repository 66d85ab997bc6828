"""Report files → one table: the report index and every report's sections, read early.

The pool is started (and every chunk submitted) before the CSVs are parsed, so the main
process does its columnar work while the workers list patient folders and read files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import polars as pl

from cxrctx.mimic import layout as L
from cxrctx.mimic.reports import (
    INDEX_FIELDS,
    META_FIELDS,
    mp_context,
    quiet_fork,
    read_entries,
    read_folders,
)
from cxrctx.mimic.sections import FIELDS

#: Below this many units (patient folders, or zip entries), reading runs in-process at
#: `collect()`: starting a pool costs more than it saves.
SERIAL_BELOW = 600

#: Column types of the table `collect()` returns.
REPORT_SCHEMA: dict[str, type[pl.DataType]] = {
    "study_id": pl.Int64,
    "subject_id": pl.Int64,
    "report_path": pl.String,
    **{k: pl.String for k in (*META_FIELDS, *FIELDS)},
}


class ReportReader:
    """Lists, reads and sections reports in worker processes, started at construction.

    From a files/ tree the unit of work is a patient folder (the workers list it, so the
    ~65k-folder walk runs in parallel with everything else); from a zip it is an entry of
    the central directory. `collect()` gathers the columns in input order.
    """

    def __init__(self, lay: L.MimicLayout, workers: int, max_bytes: int) -> None:
        self.lay = lay
        self.func: Callable[[Any], dict[str, list]]
        units: list[Any]
        if lay.reports_zip is not None:
            units = L.zip_report_index(lay.reports_zip)
            self.unit, head = "reports", str(lay.reports_zip)
            self.func = read_entries
        else:
            assert lay.files_dir is not None
            units = L.report_folders(lay.files_dir)
            self.unit, head = "report folders", str(lay.root)
            self.func = read_folders
        self.n = len(units)
        self.serial = workers <= 1 or self.n < SERIAL_BELOW
        size = 500 if self.serial else max(100, min(2000, self.n // (workers * 8) + 1))
        self.chunks: list[Any] = [
            (head, units[i : i + size], max_bytes) for i in range(0, self.n, size)
        ]
        self._stack = contextlib.ExitStack()
        self._futures: list[Future] = []
        if not self.serial:
            self._stack.enter_context(quiet_fork())
            self._pool = self._stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=mp_context())
            )
            self._futures = [self._pool.submit(self.func, c) for c in self.chunks]

    def collect(self, on_progress: Callable[[int], None] | None = None) -> pl.DataFrame:
        """study_id, subject_id, report_path, report_sha256, report_error(_detail) and the
        sections of every report file present, sorted by study_id (a study's copies in the
        order found: the build picks the one under the study's own patient). No report at
        all is fatal."""
        cols: dict[str, list] = {k: [] for k in REPORT_SCHEMA}
        results = (
            (f.result() for f in self._futures) if not self.serial else map(self.func, self.chunks)
        )
        for res, chunk in zip(results, self.chunks, strict=True):
            for k, v in res.items():
                cols[k].extend(v)
            if on_progress:
                on_progress(len(chunk[1]))
        self.close()  # the workers are done: give their memory back before the joins
        if not cols["study_id"]:
            raise L.no_reports_error(self.lay.root, self.lay.reports_zip)
        df = pl.DataFrame(cols, schema=REPORT_SCHEMA)
        return df.sort("study_id", maintain_order=True)

    def close(self) -> None:
        for f in self._futures:
            f.cancel()
        self._stack.close()


def report_source(lay: L.MimicLayout, rel: str) -> str:
    """Where a report lives, for reject rows: the zip entry or the path under the root."""
    return f"{lay.reports_zip.name}: {rel}" if lay.reports_zip is not None else rel


__all__ = ["INDEX_FIELDS", "REPORT_SCHEMA", "ReportReader", "report_source"]
