"""evaluate without a trained model: hand-written generated/records folders with known scores."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from cxrctx.io import write_shards, write_stage_manifest
from cxrctx.reportgen.evaluate import evaluate
from cxrctx.reportgen.metrics import classifier_auc, rouge_l, temporal_hallucination
from cxrctx.vocab import LESIONS

JUDGE_ANSWER = json.dumps(
    {
        "clinical_accuracy": 3,
        "findings_completeness": 2,
        "linguistic_quality": 5,
        "report_structure": 4,
        "rationale": "x",
    }
)


def test_rouge_l_matches_rouge_score_f1_not_beta_1_2():
    # 4 candidate tokens, all in order inside the 8 reference tokens: P = 1, R = 0.5.
    cand, ref = "Small left pleural effusion.", "There is a small left pleural effusion today."
    assert rouge_l(cand, ref) == pytest.approx(2 / 3)  # F1 (rouge-score's rougeL fmeasure)
    assert rouge_l(cand, ref) != pytest.approx(1.22 * 0.5 / (0.5 + 1.44))  # pycocoevalcap's 0.629
    # LCS "heart size is normal" = 4 of 9 tokens on both sides.
    a = "No pleural effusion or pneumothorax. Heart size is normal."
    b = "Heart size is normal. There is no pleural effusion."
    assert rouge_l(a, b) == pytest.approx(4 / 9)
    assert rouge_l("effusion", "no pneumothorax") == 0.0
    assert rouge_l("", "no pneumothorax") == 0.0


def test_classifier_auc_uses_reference_labels():
    ids = ["1", "2", "3", "4"]
    p = [0.9, 0.4, 0.6, 0.1]  # pleural effusion scores; positives are 1 and 2
    probs = pl.DataFrame(
        {
            "id": ids,
            "lesion_probs": [
                [x if les == "pleural effusion" else 0.5 for les in LESIONS] for x in p
            ],
        }
    )
    gold = pl.DataFrame(
        {
            "id": [i for i in ids for _ in LESIONS],
            "lesion": list(LESIONS) * 4,
            "status": [
                "positive" if les == "pleural effusion" and i in ("1", "2") else "negative"
                for i in ids
                for les in LESIONS
            ],
        }
    )
    res = classifier_auc(probs, gold)
    assert res is not None and res["n"] == 4
    # pairs (pos, neg): (.9,.6) (.9,.1) (.4,.6) (.4,.1) -> 3 of 4 ranked right
    assert res["per_lesion"]["pleural effusion"] == pytest.approx(0.75)
    assert res["per_lesion"]["edema"] is None  # one class only: undefined
    assert res["macro"] == pytest.approx(0.75)


def test_temporal_hallucination_counts_only_studies_without_prior():
    gen = [
        "Unchanged cardiomegaly.",  # no prior: hallucinated comparison
        "No prior studies for comparison. Normal heart.",  # no prior, denial: fine
        "Small left pleural effusion.",  # no prior: fine
        "Unchanged cardiomegaly.",  # has priors: fine
        "",
    ]
    ref = ["Cardiomegaly.", "Normal heart.", "New left effusion.", "Unchanged.", None]
    th = temporal_hallucination(gen, ref, [0, 0, 0, 2, None])
    assert (th.n_without_prior, th.n_with_comparison) == (3, 1)
    assert th.rate == pytest.approx(1 / 3) and th.reference_rate == pytest.approx(1 / 3)
    assert temporal_hallucination([], [], []).rate is None


def _stage(df: pl.DataFrame, out: Path, table: str, stage: str) -> None:
    """A stage folder as its producer writes it: shards + manifest (consumers check both)."""
    shards = write_shards(df, out / table, 100, relative_to=out)
    write_stage_manifest(out, stage=stage, schema_version=1, config={}, shards=shards)


def _folders(
    tmp: Path, reports: list[str], priors: list[int], with_priors: bool = True
) -> tuple[Path, Path, Path]:
    """generated/ + records/ + a label file for studies 1..n (reference: a left effusion)."""
    n = len(reports)
    sids = list(range(1, n + 1))
    probs = [[0.8 if les == "pleural effusion" else 0.1 for les in LESIONS] for _ in sids]
    gen = pl.DataFrame({"study_id": sids, "report": reports, "lesion_probs": probs})
    _stage(gen, tmp / "gen", "generated", "generate")
    refs = pl.DataFrame(
        {
            "study_id": sids,
            "findings": ["Small left pleural effusion."] * n,
            "impression": [None] * n,
            "n_prior_studies": priors,
        }
    )
    _stage(
        refs if with_priors else refs.drop("n_prior_studies"),
        tmp / "rec",
        "records",
        "build-priors",
    )
    lab = pl.DataFrame(
        {
            "id": [str(s) for s in sids for _ in LESIONS],
            "lesion": list(LESIONS) * n,
            "status": [
                "positive" if les == "pleural effusion" else "negative"
                for _ in sids
                for les in LESIONS
            ],
        }
    )
    lab.write_parquet(tmp / "labels.parquet")
    return tmp / "gen", tmp / "rec", tmp / "labels.parquet"


def test_empty_reports_are_counted_failures_and_never_judged(tmp_path):
    from cxrctx.llm import get_engine

    gen, rec, labels = _folders(
        tmp_path,
        ["Small left pleural effusion.", "", "Unchanged left pleural effusion."],
        [0, 0, 0],
    )
    seen: list[str] = []

    def judge(req):
        seen.append(req.messages[1]["content"])
        return JUDGE_ANSWER

    rep = evaluate(
        gen,
        reference=rec,
        reference_labels=labels,
        judge_engine=get_engine("fake", "judge", responder=judge),
        out=tmp_path / "ev",
    )
    assert rep.n_pairs == 3 and rep.n_empty_generated == 1
    assert len(seen) == 2  # the empty report was not sent
    assert rep.judge is not None and (rep.judge.n, rep.judge.empty, rep.judge.failures) == (2, 1, 0)
    assert rep.judge.total == pytest.approx(14.0)
    assert any("empty: counted as failures" in n for n in rep.notes)
    # ROUGE-L: 1, 0 (empty), and LCS "left pleural effusion" = 3 of 4 tokens on both sides
    per = pl.read_parquet(tmp_path / "ev" / "per_study.parquet")
    assert per["rouge_l"].to_list() == pytest.approx([1.0, 0.0, 0.75])
    assert rep.rouge_l == pytest.approx(1.75 / 3)
    eff = next(x for x in rep.lesion["lesions"] if x["lesion"] == "pleural effusion")
    assert (eff["tp"], eff["fn"]) == (2, 1)  # the empty report missed its effusion
    assert rep.temporal_hallucination is not None
    assert (
        rep.temporal_hallucination.n_without_prior,
        rep.temporal_hallucination.n_with_comparison,
    ) == (3, 1)
    assert rep.classifier_auc is not None and rep.classifier_auc["n"] == 3
    assert rep.classifier_auc["macro"] is None  # every study is positive: AUC undefined
    data = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert data["n_empty_generated"] == 1 and data["temporal_hallucination"][
        "rate"
    ] == pytest.approx(1 / 3)


def test_empty_report_is_not_sent_to_the_llm_labeler(tmp_path):
    from cxrctx.llm import get_engine

    gen, rec, _ = _folders(tmp_path, ["The left pleural effusion is small.", ""], [1, 1])
    texts: list[str] = []

    def answer(req):
        texts.append(req.messages[-1]["content"])
        names = list((req.json_schema or {}).get("properties", {}))
        return json.dumps(
            {
                n: {"reasoning": "s", "status": "negative", "location": "not mentioned"}
                for n in names
            }
        )

    rep = evaluate(
        gen,
        reference=rec,
        labeler_engine=get_engine("fake", "lab", responder=answer),
        cache_dir=tmp_path / "c",
    )
    assert rep.labeler == "llm:fake/lab" and rep.n_empty_generated == 1
    assert rep.lesion is not None and rep.lesion["n_docs"] == 2
    # one generated + one reference document reach the labeler; never an empty text
    assert len(texts) == 2 and all("effusion" in t.lower() for t in texts)
    assert (
        rep.temporal_hallucination is not None and rep.temporal_hallucination.n_without_prior == 0
    )


def test_meteor_is_null_with_a_reason_exactly_when_nltk_wordnet_is_missing(tmp_path):
    gen, rec, labels = _folders(tmp_path, ["Small left pleural effusion."], [0])
    rep = evaluate(gen, reference=rec, reference_labels=labels)
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        have = True
    except (ImportError, LookupError):
        have = False
    assert (rep.meteor is not None) is have
    assert any(n.startswith("METEOR not computed") for n in rep.notes) is (not have)


def test_records_without_n_prior_studies_give_no_temporal_rate(tmp_path):
    gen, rec, labels = _folders(tmp_path, ["Unchanged."], [0], with_priors=False)
    rep = evaluate(gen, reference=rec, reference_labels=labels)
    assert rep.temporal_hallucination is None
    assert any("n_prior_studies" in n for n in rep.notes)


def test_bad_sections_and_missing_reference(tmp_path):
    from cxrctx.errors import CxrctxError

    gen, rec, _ = _folders(tmp_path, ["x"], [0])
    with pytest.raises(CxrctxError, match="findings or impression"):
        evaluate(gen, reference=rec, sections=("history",))
    with pytest.raises(CxrctxError, match="has a reference text"):
        evaluate(gen, reference=rec, sections=("impression",))


def test_inputs_are_checked_and_the_output_is_a_stage(tmp_path):
    """A generate folder without its manifest (an interrupted run) is refused; --out gets a
    manifest that the stage reader accepts, and another run's folder is not overwritten."""
    from cxrctx.errors import CxrctxError
    from cxrctx.io import open_stage

    gen, rec, labels = _folders(tmp_path, ["Small left pleural effusion."], [0])
    evaluate(gen, reference=rec, reference_labels=labels, out=tmp_path / "ev")
    st = open_stage(tmp_path / "ev", "evaluate")
    assert st.manifest.counts["studies"] == 1
    assert {f.path for f in st.manifest.files} == {"evaluation.json"}
    with pytest.raises(CxrctxError, match="--overwrite"):
        evaluate(gen, reference=rec, out=tmp_path / "ev")  # other labels: another run
    (gen / "manifest.json").unlink()
    with pytest.raises(CxrctxError, match="manifest"):
        evaluate(gen, reference=rec, reference_labels=labels)
