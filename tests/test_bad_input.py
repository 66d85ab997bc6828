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


# --- hardening: hostile or broken inputs --------------------------------------------------


def test_bad_dicom_id_is_a_reject_and_never_a_path(tmp_path):
    root = _good(tmp_path, gz=False)
    _rewrite_meta(
        root, lambda ls: [ls[0], "../../../etc/passwd" + ls[1][ls[1].index(",") :], *ls[2:]]
    )
    res = build_priors(root, tmp_path / "out", workers=1)
    rej = _rejects(tmp_path / "out")
    assert rej.rows() == [
        (50000001, f"{META} line 2: dicom_id '../../../etc/passwd'", "bad_dicom_id")
    ]
    assert res.counts["images_rejected"] == 1 and res.counts["records"] == 2
    rec = read_shards(tmp_path / "out" / "records")
    paths = [i["path"] for imgs in rec["images"].to_list() for i in imgs]
    assert len(paths) == 3 and not any(".." in p for p in paths)


def _zip_with_patched_entry(tmp_path, patch):
    """A reports zip whose second entry's central-directory record is edited by `patch`."""
    root = write_root(
        tmp_path / "root",
        [study(10000001, 50000001), study(10000001, 50000002, date="21500105")],
        zip_reports=True,
    )
    p = root / "mimic-cxr-reports.zip"
    data = bytearray(p.read_bytes())
    name = b"files/p10/p10000001/s50000002.txt"
    i = data.index(b"PK\x01\x02")
    while data[i + 46 : i + 46 + len(name)] != name:
        i = data.index(b"PK\x01\x02", i + 4)
    patch(data, i)
    p.write_bytes(bytes(data))
    return root


def _set_u16(data, at, value):
    data[at : at + 2] = value.to_bytes(2, "little")


@pytest.mark.parametrize(
    ("patch", "detail"),
    [
        (lambda d, i: _set_u16(d, i + 8, 0x1), "encrypted"),
        (lambda d, i: _set_u16(d, i + 10, 9), "compression method 9"),
        (lambda d, i: d.__setitem__(slice(i + 16, i + 20), b"\0\0\0\0"), "corrupt"),
    ],
    ids=["encrypted", "deflate64", "bad-crc"],
)
def test_zip_entry_problems_are_rejects(tmp_path, patch, detail):
    root = _zip_with_patched_entry(tmp_path, patch)
    res = build_priors(root, tmp_path / "out", workers=1)
    rej = _rejects(tmp_path / "out")
    assert rej["reason"].to_list() == ["unreadable_report"]
    assert rej["study_id"].to_list() == [50000002]
    assert detail in rej["source"][0], rej["source"][0]
    assert res.counts["records"] == 1


@pytest.mark.parametrize(
    ("bad", "needle"),
    [(b"\xff", "not UTF-8"), (b"\x01", "control character 0x01")],
    ids=["non-utf8", "control"],
)
def test_csv_bad_bytes_name_the_line(tmp_path, bad, needle):
    root = _good(tmp_path, gz=False)
    p = root / META
    lines = p.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"Erect", b"Er" + bad + b"ect")
    p.write_bytes(b"\n".join(lines))
    _cli_fails(["build-priors", str(root), "--out", str(tmp_path / "out")], META, "line 3", needle)


def test_unicode_digits_in_study_time_are_a_reject(tmp_path):
    root = write_root(
        tmp_path / "root", [study(10000001, 50000001, time="\u0660\u0668\u0660\u0665")]
    )
    build_priors(root, tmp_path / "out", workers=1)
    assert _rejects(tmp_path / "out").rows() == [(50000001, f"{META}.gz line 2", "bad_study_time")]


def test_quoted_newline_in_csv_is_accepted(tmp_path):
    root = _good(tmp_path, gz=False)
    _rewrite_meta(root, lambda ls: [ls[0], ls[1].replace(",Erect", ',"Erect\nstanding"'), *ls[2:]])
    _rewrite_meta(root, lambda ls: [*ls[:4], ls[4].replace("21500105", "21501399")])
    res = build_priors(root, tmp_path / "out", workers=1)
    assert res.counts["records"] == 1
    # line numbers stay physical lines: the bad date is on line 5 (line 2 spans two lines)
    assert _rejects(tmp_path / "out").rows() == [(50000002, f"{META} line 5", "bad_study_date")]


def test_unbalanced_quote_names_the_line(tmp_path):
    root = _good(tmp_path, gz=False)
    _rewrite_meta(root, lambda ls: [ls[0], ls[1], ls[2].replace(",Erect", ',"Erect'), *ls[3:]])
    _cli_fails(["build-priors", str(root), "--out", str(tmp_path / "out")], META, "line 3", "quote")


