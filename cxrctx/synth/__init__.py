"""A synthetic MIMIC-CXR v2.0.0 generator: the exact layout, realistic variety, known truth.

`synthesize(out, patients=..., seed=...)` writes

- ``mimic-cxr-2.0.0-metadata.csv.gz`` (12 columns; StudyTime as the float text MIMIC has,
  leading zeros lost, sometimes blank), ``-split.csv.gz`` (patient-disjoint),
  ``-chexpert.csv.gz`` and ``-negbio.csv.gz`` (1.0 / 0.0 / -1.0 / blank);
- reports ``files/pNN/pSSSSSSSS/sTTTTTTTT.txt`` in the real page layout, optionally the
  same files in ``mimic-cxr-reports.zip``, optionally tiny real DICOMs per image,
  optionally rendered images with visible lesions and Chest ImaGenome-style scene graphs
  (`cxrctx.synth.images`);
- ground truth under ``truth/``: ``labels/part-00000.parquet`` (14 lesion rows per study,
  label-lesions format; a hedged mention counts as positive, an unmentioned lesion as
  negative) and ``studies.parquet`` (one row per study: datetime, priors per
  prior rules, expected sections, header spellings used, variety flags), and
  ``synth.json`` (the summary; marks the directory as a synth output).

Determinism: one numpy Generator seeded from `seed` draws the structure; report text is
drawn per fixed chunk of patients from a `random.Random` seeded from (seed, chunk), so the
output is byte-identical for a seed whatever the number of worker processes.

Rare cases (same-datetime studies, missing times, header typos, addenda, ...) are drawn
as exact quotas of `round(rate * eligible)` with a minimum of one (see `VARIETY_RATES`),
so every run of a few dozen patients contains each of them.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_text
from cxrctx.progress import as_callback, progress_arg
from cxrctx.synth import tables
from cxrctx.synth.chunks import SPEC_FIELDS, Chunk, ChunkResult, run_chunk
from cxrctx.synth.dicom import write_dicom
from cxrctx.synth.structure import HEADERS, VARIETY_RATES, Structure, draw_structure
from cxrctx.synth.tables import EPOCH
from cxrctx.synth.truth import (
    CHEXPERT_CSV,
    METADATA_CSV,
    NEGBIO_CSV,
    REPORTS_ZIP,
    SPLIT_CSV,
    SynthSummary,
    TruthStudy,
)
from cxrctx.vocab import LESIONS, METADATA_COLUMNS, image_relpath, report_relpath

__all__ = [
    "CHEXPERT_CSV",
    "HEADERS",
    "METADATA_COLUMNS",
    "METADATA_CSV",
    "NEGBIO_CSV",
    "REPORTS_ZIP",
    "SPLIT_CSV",
    "VARIETY_RATES",
    "ImageFormat",
    "Progress",
    "SynthSummary",
    "TruthStudy",
    "study_time_text",
    "synthesize",
    "write_dicom",
]

MARKER = "truth/synth.json"
CHUNK_PATIENTS = 1024
PARALLEL_MIN_STUDIES = 20_000  # studies (+ DICOM files) before using worker processes

#: Called as progress(phase, done, total): "reports" once per chunk of patients, then
#: "tables", "images" once per rendered image (with `images`/`imagenome`) and "done".
Progress = Callable[[str, int, int], None]


class ImageFormat(str, Enum):
    """Which files `images=True` writes per metadata image."""

    dicom = "dicom"
    jpg = "jpg"
    both = "both"

    def formats(self) -> tuple[str, ...]:
        return ("dicom", "jpg") if self is ImageFormat.both else (self.value,)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def study_time_text(ms_of_day: int) -> str:
    """MIMIC's StudyTime text: HHMMSS.fff as a float (leading zeros lost, '.0' kept)."""
    sec, ms = divmod(int(ms_of_day), 1000)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    frac = f"{ms:03d}".rstrip("0") or "0"
    return f"{h * 10000 + m * 100 + s}.{frac}"


def _tm_text(ms_of_day: int) -> str:
    """DICOM TM text of the same value (zero padded)."""
    whole, _, frac = study_time_text(ms_of_day).partition(".")
    return f"{int(whole):06d}.{frac}"


_OWNED = ("files", "truth", METADATA_CSV, SPLIT_CSV, CHEXPERT_CSV, NEGBIO_CSV, REPORTS_ZIP)


