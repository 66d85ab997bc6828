"""generate's phases without torch: the model phases are replaced by hand-written ROI texts."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from cxrctx.reportgen import generate as G
from cxrctx.vocab import LESIONS, ROIS

CFG = SimpleNamespace(classifier_threshold=0.5, use_classifier=True)


def _texts(**by_roi: str) -> list[str]:
    return [by_roi.get(r.replace(" ", "_"), "") for r in ROIS]


def _rows() -> list[dict]:
    """Three studies: an effusion, a normal heart, and one whose regions said nothing."""
    probs = [0.9 if les == "pleural effusion" else 0.1 for les in LESIONS]
    items = [
        SimpleNamespace(study_id=s, subject_id=10, dicom_id=f"d{s}", split="test")
        for s in (3, 1, 2)
    ]
    return [
        G._row(items[0], _texts(left_lung="Small left pleural effusion."), probs, None, CFG),
        G._row(items[1], _texts(cardiac_silhouette="The heart size is normal."), probs, None, CFG),
        G._row(items[2], _texts(), probs, None, CFG),
    ]


def test_row_takes_the_models_own_lesion_decisions_over_the_fixed_threshold():
    """With calibrated statuses from the model, a lesion at p = 0.3 that the model calls
    positive is predicted, and one at p = 0.9 it calls negative is not."""
    probs = [
        0.9 if les == "pleural effusion" else 0.3 if les == "edema" else 0.1 for les in LESIONS
    ]
    hard = [les == "edema" for les in LESIONS]
    item = SimpleNamespace(study_id=1, subject_id=10, dicom_id="d1", split="test")
    row = G._row(item, _texts(), probs, hard, CFG)
    assert row["predicted_lesions"] == ["edema"]


@pytest.fixture
def fake_model(monkeypatch):
    """generate() with the model phases replaced by `_rows()` and one skipped image."""
    skips = [{"dicom_id": "dx", "study_id": 9, "reason": "image_missing: dx.jpg"}]
    inp = G._Inputs(None, None, None, None, 32, None, 3, skips)
    monkeypatch.setattr(G, "_load_inputs", lambda *a, **k: inp)

    def decode(_inp, _batch_size, progress):
        rows = _rows()
        if progress:
            progress("decode", len(rows), len(rows))
        return rows

    monkeypatch.setattr(G, "_decode", decode)


def _engine(seen: list[str], answer: str = '{"report": "Merged by the LLM."}'):
    from cxrctx.llm import get_engine

    def responder(req):
        seen.append(req.messages[1]["content"])
        return answer

    return get_engine("fake", "agg", responder=responder)


def test_row_keeps_lesions_over_threshold_and_merges():
    row = _rows()[0]
    assert row["predicted_lesions"] == ["pleural effusion"]
    assert row["report"] == "Small left pleural effusion." and len(row["roi_sentences"]) == len(
        ROIS
    )
    assert _rows()[2]["report"] == ""


def test_empty_report_is_a_counted_failure_never_aggregated(fake_model, tmp_path):
    seen: list[str] = []
    res = G.generate("run", out=tmp_path / "g", engine=_engine(seen))
    assert res.counts == {
        "studies": 3,
        "generated": 2,
        "empty_reports": 1,
        "skipped": 1,
        "aggregator_failures": 0,
    }
    assert res.rows == 3 and res.skips == {"image_missing": 1}
    assert len(seen) == 2 and not any("(no region produced a statement)" in s for s in seen)
    df = pl.read_parquet(tmp_path / "g" / "generated" / "part-00000.parquet")
    assert df["study_id"].to_list() == [1, 2, 3]
    empty = df.filter(pl.col("study_id") == 2).row(0, named=True)
    assert empty["report"] == "" and empty["aggregator"] == "merge"
    assert (
        df.filter(pl.col("report") == "Merged by the LLM.")["aggregator"].to_list()
        == ["llm:fake/agg"] * 2
    )
    man = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert man["counts"]["empty_reports"] == 1 and man["config"]["aggregator"] == "llm:fake/agg"


def test_aggregator_sees_the_lesion_list_only_when_asked(fake_model, tmp_path):
    plain: list[str] = []
    G.generate("run", out=tmp_path / "a", engine=_engine(plain))
    assert plain and all("lesions" not in s.lower() for s in plain)
    assert all("Regional statements" in s for s in plain)
    with_lesions: list[str] = []
    G.generate("run", out=tmp_path / "b", engine=_engine(with_lesions), aggregator_lesions=True)
    assert all(
        "Predicted image-level lesions (may be wrong): pleural effusion" in s for s in with_lesions
    )
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]
    assert (a["aggregator_lesions"], b["aggregator_lesions"]) == (False, True)


def test_unusable_answer_falls_back_to_the_merge_and_is_counted(fake_model, tmp_path):
    res = G.generate("run", out=tmp_path / "g", engine=_engine([], answer="not json"))
    assert res.counts["aggregator_failures"] == 2
    df = pl.read_parquet(tmp_path / "g" / "generated" / "part-00000.parquet")
    assert df.filter(pl.col("aggregator_error").is_not_null()).height == 2
    assert "Small left pleural effusion." in df["report"].to_list()


def test_merge_only_run_is_byte_identical_on_rerun(fake_model, tmp_path):
    seen: list[tuple[str, int, int]] = []
    G.generate("run", out=tmp_path / "1", progress=lambda *a: seen.append(a))
    G.generate("run", out=tmp_path / "2")
    assert seen == [("decode", 3, 3)]
    for rel in ("generated/part-00000.parquet", "skips.parquet", "manifest.json"):
        assert (tmp_path / "1" / rel).read_bytes() == (tmp_path / "2" / rel).read_bytes(), rel
    config = json.loads((tmp_path / "1" / "manifest.json").read_text())["config"]
    assert config["aggregator"] == "merge" and config["aggregator_lesions"] is None


def test_cli_exit_code_progress_lines_and_help(fake_model, tmp_path: Path):
    from typer.testing import CliRunner

    from cxrctx.cli import app

    r = CliRunner().invoke(app, ["generate", "run", "--out", str(tmp_path / "g")])
    assert r.exit_code == 1, r.output
    assert "1 empty (failed)" in r.output
    assert "generate decode: 100%|##########| 3/3 " in r.output  # plain progress: not a terminal
    r = CliRunner().invoke(
        app, ["generate", "run", "--out", str(tmp_path / "g"), "--allow-failures"]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["generate", "run", "--out", str(tmp_path / "g"), "--split", "dev"])
    assert r.exit_code == 2 and "'dev' is not one of" in r.output
    for cmd in ("generate", "evaluate"):
        r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "Example:" in r.output and f"cxrctx {cmd} out/" in r.output
    r = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert "train|validate|test|all" in r.output and "--aggregator-lesions" in r.output
    r = CliRunner().invoke(app, ["evaluate", "g", "--reference", "r", "--sections", "history"])
    assert r.exit_code == 2 and "'history' is not one of" in r.output
