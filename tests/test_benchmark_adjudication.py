"""The helpers behind the adjudication benchmarks' figures (BENCHMARKS.md quotes them):
the policy parser and the decided label rows of `adjudication_blend.py`, and the
leave-one-report-out vote of `embedding_retrieval.py`. Synthetic values only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cxrctx.labeling.exemplars import Mention

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import adjudication_blend as blend
import embedding_retrieval as retrieval


def test_parse_policy_reads_the_three_kinds_and_refuses_others():
    assert blend.parse_policy("vote") == ("vote",)
    assert blend.parse_policy("band:0.1:0.6") == ("band", 0.1, 0.6)
    assert blend.parse_policy("blend:0.25:0.55") == ("blend", 0.25, 0.55)
    for bad in ("blend:0.25", "vote:1", "knn:1:2"):
        with pytest.raises(SystemExit):
            blend.parse_policy(bad)


def test_blend_policy_decides_only_the_asked_readings():
    table = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "rule_pos": [True, True, False],
            "gold_pos": [False, True, False],
            "p_vote": [0.6, 0.9, 0.0],
            "p_llm": [0.0, float("nan"), float("nan")],
            "amb": [True, True, False],
        }
    )
    # a: 0.25 * 0.0 + 0.75 * 0.6 = 0.45 < 0.55 -> negative; b: not asked -> vote (0.9 >= 0.5)
    pred = blend.decide(table, ("blend", 0.25, 0.55), 0.5)
    assert pred.tolist() == [False, True, False]
    assert blend.decide(table, ("vote",), 0.5).tolist() == [True, True, False]


def test_decided_labels_clear_the_side_of_a_reading_turned_negative():
    rules = pl.DataFrame(
        {
            "id": ["a", "a", "b"],
            "lesion": ["edema", "nodule", "edema"],
            "status": ["positive", "positive", "positive"],
            "location": ["bilateral", "left", "bilateral"],
        }
    )
    table = pl.DataFrame(
        {"id": ["a", "a", "b"], "lesion": ["edema", "nodule", "edema"], "amb": [True, False, True]}
    )
    out = blend.decided_labels(rules, table, np.array([False, False, True]))
    rows = {(r["id"], r["lesion"]): (r["status"], r["location"]) for r in out.iter_rows(named=True)}
    assert rows[("a", "edema")] == ("negative", "not mentioned")
    assert rows[("a", "nodule")] == ("positive", "left")  # not ambiguous: the rules stand
    assert rows[("b", "edema")] == ("positive", "bilateral")


def test_vote_probs_weights_by_similarity_and_skips_excluded_exemplars():
    def mention(doc: str) -> Mention:
        return Mention(doc, doc, "edema", ("edema",), ("hedged",), ("may",), "positive", "")

    pairs = [(mention("r0"), "positive"), (mention("r1"), "negative"), (mention("r2"), "positive")]
    sim = np.array([[1.0, 0.8, 0.2], [0.8, 1.0, 0.1], [0.2, 0.1, 1.0]])
    excluded = np.eye(3, dtype=bool)
    excluded[0, 1] = True  # same report as the query: never a neighbour
    p = retrieval.vote_probs(sim, excluded, pairs, k=2)
    assert p[0] == pytest.approx(1.0)  # only exemplar 2 is left, and it is positive
    assert p[1] == pytest.approx(1.0)  # exemplars 0 and 2, both positive
    w_pos, w_neg = 0.2 + 1e-3, 0.1 + 1e-3  # query 2: exemplar 0 positive, 1 negative
    assert p[2] == pytest.approx(w_pos / (w_pos + w_neg), abs=1e-6)
    none = retrieval.vote_probs(sim, np.ones((3, 3), bool), pairs, k=2)
    assert np.isnan(none).all()
