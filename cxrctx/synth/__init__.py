"""A synthetic MIMIC-CXR v2.0.0 generator: the exact layout, realistic variety, known truth.

`generate(out_dir, patients=..., seed=...)` writes

- ``mimic-cxr-2.0.0-metadata.csv.gz`` (12 columns; StudyTime as the float text MIMIC has,
  leading zeros lost, sometimes blank), ``-split.csv.gz`` (patient-disjoint),
  ``-chexpert.csv.gz`` and ``-negbio.csv.gz`` (1.0 / 0.0 / -1.0 / blank);
- reports ``files/pNN/pSSSSSSSS/sTTTTTTTT.txt`` in the real page layout, optionally the
  same files in ``mimic-cxr-reports.zip``, optionally tiny real DICOMs per image;
- ground truth under ``truth/``: ``labels/part-00000.parquet`` (14 lesion rows per study,
  label-lesions format; a hedged mention counts as positive, an unmentioned lesion as
  negative) and ``studies.parquet`` (one row per study: datetime, priors per
  DESIGN §3, expected sections, header spellings used, variety flags), and
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
import gzip
import itertools
import json
import multiprocessing as mp
import os
import shutil
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from cxrctx.errors import CxrctxError
from cxrctx.models import CHEXPERT_LABELS, LESIONS, SECTIONS
from cxrctx.shards import atomic_write_bytes, atomic_write_text, write_parquet, write_shards
from cxrctx.synth import report as R
from cxrctx.synth import text as T
from cxrctx.synth.dicom import write_dicom

__all__ = [
    "VARIETY_RATES",
    "SynthSummary",
    "TruthStudy",
    "generate",
    "study_time_text",
    "write_dicom",
]

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_CSV = "mimic-cxr-2.0.0-negbio.csv.gz"
REPORTS_ZIP = "mimic-cxr-reports.zip"
MARKER = "truth/synth.json"
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
ZIP_DATE = (2000, 1, 1, 0, 0, 0)
CHUNK_PATIENTS = 1024
PARALLEL_MIN_STUDIES = 20_000  # studies (+ DICOM files) before using worker processes
EPOCH = dt.date(2100, 1, 1)
DICOM_SCALE = 128  # DICOM mode writes images at 1/128 of the nominal size (header == CSV)

#: Frequency of each rare case: (rate among eligible studies/patients, minimum count).
VARIETY_RATES: dict[str, tuple[float, int]] = {
    "same_day": (0.06, 1),  # of non-first studies: same date, later time
    "same_datetime": (0.004, 1),  # of non-first studies: exact same date+time as the previous
    "missing_time": (0.03, 1),  # of studies: StudyTime blank on every image
    "multi_time_images": (0.02, 1),  # of multi-image studies: later images a few seconds later
    "blank_view": (0.04, 1),  # of images: ViewPosition blank
    "blank_procedure": (0.01, 1),  # of studies: PerformedProcedureStepDescription blank
    "neither": (0.04, 1),  # of studies: no FINDINGS and no IMPRESSION header
    "combined": (0.01, 1),  # of studies: "FINDINGS AND IMPRESSION:"
    "impression_only": (0.27, 1),
    "findings_only": (0.11, 1),
    "empty_comparison": (0.03, 1),  # of studies with a comparison header
    "empty_technique": (0.03, 1),  # of studies with a technique header
    "empty_findings": (0.015, 1),  # of full studies: FINDINGS header, no text
    "addendum": (0.03, 1),
    "wet_read": (0.02, 1),
    "notification": (0.03, 1),
    "recommendation": (0.02, 1),
    "hallucinated_prior": (0.06, 2),  # of first studies: temporal language without a prior
    "split_test": (0.01, 1),  # of patients
    "split_validate": (0.01, 1),
}

#: Header spellings: section slot -> ((spelling, weight), ...); every spelling is forced to
#: appear at least once when the slot has enough eligible studies.
HEADERS: dict[str, tuple[tuple[str, float], ...]] = {
    "examination": (("EXAMINATION", 0.92), ("EXAM", 0.08)),
    "indication": (
        ("INDICATION", 0.93),
        ("REASON FOR EXAMINATION", 0.025),
        ("REASON FOR EXAM", 0.02),
        ("CLINICAL INDICATION", 0.025),
    ),
    "history": (("HISTORY", 0.85), ("CLINICAL HISTORY", 0.11), ("CLINICAL INFORMATION", 0.04)),
    "comparison": (("COMPARISON", 0.95), ("COMPARISONS", 0.04), ("COMPARISION", 0.01)),
    "findings": (("FINDINGS", 0.99), ("FINDNGS", 0.01)),
    "impression": (("IMPRESSION", 0.96), ("CONCLUSION", 0.03), ("IMPRESSON", 0.01)),
    "recommendation": (("RECOMMENDATION(S)", 0.8), ("RECOMMENDATIONS", 0.2)),
}

# study kinds: 0 PA+lateral, 1 portable AP, 2 AP+lateral, 3 PA+lateral+extra, 4 single PA,
# 5 one special view, 6 two portable APs. Weights give MIMIC's view mix and ~1.65 images/study.
KIND_WEIGHTS = (0.36, 0.365, 0.14, 0.05, 0.03, 0.005, 0.05)
KIND_IMAGES = (2, 1, 2, 3, 1, 1, 2)
KIND_PROCEDURES: tuple[tuple[tuple[str, float], ...], ...] = (
    (("CHEST (PA AND LAT)", 0.9), ("CHEST (PRE-OP PA AND LAT)", 0.07), ("CHEST PA AND LAT", 0.03)),
    (
        ("CHEST (PORTABLE AP)", 0.85),
        ("CHEST PORT. LINE PLACEMENT", 0.08),
        ("CHEST (SINGLE VIEW)", 0.05),
        ("DX CHEST PORTABLE PICC LINE PLACEMENT", 0.02),
    ),
    (("CHEST (PA AND LAT)", 0.6), ("CHEST (PORTABLE AP)", 0.4)),
    (("CHEST (PA, LAT & OBLIQUES)", 0.6), ("CHEST (PA AND LAT)", 0.4)),
    (("CHEST (SINGLE VIEW)", 0.7), ("CHEST (PA AND LAT)", 0.3)),
    (
        ("CHEST (SINGLE VIEW)", 0.4),
        ("CHEST (LAT DECUB ONLY)", 0.3),
        ("CHEST (APICAL LORDOTIC ONLY)", 0.3),
    ),
    (("CHEST (PORTABLE AP)", 0.9), ("CHEST PORT. LINE PLACEMENT", 0.1)),
)
THIRD_VIEWS = (
    ("AP", 0.3),
    ("LL", 0.2),
    ("LAO", 0.1),
    ("RAO", 0.1),
    ("AP AXIAL", 0.05),
    ("SWIMMERS", 0.05),
    ("LPO", 0.05),
    ("RPO", 0.05),
    ("PA", 0.1),
)
RARE_VIEWS = (
    "XTABLE LATERAL",
    "AP LLD",
    "PA LLD",
    "AP RLD",
    "PA RLD",
    "SWIMMERS",
    "L5 S1",
    "AP AXIAL",
    "LAO",
    "RAO",
)
FORCED_VIEWS = ("LAO", "RAO", "AP AXIAL", "XTABLE LATERAL", "AP LLD", "SWIMMERS")
VIEW_MEANING = {
    "PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
    "LAO": "left anterior oblique", "RAO": "right anterior oblique", "LPO": "left posterior oblique",
    "RPO": "right posterior oblique", "AP AXIAL": "antero-posterior", "XTABLE LATERAL": "lateral",
    "AP LLD": "antero-posterior", "PA LLD": "postero-anterior", "AP RLD": "antero-posterior",
    "PA RLD": "postero-anterior", "SWIMMERS": "lateral", "L5 S1": "lateral",
}  # fmt: skip
DIMS = (
    (3056, 2544),
    (2544, 3056),
    (3050, 2539),
    (2539, 3050),
    (3520, 4280),
    (4280, 3520),
    (2022, 2022),
    (2500, 2048),
    (3480, 4240),
    (1914, 2198),
)
DIM_WEIGHTS = (0.4, 0.12, 0.12, 0.04, 0.08, 0.04, 0.04, 0.06, 0.06, 0.04)

_STATUS = ("positive", "negative")


class SynthSummary(BaseModel):
    """What `generate` wrote. Paths are relative to `out_dir`."""

    out_dir: str
    seed: int
    patients: int
    studies: int
    images: int
    report_files: int
    dicom_files: int
    image_files: dict[str, int] = Field(
        default_factory=dict, description="Counts returned by synth_images.add_images"
    )
    files_written: int
    metadata_csv: str = METADATA_CSV
    split_csv: str = SPLIT_CSV
    chexpert_csv: str = CHEXPERT_CSV
    negbio_csv: str = NEGBIO_CSV
    reports_zip: str | None = None
    truth_labels: str = "truth/labels"
    truth_studies: str = "truth/studies.parquet"
    varieties: dict[str, int] = Field(
        default_factory=dict, description="How many studies/images/patients got each rare case"
    )

    def path(self, name: str) -> Path:
        """Absolute path of one of the relative path fields, e.g. ``summary.path('truth_studies')``."""
        return Path(self.out_dir) / getattr(self, name)


class TruthStudy(BaseModel):
    """One row of ``truth/studies.parquet`` (what a correct build-priors must find)."""

    subject_id: int
    study_id: int
    split: str
    report_path: str
    study_date: dt.date
    study_datetime: dt.datetime | None = Field(
        description="Earliest image date+time; None when StudyTime is blank"
    )
    study_time_missing: bool
    n_images: int
    n_prior_studies: int = Field(
        description="Studies of the patient strictly earlier (DESIGN §3 rules)"
    )
    is_first_study: bool
    same_time_ambiguous: bool = Field(
        description="Another study of the patient has the very same datetime"
    )
    same_day_unordered: bool = Field(
        description="Another study on the same date where either lacks a time"
    )
    multi_time_images: bool = Field(description="Images of the study carry different StudyTimes")
    has_temporal_reference: bool = Field(
        description="Findings/impression speak of an earlier study"
    )
    temporal_reference_without_prior: bool
    style: str = Field(description="full / impression_only / findings_only / neither / combined")
    has_addendum: bool
    has_wet_read: bool
    has_notification: bool
    has_recommendation: bool
    header_examination: str | None
    header_indication: str | None
    header_history: str | None
    header_technique: str | None
    header_comparison: str | None
    header_findings: str | None
    header_impression: str | None
    empty_sections: list[str] = Field(
        description="Canonical sections whose header is present with no text"
    )
    expect_examination: bool
    expect_indication: bool
    expect_history: bool
    expect_technique: bool
    expect_comparison: bool
    expect_findings: bool
    expect_impression: bool
    examination: str | None = Field(description="Expected section text, whitespace-normalised")
    indication: str | None
    history: str | None
    technique: str | None
    comparison: str | None
    findings: str | None = Field(description="For FINDINGS AND IMPRESSION the text is in both")
    impression: str | None
    reason_for_exam: str | None = Field(description="Text after '//' in the indication")


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


def _unique_ids(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    """n distinct random ints in [lo, hi), in random order."""
    out = np.empty(0, dtype=np.int64)
    while out.size < n:
        draw = rng.integers(lo, hi, size=int((n - out.size) * 1.05) + 16, dtype=np.int64)
        both = np.concatenate([out, draw])
        _, first = np.unique(both, return_index=True)
        out = both[np.sort(first)]
    return out[:n]


def _quota(rng: np.random.Generator, eligible: np.ndarray, key: str) -> np.ndarray:
    """Boolean mask choosing exactly max(minimum, round(rate*n)) of the eligible positions."""
    rate, minimum = VARIETY_RATES[key]
    idx = np.flatnonzero(eligible)
    k = min(idx.size, max(minimum, round(rate * idx.size)))
    mask = np.zeros(eligible.shape[0], dtype=bool)
    if k:
        mask[rng.choice(idx, size=k, replace=False)] = True
    return mask


def _weighted(rng: np.random.Generator, options: Sequence[tuple[str, float]], n: int) -> np.ndarray:
    names = np.array([o for o, _ in options], dtype=object)
    w = np.array([p for _, p in options], dtype=float)
    return names[rng.choice(len(names), size=n, p=w / w.sum())]


def _spellings(rng: np.random.Generator, slot: str, eligible: np.ndarray) -> np.ndarray:
    """Header spelling per study ('' where not eligible); each spelling appears at least once."""
    opts = HEADERS[slot]
    out = np.full(eligible.shape[0], "", dtype=object)
    idx = np.flatnonzero(eligible)
    if idx.size == 0:
        return out
    out[idx] = _weighted(rng, opts, idx.size)
    if idx.size >= 2 * len(opts):
        default = opts[0][0]
        for name, _ in opts[1:]:
            if not (out[idx] == name).any():
                pool = idx[out[idx] == default]
                out[rng.choice(pool)] = name
    return out


# --------------------------------------------------------------------------------------
# structure (vectorised)
# --------------------------------------------------------------------------------------


@dataclass
class Structure:
    subject_ids: np.ndarray  # per patient
    woman: np.ndarray
    split: np.ndarray  # per patient (object)
    st_pat: np.ndarray  # per study: patient index
    study_ids: np.ndarray
    date: np.ndarray  # days since 2100-01-01
    time_ms: np.ndarray  # ms of day of the earliest image, -1 when missing
    kind: np.ndarray
    procedure: np.ndarray  # object
    n_prior: np.ndarray
    same_time: np.ndarray
    same_day_unordered: np.ndarray
    multi_time: np.ndarray
    specs: dict[str, np.ndarray]  # report spec columns
    im_study: np.ndarray  # per image: study index
    im_dicom: np.ndarray  # object
    im_view: np.ndarray  # object
    im_rows: np.ndarray
    im_cols: np.ndarray
    im_time_ms: np.ndarray
    im_view_meaning: np.ndarray
    im_orient: np.ndarray
    varieties: dict[str, int]


def _structure(patients: int, seed: int, dicom: bool) -> Structure:
    rng = np.random.default_rng(seed)
    P = patients
    subject_ids = np.sort(_unique_ids(rng, P, 10_000_000, 20_000_000))
    woman = rng.random(P) < 0.48
    n_st = np.minimum(rng.geometric(0.2815, P), 12).astype(np.int64)
    S = int(n_st.sum())
    pat_start = np.concatenate([[0], np.cumsum(n_st)[:-1]])
    st_pat = np.repeat(np.arange(P), n_st)
    order = np.arange(S) - pat_start[st_pat]
    non_first = order > 0
    study_ids = _unique_ids(rng, S, 50_000_000, 60_000_000)
    var: dict[str, int] = {}

    # split (patient level)
    split = np.full(P, "train", dtype=object)
    test = _quota(rng, np.full(P, P >= 2), "split_test")
    split[test] = "test"
    val = _quota(rng, (~test) & (P >= 3), "split_validate")
    split[val] = "validate"

    # dates: gaps between consecutive studies of a patient
    same_dt = _quota(rng, non_first, "same_datetime")
    same_day = _quota(rng, non_first & ~same_dt, "same_day")
    u = rng.random(S)
    gap = np.where(
        u < 0.35,
        rng.integers(1, 8, S),
        np.where(u < 0.7, rng.integers(8, 121, S), rng.integers(121, 1201, S)),
    )
    gap[~non_first] = 0
    gap[same_dt | same_day] = 0
    cum = np.cumsum(gap)
    rel = cum - cum[pat_start[st_pat]]
    span = rel[pat_start + n_st - 1]
    first_day = np.floor(rng.random(P) * (36500 - span)).astype(np.int64)
    date = first_day[st_pat] + rel

    ms = np.where(rng.random(S) < 0.3, 0, rng.integers(0, 1000, S))
    time_ms = rng.integers(0, 86400, S) * 1000 + ms
    missing = _quota(rng, ~(same_dt | np.roll(same_dt, -1)), "missing_time")
    # sequential fix-ups for ties and same-day ordering (small loops over rare cases)
    for i in np.flatnonzero(same_dt | same_day):
        prev = time_ms[i - 1]
        if same_dt[i]:
            time_ms[i] = prev
            continue
        delta = int(rng.integers(600, 6 * 3600)) * 1000 + int(rng.integers(0, 1000))
        room = 86_399_999 - prev
        t = prev + min(delta, room // 2)
        if t <= prev:
            missing[i] = True
        time_ms[i] = t
    time_ms[missing] = -1

    # relations under DESIGN §3 rules (pairs within each patient)
    pair_i = np.repeat(np.arange(S), n_st[st_pat])
    pair_start = np.concatenate([[0], np.cumsum(n_st[st_pat])[:-1]])
    pair_j = pat_start[st_pat[pair_i]] + (np.arange(pair_i.size) - pair_start[pair_i])
    other = pair_i != pair_j
    di, dj = date[pair_i], date[pair_j]
    ti, tj = time_ms[pair_i], time_ms[pair_j]
    both_t = (ti >= 0) & (tj >= 0)
    earlier = other & np.where(both_t, (dj < di) | ((dj == di) & (tj < ti)), dj < di)
    n_prior = np.bincount(pair_i[earlier], minlength=S)
    same_time = np.bincount(pair_i[other & both_t & (di == dj) & (ti == tj)], minlength=S) > 0
    unordered = np.bincount(pair_i[other & ~both_t & (di == dj)], minlength=S) > 0

    # images
    kind = rng.choice(len(KIND_WEIGHTS), size=S, p=np.array(KIND_WEIGHTS) / sum(KIND_WEIGHTS))
    n_img = np.array(KIND_IMAGES)[kind]
    NI = int(n_img.sum())
    im_study = np.repeat(np.arange(S), n_img)
    im_pos = np.arange(NI) - np.concatenate([[0], np.cumsum(n_img)[:-1]])[im_study]
    im_kind = kind[im_study]
    lat = np.where(rng.random(NI) < 0.72, "LATERAL", "LL").astype(object)
    third = _weighted(rng, THIRD_VIEWS, NI)
    rare = np.array(RARE_VIEWS, dtype=object)[rng.integers(0, len(RARE_VIEWS), NI)]
    first_view = np.array(["PA", "AP", "AP", "PA", "PA", "", "AP"], dtype=object)[im_kind]
    view = np.where(im_pos == 0, first_view, np.where(im_pos == 1, lat, third)).astype(object)
    view[(im_kind == 5)] = rare[im_kind == 5]
    view[(im_kind == 6)] = "AP"
    slots = np.flatnonzero(im_pos >= 1)
    if slots.size >= 2 * len(FORCED_VIEWS):
        for name in FORCED_VIEWS:
            if not (view == name).any():
                view[rng.choice(slots[view[slots] != name])] = name
    meaning = np.array([VIEW_MEANING.get(v, "") for v in view], dtype=object)
    blank = _quota(rng, np.ones(NI, dtype=bool), "blank_view")
    view[blank] = ""
    meaning[blank & (rng.random(NI) < 0.5)] = ""
    orient = np.where(
        rng.random(NI) < 0.85,
        np.where(((im_kind == 1) | (im_kind == 6)) & (rng.random(NI) < 0.45), "Recumbent", "Erect"),
        "",
    ).astype(object)
    dims = np.array(DIMS)[
        rng.choice(len(DIMS), size=NI, p=np.array(DIM_WEIGHTS) / sum(DIM_WEIGHTS))
    ]
    rows, cols = dims[:, 0].copy(), dims[:, 1].copy()
    if dicom:
        rows, cols = (
            np.maximum(4, np.rint(rows / DICOM_SCALE)).astype(np.int64),
            np.maximum(4, np.rint(cols / DICOM_SCALE)).astype(np.int64),
        )
    raw = rng.bytes(20 * NI)
    hexs = raw.hex()
    im_dicom = np.array(
        [
            f"{hexs[k : k + 8]}-{hexs[k + 8 : k + 16]}-{hexs[k + 16 : k + 24]}-{hexs[k + 24 : k + 32]}-{hexs[k + 32 : k + 40]}"
            for k in range(0, 40 * NI, 40)
        ],
        dtype=object,
    )
    if np.unique(im_dicom).size != NI:  # pragma: no cover - 160 random bits
        raise RuntimeError("dicom_id collision")
    im_time = time_ms[im_study].copy()
    multi = _quota(
        rng,
        (n_img >= 2) & (time_ms >= 0) & (time_ms < 86_000_000) & ~same_time & ~unordered,
        "multi_time_images",
    )
    bump = (im_pos >= 1) & multi[im_study]
    im_time[bump] += rng.integers(1, 300, int(bump.sum())) * 1000 + rng.integers(
        0, 1000, int(bump.sum())
    )

    procedure = np.empty(S, dtype=object)
    for k, opts in enumerate(KIND_PROCEDURES):
        sel = np.flatnonzero(kind == k)
        if sel.size:
            procedure[sel] = _weighted(rng, opts, sel.size)
    procedure[_quota(rng, np.ones(S, dtype=bool), "blank_procedure")] = ""

    # report structure
    style = np.full(S, R.FULL, dtype=np.int64)
    for key, code in (
        ("neither", R.NEITHER),
        ("combined", R.COMBINED),
        ("impression_only", R.IMPRESSION_ONLY),
        ("findings_only", R.FINDINGS_ONLY),
    ):
        style[_quota(rng, style == R.FULL, key)] = code
    ctx = rng.choice(4, size=S, p=[0.68, 0.24, 0.02, 0.06])
    has_exam = rng.random(S) < 0.41
    has_tech = np.where(has_exam, rng.random(S) < 0.75, rng.random(S) < 0.08)
    has_comp = rng.random(S) < 0.68
    specs: dict[str, np.ndarray] = {
        "style": style,
        "ctx": ctx,
        "h_exam": _spellings(rng, "examination", has_exam),
        "h_ind": _spellings(rng, "indication", (ctx == R.CTX_INDICATION) | (ctx == R.CTX_BOTH)),
        "h_hist": _spellings(rng, "history", (ctx == R.CTX_HISTORY) | (ctx == R.CTX_BOTH)),
        "h_tech": np.where(has_tech, "TECHNIQUE", "").astype(object),
        "h_comp": _spellings(rng, "comparison", has_comp),
        "h_find": _spellings(rng, "findings", (style == R.FULL) | (style == R.FINDINGS_ONLY)),
        "h_imp": _spellings(rng, "impression", (style == R.FULL) | (style == R.IMPRESSION_ONLY)),
        "empty_comp": _quota(rng, has_comp, "empty_comparison"),
        "empty_tech": _quota(rng, has_tech, "empty_technique"),
        "empty_find": _quota(rng, style == R.FULL, "empty_findings"),
        "addendum": _quota(rng, np.ones(S, dtype=bool), "addendum"),
        "notification": _quota(rng, style != R.NEITHER, "notification"),
        "hallucinate": _quota(rng, (n_prior == 0) & (style != R.NEITHER), "hallucinated_prior"),
    }
    specs["h_find"][style == R.COMBINED] = "FINDINGS AND IMPRESSION"
    specs["wet_read"] = _quota(rng, ~specs["addendum"] & (style != R.NEITHER), "wet_read")
    rec = _quota(rng, style != R.NEITHER, "recommendation")
    specs["recommendation"] = rec
    specs["h_rec"] = _spellings(rng, "recommendation", rec)
    # every lesion is positive somewhere: one forced study per lesion (distinct when possible)
    force = np.empty(S, dtype=object)
    force[:] = [() for _ in range(S)]
    pool = np.flatnonzero(style != R.NEITHER)
    if pool.size:
        picks = rng.choice(pool, size=min(pool.size, len(LESIONS)), replace=False)
        for k, les in enumerate(LESIONS):
            i = picks[k % picks.size]
            force[i] = (*force[i], les)
    specs["force"] = force

    var.update(
        patients=P,
        studies=S,
        images=NI,
        same_day=int(same_day.sum()),
        same_datetime_pairs=int(same_dt.sum()),
        missing_time=int(missing.sum()),
        multi_time_images=int(multi.sum()),
        blank_view=int(blank.sum()),
        blank_procedure=int((procedure == "").sum()),
        first_studies=int((n_prior == 0).sum()),
        same_time_ambiguous=int(same_time.sum()),
        same_day_unordered=int(unordered.sum()),
        split_test_patients=int(test.sum()),
        split_validate_patients=int(val.sum()),
    )
    for key, code in (
        ("neither", R.NEITHER),
        ("combined", R.COMBINED),
        ("impression_only", R.IMPRESSION_ONLY),
        ("findings_only", R.FINDINGS_ONLY),
    ):
        var[key] = int((style == code).sum())
    for key in (
        "empty_comp",
        "empty_tech",
        "empty_find",
        "addendum",
        "wet_read",
        "notification",
        "recommendation",
        "hallucinate",
    ):
        var[key] = int(specs[key].sum())
    for _slot, col in (
        ("examination", "h_exam"),
        ("indication", "h_ind"),
        ("history", "h_hist"),
        ("comparison", "h_comp"),
        ("findings", "h_find"),
        ("impression", "h_imp"),
        ("recommendation", "h_rec"),
    ):
        names, counts = np.unique(specs[col][specs[col] != ""].astype(str), return_counts=True)
        for nm, c in zip(names.tolist(), counts.tolist(), strict=True):
            var[f"header:{nm}"] = int(c)
    for name in sorted(set(view.tolist())):
        var[f"view:{name or '(blank)'}"] = int((view == name).sum())

    return Structure(
        subject_ids=subject_ids, woman=woman, split=split, st_pat=st_pat, study_ids=study_ids, date=date,
        time_ms=time_ms, kind=kind, procedure=procedure, n_prior=n_prior, same_time=same_time,
        same_day_unordered=unordered, multi_time=multi, specs=specs, im_study=im_study, im_dicom=im_dicom,
        im_view=view, im_rows=rows, im_cols=cols, im_time_ms=im_time, im_view_meaning=meaning, im_orient=orient,
        varieties=var,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# text chunks (optionally in worker processes)
# --------------------------------------------------------------------------------------

_MENTION_TO_CHEX = {"pos": "1.0", "hedged": "-1.0", "neg": "0.0", "nm": None}
_CHEX_SOURCE = {
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Lung Lesion": ("nodule", "mass"),
    "Lung Opacity": ("consolidation", "infiltration", "atelectasis", "pneumonia", "edema"),
    "Pleural Effusion": ("pleural effusion",),
    "Pleural Other": ("pleural thickening",),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
}
_RANK = {"pos": 3, "hedged": 2, "neg": 1, "nm": 0}


def _chexpert(r: Random, c: T.Content, noise: float) -> list[str | None]:
    """CheXpert-style labels derived from the truth, with labeler-like noise."""
    mention = {les: t[3] for les, t in c.truth.items()}
    out: list[str | None] = []
    any_pos = (
        any(m in ("pos", "hedged") for m in mention.values()) or c.devices or c.fracture == "pos"
    )
    for col in CHEXPERT_LABELS:
        if col in _CHEX_SOURCE:
            best = max((mention[les] for les in _CHEX_SOURCE[col]), key=_RANK.__getitem__)
            if col == "Lung Opacity" and best == "neg":
                best = "nm"
            val = _MENTION_TO_CHEX[best]
        elif col == "Enlarged Cardiomediastinum":
            val = "1.0" if mention["cardiomegaly"] == "pos" and r.random() < 0.25 else None
        elif col == "Fracture":
            val = _MENTION_TO_CHEX[c.fracture]
        elif col == "No Finding":
            val = None if any_pos else "1.0"
        else:  # Support Devices
            val = "1.0" if c.devices else None
        if r.random() < noise:
            val = {"1.0": "-1.0", "-1.0": "1.0", "0.0": None, None: None}[val]
        out.append(val)
    return out


@dataclass
class _Chunk:
    index: int
    seed: int
    root: str
    specs: list[
        tuple[Any, ...]
    ]  # per study in chunk order: (rel_path, patient_first, R.Spec fields...)
    images: list[list[tuple[Any, ...]]]  # per study: dicom args
    keep_text: bool


_SPEC_FIELDS = tuple(R.Spec.__dataclass_fields__)
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


def _run_chunk(ch: _Chunk) -> dict[str, Any]:
    r = Random(ch.seed)
    root = ch.root
    texts: list[str] = []
    status: list[str] = []
    location: list[str] = []
    rationale: list[str] = []
    chex: list[list[str | None]] = []
    negb: list[list[str | None]] = []
    meta: list[tuple[Any, ...]] = []
    prev: T.State = {}
    made_dirs: set[str] = set()
    n_dicom = 0
    for spec_row, imgs in zip(ch.specs, ch.images, strict=True):
        rel, first = spec_row[0], spec_row[1]
        if first:
            prev = {}
        spec = R.Spec(*spec_row[2:])
        b = R.build(r, spec, prev)
        prev = b.content.state
        parent = os.path.dirname(rel)
        if parent not in made_dirs:
            os.makedirs(f"{root}/{parent}", exist_ok=True)
            made_dirs.add(parent)
        fd = os.open(f"{root}/{rel}", _WRITE_FLAGS, 0o666)
        try:
            os.write(fd, b.text.encode("utf-8"))
        finally:
            os.close(fd)
        if ch.keep_text:
            texts.append(b.text)
        for les in LESIONS:
            st, loc, rat, _ = b.content.truth[les]
            status.append(st)
            location.append(loc)
            rationale.append(rat)
        chex.append(_chexpert(r, b.content, 0.02))
        negb.append(_chexpert(r, b.content, 0.04))
        meta.append((b.sections, b.reason_for_exam, b.temporal))
        for args in imgs:
            write_dicom(f"{root}/{args['path']}", **{k: v for k, v in args.items() if k != "path"})
            n_dicom += 1
    return {
        "texts": texts, "status": status, "location": location, "rationale": rationale,
        "chexpert": chex, "negbio": negb, "meta": meta, "n_dicom": n_dicom,
    }  # fmt: skip


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def _gz_csv(df: pl.DataFrame, path: Path) -> None:
    data = df.write_csv().encode("utf-8")
    atomic_write_bytes(path, gzip.compress(data, compresslevel=6, mtime=0))


def _write_zip(path: Path, entries: list[tuple[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, text in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, text.encode("utf-8"))
    os.replace(tmp, path)


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


def generate(
    out_dir: str | os.PathLike,
    *,
    patients: int = 50,
    seed: int = 0,
    dicom: bool = False,
    zip_reports: bool = False,
    images: bool = False,
    imagenome: bool = False,
    image_size: int = 256,
    image_format: str = "dicom",
    processes: int | None = None,
) -> SynthSummary:
    """Write a synthetic MIMIC-CXR root into `out_dir` (new, empty, or an earlier synth output).

    Truth labels: a hedged mention ("possible", "cannot exclude", ...) counts as
    *positive*; a negated or unmentioned lesion is *negative* with location "not
    mentioned"; the rationale is the sentence that asserted it (or "not mentioned").
    With `dicom=True` each image becomes a small real DICOM and the metadata's
    Rows/Columns are the written size (1/128 of the nominal one), so headers equal the CSV.
    `processes` (default: up to 2 for large runs) does not change the output.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise CxrctxError(f"patients must be a positive integer, got {patients!r}")
    if not isinstance(seed, int) or seed < 0:
        raise CxrctxError(f"seed must be a non-negative integer, got {seed!r}")
    if image_format not in ("dicom", "jpg", "both"):
        raise CxrctxError(f"image_format must be dicom, jpg or both, got {image_format!r}")
    if image_size < 16:
        raise CxrctxError(f"image_size must be at least 16 pixels, got {image_size}")
    add_images = None
    if images or imagenome:
        try:
            from cxrctx.synth_images import add_images  # type: ignore[import-not-found]
        except ImportError as e:
            raise CxrctxError(
                f"synthetic images / scene graphs are not available in this install ({e})"
            ) from e
    out = Path(out_dir)
    _prepare_out(out)
    atomic_write_text(
        out / MARKER, json.dumps({"complete": False, "top_level": list(_OWNED)}) + "\n"
    )

    st = _structure(patients, seed, dicom)
    S, NI = st.study_ids.size, st.im_dicom.size
    subj = st.subject_ids[st.st_pat]
    rel_paths = [
        f"files/p{str(s)[:2]}/p{s}/s{t}.txt"
        for s, t in zip(subj.tolist(), st.study_ids.tolist(), strict=True)
    ]

    # per-study spec rows and per-study image args
    spec_cols = [
        st.specs[k]
        for k in (
            "style",
            "ctx",
            "h_exam",
            "h_ind",
            "h_hist",
            "h_tech",
            "h_comp",
            "h_find",
            "h_imp",
            "empty_comp",
            "empty_tech",
            "empty_find",
            "addendum",
            "wet_read",
            "notification",
            "recommendation",
            "h_rec",
        )
    ]
    spec_cols_l = [c.tolist() for c in spec_cols]
    order = (
        np.arange(S)
        - np.concatenate([[0], np.cumsum(np.bincount(st.st_pat, minlength=patients))[:-1]])[
            st.st_pat
        ]
    )
    first = (order == 0).tolist()
    kind_l, proc_l = st.kind.tolist(), st.procedure.tolist()
    woman_l = st.woman[st.st_pat].tolist()
    has_prior_l = (st.n_prior > 0).tolist()
    hall_l = st.specs["hallucinate"].tolist()
    force_l = st.specs["force"].tolist()
    rows: list[tuple[Any, ...]] = []
    for i in range(S):
        (
            style,
            ctx,
            h_exam,
            h_ind,
            h_hist,
            h_tech,
            h_comp,
            h_find,
            h_imp,
            e_comp,
            e_tech,
            e_find,
            add,
            wet,
            note,
            rec,
            h_rec,
        ) = (c[i] for c in spec_cols_l)
        spec = R.Spec(
            exam_kind=kind_l[i], exam_desc=proc_l[i], woman=woman_l[i], has_prior=has_prior_l[i], hallucinate=hall_l[i],
            style=style, ctx=ctx, h_exam=h_exam, h_ind=h_ind, h_hist=h_hist, h_tech=h_tech, h_comp=h_comp,
            h_find=h_find, h_imp=h_imp, empty_comp=e_comp, empty_tech=e_tech, empty_find=e_find, addendum=add,
            wet_read=wet, notification=note, recommendation=rec, h_rec=h_rec, force=force_l[i],
        )  # fmt: skip
        rows.append((rel_paths[i], first[i], *(getattr(spec, f) for f in _SPEC_FIELDS)))

    date_str = [(EPOCH + dt.timedelta(days=int(d))).strftime("%Y%m%d") for d in st.date.tolist()]
    im_time_l = st.im_time_ms.tolist()
    csv_time = [study_time_text(t) if t >= 0 else None for t in im_time_l]
    img_args: list[list[dict[str, Any]]] = [[] for _ in range(S)]
    if dicom:
        im_study_l = st.im_study.tolist()
        for k in range(NI):
            i = im_study_l[k]
            img_args[i].append(
                dict(
                    path=f"{rel_paths[i][:-4]}/{st.im_dicom[k]}.dcm", dicom_id=st.im_dicom[k], subject_id=int(subj[i]),
                    study_id=int(st.study_ids[i]), view_position=st.im_view[k], study_date=date_str[i],
                    study_time=_tm_text(im_time_l[k]) if im_time_l[k] >= 0 else None, rows=int(st.im_rows[k]),
                    columns=int(st.im_cols[k]), pixels=None, performed_procedure=proc_l[i],
                    procedure_meaning=proc_l[i], view_meaning=st.im_view_meaning[k], orientation_meaning=st.im_orient[k],
                )
            )  # fmt: skip

    # chunks of patients -> study ranges
    pat_end = np.cumsum(np.bincount(st.st_pat, minlength=patients))
    bounds = [0] + [
        int(pat_end[min(p + CHUNK_PATIENTS, patients) - 1])
        for p in range(0, patients, CHUNK_PATIENTS)
    ]
    chunks = [
        _Chunk(
            index=c, seed=int(np.random.SeedSequence([seed, 1, c]).generate_state(1, np.uint64)[0]), root=str(out),
            specs=rows[a:b], images=img_args[a:b], keep_text=zip_reports,
        )
        for c, (a, b) in enumerate(itertools.pairwise(bounds))
    ]  # fmt: skip
    n_proc = (
        processes
        if processes is not None
        else (
            min(2, os.cpu_count() or 1) if S + (NI if dicom else 0) >= PARALLEL_MIN_STUDIES else 1
        )
    )
    if n_proc > 1 and len(chunks) > 1 and "fork" in mp.get_all_start_methods():
        with ProcessPoolExecutor(max_workers=n_proc, mp_context=mp.get_context("fork")) as ex:
            results = list(ex.map(_run_chunk, chunks))
    else:
        results = [_run_chunk(c) for c in chunks]

    # ---- tables
    def cat(key: str) -> list[Any]:
        return [x for res in results for x in res[key]]

    meta = cat("meta")
    temporal = np.array([m[2] for m in meta], dtype=bool)
    n_dicom = sum(res["n_dicom"] for res in results)
    study_id_l, subj_l = st.study_ids.tolist(), subj.tolist()

    md = pl.DataFrame(
        {
            "dicom_id": st.im_dicom.tolist(),
            "subject_id": subj[st.im_study],
            "study_id": st.study_ids[st.im_study],
            "PerformedProcedureStepDescription": st.procedure[st.im_study].tolist(),
            "ViewPosition": st.im_view.tolist(),
            "Rows": st.im_rows,
            "Columns": st.im_cols,
            "StudyDate": np.array(date_str, dtype=np.int64)[st.im_study],
            "StudyTime": csv_time,
            "ProcedureCodeSequence_CodeMeaning": st.procedure[st.im_study].tolist(),
            "ViewCodeSequence_CodeMeaning": st.im_view_meaning.tolist(),
            "PatientOrientationCodeSequence_CodeMeaning": st.im_orient.tolist(),
        },
        schema_overrides={"StudyTime": pl.String},
    )
    md = md.with_columns(
        [
            pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c)
            for c in (
                "PerformedProcedureStepDescription",
                "ViewPosition",
                "ProcedureCodeSequence_CodeMeaning",
                "ViewCodeSequence_CodeMeaning",
                "PatientOrientationCodeSequence_CodeMeaning",
            )
        ]
    )
    md = md.sort(["subject_id", "study_id", "dicom_id"])
    _gz_csv(md.select(METADATA_COLUMNS), out / METADATA_CSV)
    sid_to_split = dict(zip(study_id_l, st.split[st.st_pat].tolist(), strict=True))
    split_df = md.select("dicom_id", "study_id", "subject_id").with_columns(
        pl.col("study_id").replace_strict(sid_to_split, return_dtype=pl.String).alias("split")
    )
    _gz_csv(split_df, out / SPLIT_CSV)
    for name, key in ((CHEXPERT_CSV, "chexpert"), (NEGBIO_CSV, "negbio")):
        vals = cat(key)
        cols: dict[str, Any] = {"subject_id": subj_l, "study_id": study_id_l}
        for j, lab in enumerate(CHEXPERT_LABELS):
            cols[lab] = [v[j] for v in vals]
        df = pl.DataFrame(cols, schema_overrides=dict.fromkeys(CHEXPERT_LABELS, pl.String)).sort(
            ["subject_id", "study_id"]
        )
        _gz_csv(df, out / name)

    labels = pl.DataFrame(
        {
            "id": np.repeat(
                np.array([str(s) for s in study_id_l], dtype=object), len(LESIONS)
            ).tolist(),
            "lesion": list(LESIONS) * S,
            "status": cat("status"),
            "location": cat("location"),
            "rationale": cat("rationale"),
            "_subject": np.repeat(subj, len(LESIONS)),
            "_study": np.repeat(st.study_ids, len(LESIONS)),
            "_k": np.tile(np.arange(len(LESIONS)), S),
        }
    )
    labels = labels.sort(["_subject", "_study", "_k"]).drop("_subject", "_study", "_k")
    write_shards(labels, out / "truth" / "labels", rows_per_shard=max(1, labels.height))

    # studies truth
    sec_rows = [m[0] for m in meta]
    dates = [EPOCH + dt.timedelta(days=int(d)) for d in st.date.tolist()]
    dtimes = [
        None if t < 0 else dt.datetime.combine(d, dt.time()) + dt.timedelta(milliseconds=int(t))
        for d, t in zip(dates, st.time_ms.tolist(), strict=True)
    ]
    style_names = {
        R.FULL: "full",
        R.IMPRESSION_ONLY: "impression_only",
        R.FINDINGS_ONLY: "findings_only",
        R.NEITHER: "neither",
        R.COMBINED: "combined",
    }

    def hdr(col: str) -> list[str | None]:
        return [x or None for x in st.specs[col].tolist()]

    empty = []
    for i in range(S):
        e = []
        if st.specs["h_tech"][i] and st.specs["empty_tech"][i]:
            e.append("technique")
        if st.specs["h_comp"][i] and st.specs["empty_comp"][i]:
            e.append("comparison")
        if st.specs["empty_find"][i] and st.specs["style"][i] == R.FULL:
            e.append("findings")
        empty.append(e)
    n_img = np.bincount(st.im_study, minlength=S)
    studies: dict[str, Any] = {
        "subject_id": subj, "study_id": st.study_ids, "split": st.split[st.st_pat].tolist(), "report_path": rel_paths,
        "study_date": dates, "study_datetime": dtimes, "study_time_missing": st.time_ms < 0, "n_images": n_img,
        "n_prior_studies": st.n_prior, "is_first_study": st.n_prior == 0, "same_time_ambiguous": st.same_time,
        "same_day_unordered": st.same_day_unordered, "multi_time_images": st.multi_time,
        "has_temporal_reference": temporal, "temporal_reference_without_prior": temporal & (st.n_prior == 0),
        "style": [style_names[s] for s in st.specs["style"].tolist()], "has_addendum": st.specs["addendum"],
        "has_wet_read": st.specs["wet_read"], "has_notification": st.specs["notification"],
        "has_recommendation": st.specs["recommendation"],
        "header_examination": hdr("h_exam"), "header_indication": hdr("h_ind"), "header_history": hdr("h_hist"),
        "header_technique": hdr("h_tech"), "header_comparison": hdr("h_comp"), "header_findings": hdr("h_find"),
        "header_impression": [("FINDINGS AND IMPRESSION" if s == R.COMBINED else (h or None)) for s, h in zip(st.specs["style"].tolist(), st.specs["h_imp"].tolist(), strict=True)],
        "empty_sections": empty,
    }  # fmt: skip
    for sec in SECTIONS:
        studies[f"expect_{sec}"] = [s[sec] is not None for s in sec_rows]
    for sec in SECTIONS:
        studies[sec] = [s[sec] for s in sec_rows]
    studies["reason_for_exam"] = [m[1] for m in meta]
    sdf = pl.DataFrame(
        studies,
        schema_overrides={
            "study_datetime": pl.Datetime("ms"),
            "empty_sections": pl.List(pl.String),
        },
    )
    sdf = sdf.select(list(TruthStudy.model_fields)).sort(["subject_id", "study_id"])
    write_parquet(sdf, out / "truth" / "studies.parquet")

    if zip_reports:
        _write_zip(out / REPORTS_ZIP, list(zip(rel_paths, cat("texts"), strict=True)))

    var = dict(st.varieties)
    var["temporal_reference"] = int(temporal.sum())
    var["temporal_reference_without_prior"] = int((temporal & (st.n_prior == 0)).sum())
    image_counts: dict[str, int] = {}
    if add_images is not None:
        formats = ("dicom", "jpg") if image_format == "both" else (image_format,)
        image_counts = dict(
            add_images(out, seed=seed, size=image_size, formats=formats, imagenome=imagenome)
        )
    files = sum(len(f) for _, _, f in os.walk(out))
    summary = SynthSummary(
        out_dir=str(out), seed=seed, patients=patients, studies=S, images=NI, report_files=S, dicom_files=n_dicom,
        image_files=image_counts, files_written=files, reports_zip=REPORTS_ZIP if zip_reports else None, varieties=var,
    )  # fmt: skip
    _plain_modes(out)
    top = sorted(p.name for p in out.iterdir())
    marker = {
        "complete": True,
        "top_level": top,
        "summary": summary.model_dump(mode="json", exclude={"out_dir"}),
    }
    atomic_write_text(out / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    _plain_modes(out)
    return summary
