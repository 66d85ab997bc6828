"""generate (ROI sentences → merge / LLM aggregator) and evaluate (lesion P/R/F1, ROUGE-L, judge)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from cxrctx.errors import CxrctxError
from cxrctx.llm.task import AnswerError
from cxrctx.reportgen.evaluate import keyword_labels, rouge_l
from cxrctx.reportgen.generate import merge_sentences
from cxrctx.reportgen.tasks import AggregatorTask, JudgeTask


def test_merge_prefers_positive_and_dedupes():
    roi = [
        ("left lung", "There is a small left pleural effusion. No pneumothorax."),
        ("left costophrenic angle", "No pleural effusion."),
        ("right lung", "No pneumothorax."),
        ("cardiac silhouette", "The heart size is normal."),
        ("mediastinum", ""),
    ]
    out = merge_sentences(roi)
    assert (
        out == "There is a small left pleural effusion. No pneumothorax. The heart size is normal."
    )
    assert merge_sentences([]) == ""
    redundant = [
        ("a", "No evidence of effusion."),
        ("b", "No evidence of effusion or pneumothorax."),
        ("c", "No edema."),
    ]
    assert merge_sentences(redundant) == "No evidence of effusion or pneumothorax. No edema."


def test_rouge_l():
    assert rouge_l("the heart is normal", "The heart is normal.") == pytest.approx(1.0)
    assert rouge_l("effusion", "no pneumothorax") == 0.0
    # LCS 3 of 4 vs 5 tokens: P=.75 R=.6, beta 1.2
    p, r, b = 0.75, 0.6, 1.2
    assert rouge_l("a b c d", "a x b c y") == pytest.approx((1 + b * b) * p * r / (r + b * b * p))


def test_keyword_labeler_negation_and_location():
    docs = pl.DataFrame(
        {
            "id": ["1", "2"],
            "text": [
                "Small left pleural effusion. No pneumothorax.",
                "No effusion. The heart is enlarged.",
            ],
        }
    )
    lab = keyword_labels(docs)
    pos = {
        (r["id"], r["lesion"]): r["location"]
        for r in lab.filter(pl.col("status") == "positive").iter_rows(named=True)
    }
    assert pos == {("1", "pleural effusion"): "left", ("2", "cardiomegaly"): "not mentioned"}
    assert lab.height == 28


def test_parse_llm_answers():
    agg, judge = AggregatorTask(), JudgeTask()
    got = agg.parse(None, '```json\n{"report": "No acute   process."}\n```')
    assert got.report == "No acute process."
    with pytest.raises(AnswerError, match="report: missing"):
        agg.parse(None, '{"text": "x"}')
    with pytest.raises(AnswerError, match="report"):
        agg.parse(None, '{"report": "   "}')
    ok = '{"clinical_accuracy": 3, "findings_completeness": 2, "linguistic_quality": 5, "report_structure": 4, "rationale": "ok"}'
    assert judge.parse(None, ok).linguistic_quality == 5
    with pytest.raises(AnswerError, match="less than or equal to 5"):
        judge.parse(None, ok.replace(": 3", ": 7"))
    with pytest.raises(AnswerError, match="clinical_accuracy"):
        judge.parse(None, ok.replace(": 3", ": true"))


# ----------------------------------------------------------------------------- end to end

torch = pytest.importorskip("torch")
pytest.importorskip("timm")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    from trainer_fixtures import make_root

    from cxrctx.train.config import make_config
    from cxrctx.train.loop import train

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("gen")
    d = make_root(tmp, patients=24, size=64, seed=7)
    cfg = make_config("tiny", epochs_stage1=3, epochs_stage2=1, batch_size=8)
    train(
        cfg,
        records=d["records"],
        labels=d["labels"],
        rois=d["rois"],
        images=d["root"],
        out=tmp / "run",
    )
    d["run"] = tmp / "run"
    return d


@pytest.mark.train
def test_generate_and_evaluate_end_to_end(run, tmp_path):
    from cxrctx.reportgen.evaluate import evaluate
    from cxrctx.reportgen.generate import generate

    res = generate(run["run"], out=tmp_path / "gen", split="validate")
    assert res.rows > 0 and res.counts["generated"] == res.rows
    df = pl.read_parquet(tmp_path / "gen" / "generated" / "part-00000.parquet")
    assert df["aggregator"].unique().to_list() == ["merge"]
    assert all(len(x) == 11 for x in df["roi_sentences"].to_list())
    assert all(len(p) == 14 for p in df["lesion_probs"].to_list())
    # deterministic: same bytes again
    generate(run["run"], out=tmp_path / "gen2", split="validate")
    assert (tmp_path / "gen" / "generated" / "part-00000.parquet").read_bytes() == (
        tmp_path / "gen2" / "generated" / "part-00000.parquet"
    ).read_bytes()

    rep = evaluate(
        tmp_path / "gen",
        reference=run["records"],
        reference_labels=run["labels"],
        out=tmp_path / "ev",
    )
    assert rep.n_pairs + rep.n_missing_reference == res.rows
    assert rep.labeler == "keyword" and rep.lesion is not None
    assert 0.0 <= rep.rouge_l <= 1.0
    assert any("METEOR" in n for n in rep.notes) or rep.meteor is not None
    data = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert data["reference_sections"] == ["findings", "impression"] and data["judge"] is None
    assert pl.read_parquet(tmp_path / "ev" / "per_study.parquet").height == rep.n_pairs


@pytest.mark.train
def test_llm_aggregator_and_judge_with_fake_engine(run, tmp_path):
    from cxrctx.llm import get_engine
    from cxrctx.reportgen.evaluate import evaluate
    from cxrctx.reportgen.generate import generate

    calls = {"n": 0}

    def agg(req):
        calls["n"] += 1
        assert "Regional statements" in req.messages[1]["content"]
        return "not json" if calls["n"] == 1 else json.dumps({"report": "Left pleural effusion."})

    res = generate(
        run["run"],
        out=tmp_path / "gen",
        split="validate",
        engine=get_engine("fake", "agg", responder=agg),
    )
    df = pl.read_parquet(tmp_path / "gen" / "generated" / "part-00000.parquet")
    silent = df.filter(
        pl.col("roi_sentences").list.eval(pl.element().struct.field("text") != "").list.any().not_()
    )
    assert res.counts["aggregator_failures"] == silent.height  # nothing to aggregate: not asked
    assert df.filter(pl.col("aggregator") == "llm:fake/agg").height == res.rows - silent.height
    assert calls["n"] == 0 or calls["n"] >= 2  # a bad first answer gets its repair request
    # half the studies say something, half are empty: an empty report is not judged
    shard = tmp_path / "gen" / "generated" / "part-00000.parquet"
    said = pl.col("i") % 2 == 0
    pl.read_parquet(shard).with_row_index("i").with_columns(
        pl.when(said).then(pl.lit("Left pleural effusion.")).otherwise(pl.lit("")).alias("report")
    ).drop("i").write_parquet(shard)

    def judge(req):
        assert "REFERENCE REPORT" in req.messages[1]["content"]
        return json.dumps(
            {
                "clinical_accuracy": 3,
                "findings_completeness": 2,
                "linguistic_quality": 5,
                "report_structure": 4,
                "rationale": "x",
            }
        )

    rep = evaluate(
        tmp_path / "gen",
        reference=run["records"],
        judge_engine=get_engine("fake", "judge", responder=judge),
    )
    assert rep.judge is not None and rep.judge.n + rep.judge.failures == rep.n_pairs
    assert abs(rep.judge.n - rep.judge.failures) <= 1 and rep.judge.failures >= 1
    assert rep.judge.total == pytest.approx(14.0) and rep.judge.mean == pytest.approx(3.5)
    assert rep.reference_labels == "keyword"


@pytest.mark.train
def test_cli_generate_evaluate_and_bad_input(run, tmp_path):
    from typer.testing import CliRunner

    from cxrctx.cli import app

    r = CliRunner().invoke(
        app, ["generate", str(run["run"]), "--out", str(tmp_path / "g"), "--split", "validate"]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "g"),
            "--reference",
            str(run["records"]),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "ROUGE-L" in r.output and (tmp_path / "e" / "evaluation.json").exists()
    r = CliRunner().invoke(app, ["generate", str(tmp_path / "nope"), "--out", str(tmp_path / "g2")])
    assert r.exit_code == 2 and "final checkpoint" in r.output
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "g"),
            "--reference",
            str(run["records"]),
            "--sections",
            "history",
        ],
    )
    assert r.exit_code == 2 and "findings or impression" in r.output
    with pytest.raises(CxrctxError, match="no images with ROIs"):
        from cxrctx.reportgen.generate import generate

        generate(run["run"], out=tmp_path / "g3", split="nosuchsplit")


@pytest.mark.train
def test_evaluate_with_an_llm_labeler(run, tmp_path):
    """Both sides labeled through cxrctx.labeling with an engine (a scripted fake here)."""
    from cxrctx.llm import get_engine
    from cxrctx.reportgen.evaluate import evaluate
    from cxrctx.reportgen.generate import generate

    def answer(req):
        names = list((req.json_schema or {}).get("properties", {}))
        pos = "effusion" in req.messages[-1]["content"].lower()
        return json.dumps(
            {
                n: {
                    "reasoning": "scripted",
                    "status": "positive" if pos and n == "pleural effusion" else "negative",
                    "location": "not mentioned",
                }
                for n in names
            }
        )

    generate(run["run"], out=tmp_path / "gen", split="validate")
    shard = tmp_path / "gen" / "generated" / "part-00000.parquet"
    df = pl.read_parquet(shard).with_row_index("i")
    df = df.with_columns(  # half the reports say something, half are empty
        pl.when(pl.col("i") % 2 == 0)
        .then(pl.lit("Small left pleural effusion."))
        .otherwise(pl.lit(""))
        .alias("report")
    ).drop("i")
    df.write_parquet(shard)
    rep = evaluate(
        tmp_path / "gen",
        reference=run["records"],
        labeler_engine=get_engine("fake", "lab", responder=answer),
        cache_dir=tmp_path / "cache",
    )
    assert rep.labeler == "llm:fake/lab" and rep.reference_labels == "llm:fake/lab"
    assert rep.lesion is not None and rep.lesion["n_docs"] == rep.n_pairs
    assert any("empty and count as all-negative" in n for n in rep.notes)
    eff = next(x for x in rep.lesion["lesions"] if x["lesion"] == "pleural effusion")
    n_said = eff["tp"] + eff["fp"]  # every non-empty report names an effusion
    assert abs(n_said - rep.n_pairs / 2) <= 1
