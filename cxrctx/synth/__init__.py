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
import gzip
import itertools
import json
import multiprocessing as mp
import os
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_bytes, atomic_write_text, write_parquet, write_shards
from cxrctx.mimic.layout import METADATA_COLUMNS  # the reader's column contract
from cxrctx.synth import report as R
from cxrctx.synth import text as T
from cxrctx.synth.dicom import write_dicom
from cxrctx.synth.structure import HEADERS, VARIETY_RATES, _structure
from cxrctx.vocab import CHEXPERT_LABELS, LESIONS, SECTIONS

__all__ = [
    "HEADERS",
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
ZIP_DATE = (2000, 1, 1, 0, 0, 0)
CHUNK_PATIENTS = 1024
PARALLEL_MIN_STUDIES = 20_000  # studies (+ DICOM files) before using worker processes
EPOCH = dt.date(2100, 1, 1)


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
        description="Studies of the patient strictly earlier (ties at the same datetime are not priors)"
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
    Rows/Columns are the written size (1/128 of the nominal one, or the rendered size
    with `images` in DICOM format), so headers always equal the CSV.
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
            from cxrctx.synth.images import add_images
        except ImportError as e:
            raise CxrctxError(
                f"synthetic images / scene graphs are not available in this install ({e})"
            ) from e
    out = Path(out_dir)
    _prepare_out(out)
    atomic_write_text(
        out / MARKER, json.dumps({"complete": False, "top_level": list(_OWNED)}) + "\n"
    )

    rendered_dicom = images and image_format in ("dicom", "both")
    st = _structure(patients, seed, dicom, image_size if rendered_dicom else None)
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
