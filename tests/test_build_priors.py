"""build_priors end to end: outputs, contract, determinism, zip input, CLI, synthetic truth."""

from __future__ import annotations

import json

import polars as pl
import pytest
from mimic_tiny import REPORT, study, write_root
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.io import read_manifest, read_shards, sha256_file
from cxrctx.mimic import build_priors
from cxrctx.mimic.schema import RECORD_SCHEMA, REJECT_SCHEMA
from cxrctx.models import Record, Reject

runner = CliRunner()


def _tiny(tmp_path, **kw):
    studies = [
        study(10000001, 50000011, date="21500101", time="80556.875"),
        study(10000001, 50000012, date="21500110", time="101010"),
        study(
            10000001,
            50000013,
            date="21500110",
            time="101010",
            report=REPORT.replace("The lungs are clear.", "Unchanged lungs."),
        ),
        study(
            10000002,
            50000021,
            date="21600101",
            time="",
            report=REPORT.replace("The lungs are clear.", "Stable small nodule."),
        ),
        study(10000002, 50000022, date="21600101", time="120000"),
        study(12000003, 50000031, date="21700101", time="1", report=None),
    ]
    return write_root(tmp_path / "root", studies, **kw)


def test_outputs_contract_and_counts(tmp_path):
    root = _tiny(tmp_path)
    out = tmp_path / "out"
    res = build_priors(root, out, rows_per_shard=2, workers=1)
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    df = read_shards(out / "records")
    assert dict(df.schema) == RECORD_SCHEMA
    assert list(RECORD_SCHEMA) == list(Record.model_fields)
    assert list(REJECT_SCHEMA) == list(Reject.model_fields)
    for row in df.iter_rows(named=True):
        Record.model_validate(row)
    rej = pl.read_parquet(out / "rejects.parquet")
    for row in rej.iter_rows(named=True):
        Reject.model_validate(row)
    m = read_manifest(out / "manifest.json")
    assert m.stage == "build-priors" and m.schema_version == 1
    assert m.counts["studies_in"] == 6 == m.counts["records"] + m.counts["rejected_studies"]
    assert (
        m.counts["images_in"]
        == 12
        == m.counts["images_in_records"] + m.counts["images_in_rejected_studies"]
    )
    assert [s.rows for s in m.shards] == [2, 2, 1]
    assert all(sha256_file(out / s.path) == s.sha256 for s in [*m.shards, *m.tables])
    assert {i.path for i in m.inputs} == {
        "mimic-cxr-2.0.0-metadata.csv.gz",
        "mimic-cxr-2.0.0-split.csv.gz",
        "mimic-cxr-2.0.0-chexpert.csv.gz",
    }
    assert m.config["max_priors"] == 3 and m.config["reports_source"] == "files"
    assert res.rejects_by_reason == {"missing_report": 1}

    by = {r["study_id"]: r for r in df.iter_rows(named=True)}
    # same datetime: never each other's prior, both flagged; the older one is a prior of both
    for sid in (50000012, 50000013):
        assert "same_time_ambiguous" in by[sid]["flags"]
        assert [p["study_id"] for p in by[sid]["priors"]] == [50000011]
    # missing time + same day: unordered, flagged, no priors → temporal language is suspicious
    assert by[50000021]["flags"] == [
        "missing_study_time",
        "same_day_unordered",
        "temporal_reference_without_prior",
    ]
    assert by[50000022]["flags"] == ["same_day_unordered"]
    assert by[50000022]["priors"] == []
    # 'Unchanged' with a prior present is fine
    assert "temporal_reference_without_prior" not in by[50000013]["flags"]
    assert by[50000011]["split"] == "train"
    assert by[50000011]["chexpert"]["edema"] == -1.0 and by[50000011]["negbio"] is None
    assert by[50000011]["report_path"] == "files/p10/p10000001/s50000011.txt"


def test_two_runs_identical_bytes(tmp_path):
    root = _tiny(tmp_path)
    a = build_priors(root, tmp_path / "a", rows_per_shard=3, workers=1)
    b = build_priors(root, tmp_path / "b", rows_per_shard=3, workers=1)
    assert [s.sha256 for s in a.manifest.shards] == [s.sha256 for s in b.manifest.shards]
    assert a.manifest.tables == b.manifest.tables
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (
        tmp_path / "b" / "manifest.json"
    ).read_bytes()


