"""Every bad-input case: a one-line error naming file and row (nothing written), or a reject row."""

from __future__ import annotations

import gzip

import polars as pl
import pytest
from mimic_tiny import REPORT, study, write_root
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.io import read_manifest, read_shards
from cxrctx.mimic.build import build_priors

runner = CliRunner()
META = "mimic-cxr-2.0.0-metadata.csv"


def _good(tmp_path, **kw):
    return write_root(
        tmp_path / "root",
        [study(10000001, 50000001), study(10000001, 50000002, date="21500105")],
        **kw,
    )


def _cli_fails(args, *needles):
    res = runner.invoke(app, args)
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())  # rich may wrap a long line
    for n in needles:
        assert n in text, res.output
    return res


def _rewrite_meta(root, edit):
    """Apply `edit(lines) -> lines` to the plain-text metadata CSV (written uncompressed)."""
    p = root / META
    lines = p.read_text().splitlines()
    p.write_text("\n".join(edit(lines)) + "\n")


def test_missing_root(tmp_path):
    out = tmp_path / "out"
    _cli_fails(
        ["build-priors", str(tmp_path / "nope"), "--out", str(out)], "nope", "does not exist"
    )
    assert not out.exists()


def test_missing_metadata(tmp_path):
    root = _good(tmp_path)
    (root / f"{META}.gz").unlink()
    out = tmp_path / "out"
    _cli_fails(["build-priors", str(root), "--out", str(out)], f"{META}.gz", "not found")
    assert not out.exists()


def test_corrupt_gzip(tmp_path):
    root = _good(tmp_path)
    p = root / f"{META}.gz"
    p.write_bytes(p.read_bytes()[:40])  # truncated
    out = tmp_path / "out"
    _cli_fails(["build-priors", str(root), "--out", str(out)], f"{META}.gz", "corrupt gzip")
    assert not out.exists()
    p.write_bytes(b"this is not gzip at all")
    _cli_fails(["build-priors", str(root), "--out", str(out)], "corrupt gzip")


def test_plain_csv_is_accepted(tmp_path):
    root = _good(tmp_path, gz=False)
    res = build_priors(root, tmp_path / "out", workers=1)
    assert res.counts["records"] == 2


def test_missing_columns(tmp_path):
    root = _good(tmp_path, gz=False)
    _rewrite_meta(root, lambda ls: [ls[0].replace("StudyTime", "Time"), *ls[1:]])
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "out")],
        META,
        "missing column",
        "StudyTime",
    )


def test_malformed_row_wrong_field_count(tmp_path):
    root = _good(tmp_path, gz=False)
    _rewrite_meta(root, lambda ls: [*ls[:2], ls[2] + ",extra", *ls[3:]])
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "out")], META, "line 3", "malformed row"
    )
    assert not (tmp_path / "out").exists()


def test_malformed_row_non_integer_id(tmp_path):
    root = _good(tmp_path, gz=False)
    _rewrite_meta(root, lambda ls: [*ls[:3], ls[3].replace("10000001", "1000x001"), *ls[4:]])
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "out")], META, "line 4", "subject_id"
    )


def test_duplicate_dicom_ids(tmp_path):
    root = _good(tmp_path, gz=False)
    _rewrite_meta(root, lambda ls: [*ls, ls[1]])
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "out")],
        META,
        "duplicate dicom_id",
        "lines 2, 6",
    )
    assert not (tmp_path / "out").exists()


def test_bad_label_value(tmp_path):
    root = _good(tmp_path, gz=False)
    p = root / "mimic-cxr-2.0.0-chexpert.csv"
    lines = p.read_text().splitlines()
    lines[2] = lines[2].replace("-1.0", "2.0", 1)
    p.write_text("\n".join(lines) + "\n")
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "out")], "chexpert.csv", "line 3", "2.0"
    )


def test_corrupt_reports_zip(tmp_path):
    root = write_root(tmp_path / "root", [study(10000001, 50000001)], zip_reports=True)
    (root / "mimic-cxr-reports.zip").write_bytes(b"PK\x03\x04 broken")
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "out")], "mimic-cxr-reports.zip", "zip"
    )


def _rejects(out):
    return pl.read_parquet(out / "rejects.parquet")


def test_bad_study_date_is_a_reject(tmp_path):
    root = write_root(
        tmp_path / "root", [study(10000001, 50000001), study(10000001, 50000002, date="21501399")]
    )
    res = build_priors(root, tmp_path / "out", workers=1)
    rej = _rejects(tmp_path / "out")
    assert rej.rows() == [(50000002, f"{META}.gz line 4", "bad_study_date")]
    assert (
        res.counts["records"] == 1
        and res.counts["rejected_studies"] == 1
        and res.counts["studies_in"] == 2
    )
    rec = read_shards(tmp_path / "out" / "records")
    assert rec["n_prior_studies"].to_list() == [
        0
    ]  # a study that cannot be placed in time is no prior


