"""Every study gets labels: a study whose only text is in header sections (examination,
indication, technique, comparison) gets 14 not_mentioned rows with section header_only,
its indication never becomes a finding, and it is counted and listed apart from the
studies with no text at all (label-lesions, the hybrid labeler, release's summary)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from mimic_tiny import REPORT, study, write_root

from cxrctx.labeling.inputs import section_text
from cxrctx.labeling.stage import label_lesions
from cxrctx.llm.fake import FakeEngine
from cxrctx.vocab import HEADER_ONLY, LESIONS

# the indication names lesions (the question asked), the report states no finding
HEADER_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old woman with dyspnea  // eval for pleural effusion, pneumothorax

 TECHNIQUE:  Portable AP chest

 COMPARISON:  None.
"""
EMPTY_REPORT = "                                 FINAL REPORT\n"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    from cxrctx.mimic.build import build_priors

    base = tmp_path_factory.mktemp("headeronly")
    root = write_root(
        base / "mimic",
        [
            study(10000001, 50000001, report=REPORT),
            study(10000002, 50000002, report=HEADER_REPORT),
            study(10000003, 50000003, report=EMPTY_REPORT),
        ],
    )
    build_priors(root, base / "records", workers=1)
    return base / "records"


def test_section_text_marks_header_only_studies_and_keeps_their_text_out():
    recs = pl.DataFrame(
        {
            "indication": ["eval for effusion", "eval for effusion", None, "cough"],
            "comparison": [None, None, None, None],
            "findings": [None, "Small effusion.", None, None],
            "impression": [None, None, None, None],
            "last_paragraph": [None, None, None, "Possible pneumonia."],
        },
        schema=dict.fromkeys(
            ("indication", "comparison", "findings", "impression", "last_paragraph"), pl.String
        ),
    )
    out = recs.select(section_text(recs, ("findings", "impression")))
    assert out["section"].to_list() == [HEADER_ONLY, "findings", None, "last_paragraph"]
    assert out["text"].to_list()[0] == "" and "effusion" not in out["text"].to_list()[0]
    chosen = recs.select(section_text(recs, ["findings"]))  # a chosen list: as asked
    assert chosen["section"].to_list() == [None, "findings", None, None]


def test_a_header_only_study_gets_14_not_mentioned_rows(records, tmp_path):
    run = label_lesions(records, tmp_path / "lab")
    lab = pl.read_parquet(tmp_path / "lab" / "labels")
    head = lab.filter(pl.col("id") == "50000002")
    assert head.height == len(LESIONS) and sorted(head["lesion"]) == sorted(LESIONS)
    assert set(head["status"]) == {"negative"}  # the indication's effusion is no finding
    assert set(head["source"]) == {"not_mentioned"} and set(head["section"]) == {HEADER_ONLY}
    assert set(head["location"]) == {"not mentioned"} and not head["llm_called"].any()
    assert lab.filter(pl.col("id") == "50000001")["section"].unique().to_list() == [
        "findings+impression"
    ]
    docs = pl.read_parquet(tmp_path / "lab" / "documents")
    status = dict(docs.select("id", "status").iter_rows())
    assert status == {"50000001": "labeled", "50000002": HEADER_ONLY, "50000003": "empty"}
    fails = pl.read_parquet(tmp_path / "lab" / "failures")
    assert fails["id"].to_list() == ["50000003"]  # no text at all: listed as a failure
    m = json.loads((tmp_path / "lab" / "manifest.json").read_text())["counts"]
    assert (m["documents"], m["labeled"], m["header_only"], m["empty"]) == (3, 2, 1, 1)
    assert lab.height == 14 * m["labeled"]
    assert run.result is not None and run.result.counts["header_only"] == 1


def test_the_indication_alone_would_have_been_read_positive(records):
    """The guard above can fail: the same indication, labeled as text, reads positive."""
    from cxrctx.labeling.rules import read_report

    r = read_report("eval for pleural effusion, pneumothorax")
    assert r.get("pleural effusion").mentioned


def test_a_shard_and_a_limit_keep_header_only_studies_in_their_slice(records, tmp_path):
    label_lesions(records, tmp_path / "lim", limit=1)
    assert not pl.read_parquet(tmp_path / "lim" / "labels")["section"].eq(HEADER_ONLY).any()
    for i in range(3):
        label_lesions(records, tmp_path / "sh", shard=f"{i}/3")
    lab = pl.read_parquet(tmp_path / "sh" / "labels")
    assert lab.filter(pl.col("section") == HEADER_ONLY)["id"].unique().to_list() == ["50000002"]


def test_the_hybrid_labeler_writes_the_same_header_only_rows(records, tmp_path):
    label_lesions(records, tmp_path / "hy", labeler="short", engine=FakeEngine())
    lab = pl.read_parquet(tmp_path / "hy" / "labels")
    head = lab.filter(pl.col("id") == "50000002")
    assert head.height == 14 and set(head["section"]) == {HEADER_ONLY}
    assert set(head["status"]) == {"negative"} and set(head["backend"]) == {"fake"}
    m = json.loads((tmp_path / "hy" / "manifest.json").read_text())["counts"]
    assert (m["header_only"], m["empty"]) == (1, 1) and lab.height == 14 * m["labeled"]


def test_release_summary_counts_header_only_apart_from_unlabeled(records, tmp_path):
    from cxrctx.io import open_stage
    from cxrctx.release.info import split_summary
    from cxrctx.release.tables import labels_long, public_studies

    label_lesions(records, tmp_path / "lab")
    rec = open_stage(records, "build-priors").read()
    lab = pl.read_parquet(tmp_path / "lab" / "labels")
    long = labels_long(lab, rec, source="lab", public=False)
    s = split_summary(public_studies(rec), long)["all"]
    assert (s["studies"], s["labeled_studies"], s["unlabeled_studies"]) == (3, 2, 1)
    assert s["header_only_studies"] == 1
    pub = labels_long(lab, rec, source="lab", public=True)
    assert "header_only_studies" not in split_summary(public_studies(rec), pub)["all"]


def test_release_reports_header_only_and_unlabeled_studies_per_split(records, tmp_path):
    from cxrctx.release.release import make_release

    label_lesions(records, tmp_path / "lab")
    res = make_release(
        records, labels=tmp_path / "lab", out=tmp_path / "rel", name="demo/h", version="1.0.0"
    )
    for split in ("train", "all"):  # the tiny root puts every study in train
        s = res.summary[split]
        assert (s["labeled_studies"], s["header_only_studies"], s["unlabeled_studies"]) == (
            2,
            1,
            1,
        )


def test_cli_summary_counts_header_only_apart(records, tmp_path):
    from typer.testing import CliRunner

    from cxrctx.cli import app

    r = CliRunner().invoke(app, ["label-lesions", str(records), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "1 header-only" in r.output and "1 empty" in r.output


def test_the_cost_plan_counts_header_only_studies_as_documents(records, tmp_path):
    from cxrctx.labeling.plan import plan_label_lesions

    p = plan_label_lesions(records, tmp_path / "p", engine=FakeEngine(), sample=3)
    assert p.sample_documents == 3 and p.total_documents == 3
