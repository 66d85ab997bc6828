"""The synthetic MIMIC-CXR generator: layout, formats, variety, truth, determinism, CLI."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import re
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.synth import (
    CHEXPERT_CSV,
    HEADERS,
    METADATA_COLUMNS,
    METADATA_CSV,
    NEGBIO_CSV,
    REPORTS_ZIP,
    SPLIT_CSV,
    TruthStudy,
    study_time_text,
    synthesize,
    write_dicom,
)
from cxrctx.synth.dicom import dicom_dataset
from cxrctx.synth.text import TEMPORAL_RE, TITLE, UNDERSCORES
from cxrctx.vocab import CHEXPERT_LABELS, LESIONS, LOCATIONS

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mimic-mini"
DICOM_ID_RE = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
STUDY_TIME_RE = re.compile(r"^\d{1,6}\.\d{1,3}$")
HEADER_RE = re.compile(r"^ ([A-Z][A-Z ()/,]*[A-Z)]):")


def read_csv_gz(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def parse_time(text: str) -> tuple[int, int, int, str]:
    whole, _, frac = text.partition(".")
    padded = whole.zfill(6)
    return int(padded[:2]), int(padded[2:4]), int(padded[4:6]), frac


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def meta(synth_root: Path) -> list[dict[str, str]]:
    header, rows = read_csv_gz(synth_root / METADATA_CSV)
    assert tuple(header) == METADATA_COLUMNS
    return rows


@pytest.fixture(scope="module")
def truth(synth_root: Path) -> pl.DataFrame:
    return pl.read_parquet(synth_root / "truth" / "studies.parquet")


def test_study_time_text_loses_leading_zeros():
    ms = lambda h, m, s, f=0: ((h * 60 + m) * 60 + s) * 1000 + f  # noqa: E731
    assert study_time_text(ms(8, 5, 56, 875)) == "80556.875"
    assert study_time_text(ms(12, 30, 15)) == "123015.0"
    assert study_time_text(ms(0, 45, 12, 125)) == "4512.125"
    assert study_time_text(ms(0, 0, 7, 500)) == "7.5"
    assert study_time_text(ms(23, 59, 59, 999)) == "235959.999"


def test_layout_and_ids(synth_root: Path, meta, truth):
    assert {r["dicom_id"] for r in meta} and len({r["dicom_id"] for r in meta}) == len(meta)
    studies = {(r["subject_id"], r["study_id"]) for r in meta}
    assert len({s for _, s in studies}) == len(studies) == truth.height
    for subject, study in studies:
        assert re.fullmatch(r"1\d{7}", subject) and re.fullmatch(r"5\d{7}", study)
        report = synth_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        assert report.is_file()
    for r in meta:
        assert DICOM_ID_RE.match(r["dicom_id"])
        path = (
            synth_root
            / "files"
            / f"p{r['subject_id'][:2]}"
            / f"p{r['subject_id']}"
            / f"s{r['study_id']}"
            / f"{r['dicom_id']}.dcm"
        )
        assert path.is_file()
    n_reports = len(list((synth_root / "files").rglob("*.txt")))
    assert n_reports == truth.height
    # several studies per patient, skewed
    per_patient = truth.group_by("subject_id").len()["len"]
    assert per_patient.min() == 1 and per_patient.max() >= 4


def test_metadata_values(meta):
    times = [r["StudyTime"] for r in meta]
    assert "" in times, "some StudyTime must be blank"
    present = [t for t in times if t]
    assert all(STUDY_TIME_RE.match(t) for t in present)
    assert any(len(t.split(".")[0]) < 6 for t in present), "leading zeros must be lost sometimes"
    assert any(t.endswith(".0") for t in present)
    for t in present:
        h, m, s, _ = parse_time(t)
        assert h < 24 and m < 60 and s < 60
    for r in meta:
        d = dt.datetime.strptime(r["StudyDate"], "%Y%m%d").date()
        assert dt.date(2100, 1, 1) <= d <= dt.date(2200, 12, 31)
        assert int(r["Rows"]) > 0 and int(r["Columns"]) > 0
    views = {r["ViewPosition"] for r in meta}
    assert {"PA", "AP", "LATERAL", "LL", ""} <= views
    assert {"LAO", "RAO", "AP AXIAL", "XTABLE LATERAL", "AP LLD", "SWIMMERS"} <= views
    assert {r["ViewCodeSequence_CodeMeaning"] for r in meta} >= {
        "postero-anterior",
        "antero-posterior",
        "lateral",
        "left lateral",
    }
    assert {"Erect", ""} <= {r["PatientOrientationCodeSequence_CodeMeaning"] for r in meta}


def test_split_is_patient_disjoint(synth_root: Path, meta):
    header, rows = read_csv_gz(synth_root / SPLIT_CSV)
    assert header == ["dicom_id", "study_id", "subject_id", "split"]
    assert sorted(r["dicom_id"] for r in rows) == sorted(r["dicom_id"] for r in meta)
    by_subject: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_subject[r["subject_id"]].add(r["split"])
    assert all(len(s) == 1 for s in by_subject.values())
    assert {r["split"] for r in rows} == {"train", "validate", "test"}


@pytest.mark.parametrize("name", [CHEXPERT_CSV, NEGBIO_CSV])
def test_label_csvs_consistent_with_truth(synth_root: Path, truth, name):
    header, rows = read_csv_gz(synth_root / name)
    assert header == ["subject_id", "study_id", *CHEXPERT_LABELS]
    assert len(rows) == truth.height
    values = {r[c] for r in rows for c in CHEXPERT_LABELS}
    assert values == {"1.0", "0.0", "-1.0", ""}
    labels = pl.read_parquet(synth_root / "truth" / "labels" / "part-00000.parquet")
    eff = labels.filter(pl.col("lesion") == "pleural effusion").select("id", "status", "rationale")
    csv_eff = {r["study_id"]: r["Pleural Effusion"] for r in rows}
    agree = sum(
        (csv_eff[i] in ("1.0", "-1.0")) == (s == "positive")
        and ((csv_eff[i] == "") == (rat == "not mentioned"))
        for i, s, rat in eff.iter_rows()
    )
    assert agree >= 0.85 * eff.height


def test_negbio_differs_from_chexpert(synth_root: Path):
    _, a = read_csv_gz(synth_root / CHEXPERT_CSV)
    _, b = read_csv_gz(synth_root / NEGBIO_CSV)
    assert [r["study_id"] for r in a] == [r["study_id"] for r in b]
    assert a != b


def test_report_layout_consistent_with_header_vocabulary(synth_root: Path):
    reports = sorted((synth_root / "files").rglob("*.txt"))
    headers: set[str] = set()
    for path in reports:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n") and not text.endswith("\n\n")
        lines = text.split("\n")[:-1]
        assert TITLE in lines
        assert TITLE == " " * 33 + "FINAL REPORT"
        for line in lines:
            assert line.startswith(" "), (path, line)
            assert len(line) <= 79, (path, line)
            if m := HEADER_RE.match(line):
                headers.add(m.group(1))
    assert "___" in "".join(p.read_text() for p in reports[:20])
    expected = {name for opts in HEADERS.values() for name, _ in opts if name != "RECOMMENDATIONS"}
    expected |= {"TECHNIQUE", "FINDINGS AND IMPRESSION", "ADDENDUM", "NOTIFICATION", "WET READ"}
    assert expected <= headers, expected - headers


def test_variety_cases_present(synth_root: Path, truth):
    t = truth
    assert t["study_time_missing"].any()
    assert t["same_time_ambiguous"].sum() >= 2
    assert t["temporal_reference_without_prior"].sum() >= 2
    assert (t["style"] == "neither").any() and (t["style"] == "combined").any()
    assert t["has_addendum"].any() and t["has_wet_read"].any() and t["multi_time_images"].any()
    empty = set(t["empty_sections"].explode().drop_nulls().to_list())
    assert {"comparison", "technique", "findings"} <= empty
    # same-day: two studies of a patient on one date with different times
    same_day = (
        t.filter(pl.col("study_datetime").is_not_null())
        .group_by("subject_id", "study_date")
        .agg(pl.col("study_datetime").n_unique().alias("n"))
    )
    assert (same_day["n"] >= 2).any()
    addendum = t.filter(pl.col("has_addendum"))["report_path"][0]
    lines = (synth_root / addendum).read_text().split("\n")
    assert (
        lines[0].strip() == "FINAL ADDENDUM"
        and UNDERSCORES in lines
        and lines.index(UNDERSCORES) < lines.index(TITLE)
    )
    neither = t.filter(pl.col("style") == "neither")
    assert not neither["expect_findings"].any() and not neither["expect_impression"].any()
    with_reason = t.filter(pl.col("reason_for_exam").is_not_null())
    row = with_reason.row(0, named=True)
    assert row["indication"].endswith("// " + row["reason_for_exam"])


def test_truth_relations_follow_design_rules(truth, meta):
    """n_prior_studies / same-time flags recomputed from the metadata CSV alone."""
    studies: dict[str, dict] = {}
    for r in meta:
        s = studies.setdefault(
            r["study_id"], {"subject": r["subject_id"], "date": r["StudyDate"], "times": []}
        )
        if r["StudyTime"]:
            h, m, sec, frac = parse_time(r["StudyTime"])
            s["times"].append(
                dt.timedelta(hours=h, minutes=m, seconds=sec, milliseconds=int(frac.ljust(3, "0")))
            )
    key = {}
    for sid, s in studies.items():
        date = dt.datetime.strptime(s["date"], "%Y%m%d")
        key[sid] = (s["subject"], date.date(), date + min(s["times"]) if s["times"] else None)
    for row in truth.iter_rows(named=True):
        subject, date, when = key[str(row["study_id"])]
        assert row["study_datetime"] == when
        assert row["study_time_missing"] == (when is None)
        n = same = 0
        for sid, (subj2, date2, when2) in key.items():
            if subj2 != subject or sid == str(row["study_id"]):
                continue
            if when is not None and when2 is not None:
                n += when2 < when
                same += when2 == when
            else:
                n += date2 < date
        assert row["n_prior_studies"] == n
        assert row["is_first_study"] == (n == 0)
        assert row["same_time_ambiguous"] == (same > 0)


def test_temporal_flag_consistent_with_generator_regex(truth):
    for row in truth.iter_rows(named=True):
        said = " ".join(x for x in (row["findings"], row["impression"]) if x)
        assert bool(TEMPORAL_RE.search(said)) == row["has_temporal_reference"], row["report_path"]
        assert row["temporal_reference_without_prior"] == (
            row["has_temporal_reference"] and row["n_prior_studies"] == 0
        )
    firsts = truth.filter(pl.col("is_first_study"))
    assert (~firsts["has_temporal_reference"]).sum() > firsts["has_temporal_reference"].sum()
    later = truth.filter(~pl.col("is_first_study"))
    assert later["has_temporal_reference"].mean() > 0.5


def test_truth_studies_columns(truth):
    assert truth.columns == list(TruthStudy.model_fields)
    TruthStudy.model_validate(truth.row(0, named=True))


def test_truth_labels_consistent_with_reports(synth_root: Path, truth):
    labels = pl.read_parquet(synth_root / "truth" / "labels")
    assert labels.columns == ["id", "lesion", "status", "location", "rationale"]
    assert labels.height == 14 * truth.height
    assert labels.group_by("id").len()["len"].unique().to_list() == [14]
    assert set(labels["id"].unique()) == {str(s) for s in truth["study_id"]}
    assert set(labels["lesion"]) <= set(LESIONS) and set(labels["status"]) == {
        "positive",
        "negative",
    }
    assert set(labels["location"]) <= set(LOCATIONS) and {"left", "right", "bilateral"} <= set(
        labels["location"]
    )
    texts = {
        str(r["study_id"]): " ".join((synth_root / r["report_path"]).read_text().split())
        for r in truth.iter_rows(named=True)
    }
    mentioned = labels.filter(pl.col("rationale") != "not mentioned")
    for i, rationale in mentioned.select("id", "rationale").iter_rows():
        assert " ".join(rationale.split()) in texts[i]
    notm = labels.filter(pl.col("rationale") == "not mentioned")
    assert (notm["status"] == "negative").all() and (notm["location"] == "not mentioned").all()
    pos = labels.filter(pl.col("status") == "positive")
    assert (
        pos["rationale"]
        .str.contains(
            r"(?i)possible|cannot|may |could|suspicious|questionable|not excluded|probable|likely|suspected|rule out"
        )
        .any()
    )
    neg = labels.filter((pl.col("status") == "negative") & (pl.col("rationale") != "not mentioned"))
    assert neg["rationale"].str.contains(r"(?i)\bno\b|without|absent|normal|not seen").any()
    assert set(pos["lesion"]) == set(LESIONS)  # every lesion shows up positive somewhere


def test_dicom_headers_equal_csv(synth_root: Path, meta):
    for r in meta:
        path = (
            synth_root
            / "files"
            / f"p{r['subject_id'][:2]}"
            / f"p{r['subject_id']}"
            / f"s{r['study_id']}"
            / f"{r['dicom_id']}.dcm"
        )
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (
            ds.PatientID == r["subject_id"]
            and ds.StudyID == r["study_id"]
            and ds.AccessionNumber == r["study_id"]
        )
        assert (ds.ViewPosition or "") == r["ViewPosition"]
        assert ds.StudyDate == r["StudyDate"]
        tm = ds.get("StudyTime") or ""
        if r["StudyTime"]:
            assert parse_time(str(tm)) == parse_time(r["StudyTime"])
        else:
            assert tm == ""
        assert (int(ds.Rows), int(ds.Columns)) == (int(r["Rows"]), int(r["Columns"]))
        assert (ds.PerformedProcedureStepDescription or "") == r[
            "PerformedProcedureStepDescription"
        ]
        for seq, col in (
            ("ViewCodeSequence", "ViewCodeSequence_CodeMeaning"),
            ("ProcedureCodeSequence", "ProcedureCodeSequence_CodeMeaning"),
            ("PatientOrientationCodeSequence", "PatientOrientationCodeSequence_CodeMeaning"),
        ):
            got = ds.get(seq)[0].CodeMeaning if ds.get(seq) else ""
            assert got == r[col]
    one = pydicom.dcmread(path)
    assert one.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert one.pixel_array.shape == (int(r["Rows"]), int(r["Columns"]))
    assert one.PhotometricInterpretation == "MONOCHROME2"


def test_study_uid_is_per_study(synth_root: Path, meta):
    uids: dict[str, set[str]] = defaultdict(set)
    for r in meta[:60]:
        path = (
            synth_root
            / "files"
            / f"p{r['subject_id'][:2]}"
            / f"p{r['subject_id']}"
            / f"s{r['study_id']}"
            / f"{r['dicom_id']}.dcm"
        )
        uids[r["study_id"]].add(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    assert all(len(v) == 1 for v in uids.values())
    assert len({next(iter(v)) for v in uids.values()}) == len(uids)


def test_write_dicom_checks_pixels(tmp_path: Path):
    kw = dict(
        dicom_id="a" * 8,
        subject_id=10000001,
        study_id=50000001,
        view_position="PA",
        study_date="21000101",
        study_time="010203.5",
    )
    with pytest.raises(ValueError, match="shape"):
        write_dicom(tmp_path / "x.dcm", rows=4, columns=4, pixels=np.zeros((5, 4), np.uint8), **kw)
    write_dicom(
        tmp_path / "y.dcm", rows=6, columns=5, pixels=np.full((6, 5), 1000, np.uint16), **kw
    )
    ds = pydicom.dcmread(tmp_path / "y.dcm")
    assert ds.pixel_array.max() == 1000 and ds.BitsAllocated == 16


@pytest.mark.parametrize(
    "extra",
    [
        dict(
            study_time="3515.15",
            pixels=None,
            view_meaning="antero-posterior",
            orientation_meaning="Erect",
        ),
        dict(
            study_time=None,
            pixels=np.arange(30, dtype=np.uint16).reshape(6, 5) * 50,
            view_position="",
        ),
    ],
)
def test_fast_dicom_equals_pydicom_writer(tmp_path: Path, extra):
    """The hand-rolled encoder writes exactly what pydicom writes for the same dataset."""
    kw = dict(
        dicom_id="0123abcd-00000000-00000000-00000000-0000000f",
        subject_id=10000001,
        study_id=50000001,
        view_position="AP AXIAL",
        study_date="21000101",
        rows=6,
        columns=5,
        performed_procedure="CHEST (PA, LAT & OBLIQUES)",
        procedure_meaning="CHEST (PA, LAT & OBLIQUES)",
    )
    kw.update(extra)
    write_dicom(tmp_path / "fast.dcm", **kw)
    dicom_dataset(**kw).save_as(tmp_path / "ref.dcm", enforce_file_format=True)
    assert (tmp_path / "fast.dcm").read_bytes() == (tmp_path / "ref.dcm").read_bytes()
    ds = pydicom.dcmread(tmp_path / "fast.dcm")
    assert ds.pixel_array.shape == (6, 5)


def test_zip_entries_equal_files(synth_root: Path):
    with zipfile.ZipFile(synth_root / REPORTS_ZIP) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        files = sorted(
            str(p.relative_to(synth_root)) for p in (synth_root / "files").rglob("*.txt")
        )
        assert names == files
        for name in names[:50]:
            assert zf.read(name) == (synth_root / name).read_bytes()
        assert {i.date_time for i in zf.infolist()} == {(2000, 1, 1, 0, 0, 0)}


def test_small_fixture_has_all_splits(synth_root_small: Path):
    t = pl.read_parquet(synth_root_small / "truth" / "studies.parquet")
    assert set(t["split"]) == {"train", "validate", "test"}
    assert not (synth_root_small / REPORTS_ZIP).exists()
    assert not list((synth_root_small / "files").rglob("*.dcm"))


def test_deterministic_and_seed_sensitive(tmp_path: Path):
    a = synthesize(tmp_path / "a", patients=6, seed=5, dicom=True, zip_reports=True)
    synthesize(tmp_path / "b", patients=6, seed=5, dicom=True, zip_reports=True)
    synthesize(tmp_path / "c", patients=6, seed=6, dicom=True, zip_reports=True)
    ta, tb, tc = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    assert ta == tb
    assert ta[METADATA_CSV] != tc[METADATA_CSV]
    assert a.files_written == len(ta)


def test_parallel_chunks_give_same_bytes(tmp_path: Path, monkeypatch):
    import cxrctx.synth as synth

    monkeypatch.setattr(synth, "CHUNK_PATIENTS", 4)
    synthesize(tmp_path / "one", patients=12, seed=2, processes=1, zip_reports=True)
    synthesize(tmp_path / "two", patients=12, seed=2, processes=2, zip_reports=True)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_example_is_current(tmp_path: Path):
    """examples/mimic-mini is exactly `cxrctx synth examples/mimic-mini --patients 25 --seed 1`."""
    synthesize(tmp_path / "mini", patients=25, seed=1)
    fresh, committed = tree_bytes(tmp_path / "mini"), tree_bytes(EXAMPLE)
    assert sorted(fresh) == sorted(committed)
    for name, data in fresh.items():
        # compare content, not codec bytes: Parquet embeds the writer version, gzip the zlib's
        if name.endswith(".parquet"):
            assert pl.read_parquet(io.BytesIO(data)).equals(
                pl.read_parquet(io.BytesIO(committed[name]))
            ), name
        elif name.endswith(".gz"):
            assert gzip.decompress(data) == gzip.decompress(committed[name]), name
        else:
            assert data == committed[name], name
    assert sum(len(b) for b in tree_bytes(EXAMPLE).values()) < 300_000


def test_rerun_replaces_previous_output(tmp_path: Path):
    out = tmp_path / "root"
    synthesize(out, patients=10, seed=1, zip_reports=True)
    synthesize(out, patients=3, seed=1)
    t = pl.read_parquet(out / "truth" / "studies.parquet")
    assert len(list((out / "files").rglob("*.txt"))) == t.height
    assert not (out / REPORTS_ZIP).exists()


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(CxrctxError, match="patients"):
        synthesize(tmp_path / "x", patients=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(CxrctxError, match="not empty"):
        synthesize(tmp_path / "busy", patients=2)
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"
    with pytest.raises(CxrctxError, match="image_format"):
        synthesize(tmp_path / "y", patients=2, image_format="png")


def test_images_flag_without_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # an install without the image renderer: importing it fails
    monkeypatch.setitem(sys.modules, "cxrctx.synth.images", None)
    with pytest.raises(CxrctxError, match="not available"):
        synthesize(tmp_path / "z", patients=2, images=True)


def test_cli(tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["synth", str(tmp_path / "cli"), "--patients", "3", "--seed", "4", "--zip"]
    )
    assert result.exit_code == 0, result.output
    assert "studies" in result.output and (tmp_path / "cli" / REPORTS_ZIP).is_file()
    bad = runner.invoke(app, ["synth", str(tmp_path / "bad"), "--patients", "0"])
    assert bad.exit_code != 0
    assert "patients must be a positive integer" in bad.output and "Traceback" not in bad.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    busy = runner.invoke(app, ["synth", str(tmp_path / "busy")])
    assert busy.exit_code != 0 and "not a cxrctx synth output" in busy.output


def test_csv_readable_by_polars_as_strings(synth_root: Path):
    """A reader that keeps StudyTime as text sees exactly what was written."""
    raw = gzip.decompress((synth_root / METADATA_CSV).read_bytes()).decode()
    df = pl.read_csv(io.StringIO(raw), infer_schema=False)
    assert df.columns == list(METADATA_COLUMNS)
    assert df["StudyTime"].null_count() > 0


def test_cli_out_option_help_and_bad_format(tmp_path: Path):
    runner = CliRunner()
    ok = runner.invoke(app, ["synth", "--out", str(tmp_path / "o"), "--patients", "2"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / METADATA_CSV).is_file()
    both = runner.invoke(app, ["synth", str(tmp_path / "p"), "--out", str(tmp_path / "q")])
    assert both.exit_code != 0 and "OUT_DIR or --out" in both.output
    neither = runner.invoke(app, ["synth"])
    assert neither.exit_code != 0 and "OUT_DIR or --out" in neither.output
    bad = runner.invoke(app, ["synth", str(tmp_path / "r"), "--image-format", "png"])
    assert bad.exit_code != 0 and not (tmp_path / "r").exists()
    helptext = runner.invoke(app, ["synth", "--help"], terminal_width=200).output
    assert "dicom" in helptext and "jpg" in helptext and "both" in helptext
    assert "Example:" in helptext and "cxrctx synth out/mimic" in helptext


def test_progress_reports_every_chunk(tmp_path: Path, monkeypatch):
    import cxrctx.synth as synth

    monkeypatch.setattr(synth, "CHUNK_PATIENTS", 2)
    calls: list[tuple[str, int, int]] = []
    s = synthesize(
        tmp_path / "p",
        patients=5,
        seed=1,
        images=True,
        image_size=16,
        image_format="jpg",
        progress=lambda *a: calls.append(a),
    )
    assert [c for c in calls if c[0] == "reports"] == [("reports", i, 3) for i in (1, 2, 3)]
    images = [c for c in calls if c[0] == "images"]
    assert images == [("images", i, s.images) for i in range(1, s.images + 1)]
    assert calls[-1] == ("done", 1, 1)


def test_synth_imports_no_other_stage():
    """The generator takes its vocabulary from cxrctx.vocab, never from another stage."""
    import subprocess

    code = (
        "import sys, cxrctx.synth, cxrctx.synth.images\n"
        "stages = ('mimic', 'labeling', 'imagenome', 'train', 'reportgen', 'llm')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in [['cxrctx', s] for s in stages]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