def test_bad_study_time_is_a_reject(tmp_path):
    root = write_root(tmp_path / "root", [study(10000001, 50000001, time="256000")])
    build_priors(root, tmp_path / "out", workers=1)
    assert _rejects(tmp_path / "out")["reason"].to_list() == ["bad_study_time"]


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (b"\xff\xfe FINDINGS: caf\xe9\n", "non_utf8_report"),
        ("", "empty_report"),
        ("   \n \n", "empty_report"),
        (None, "missing_report"),
    ],
)
def test_report_problems_are_rejects(tmp_path, report, reason):
    root = write_root(
        tmp_path / "root",
        [study(10000001, 50000001), study(10000001, 50000002, date="21500105", report=report)],
    )
    res = build_priors(root, tmp_path / "out", workers=1)
    rej = _rejects(tmp_path / "out")
    assert rej["reason"].to_list() == [reason]
    assert rej["study_id"].to_list() == [50000002]
    assert "files/p10/p10000001/s50000002.txt" in rej["source"][0]
    m = read_manifest(tmp_path / "out" / "manifest.json")
    assert m.counts["studies_in"] == m.counts["records"] + m.counts["rejected_studies"] == 2
    assert res.rejects_by_reason == {reason: 1}


def test_missing_report_in_zip(tmp_path):
    root = write_root(
        tmp_path / "root",
        [study(10000001, 50000001), study(10000001, 50000002, date="21500105", report=None)],
        zip_reports=True,
    )
    build_priors(root, tmp_path / "out", workers=1)
    rej = _rejects(tmp_path / "out")
    assert rej["reason"].to_list() == ["missing_report"]
    assert rej["source"][0].startswith("mimic-cxr-reports.zip: files/p10/p10000001/s50000002.txt")


def test_rejected_report_study_still_counts_as_prior(tmp_path):
    root = write_root(
        tmp_path / "root",
        [study(10000001, 50000001, report=None), study(10000001, 50000002, date="21500105")],
    )
    build_priors(root, tmp_path / "out", workers=1)
    rec = read_shards(tmp_path / "out" / "records")
    assert rec["n_prior_studies"].to_list() == [1]
    (prior,) = rec["priors"][0].to_list()
    assert prior["study_id"] == 50000001 and prior["findings"] is None and len(prior["images"]) == 2


def test_unknown_view_position_is_other_with_warning(tmp_path):
    root = write_root(tmp_path / "root", [study(10000001, 50000001, views=("PA", "WEIRD VIEW"))])
    res = build_priors(root, tmp_path / "out", workers=1)
    rec = read_shards(tmp_path / "out" / "records")
    assert [i["view_group"] for i in rec["images"][0].to_list()] == ["frontal", "other"]
    assert res.warnings == {"unknown_view_position": 1}
    assert res.counts["unknown_view_position"] == 1
    out = runner.invoke(app, ["build-priors", str(root), "--out", str(tmp_path / "out2")])
    assert out.exit_code == 0 and "unknown ViewPosition" in out.output


def test_study_with_no_images_is_a_flagged_record(tmp_path):
    root = write_root(tmp_path / "root", [study(10000001, 50000001)])
    extra = root / "files/p10/p10000001/s50000009.txt"
    extra.write_text(REPORT)
    res = build_priors(root, tmp_path / "out", workers=1)
    rec = read_shards(tmp_path / "out" / "records")
    row = rec.filter(pl.col("study_id") == 50000009).row(0, named=True)
    assert row["images"] == [] and row["study_datetime"] is None
    assert row["flags"] == ["missing_study_datetime", "no_images"]
    assert row["subject_id"] == 10000001 and row["priors"] == []
    assert res.counts["studies_in"] == 2 == res.counts["records"]


def test_library_raises_cxrctx_error(tmp_path):
    with pytest.raises(CxrctxError, match="does not exist"):
        build_priors(tmp_path / "nope", tmp_path / "out")


def test_failed_rerun_leaves_previous_output_intact(tmp_path):
    root = _good(tmp_path)
    out = tmp_path / "out"
    build_priors(root, out, workers=1)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    p = root / f"{META}.gz"
    p.write_bytes(gzip.compress(b"dicom_id,subject_id\n"))
    with pytest.raises(CxrctxError, match="missing column"):
        build_priors(root, out, workers=1)
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after
    assert not [p for p in out.rglob("*.tmp")]
