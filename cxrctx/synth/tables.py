"""The generator's tables: metadata/split/label CSVs, truth labels and studies, reports zip.

Every writer takes the structure (`Structure`), the per-study paths and the merged chunk
results, and writes one file atomically. Byte-stable: gzip with mtime 0, zip entries with a
fixed date, rows sorted by (subject, study[, dicom]).
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from cxrctx.io import atomic_write_bytes, write_parquet, write_shards
from cxrctx.synth import report as R
from cxrctx.synth.chunks import ChunkResult
from cxrctx.synth.structure import Structure
from cxrctx.synth.truth import (
    CHEXPERT_CSV,
    METADATA_CSV,
    NEGBIO_CSV,
    SPLIT_CSV,
    TruthStudy,
)
from cxrctx.vocab import CHEXPERT_LABELS, LESIONS, METADATA_COLUMNS, SECTIONS

ZIP_DATE = (2000, 1, 1, 0, 0, 0)
EPOCH = dt.date(2100, 1, 1)
_BLANKABLE = (
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
STYLE_NAMES = {
    R.FULL: "full",
    R.IMPRESSION_ONLY: "impression_only",
    R.FINDINGS_ONLY: "findings_only",
    R.NEITHER: "neither",
    R.COMBINED: "combined",
}


def gz_csv(df: pl.DataFrame, path: Path) -> None:
    data = df.write_csv().encode("utf-8")
    atomic_write_bytes(path, gzip.compress(data, compresslevel=6, mtime=0))


def write_zip(path: Path, entries: list[tuple[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, text in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, text.encode("utf-8"))
    os.replace(tmp, path)


def metadata_frame(st: Structure, date_str: list[str], csv_time: list[str | None]) -> pl.DataFrame:
    """The 12-column metadata table, sorted by (subject, study, dicom), blanks as nulls."""
    subj = st.subject_ids[st.st_pat]
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
        [pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c) for c in _BLANKABLE]
    )
    return md.sort(["subject_id", "study_id", "dicom_id"]).select(METADATA_COLUMNS)


def write_metadata_and_split(out: Path, st: Structure, md: pl.DataFrame) -> None:
    gz_csv(md, out / METADATA_CSV)
    sid_to_split = dict(zip(st.study_ids.tolist(), st.split[st.st_pat].tolist(), strict=True))
    split_df = md.select("dicom_id", "study_id", "subject_id").with_columns(
        pl.col("study_id").replace_strict(sid_to_split, return_dtype=pl.String).alias("split")
    )
    gz_csv(split_df, out / SPLIT_CSV)


def write_label_csvs(out: Path, st: Structure, res: ChunkResult) -> None:
    subj_l, study_id_l = st.subject_ids[st.st_pat].tolist(), st.study_ids.tolist()
    for name, vals in ((CHEXPERT_CSV, res.chexpert), (NEGBIO_CSV, res.negbio)):
        cols: dict[str, Any] = {"subject_id": subj_l, "study_id": study_id_l}
        for j, lab in enumerate(CHEXPERT_LABELS):
            cols[lab] = [v[j] for v in vals]
        df = pl.DataFrame(cols, schema_overrides=dict.fromkeys(CHEXPERT_LABELS, pl.String))
        gz_csv(df.sort(["subject_id", "study_id"]), out / name)


def write_truth_labels(out: Path, st: Structure, res: ChunkResult) -> None:
    """14 rows per study in the label-lesions format (`truth/labels/part-00000.parquet`)."""
    S, subj = st.study_ids.size, st.subject_ids[st.st_pat]
    ids = np.array([str(s) for s in st.study_ids.tolist()], dtype=object)
    labels = pl.DataFrame(
        {
            "id": np.repeat(ids, len(LESIONS)).tolist(),
            "lesion": list(LESIONS) * S,
            "status": res.status,
            "location": res.location,
            "rationale": res.rationale,
            "_subject": np.repeat(subj, len(LESIONS)),
            "_study": np.repeat(st.study_ids, len(LESIONS)),
            "_k": np.tile(np.arange(len(LESIONS)), S),
        }
    )
    labels = labels.sort(["_subject", "_study", "_k"]).drop("_subject", "_study", "_k")
    write_shards(labels, out / "truth" / "labels", rows_per_shard=max(1, labels.height))


def _empty_sections(st: Structure) -> list[list[str]]:
    """Canonical sections whose header is present with no text, per study."""
    sp = st.specs
    empty = []
    for i in range(st.study_ids.size):
        e = []
        if sp["h_tech"][i] and sp["empty_tech"][i]:
            e.append("technique")
        if sp["h_comp"][i] and sp["empty_comp"][i]:
            e.append("comparison")
        if sp["empty_find"][i] and sp["style"][i] == R.FULL:
            e.append("findings")
        empty.append(e)
    return empty


def _headers(st: Structure) -> dict[str, list[str | None]]:
    def hdr(col: str) -> list[str | None]:
        return [x or None for x in st.specs[col].tolist()]

    styles, h_imp = st.specs["style"].tolist(), st.specs["h_imp"].tolist()
    return {
        "header_examination": hdr("h_exam"),
        "header_indication": hdr("h_ind"),
        "header_history": hdr("h_hist"),
        "header_technique": hdr("h_tech"),
        "header_comparison": hdr("h_comp"),
        "header_findings": hdr("h_find"),
        "header_impression": [
            "FINDINGS AND IMPRESSION" if s == R.COMBINED else (h or None)
            for s, h in zip(styles, h_imp, strict=True)
        ],
    }


def _when(st: Structure) -> dict[str, Any]:
    dates = [EPOCH + dt.timedelta(days=int(d)) for d in st.date.tolist()]
    dtimes = [
        None if t < 0 else dt.datetime.combine(d, dt.time()) + dt.timedelta(milliseconds=int(t))
        for d, t in zip(dates, st.time_ms.tolist(), strict=True)
    ]
    return {"study_date": dates, "study_datetime": dtimes, "study_time_missing": st.time_ms < 0}


def write_truth_studies(
    out: Path, st: Structure, rel_paths: list[str], res: ChunkResult
) -> np.ndarray:
    """`truth/studies.parquet` (one `TruthStudy` per study); returns the temporal flags."""
    S, sp = st.study_ids.size, st.specs
    temporal = np.array(res.temporal, dtype=bool)
    studies: dict[str, Any] = {
        "subject_id": st.subject_ids[st.st_pat],
        "study_id": st.study_ids,
        "split": st.split[st.st_pat].tolist(),
        "report_path": rel_paths,
        **_when(st),
        "n_images": np.bincount(st.im_study, minlength=S),
        "n_prior_studies": st.n_prior,
        "is_first_study": st.n_prior == 0,
        "same_time_ambiguous": st.same_time,
        "same_day_unordered": st.same_day_unordered,
        "multi_time_images": st.multi_time,
        "has_temporal_reference": temporal,
        "temporal_reference_without_prior": temporal & (st.n_prior == 0),
        "style": [STYLE_NAMES[s] for s in sp["style"].tolist()],
        "has_addendum": sp["addendum"],
        "has_wet_read": sp["wet_read"],
        "has_notification": sp["notification"],
        "has_recommendation": sp["recommendation"],
        **_headers(st),
        "empty_sections": _empty_sections(st),
    }
    for sec in SECTIONS:
        studies[f"expect_{sec}"] = [s[sec] is not None for s in res.sections]
    for sec in SECTIONS:
        studies[sec] = [s[sec] for s in res.sections]
    studies["reason_for_exam"] = res.reason_for_exam
    sdf = pl.DataFrame(
        studies,
        schema_overrides={
            "study_datetime": pl.Datetime("ms"),
            "empty_sections": pl.List(pl.String),
        },
    )
    sdf = sdf.select(list(TruthStudy.model_fields)).sort(["subject_id", "study_id"])
    write_parquet(sdf, out / "truth" / "studies.parquet")
    return temporal
