"""eval-labels: scores on hand-made frames, gold CSV forms, run-vs-run, JSON and PNG output."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.io import write_parquet
from cxrctx.labeling import evaluate_labels, load_gold
from cxrctx.vocab import LESIONS

runner = CliRunner()


def long(rows: dict[str, dict[str, str | tuple[str, str]]]) -> pl.DataFrame:
    """{id: {lesion: status | (status, location)}} → 14 rows per id (others negative)."""
    out = []
    for doc_id, d in rows.items():
        for lesion in LESIONS:
            v = d.get(lesion, "negative")
            status, loc = v if isinstance(v, tuple) else (v, "not mentioned")
            out.append({"id": doc_id, "lesion": lesion, "status": status, "location": loc})
    return pl.DataFrame(out)


def test_precision_recall_f1_kappa_by_hand():
    gold = long({"1": {"edema": "positive"}, "2": {"edema": "positive"}, "3": {}, "4": {}})
    pred = long({"1": {"edema": "positive"}, "2": {}, "3": {"edema": "positive"}, "4": {}})
    rep = evaluate_labels(pred, gold)
    e = next(s for s in rep.lesions if s.lesion == "edema")
    assert (e.tp, e.fp, e.fn, e.tn, e.support) == (1, 1, 1, 1, 2)
    assert e.precision == e.recall == e.f1 == 0.5
    assert e.kappa == pytest.approx(0.0)
    assert rep.micro_f1 == 0.5 and rep.macro_f1 == 0.5  # only edema has support
    m = next(s for s in rep.lesions if s.lesion == "mass")
    assert m.precision is None and m.recall is None and m.f1 is None
    assert m.kappa is None  # undefined (no positive on either side), never 1.0
    assert rep.n_docs == 4


def test_no_predicted_positive_scores_zero_not_undefined():
    gold = long({"1": {"edema": "positive"}, "2": {}})
    pred = long({"1": {}, "2": {}})
    rep = evaluate_labels(pred, gold)
    assert rep.micro_precision == 0.0 and rep.micro_recall == 0.0 and rep.micro_f1 == 0.0
    assert rep.macro_f1 == 0.0
    # no gold positives and no predicted positives at all: nothing to score
    empty = evaluate_labels(long({"1": {}}), long({"1": {}}))
    assert empty.micro_f1 is None


def test_missing_predictions_are_counted_not_scored_and_location_accuracy():
    gold = long(
        {
            "1": {"pleural effusion": ("positive", "left")},
            "2": {"mass": ("positive", "right")},
            "3": {},
        }
    )
    pred = long(
        {
            "1": {"pleural effusion": ("positive", "right")},
            "2": {"mass": ("positive", "right")},
            "9": {},
        }
    )
    rep = evaluate_labels(pred, gold)
    assert rep.n_docs == 2 and rep.n_gold_only == 1 and rep.n_pred_only == 1
    assert rep.location_accuracy == 0.5 and rep.micro_f1 == 1.0


def test_iu_gold_csv(tmp_path):
    p = tmp_path / "gold.csv"
    cols = "filename,Atelectasis,Cardiomegaly,Effusion,Infiltration,Mass,Nodule,Pneumonia,Pneumothorax,Consolidation,Edema,Emphysema,Fibrosis,Pleural_Thickening,Hernia,normal"
    p.write_text(
        cols + "\nCXR1,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0\nCXR2,0,0,1,0,0,0,0,0,0,0,0,0,1,0,0\n"
    )
    gold, kind = load_gold(p)
    assert kind == "iu_negbio" and gold.height == 28
    pos = gold.filter(pl.col("status") == "positive").sort("id", "lesion")
    assert pos.select("id", "lesion").rows() == [
        ("1", "cardiomegaly"),
        ("2", "pleural effusion"),
        ("2", "pleural thickening"),
    ]


def test_chexpert_csv_uncertain_options(tmp_path):
    p = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    p.write_text(
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,"
        "Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n"
        "10,50,1.0,-1.0,,0.0,,,,,,1.0,,,,\n"
    )
    g, kind = load_gold(p, uncertain="positive")
    assert kind.startswith("chexpert") and set(g["lesion"]) == {
        "atelectasis",
        "cardiomegaly",
        "consolidation",
        "edema",
        "pleural effusion",
        "pneumonia",
        "pneumothorax",
    }
    st = dict(zip(g["lesion"], g["status"], strict=True))
    assert (
        st["cardiomegaly"] == "positive"
        and st["consolidation"] == "negative"
        and st["pleural effusion"] == "positive"
    )
    st = dict(
        zip(
            *load_gold(p, uncertain="ignore")[0]
            .select("lesion", "status")
            .to_dict(as_series=False)
            .values(),
            strict=True,
        )
    )
    assert st["cardiomegaly"] is None
    pred = long({"50": {"atelectasis": "positive"}})
    rep = evaluate_labels(pred, load_gold(p, uncertain="ignore")[0])
    assert {s.lesion for s in rep.lesions} == set(g["lesion"])  # only the 7 overlapping lesions
    card = next(s for s in rep.lesions if s.lesion == "cardiomegaly")
    assert card.tp + card.fp + card.fn + card.tn == 0  # uncertain ignored
    p.write_text("subject_id,study_id,Atelectasis\n1,2,yes\n")
    with pytest.raises(CxrctxError, match="non-numeric"):
        load_gold(p)


def test_unknown_csv_is_a_user_error(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(CxrctxError, match="unrecognised gold CSV"):
        load_gold(p)


def test_cli_run_vs_run_with_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "a", tmp_path / "b"
    write_parquet(
        long({"1": {"edema": "positive"}, "2": {"mass": "positive"}}),
        a / "labels" / "part-00000.parquet",
    )
    write_parquet(long({"1": {"edema": "positive"}, "2": {}}), b / "labels" / "part-00000.parquet")
    r = runner.invoke(
        app,
        [
            "eval-labels",
            str(a),
            "--against",
            str(b),
            "--json-out",
            str(tmp_path / "r.json"),
            "--png",
            str(tmp_path / "r.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "edema" in r.output and "micro" in r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["gold_kind"] == "labels" and rep["n_docs"] == 2
    mass = next(s for s in rep["lesions"] if s["lesion"] == "mass")
    assert mass["fp"] == 1 and mass["agreement"] == 0.5
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_eval_errors(tmp_path):
    r = runner.invoke(
        app, ["eval-labels", str(tmp_path / "none"), "--against", str(tmp_path / "g.csv")]
    )
    assert r.exit_code == 2 and "not found" in r.output and "Traceback" not in r.output
    r = runner.invoke(
        app, ["eval-labels", str(tmp_path), "--against", str(tmp_path), "--uncertain", "maybe"]
    )
    assert r.exit_code == 2 and "--uncertain" in r.output


# ---------------------------------------------------------------------------- CIs and item fixes


def test_false_positives_without_gold_support_count_in_the_macro():
    gold = long({"1": {"edema": "positive"}, "2": {}, "3": {}})
    pred = long({"1": {"edema": "positive"}, "2": {"mass": "positive"}, "3": {"mass": "positive"}})
    rep = evaluate_labels(pred, gold)
    mass = next(s for s in rep.lesions if s.lesion == "mass")
    assert (mass.support, mass.fp, mass.precision, mass.recall, mass.f1) == (0, 2, 0.0, None, 0.0)
    assert rep.fp_without_support == {"mass": 2}
    assert rep.macro_lesions == ["mass", "edema"]
    assert rep.macro_precision == 0.5 and rep.macro_f1 == 0.5  # not 1.0
    assert rep.macro_recall == 1.0  # recall is undefined for mass and left out
    assert rep.micro_precision == pytest.approx(1 / 3)


def test_kappa_undefined_is_not_one():
    rep = evaluate_labels(long({"1": {}, "2": {}}), long({"1": {}, "2": {}}))
    assert all(s.kappa is None for s in rep.lesions)
    assert rep.macro_lesions == [] and rep.macro_f1 is None


def test_bootstrap_intervals(tmp_path):
    gold = long({str(i): ({"edema": "positive"} if i % 2 else {}) for i in range(40)})
    pred = long({str(i): ({"edema": "positive"} if i % 4 in (1, 2) else {}) for i in range(40)})
    rep = evaluate_labels(pred, gold, n_boot=300, seed=3)
    assert rep.ci is not None and rep.ci.n_boot == 300 and rep.ci.unit == "document"
    iv = rep.ci.overall["micro_f1"]
    assert iv.low is not None and iv.high is not None
    assert iv.low < rep.micro_f1 == 0.5 < iv.high and 0 <= iv.low and iv.high <= 1
    e = rep.ci.lesions["edema"]["recall"]
    assert e.low < 0.5 < e.high
    assert rep.ci.lesions["mass"]["f1"].low is None  # never defined
    again = evaluate_labels(pred, gold, n_boot=300, seed=3)
    assert again.ci == rep.ci  # same seed, same intervals
    assert evaluate_labels(pred, gold, n_boot=300, seed=4).ci != rep.ci
    assert evaluate_labels(pred, gold).ci is None
    perfect = evaluate_labels(gold, gold, n_boot=200)
    assert perfect.ci is not None and perfect.ci.overall["micro_f1"].low == 1.0


def test_location_confusion_and_ci():
    gold = long(
        {
            "1": {"pleural effusion": ("positive", "left")},
            "2": {"pleural effusion": ("positive", "left")},
            "3": {"pleural effusion": ("positive", "bilateral")},
        }
    )
    pred = long(
        {
            "1": {"pleural effusion": ("positive", "left")},
            "2": {"pleural effusion": ("positive", "right")},
            "3": {"pleural effusion": ("positive", "bilateral")},
        }
    )
    rep = evaluate_labels(pred, gold, n_boot=100)
    assert rep.location_confusion == {
        "bilateral": {"bilateral": 1},
        "left": {"left": 1, "right": 1},
    }
    assert rep.location_accuracy == pytest.approx(2 / 3)
    iv = rep.ci.overall["location_accuracy"]
    assert iv.low is not None and iv.low <= 2 / 3 <= iv.high


def test_gzipped_chexpert_csv_is_read_directly(tmp_path):
    import gzip

    csv = (
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Pleural Effusion,Pneumonia,Pneumothorax\n"
        "10,50,1.0,,,,-1.0,,\n"
    )
    p = tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"
    p.write_bytes(gzip.compress(csv.encode()))
    g, kind = load_gold(p, uncertain="negative")
    assert kind == "chexpert(uncertain=negative)"
    st = dict(zip(g["lesion"], g["status"], strict=True))
    assert st["atelectasis"] == "positive" and st["pleural effusion"] == "negative"
    bad = tmp_path / "broken.csv.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(CxrctxError, match=r"broken\.csv\.gz: cannot read"):
        load_gold(bad)


def test_cli_shows_ci_undefined_kappa_confusion_and_fp_note(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_parquet(
        long({"1": {"edema": ("positive", "left")}, "2": {"mass": "positive"}, "3": {}}),
        a / "labels" / "part-00000.parquet",
    )
    write_parquet(
        long({"1": {"edema": ("positive", "left")}, "2": {}, "3": {}}),
        b / "labels" / "part-00000.parquet",
    )
    r = runner.invoke(
        app,
        [
            "eval-labels",
            str(a),
            "--against",
            str(b),
            "--bootstrap",
            "50",
            "--json-out",
            str(tmp_path / "r.json"),
        ],
        env={"COLUMNS": "200"},
    )
    assert r.exit_code == 0, r.output
    assert "undefined" in r.output  # kappa of lesions no side calls positive
    assert "mass (1)" in r.output and "bootstrap 95 % intervals, 50 resamples" in r.output
    assert "gold \\ pred" in r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ci"]["n_boot"] == 50 and rep["fp_without_support"] == {"mass": 1}
    assert rep["location_confusion"] == {"left": {"left": 1}}
    h = runner.invoke(app, ["eval-labels", "--help"], env={"COLUMNS": "200"})
    assert "positive" in h.output and "ignore" in h.output and "Example" in h.output
    r0 = runner.invoke(app, ["eval-labels", str(a), "--against", str(b), "--bootstrap", "0"])
    assert r0.exit_code == 0 and "bootstrap" not in r0.output