def test_rerun_with_fewer_shards_removes_stale(tmp_path):
    root = _tiny(tmp_path)
    build_priors(root, tmp_path / "o", rows_per_shard=1, workers=1)
    build_priors(root, tmp_path / "o", rows_per_shard=100, workers=1, overwrite=True)
    assert [p.name for p in (tmp_path / "o" / "records").iterdir()] == ["part-00000.parquet"]


def test_other_run_in_out_is_refused_without_overwrite(tmp_path):
    """One output policy: a different configuration never silently replaces a finished run."""
    root = _tiny(tmp_path)
    build_priors(root, tmp_path / "o", rows_per_shard=1, workers=1)
    before = sorted(p.name for p in (tmp_path / "o" / "records").iterdir())
    with pytest.raises(CxrctxError, match="--overwrite"):
        build_priors(root, tmp_path / "o", rows_per_shard=100, workers=1)
    assert sorted(p.name for p in (tmp_path / "o" / "records").iterdir()) == before
    build_priors(root, tmp_path / "o", rows_per_shard=1, workers=1)  # same run: re-runs


def test_zip_reports_match_files(tmp_path):
    files_root = _tiny(tmp_path / "f")
    zip_root = _tiny(tmp_path / "z", zip_reports=True)
    assert not (zip_root / "files").exists()
    a = build_priors(files_root, tmp_path / "fa", workers=1)
    b = build_priors(zip_root, tmp_path / "za", workers=1)
    assert b.manifest.config["reports_source"] == "zip"
    assert "mimic-cxr-reports.zip" in {i.path for i in b.manifest.inputs}
    fa, za = read_shards(tmp_path / "fa" / "records"), read_shards(tmp_path / "za" / "records")
    assert fa.equals(za)
    assert a.rejects_by_reason == b.rejects_by_reason


def test_reports_zip_option_wins_over_files(tmp_path):
    root = _tiny(tmp_path, zip_reports=True)
    zp = root / "mimic-cxr-reports.zip"
    moved = tmp_path / "elsewhere.zip"
    zp.rename(moved)
    (root / "files").mkdir()
    res = build_priors(root, tmp_path / "o", reports_zip=moved, workers=1)
    assert res.manifest.config["reports_source"] == "zip"
    assert res.counts["records"] == 5


def test_parallel_matches_serial(tmp_path, monkeypatch):
    from cxrctx.mimic import reader as B

    root = _tiny(tmp_path)
    a = build_priors(root, tmp_path / "a", workers=1)
    monkeypatch.setattr(B, "SERIAL_BELOW", 0)
    b = build_priors(root, tmp_path / "b", workers=2)
    assert [s.sha256 for s in a.manifest.shards] == [s.sha256 for s in b.manifest.shards]


def test_jsonl_output(tmp_path):
    root = _tiny(tmp_path)
    res = build_priors(root, tmp_path / "o", jsonl=True, workers=1)
    lines = (tmp_path / "o" / "records.jsonl").read_text().splitlines()
    assert len(lines) == res.counts["records"]
    for line in lines:
        Record.model_validate(json.loads(line))
    first = json.loads(lines[0])
    assert first["study_datetime"] == "2150-01-01T08:05:56.875"
    assert any(t.path == "records.jsonl" for t in res.manifest.tables)


