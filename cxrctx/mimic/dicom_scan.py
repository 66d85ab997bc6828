"""Build the metadata table from DICOM headers when no metadata CSV exists.

Header parsing holds the GIL, so files are read in worker *processes*, in chunks, with
pydicom's `stop_before_pixels=True`. The result has exactly the metadata CSV's columns
(as strings, like the CSV reader), plus `path`; unreadable files are returned apart so
they become reject rows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cxrctx.mimic.layout import METADATA_COLUMNS
from cxrctx.mimic.reports import mp_context, quiet_fork
from cxrctx.vocab import DICOM_ID_RE

_PAT = re.compile(r"^p(\d+)$")
_STU = re.compile(r"^s(\d+)$")


def find_dicoms(files_dir: Path) -> list[str]:
    """All `*.dcm` under `files_dir`, relative to its parent (the root), sorted."""
    root = files_dir.parent
    out = []
    for dirpath, dirnames, filenames in os.walk(files_dir):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(".dcm"):
                out.append(os.path.relpath(os.path.join(dirpath, name), root))
    out.sort()
    return out


def _code_meaning(ds, keyword: str) -> str | None:
    seq = getattr(ds, keyword, None)
    if seq:
        item = seq[0]
        value = getattr(item, "CodeMeaning", None)
        return str(value) if value is not None else None
    return None


def _str(v) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def read_header(root: str, rel: str) -> tuple[str | None, ...]:
    """One metadata row (strings, METADATA_COLUMNS order) from a DICOM file's header."""
    import pydicom

    ds = pydicom.dcmread(os.path.join(root, rel), stop_before_pixels=True)
    parts = rel.replace("\\", "/").split("/")
    # The innermost pNNNNNNNN / sNNNNNNNN folders (the outer p10 is only a group).
    subjects = [m.group(1) for p in parts[:-1] if (m := _PAT.match(p))]
    studies = [m.group(1) for p in parts[:-1] if (m := _STU.match(p))]
    subject = subjects[-1] if subjects else _str(ds.get("PatientID"))
    study = studies[-1] if studies else _str(ds.get("StudyID"))
    if not subject or not subject.isdigit() or not study or not study.isdigit():
        raise ValueError("cannot tell subject_id/study_id from the path or header")
    if not DICOM_ID_RE.fullmatch(Path(rel).stem):
        raise ValueError("file name is not a MIMIC dicom_id (five dash-joined hex groups)")
    if "StudyDate" not in ds and "ViewPosition" not in ds and "SOPClassUID" not in ds:
        raise ValueError("no image header fields")
    orientation = _code_meaning(ds, "PatientOrientationCodeSequence")
    if orientation is None and getattr(ds, "ViewCodeSequence", None):
        orientation = _code_meaning(ds.ViewCodeSequence[0], "PatientOrientationCodeSequence")
    row = {
        "dicom_id": Path(rel).stem,
        "subject_id": subject,
        "study_id": study,
        "PerformedProcedureStepDescription": _str(ds.get("PerformedProcedureStepDescription")),
        "ViewPosition": _str(ds.get("ViewPosition")),
        "Rows": _str(ds.get("Rows")),
        "Columns": _str(ds.get("Columns")),
        "StudyDate": _str(ds.get("StudyDate")),
        "StudyTime": _str(ds.get("StudyTime")),
        "ProcedureCodeSequence_CodeMeaning": _code_meaning(ds, "ProcedureCodeSequence"),
        "ViewCodeSequence_CodeMeaning": _code_meaning(ds, "ViewCodeSequence"),
        "PatientOrientationCodeSequence_CodeMeaning": orientation,
    }
    return tuple(row[c] for c in METADATA_COLUMNS)


def scan_chunk(args: tuple[str, list[str]]) -> tuple[list[tuple], list[tuple[str, str]]]:
    """Headers of a chunk of files → (rows + path, [(path, error)])."""
    root, rels = args
    rows: list[tuple] = []
    errors: list[tuple[str, str]] = []
    for rel in rels:
        try:
            rows.append((*read_header(root, rel), rel))
        except Exception as e:  # any parse failure of one file is that file's reject row
            errors.append(
                (rel, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip())
            )
    return rows, errors


def scan_dicoms(
    root: Path,
    rels: list[str],
    workers: int = 1,
    chunk_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[tuple], list[tuple[str, str]]]:
    """Scan `rels` (relative to `root`) with `workers` processes; results in path order."""
    chunks = [(str(root), rels[i : i + chunk_size]) for i in range(0, len(rels), chunk_size)]
    rows: list[tuple] = []
    errors: list[tuple[str, str]] = []
    if workers <= 1 or len(chunks) <= 1:
        results = (scan_chunk(c) for c in chunks)
        for (r, e), c in zip(results, chunks, strict=True):
            rows += r
            errors += e
            if on_progress:
                on_progress(len(c[1]))
    else:
        with (
            quiet_fork(),
            ProcessPoolExecutor(max_workers=workers, mp_context=mp_context()) as pool,
        ):
            for (r, e), c in zip(pool.map(scan_chunk, chunks), chunks, strict=True):
                rows += r
                errors += e
                if on_progress:
                    on_progress(len(c[1]))
    rows.sort(key=lambda t: t[-1])
    errors.sort()
    return rows, errors