def _plain_modes(out: Path) -> None:
    """Atomic writes create 0600 temp files; give the dataset files the usual umask mode."""
    old = os.umask(0)
    os.umask(old)
    mode = 0o666 & ~old
    for p in [out / n for n in (METADATA_CSV, SPLIT_CSV, CHEXPERT_CSV, NEGBIO_CSV)] + sorted(
        (out / "truth").rglob("*")
    ):
        if p.is_file():
            os.chmod(p, mode)


def _prepare_out(out: Path) -> None:
    """Create `out`, or clear what an earlier synth run wrote there; refuse other directories."""
    if out.exists() and not out.is_dir():
        raise CxrctxError(f"{out}: exists and is not a directory")
    if not out.exists():
        out.mkdir(parents=True)
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    marker = out / MARKER
    if not marker.is_file():
        raise CxrctxError(
            f"{out}: directory is not empty and is not a cxrctx synth output (no {MARKER}); choose a new or empty directory"
        )
    try:
        owned = set(json.loads(marker.read_text(encoding="utf-8")).get("top_level", [])) | set(
            _OWNED
        )
    except (OSError, ValueError) as e:
        raise CxrctxError(
            f"{marker}: unreadable synth marker ({e}); remove the directory by hand"
        ) from e
    for name in entries:
        if name in owned and "/" not in name and name not in (".", ".."):
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


# --------------------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------------------


def _check_args(
    patients: int, seed: int, image_size: int, image_format: ImageFormat | str
) -> ImageFormat:
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise CxrctxError(f"patients must be a positive integer, got {patients!r}")
    if not isinstance(seed, int) or seed < 0:
        raise CxrctxError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        fmt = ImageFormat(image_format)
    except ValueError:
        raise CxrctxError(
            f"image_format must be dicom, jpg or both, got {image_format!r}"
        ) from None
    if image_size < 16:
        raise CxrctxError(f"image_size must be at least 16 pixels, got {image_size}")
    return fmt


def _image_module() -> Any:
    """`cxrctx.synth.images`, or a one-line error when this install lacks it."""
    try:
        images = importlib.import_module("cxrctx.synth.images")
    except ImportError as e:
        raise CxrctxError(
            f"synthetic images / scene graphs are not available in this install ({e})"
        ) from e
    return images


@dataclass
class _Plan:
    """What the structure implies as text: per-study paths and dates, per-image StudyTime."""

    subj: np.ndarray  # per study: subject_id
    rel_paths: list[str]  # per study: report path
    date_str: list[str]  # per study: StudyDate, YYYYMMDD
    csv_time: list[str | None]  # per image: StudyTime as the metadata CSV writes it


def _plan(st: Structure) -> _Plan:
    subj = st.subject_ids[st.st_pat]
    rel_paths = [
        report_relpath(s, t) for s, t in zip(subj.tolist(), st.study_ids.tolist(), strict=True)
    ]
    date_str = [(EPOCH + dt.timedelta(days=int(d))).strftime("%Y%m%d") for d in st.date.tolist()]
    csv_time = [study_time_text(t) if t >= 0 else None for t in st.im_time_ms.tolist()]
    return _Plan(subj, rel_paths, date_str, csv_time)


def _spec_rows(st: Structure, plan: _Plan, patients: int) -> list[tuple[Any, ...]]:
    """Per study: (report path, first study of its patient, `report.Spec` fields in order)."""
    cols: dict[str, list[Any]] = {
        "exam_kind": st.kind.tolist(),
        "exam_desc": st.procedure.tolist(),
        "woman": st.woman[st.st_pat].tolist(),
        "has_prior": (st.n_prior > 0).tolist(),
    }
    for name in SPEC_FIELDS:
        if name not in cols:
            cols[name] = st.specs[name].tolist()
    starts = np.concatenate([[0], np.cumsum(np.bincount(st.st_pat, minlength=patients))[:-1]])
    first = (np.arange(st.study_ids.size) - starts[st.st_pat] == 0).tolist()
    fields = zip(*(cols[name] for name in SPEC_FIELDS), strict=True)
    return [(rel, f, *row) for rel, f, row in zip(plan.rel_paths, first, fields, strict=True)]