@pytest.mark.parametrize("zip_reports", [False, True], ids=["file", "zip-entry"])
def test_report_over_the_size_cap_is_a_reject(tmp_path, zip_reports):
    big = REPORT + " more text\n" * 50
    root = write_root(
        tmp_path / "root",
        [study(10000001, 50000001), study(10000001, 50000002, date="21500105", report=big)],
        zip_reports=zip_reports,
    )
    build_priors(root, tmp_path / "out", workers=1, max_report_bytes=len(REPORT) + 10)
    rej = _rejects(tmp_path / "out")
    assert rej["reason"].to_list() == ["report_too_large"]
    assert f"larger than {len(REPORT) + 10:,} bytes" in rej["source"][0]
    res = runner.invoke(
        app, ["build-priors", str(root), "--out", str(tmp_path / "o2"), "--max-report-bytes", "100"]
    )
    assert res.exit_code == 0 and "report_too_large" in res.output


def _alarm(seconds):
    import signal

    def boom(*_):
        raise TimeoutError("build-priors hung")

    signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "outside-root", "inside-root"])
def test_reports_must_be_regular_files_inside_the_root(tmp_path, kind):
    import os
    import signal

    root = write_root(
        tmp_path / "root",
        [study(10000001, 50000001), study(10000001, 50000002, date="21500105")],
    )
    p = root / "files/p10/p10000001/s50000002.txt"
    p.unlink()
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        p.symlink_to("/dev/zero")
    elif kind == "outside-root":
        (tmp_path / "elsewhere.txt").write_text(REPORT)
        p.symlink_to(tmp_path / "elsewhere.txt")
    else:
        (root / "files" / "kept.txt").write_text(REPORT)
        p.symlink_to(root / "files" / "kept.txt")
    _alarm(60)
    try:
        res = build_priors(root, tmp_path / "out", workers=1)
    finally:
        signal.alarm(0)
    rej = _rejects(tmp_path / "out")
    if kind == "inside-root":
        assert rej.height == 0 and res.counts["records"] == 2
        return
    reason = {"fifo": "not a regular file", "dev-zero": "outside the root"}.get(kind, "outside")
    assert rej["reason"].to_list() == ["unreadable_report"]
    assert reason in rej["source"][0], rej["source"][0]


def test_files_without_reports_and_no_zip_is_fatal(tmp_path):
    root = write_root(tmp_path / "root", [study(10000001, 50000001, report=None)])
    (root / "files/p10/p10000001/s50000001").mkdir(parents=True)  # images only, like -JPG
    out = tmp_path / "out"
    _cli_fails(
        ["build-priors", str(root), "--out", str(out)],
        "no reports found",
        str(root / "files"),
        "mimic-cxr-reports.zip",
        "MIMIC-CXR",
        "PhysioNet",
        "MIMIC-CXR-JPG",
    )
    assert not out.exists()


def test_relative_reports_zip_is_resolved_against_the_root(tmp_path, monkeypatch):
    root = write_root(tmp_path / "root", [study(10000001, 50000001)], zip_reports=True)
    (root / "mimic-cxr-reports.zip").rename(root / "reports-v2.zip")
    (root / "files").mkdir()
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(
        app, ["build-priors", str(root), "--out", "out", "--reports-zip", "reports-v2.zip"]
    )
    assert res.exit_code == 0, res.output
    assert (
        read_manifest(tmp_path / "out" / "manifest.json").config["reports_zip"] == "reports-v2.zip"
    )
    # not under the root: the working directory is the next place looked in
    (root / "reports-v2.zip").rename(tmp_path / "cwd.zip")
    res = runner.invoke(app, ["build-priors", str(root), "--out", "o2", "--reports-zip", "cwd.zip"])
    assert res.exit_code == 0, res.output


def test_out_that_is_a_file_fails_before_any_work(tmp_path):
    root = _good(tmp_path)
    (tmp_path / "afile").write_text("x")
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "afile")], "afile", "not a directory"
    )
    _cli_fails(
        ["build-priors", str(root), "--out", str(tmp_path / "afile" / "sub")], "not a directory"
    )


def test_write_failure_is_one_line_and_stale_temp_files_go(tmp_path, monkeypatch):
    import errno

    from cxrctx.mimic import build as B

    root = _good(tmp_path)
    out = tmp_path / "out"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(B, "write_parquet", full)
    _cli_fails(["build-priors", str(root), "--out", str(out)], str(out), "No space left on device")
    # a killed writer of this run left a temp part behind; the re-run removes it
    (out / "records").mkdir(parents=True, exist_ok=True)
    stale = out / "records" / ".part-00000.parquet.abc123.tmp"
    stale.write_bytes(b"half a shard")
    _cli_fails(["build-priors", str(root), "--out", str(out)], str(out), "No space left on device")
    assert not stale.exists()
    assert not (out / "manifest.json").exists()


def test_unlistable_patient_folder_is_a_one_line_error(tmp_path, monkeypatch):
    """The report workers list the patient folders; one that cannot be listed (permissions)
    stops the run with a message naming it, before anything is written."""
    import os

    from cxrctx.mimic import reports

    root = write_root(tmp_path / "root", [study(10000001, 50000001), study(10000002, 50000002)])
    locked = str(root / "files/p10/p10000002")
    real = os.listdir

    def listdir(path="."):
        if str(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(reports.os, "listdir", listdir)
    out = tmp_path / "out"
    _cli_fails(
        ["build-priors", str(root), "--out", str(out), "-j", "1"],
        "p10000002",
        "cannot list the report folder",
        "Permission denied",
    )
    assert not out.exists()