def test_cli_build_priors_summary(tmp_path):
    root = _tiny(tmp_path)
    res = runner.invoke(
        app,
        [
            "build-priors",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--max-priors",
            "1",
            "--format",
            "jsonl",
            "-j",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    for needle in ("records", "missing_report", "same_time_ambiguous", "n_prior_studies", "train"):
        assert needle in res.output
    assert (tmp_path / "o" / "records.jsonl").exists()
    assert read_manifest(tmp_path / "o" / "manifest.json").config["max_priors"] == 1
    bad = runner.invoke(
        app, ["build-priors", str(root), "--out", str(tmp_path / "o2"), "--format", "csv"]
    )
    assert bad.exit_code != 0 and "--format" in bad.output


def test_progress_callback_and_plain_progress_lines(tmp_path):
    """The library reports progress through the callback; off a terminal the CLI prints
    plain lines (the bar lives in the CLI only)."""
    root = _tiny(tmp_path)
    events: list[tuple[str, int, int]] = []
    build_priors(root, tmp_path / "a", workers=1, progress=lambda *e: events.append(e))
    # From a files/ tree the workers list the patient folders themselves: that is the unit
    # (the third patient of the tiny root has no report, hence no folder).
    folders = [e for e in events if e[0] == "report folders"]
    assert folders[0] == ("report folders", 0, 2) and folders[-1] == ("report folders", 2, 2)
    res = runner.invoke(app, ["build-priors", str(root), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "build-priors report folders: 100%|##########| 2/2 " in res.output
    events.clear()
    zipped = _tiny(tmp_path / "z", zip_reports=True)
    build_priors(zipped, tmp_path / "c", workers=1, progress=lambda *e: events.append(e))
    reports = [e for e in events if e[0] == "reports"]
    assert reports[0] == ("reports", 0, 5) and reports[-1] == ("reports", 5, 5)


def test_cli_help_lists_formats_and_example():
    res = runner.invoke(app, ["build-priors", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "parquet|jsonl" in res.output and "Example:" in res.output


def test_empty_output_has_schema(tmp_path):
    # every report rejected (a root without any report is a fatal error instead)
    root = write_root(tmp_path / "root", [study(10000001, 50000001, report="  \n")])
    res = build_priors(root, tmp_path / "o", workers=1)
    assert res.counts["records"] == 0
    df = pl.read_parquet(tmp_path / "o" / "records" / "part-00000.parquet")
    assert df.height == 0 and dict(df.schema) == RECORD_SCHEMA


# --- end to end on the synthetic generator's root, checked against its ground truth -------

SECTION_COLS = (
    "examination",
    "indication",
    "history",
    "technique",
    "comparison",
    "findings",
    "impression",
    "reason_for_exam",
)


@pytest.fixture(scope="module")
def synth(synth_root):
    """The shared synthetic root (tiny DICOMs + mimic-cxr-reports.zip)."""
    return synth_root


@pytest.fixture(scope="module")
def synth_build(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-out")
    res = build_priors(synth, out, workers=1)
    return res, read_shards(out / "records"), pl.read_parquet(synth / "truth" / "studies.parquet")


def test_synth_sections_priors_and_flags_match_truth(synth_build):
    res, rec, truth = synth_build
    assert res.counts["records"] == truth.height and res.counts["rejected_studies"] == 0
    j = rec.join(truth, on="study_id", suffix="_t", how="inner")
    assert j.height == truth.height
    for c in SECTION_COLS:
        bad = j.filter(pl.col(c).ne_missing(pl.col(f"{c}_t")))
        assert bad.height == 0, (c, bad.select("study_id", c, f"{c}_t").head(3).rows())
    assert j.filter(pl.col("n_prior_studies") != pl.col("n_prior_studies_t")).height == 0
    assert (j["split"] == j["split_t"]).all()
    # the time is missing in the truth ⇔ our datetime is the date at 00:00 and flagged
    timed = j.filter(pl.col("study_datetime_t").is_not_null())
    assert (timed["study_datetime"] == timed["study_datetime_t"].cast(pl.Datetime("us"))).all()
    untimed = j.filter(pl.col("study_datetime_t").is_null())
    assert (untimed["study_datetime"].dt.date() == untimed["study_date"]).all()
    for flag, col in (
        ("missing_study_time", "study_time_missing"),
        ("same_time_ambiguous", "same_time_ambiguous"),
        ("same_day_unordered", "same_day_unordered"),
        ("temporal_reference_without_prior", "temporal_reference_without_prior"),
    ):
        pred = j["flags"].list.contains(flag)
        assert (pred == j[col]).all(), flag
    assert j.filter(pl.col("n_images") != pl.col("images").list.len()).height == 0


def test_temporal_language_consistent_with_synth(synth_build):
    """Consistency check, not a quality claim: the generator writes comparison language with
    the same cue list `has_temporal_reference` reads (quality on real text: BENCHMARKS.md)."""
    from cxrctx.mimic.sections import has_temporal_reference

    _, rec, truth = synth_build
    j = rec.join(truth.select("study_id", "has_temporal_reference"), on="study_id")
    pred = pl.Series(
        [has_temporal_reference(f, i) for f, i in j.select("findings", "impression").iter_rows()]
    )
    t = j["has_temporal_reference"]
    tp, fp, fn = int((pred & t).sum()), int((pred & ~t).sum()), int((~pred & t).sum())
    assert tp > 0
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95, (tp, fp, fn)


def test_synth_deterministic_and_zip_equals_files(synth, synth_build, tmp_path):
    res, rec, _ = synth_build
    again = build_priors(synth, tmp_path / "again", workers=2)
    assert [s.sha256 for s in again.manifest.shards] == [s.sha256 for s in res.manifest.shards]
    zp = synth / "mimic-cxr-reports.zip"
    if zp.exists():
        z = build_priors(synth, tmp_path / "zip", reports_zip=zp, workers=1)
        assert z.manifest.config["reports_source"] == "zip"
        assert read_shards(tmp_path / "zip" / "records").equals(rec)


def test_synth_scan_dicom_equals_csv(synth, synth_build, tmp_path):
    _, rec, _ = synth_build
    assert any((synth / "files").glob("p*/p*/s*/*.dcm")), "the shared root has DICOM files"
    res = build_priors(synth, tmp_path / "scan", scan_dicom=True, workers=2)
    assert res.counts["images_rejected"] == 0
    assert read_shards(tmp_path / "scan" / "records").equals(rec)


def test_last_paragraph_column_and_flag(tmp_path):
    text = " FINAL REPORT\n INDICATION:  cough\n \n Lungs are clear.  No effusion.\n"
    root = write_root(
        tmp_path / "root",
        [study(10000001, 50000001), study(10000002, 50000002, report=text)],
    )
    build_priors(root, tmp_path / "o", workers=1)
    df = read_shards(tmp_path / "o" / "records").sort("study_id")
    assert df["last_paragraph"].to_list() == [None, "Lungs are clear. No effusion."]
    assert ["only_last_paragraph" in f for f in df["flags"].to_list()] == [False, True]
    assert (
        read_manifest(tmp_path / "o" / "manifest.json").extra["flags"]["only_last_paragraph"] == 1
    )


def test_vectorised_temporal_language_answers_like_the_python_function():
    """build-priors flags comparison language with polars' regex engine on ASCII text and
    with `has_temporal_reference` itself on any other text: both must give its answers."""
    from cxrctx.mimic.flags import with_temporal_language
    from cxrctx.vocab import has_temporal_reference

    texts = [
        ("Unchanged small effusion.", None),
        ("No prior studies for comparison. Lungs are clear.", None),
        ("No prior studies are available. New opacity.", "Stable."),
        ("Comparison: none. Heart size normal.", "No acute process."),
        (None, "Hemodynamically stable patient. No pneumothorax."),
        ("Interval increase in effusion.", None),
        ("The prior film is not available.", "Improved aeration."),
        ("Lungs clear.", "Persistent cardiomegaly."),
        ("Ångström-level névus, unchanged.", None),  # non-ASCII: the Python path
        ("Opacité nouvelle.", "Sans changement."),
        ("NEWLY placed line. Previously seen nodule.", None),
        ("renewal of the line", "newer device, unchanged position"),
        (None, None),
    ]
    rec = pl.DataFrame(
        {
            "study_id": list(range(len(texts))),
            "findings": [f for f, _ in texts],
            "impression": [i for _, i in texts],
            "n_prior_studies": [0] * (len(texts) - 1) + [1],
        },
        schema={
            "study_id": pl.Int64,
            "findings": pl.String,
            "impression": pl.String,
            "n_prior_studies": pl.Int64,
        },
    )
    got = with_temporal_language(rec)["temporal_language"].to_list()
    want = [has_temporal_reference(f, i) for f, i in texts[:-1]] + [None]
    assert got == want
    assert True in want and False in want  # both answers are exercised


def test_report_and_image_path_columns_equal_the_vocab_paths():
    """The column forms build-priors uses are the paths vocab.report_relpath / image_relpath say."""
    from cxrctx.mimic.layout import image_relpath_expr, report_relpath_expr
    from cxrctx.vocab import image_relpath, report_relpath

    df = pl.DataFrame(
        {
            "subject_id": [10000032, 19999987],
            "study_id": [50414267, 58971208],
            "dicom_id": ["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"] * 2,
        }
    )
    got = df.select(report_relpath_expr().alias("r"), image_relpath_expr("jpg").alias("i"))
    want = [(report_relpath(s, t), image_relpath(s, t, d, "jpg")) for s, t, d in df.iter_rows()]
    assert got.rows() == want