def _dicom_args(st: Structure, plan: _Plan, dicom: bool) -> list[list[dict[str, Any]]]:
    """Per study: `write_dicom` keyword arguments (+ "path") of its tiny DICOMs."""
    img_args: list[list[dict[str, Any]]] = [[] for _ in range(st.study_ids.size)]
    if not dicom:
        return img_args
    im_time_l, proc_l = st.im_time_ms.tolist(), st.procedure.tolist()
    for k, i in enumerate(st.im_study.tolist()):
        subject, study = int(plan.subj[i]), int(st.study_ids[i])
        img_args[i].append(
            dict(
                path=image_relpath(subject, study, st.im_dicom[k]), dicom_id=st.im_dicom[k],
                subject_id=subject, study_id=study, view_position=st.im_view[k],
                study_date=plan.date_str[i],
                study_time=_tm_text(im_time_l[k]) if im_time_l[k] >= 0 else None,
                rows=int(st.im_rows[k]), columns=int(st.im_cols[k]), pixels=None,
                performed_procedure=proc_l[i], procedure_meaning=proc_l[i],
                view_meaning=st.im_view_meaning[k], orientation_meaning=st.im_orient[k],
            )
        )  # fmt: skip
    return img_args


def _chunks(
    st: Structure, plan: _Plan, *, patients: int, seed: int, out: Path, dicom: bool, keep_text: bool
) -> list[Chunk]:
    """Cut the studies at every CHUNK_PATIENTS patients; each chunk gets its own seed."""
    rows, img_args = _spec_rows(st, plan, patients), _dicom_args(st, plan, dicom)
    pat_end = np.cumsum(np.bincount(st.st_pat, minlength=patients))
    bounds = [0] + [
        int(pat_end[min(p + CHUNK_PATIENTS, patients) - 1])
        for p in range(0, patients, CHUNK_PATIENTS)
    ]
    return [
        Chunk(
            index=c, seed=int(np.random.SeedSequence([seed, 1, c]).generate_state(1, np.uint64)[0]),
            root=str(out), specs=rows[a:b], images=img_args[a:b], keep_text=keep_text,
        )
        for c, (a, b) in enumerate(itertools.pairwise(bounds))
    ]  # fmt: skip


def _run_chunks(chunks: list[Chunk], n_proc: int, progress: Progress | None) -> ChunkResult:
    """Run the chunks (in `n_proc` forked workers when worth it) and merge in chunk order."""
    merged = ChunkResult()

    def take(results: Any) -> ChunkResult:
        for done, res in enumerate(results, 1):
            merged.extend(res)
            if progress is not None:
                progress("reports", done, len(chunks))
        return merged

    if n_proc > 1 and len(chunks) > 1 and "fork" in mp.get_all_start_methods():
        with ProcessPoolExecutor(max_workers=n_proc, mp_context=mp.get_context("fork")) as ex:
            return take(ex.map(run_chunk, chunks))
    return take(run_chunk(c) for c in chunks)


def _workers(processes: int | None, st: Structure, dicom: bool) -> int:
    if processes is not None:
        return processes
    work = st.study_ids.size + (st.im_dicom.size if dicom else 0)
    return min(2, os.cpu_count() or 1) if work >= PARALLEL_MIN_STUDIES else 1


def _write_tables(out: Path, st: Structure, plan: _Plan, res: ChunkResult) -> np.ndarray:
    """Every CSV and truth table; returns the per-study temporal-reference flags."""
    md = tables.metadata_frame(st, plan.date_str, plan.csv_time)
    tables.write_metadata_and_split(out, st, md)
    tables.write_label_csvs(out, st, res)
    tables.write_truth_labels(out, st, res)
    return tables.write_truth_studies(out, st, plan.rel_paths, res)


def _render_images(
    out: Path, images: Any, st: Structure, plan: _Plan, res: ChunkResult, *,
    seed: int, size: int, fmt: ImageFormat, pixels: bool, imagenome: bool, progress: Progress | None,
) -> dict[str, int]:  # fmt: skip
    """Hand the generator's own metadata rows and study truth to the renderer (`pixels`: pictures too)."""
    specs = [
        images.ImageSpec(
            dicom_id=st.im_dicom[k], subject_id=int(plan.subj[i]), study_id=int(st.study_ids[i]),
            view_position=st.im_view[k], rows=int(st.im_rows[k]), columns=int(st.im_cols[k]),
            study_date=plan.date_str[i], study_time=plan.csv_time[k] or "",
        )
        for k, i in enumerate(st.im_study.tolist())
    ]  # fmt: skip
    n = len(LESIONS)
    truths = {}
    for i, study in enumerate(st.study_ids.tolist()):
        status, location = res.status[i * n : (i + 1) * n], res.location[i * n : (i + 1) * n]
        positives = {
            les: loc
            for les, s, loc in zip(LESIONS, status, location, strict=True)
            if s == "positive"
        }
        sec = res.sections[i]
        truths[study] = images.StudyTruth(positives, sec["findings"], sec["impression"])
    report = None if progress is None else partial(progress, "images")
    return dict(
        images.add_images(
            out, specs, truths, seed=seed, size=size, formats=fmt.formats() if pixels else (),
            imagenome=imagenome, progress=report,
        )
    )  # fmt: skip


