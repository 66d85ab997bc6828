"""Exemplar adjudication of the ambiguous readings, the uncertainty policy, the section
fallback: synthetic examples, the fake engine, the CLI."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from cxrctx.cli import app
from cxrctx.errors import CxrctxError
from cxrctx.labeling.adjudicate import Adjudicator, MentionChoiceTask, adjudicate, apply_decisions
from cxrctx.labeling.exemplars import (
    ExemplarIndex,
    ambiguous_mentions,
    calibrate,
    read_examples,
    vote,
)
from cxrctx.labeling.finish import build_finish
from cxrctx.labeling.inputs import section_text
from cxrctx.labeling.policy import apply_policy, as_binary
from cxrctx.labeling.rules import label_documents_rules
from cxrctx.labeling.stage import label_lesions
from cxrctx.llm.base import ChatRequest
from cxrctx.llm.choice import scored_text
from cxrctx.llm.fake import FakeEngine

runner = CliRunner()

DOCS = {
    "a": "FINDINGS: Possible small left pleural effusion. Heart size normal.",
    "b": "IMPRESSION: Borderline heart size. No pneumothorax.",
    "c": "FINDINGS: Lungs clear.",
}
# the convention of these examples: "possible effusion" is negative, "effusion versus
# atelectasis" positive; "borderline heart size" negative, "borderline enlarged" positive
EXAMPLES = {
    "id": ["e1", "e2", "e3", "e4", "e5", "e6", "e7"],
    "text": [
        "Possible left pleural effusion.",
        "Possible small right pleural effusion.",
        "Pleural effusion versus atelectasis at the left base, possibly.",
        "Borderline heart size.",
        "Heart size is borderline enlarged.",
        "Borderline heart size, no edema.",
        "FINDINGS: Possible small left pleural effusion. Heart size normal.",  # = document a
    ],
    "pleural effusion": ["negative", "negative", "positive", None, None, None, "positive"],
    "cardiomegaly": [None, None, None, "negative", "positive", "negative", None],
}


def _write(tmp_path, data=EXAMPLES, name="ex.parquet"):
    p = tmp_path / name
    pl.DataFrame(data).write_parquet(p)
    return p


def _docs(d=DOCS):
    return pl.DataFrame({"id": list(d), "text": list(d.values())})


def test_examples_file_errors_name_the_file_and_row(tmp_path):
    bad = dict(EXAMPLES, cardiomegaly=[None, None, None, "maybe", "positive", "negative", None])
    with pytest.raises(
        CxrctxError, match=r"ex\.parquet: row 4 \(id e4\): 'cardiomegaly' is 'maybe'"
    ):
        read_examples(_write(tmp_path, bad))
    with pytest.raises(CxrctxError, match="need a lesion column"):
        read_examples(_write(tmp_path, {"id": ["x"], "text": ["t"], "foo": ["positive"]}))
    p = tmp_path / "ex.csv"
    p.write_text("uid,text\n1,x\n")
    with pytest.raises(CxrctxError, match="need id"):
        read_examples(p)


def test_exemplars_never_come_from_the_document_being_labeled(tmp_path):
    idx = ExemplarIndex.from_examples(_write(tmp_path), k=10)
    assert idx.size() == 7  # every ambiguous reading with a gold status
    [m_a] = [m for m in ambiguous_mentions("a", DOCS["a"]) if m.lesion == "pleural effusion"]
    [nb] = idx.neighbours([m_a])
    texts = [e.mention.sentence_text for e in nb]
    assert len(nb) == 3  # e7 has the same text as document a: excluded although its id differs
    assert not any("Heart size normal" in t for t in texts)
    [m_e1] = ambiguous_mentions("e1", EXAMPLES["text"][0])
    [nb1] = idx.neighbours([m_e1])
    assert "e1" not in {e.mention.doc_id for e in nb1}  # same id: excluded


def test_vote_follows_the_examples_convention(tmp_path):
    idx = ExemplarIndex.from_examples(_write(tmp_path), k=3)
    adj = adjudicate(_docs(), idx)
    p_eff = adj.decisions[("a", "pleural effusion")].p_positive
    p_card = adj.decisions[("b", "cardiomegaly")].p_positive
    assert p_eff < 0.5 and p_card < 0.5  # the rules say positive for both
    rules = label_documents_rules(_docs()).labels
    out = apply_decisions(rules, adj, 0.5)
    row = out.filter((pl.col("id") == "a") & (pl.col("lesion") == "pleural effusion")).row(
        0, named=True
    )
    assert (row["status"], row["source"], row["location"]) == ("negative", "vote", "not mentioned")
    assert row["confidence"] == pytest.approx(1 - p_eff, abs=1e-4)
    clear = out.filter(pl.col("clarity") == "clear")
    assert clear["confidence"].null_count() == clear.height and set(clear["source"]) <= {
        "rules",
        "not_mentioned",
    }
    assert vote([]) is None


def test_calibrate_picks_the_threshold_with_the_best_micro_f1():
    rows = pl.DataFrame(
        {"id": ["1", "2", "3"], "lesion": ["edema"] * 3, "status": ["positive"] * 3}
    )
    gold = pl.DataFrame(
        {
            "id": ["1", "2", "3"],
            "lesion": ["edema"] * 3,
            "status": ["positive", "negative", "positive"],
        }
    )
    probs = {("1", "edema"): 0.8, ("2", "edema"): 0.3, ("3", "edema"): 0.6}
    t, curve = calibrate(rows, gold, probs)
    assert 0.3 < t <= 0.6 and curve[t] == 1.0 and curve[0.05] < 1.0


def _llm_responder(req: ChatRequest) -> str:
    """A scripted model: positive with P 0.9 when the examples show a positive, else 0.2."""
    user = req.messages[-1]["content"]
    assert req.choices == ("positive", "negative")
    examples = user.split("LABELED EXAMPLES")[1].split("REPORT SENTENCES")[0]
    p = 0.9 if "-> positive" in examples else 0.2
    return scored_text({"positive": p, "negative": 1 - p})


def test_llm_adjudicator_gets_exemplars_in_the_prompt_and_writes_confidence(tmp_path):
    idx = ExemplarIndex.from_examples(_write(tmp_path), k=1)
    eng = FakeEngine(responder=_llm_responder)
    adj = adjudicate(_docs(), idx, adjudicator=Adjudicator.llm, engine=eng)
    assert eng.calls == 2 and adj.counts["adjudication_llm_unscored"] == 0
    d = adj.decisions[("a", "pleural effusion")]
    assert d.source == "llm" and d.p_positive in (0.9, 0.2)
    out = apply_decisions(label_documents_rules(_docs()).labels, adj, 0.5)
    llm_rows = out.filter(pl.col("source") == "llm")
    assert llm_rows.height == 2 and llm_rows["llm_called"].all()
    assert llm_rows["confidence"].is_in([0.9, 0.8]).all()


def test_llm_adjudicator_unusable_answers_keep_the_vote_and_are_counted(tmp_path):
    idx = ExemplarIndex.from_examples(_write(tmp_path), k=3)
    eng = FakeEngine(responder=lambda r: '{"choice": "maybe"}')
    adj = adjudicate(_docs(), idx, adjudicator="llm", engine=eng)
    assert adj.counts["adjudication_llm_failed"] == 2
    assert {d.source for d in adj.decisions.values()} == {"vote"}
    assert "llm answer unusable" in adj.decisions[("a", "pleural effusion")].note
    task = MentionChoiceTask.__new__(MentionChoiceTask)
    assert task.repair(None, None, "", "") is None  # type: ignore[arg-type]


def test_uncertainty_policy_positive_negative_keep():
    rules = label_documents_rules(_docs()).labels
    same, n = apply_policy(rules, "positive")
    assert n == 2 and same.equals(rules)
    neg, _ = apply_policy(rules, "negative")
    kept, _ = apply_policy(rules, "keep")
    key = (pl.col("id") == "a") & (pl.col("lesion") == "pleural effusion")
    assert neg.filter(key)["status"].item() == "negative"
    assert neg.filter(key)["location"].item() == "not mentioned"
    assert kept.filter(key)["status"].item() == "uncertain"
    assert kept.filter(pl.col("status") == "uncertain").height == 2
    assert as_binary(kept).filter(key)["status"].item() == "positive"
    assert as_binary(kept, "negative").filter(key)["status"].item() == "negative"


def test_section_fallback_to_last_paragraph_and_the_section_column():
    recs = pl.DataFrame(
        {
            "findings": ["Lungs clear.", None, None, "  "],
            "impression": ["No acute disease.", "Small effusion.", None, None],
            "last_paragraph": [None, None, "Possible pneumonia.", None],
        }
    )
    out = recs.select(section_text(recs, ("findings", "impression")))
    assert out["section"].to_list() == ["findings+impression", "impression", "last_paragraph", None]
    assert out["text"].to_list()[2] == "Possible pneumonia." and out["text"].to_list()[3] == ""
    chosen = recs.select(section_text(recs, ["impression"]))  # a chosen list never falls back
    assert chosen["section"].to_list() == [
        None if s is None else "impression" for s in recs["impression"]
    ]


def test_cli_examples_vote_and_uncertain_keep_recorded_in_the_manifest(tmp_path):
    src = tmp_path / "docs.parquet"
    _docs(dict(DOCS, d="")).write_parquet(src)
    ex = _write(tmp_path)
    out = tmp_path / "lab"
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(src),
            "--out",
            str(out),
            "--examples",
            str(ex),
            "--k",
            "3",
            "--uncertain",
            "keep",
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert cfg["uncertain"] == "keep"
    assert cfg["adjudication"]["adjudicator"] == "vote" and cfg["adjudication"]["k"] == 3
    assert "calibrated" in cfg["adjudication"]["threshold_source"]
    labels = pl.read_parquet(out / "labels")
    assert set(labels.filter(pl.col("clarity") == "ambiguous")["source"]) == {"vote"}
    assert "uncertain" not in labels["status"].to_list()  # adjudicated rows are decisions
    fails = pl.read_parquet(out / "failures")
    assert fails.filter(pl.col("id") == "d")["reason"].item() == "empty text"  # listed, counted
    r2 = runner.invoke(
        app, ["label-lesions", str(src), "--out", str(tmp_path / "k"), "--uncertain", "keep"]
    )
    assert r2.exit_code == 0, r2.output
    kept = pl.read_parquet(tmp_path / "k" / "labels")
    assert kept.filter(pl.col("status") == "uncertain").height == 2


def test_cli_refuses_adjudicator_llm_without_model_and_vote_with_model(tmp_path):
    src = tmp_path / "docs.parquet"
    _docs().write_parquet(src)
    ex = _write(tmp_path)
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--examples",
            str(ex),
            "--adjudicator",
            "llm",
        ],
    )
    assert r.exit_code != 0 and "needs --model" in r.output
    r = runner.invoke(
        app,
        [
            "label-lesions",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--examples",
            str(ex),
            "--model",
            "/x.gguf",
        ],
    )
    assert r.exit_code != 0 and "--adjudicator llm" in r.output
    with pytest.raises(CxrctxError, match="threshold"):
        build_finish(examples=ex, threshold=1.5)


def test_eval_labels_scores_kept_uncertain_rows_as_asked(tmp_path):
    from cxrctx.labeling.evaluate import eval_labels

    src = tmp_path / "docs.parquet"
    _docs().write_parquet(src)
    label_lesions(src, tmp_path / "k", labeler="rules", uncertain="keep")
    gold = tmp_path / "gold"
    label_lesions(src, gold, labeler="rules")  # the default policy: the same rows positive
    as_pos = eval_labels(tmp_path / "k", gold, uncertain="positive", n_boot=0)
    as_neg = eval_labels(tmp_path / "k", gold, uncertain="negative", n_boot=0)
    assert as_pos.options["labels_uncertain_policy"] == "keep"
    assert as_pos.options["labels_uncertain_rows"] == 2
    assert as_pos.micro_f1 == 1.0 and as_neg.micro_recall is not None and as_neg.micro_recall < 1.0


def test_llm_rows_record_model_prompt_and_sampling(tmp_path):
    idx = ExemplarIndex.from_examples(_write(tmp_path), k=2)
    eng = FakeEngine(model="scripted", responder=_llm_responder)
    adj = adjudicate(_docs(), idx, adjudicator="llm", engine=eng)
    out = apply_decisions(label_documents_rules(_docs()).labels, adj, 0.5)
    llm_rows = out.filter(pl.col("source") == "llm")
    rule_rows = out.filter(pl.col("source") == "rules")
    assert set(llm_rows["model"]) == {"scripted"} and set(llm_rows["backend"]) == {"fake"}
    assert llm_rows["prompt_sha256"][0] != rule_rows["prompt_sha256"][0]
    assert json.loads(llm_rows["sampling"][0])["max_tokens"] == 8
    assert rule_rows["model"].null_count() == rule_rows.height


def test_trainer_reads_kept_uncertain_rows_as_positive(tmp_path):
    from cxrctx.train.data import read_label_shards

    src = tmp_path / "docs.parquet"
    _docs().write_parquet(src)
    label_lesions(src, tmp_path / "k", labeler="rules", uncertain="keep")
    assert pl.read_parquet(tmp_path / "k" / "labels")["status"].to_list().count("uncertain") == 2
    df = read_label_shards(tmp_path / "k")
    row = df.filter((pl.col("id") == "a") & (pl.col("lesion") == "pleural effusion"))
    assert row["status"].item() == "positive" and "uncertain" not in df["status"].to_list()


def test_release_summary_counts_unlabeled_studies_per_split():
    from cxrctx.release.info import split_summary

    studies = pl.DataFrame(
        {
            "study_id": [1, 2, 3, 4],
            "split": ["train", "train", "test", "test"],
            "has_findings": [True, False, True, False],
            "has_impression": [True, False, False, False],
            "n_prior_studies": [0, 0, 1, 0],
            "flags": [[], [], [], []],
        },
        schema_overrides={"flags": pl.List(pl.String)},
    )
    long = pl.DataFrame(
        {
            "study_id": [1, 3],
            "split": ["train", "test"],
            "lesion": ["edema", "edema"],
            "status": ["positive", "uncertain"],
        }
    )
    s = split_summary(studies, long)
    assert (s["train"]["unlabeled_studies"], s["test"]["unlabeled_studies"]) == (1, 1)
    assert s["all"]["unlabeled_studies"] == 2


@pytest.mark.llm
def test_cli_adjudicator_llm_with_the_tiny_real_model(tmp_path):
    """Plumbing with SmolLM2-135M: every ambiguous reading is decided by a scored choice."""
    from tests._llm_helpers import smollm_gguf

    model = smollm_gguf()
    src = tmp_path / "docs.parquet"
    _docs().write_parquet(src)
    out = tmp_path / "lab"
    args = [
        "label-lesions",
        str(src),
        "--out",
        str(out),
        "--examples",
        str(_write(tmp_path)),
        "--adjudicator",
        "llm",
        "--model",
        model,
        "--threads",
        "1",
        "--threshold",
        "0.4",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    labels = pl.read_parquet(out / "labels")
    amb = labels.filter(pl.col("clarity") == "ambiguous")
    assert amb.height == 2 and set(amb["source"]) == {"llm"}
    assert amb["confidence"].null_count() == 0  # scored from log-probabilities
    cfg = json.loads((out / "manifest.json").read_text())["config"]["adjudication"]
    assert cfg["threshold"] == 0.4 and cfg["threshold_source"] == "given"
    assert cfg["model"] == model and cfg["prompt_sha256"] == amb["prompt_sha256"][0]
    r2 = runner.invoke(app, args)  # the same run again: answers from the cache
    assert r2.exit_code == 0, r2.output


def test_cli_uncertain_policy_is_refused_where_no_rule_reading_is_written(tmp_path):
    src = tmp_path / "docs.parquet"
    _docs().write_parquet(src)
    args = ["label-lesions", str(src), "--out", str(tmp_path / "o"), "--model", "/x.gguf"]
    r = runner.invoke(app, [*args, "--uncertain", "keep"])
    assert r.exit_code != 0 and "uncertainty policy act on rule readings" in r.output
    assert not (tmp_path / "o").exists()
