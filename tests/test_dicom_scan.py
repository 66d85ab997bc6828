"""--scan-dicom: DICOM headers give the same metadata (and records) as the CSV."""

from __future__ import annotations

import polars as pl
from mimic_tiny import study, write_root

from cxrctx.io import read_shards
from cxrctx.mimic.build import build_priors
from cxrctx.mimic.dicom_scan import find_dicoms, scan_dicoms
from cxrctx.mimic.layout import METADATA_COLUMNS, image_relpath, read_metadata
from cxrctx.synth.dicom import write_dicom

SIZE = (8, 6)
META = "mimic-cxr-2.0.0-metadata.csv.gz"


def _with_dicoms(tmp_path):
    studies = [
        study(10000001, 50000001, date="21500101", time="80556.875"),
        study(10000001, 50000002, date="21500105", time="", views=("AP", "LL", "")),
        study(11000002, 50000003, date="21600101", time="235959"),
    ]
    root = write_root(tmp_path / "root", studies, size=SIZE)
    for s in studies:
        for did, view in s["images"]:
            t = s["time"]
            if t:
                whole, _, frac = t.partition(".")
                t = whole.zfill(6) + (f".{frac}" if frac else "")
            write_dicom(
                root / image_relpath(s["subject_id"], s["study_id"], did),
                dicom_id=did,
                subject_id=s["subject_id"],
                study_id=s["study_id"],
                view_position=view,
                study_date=s["date"],
                study_time=t,
                rows=SIZE[0],
                columns=SIZE[1],
                performed_procedure="CHEST (PA AND LAT)",
                procedure_meaning="CHEST (PA AND LAT)",
                view_meaning="postero-anterior",
                orientation_meaning="Erect",
            )
    return root


def test_scan_gives_the_csv_columns(tmp_path):
    root = _with_dicoms(tmp_path)
    rels = find_dicoms(root / "files")
    assert len(rels) == 7 and rels == sorted(rels)
    seen = []
    rows, errors = scan_dicoms(root, rels, workers=1, on_progress=seen.append)
    assert errors == [] and sum(seen) == 7
    scanned = pl.DataFrame([r[:-1] for r in rows], schema=list(METADATA_COLUMNS), orient="row")
    csv = read_metadata(root / META).drop("_line")
    key = [
        "dicom_id",
        "ViewPosition",
        "StudyDate",
        "PerformedProcedureStepDescription",
        "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]
    a = scanned.select(key).sort("dicom_id")
    b = csv.select(key).sort("dicom_id")
    assert a.equals(b)
    assert scanned.filter(pl.col("dicom_id") == csv["dicom_id"][0])["StudyTime"][0] == "080556.875"


def test_scan_dicom_build_equals_csv_build(tmp_path):
    root = _with_dicoms(tmp_path)
    build_priors(root, tmp_path / "csv", workers=1)
    (root / META).unlink()  # the scan must not need it
    res = build_priors(root, tmp_path / "scan", scan_dicom=True, workers=2)
    a = read_shards(tmp_path / "csv" / "records")
    b = read_shards(tmp_path / "scan" / "records")
    assert a.equals(b)
    assert res.manifest.config["scan_dicom"] is True
    assert res.counts["images_in"] == 7 and res.counts["images_rejected"] == 0


def test_unreadable_dicoms_become_rejects(tmp_path):
    root = _with_dicoms(tmp_path)
    rels = find_dicoms(root / "files")
    (root / rels[0]).write_bytes(b"not a dicom file")
    (root / rels[1]).write_bytes((root / rels[1]).read_bytes()[:60])  # truncated
    res = build_priors(root, tmp_path / "o", scan_dicom=True, workers=1)
    rej = pl.read_parquet(tmp_path / "o" / "rejects.parquet")
    assert rej["reason"].to_list() == ["unreadable_dicom", "unreadable_dicom"]
    assert sorted(s.split(":")[0] for s in rej["source"]) == sorted(rels[:2])
    c = res.counts
    assert c["images_in"] == 7 and c["images_rejected"] == 2
    assert (
        c["images_in"]
        == c["images_in_records"] + c["images_in_rejected_studies"] + c["images_rejected"]
    )
    assert c["studies_in"] == c["records"] + c["rejected_studies"]


def test_parallel_scan_equals_serial(tmp_path):
    root = _with_dicoms(tmp_path)
    rels = find_dicoms(root / "files")
    assert scan_dicoms(root, rels, workers=1, chunk_size=3) == scan_dicoms(
        root, rels, workers=2, chunk_size=3
    )