def _finish(out: Path, summary: SynthSummary) -> None:
    """File modes, then the marker that says the directory is a complete synth output."""
    _plain_modes(out)
    marker = {
        "complete": True,
        "top_level": sorted(p.name for p in out.iterdir()),
        "summary": summary.model_dump(mode="json", exclude={"out_dir"}),
    }
    atomic_write_text(out / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    _plain_modes(out)


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------


@progress_arg("synth")
def synthesize(
    out: str | os.PathLike,
    *,
    patients: int = 50,
    seed: int = 0,
    dicom: bool = False,
    zip_reports: bool = False,
    images: bool = False,
    imagenome: bool = False,
    image_size: int = 256,
    image_format: ImageFormat | str = ImageFormat.dicom,
    processes: int | None = None,
    progress: Progress | bool | None = None,
) -> SynthSummary:
    """Write a synthetic MIMIC-CXR root into `out` (new, empty, or an earlier synth output).

    Truth labels: a hedged mention ("possible", "cannot exclude", ...) counts as
    *positive*; a negated or unmentioned lesion is *negative* with location "not
    mentioned"; the rationale is the sentence that asserted it (or "not mentioned").
    With `dicom=True` each image becomes a small real DICOM and the metadata's
    Rows/Columns are the written size (1/128 of the nominal one, or the rendered size
    with `images` in DICOM format), so headers always equal the CSV.
    `processes` (default: up to 2 for large runs) does not change the output.
    """
    progress = as_callback(progress)
    fmt = _check_args(patients, seed, image_size, image_format)
    image_mod = _image_module() if images or imagenome else None
    root = Path(out)
    _prepare_out(root)
    atomic_write_text(
        root / MARKER, json.dumps({"complete": False, "top_level": list(_OWNED)}) + "\n"
    )
    rendered_dicom = images and fmt in (ImageFormat.dicom, ImageFormat.both)
    st = draw_structure(patients, seed, dicom, image_size if rendered_dicom else None)
    plan = _plan(st)
    tiny_dicom = dicom and not rendered_dicom  # rendered DICOMs take the tiny ones' place
    chunks = _chunks(
        st, plan, patients=patients, seed=seed, out=root, dicom=tiny_dicom, keep_text=zip_reports
    )
    res = _run_chunks(chunks, _workers(processes, st, tiny_dicom), progress)
    if progress is not None:
        progress("tables", 0, 1)
    temporal = _write_tables(root, st, plan, res)
    if zip_reports:
        tables.write_zip(root / REPORTS_ZIP, list(zip(plan.rel_paths, res.texts, strict=True)))
    if progress is not None:
        progress("tables", 1, 1)
    image_counts: dict[str, int] = {}
    if image_mod is not None:
        image_counts = _render_images(
            root, image_mod, st, plan, res, seed=seed, size=image_size, fmt=fmt, pixels=images,
            imagenome=imagenome, progress=progress,
        )  # fmt: skip
    var = dict(st.varieties)
    var["temporal_reference"] = int(temporal.sum())
    var["temporal_reference_without_prior"] = int((temporal & (st.n_prior == 0)).sum())
    summary = SynthSummary(
        out_dir=str(root), seed=seed, patients=patients, studies=int(st.study_ids.size),
        images=int(st.im_dicom.size), report_files=int(st.study_ids.size), dicom_files=int(st.im_dicom.size) if dicom else 0,
        image_files=image_counts, files_written=sum(len(f) for _, _, f in os.walk(root)),
        reports_zip=REPORTS_ZIP if zip_reports else None, varieties=var,
    )  # fmt: skip
    _finish(root, summary)
    if progress is not None:
        progress("done", 1, 1)
    return summary
