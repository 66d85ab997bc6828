"""Text and classifier metrics of `evaluate`, each from the library the field uses.

- ROUGE-L: Google's `rouge-score` (`rougeL`, F-measure = F1, its own tokenizer: lower
  case, runs of a-z/0-9, no stemming), so figures compare with papers that use it. It is
  not pycocoevalcap's ROUGE-L, whose F-measure weights recall with beta = 1.2.
- METEOR: NLTK's, only when NLTK and its WordNet data are installed locally (nothing is
  downloaded at run time).
- Classifier ROC-AUC: scikit-learn's `roc_auc_score`, per lesion, undefined (None) when the
  reference labels have one class only.
- Temporal hallucination: the share of reports that use comparison language
  (`cxrctx.vocab.has_temporal_reference`) although the record has no prior study.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx.vocab import LESIONS, has_temporal_reference

_TOK = re.compile(r"[a-z0-9]+")


class TemporalHallucination(BaseModel):
    """Comparison language in reports of studies that have no prior study."""

    model_config = ConfigDict(extra="forbid")
    n_without_prior: int = Field(description="Generated reports whose record has no prior study")
    n_with_comparison: int = Field(
        description="Of those, reports that use comparison language ('unchanged', 'new', 'compared with prior', ...)"
    )
    rate: float | None = Field(description="n_with_comparison / n_without_prior")
    reference_rate: float | None = Field(
        description="The same share for the reference texts of those studies (the data's own rate)"
    )


def tokens(text: str) -> list[str]:
    """Lower-case a-z/0-9 word tokens (METEOR's input here; rouge-score tokenises alike)."""
    return _TOK.findall(text.lower())


def rouge_l_scores(pairs: Sequence[tuple[str, str]]) -> list[float]:
    """ROUGE-L F1 of each (candidate, reference) pair with rouge-score's `rougeL`."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [float(scorer.score(ref, cand)["rougeL"].fmeasure) for cand, ref in pairs]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of one pair (see `rouge_l_scores`)."""
    return rouge_l_scores([(candidate, reference)])[0]


def meteor_scores(pairs: Sequence[tuple[str, str]]) -> tuple[float | None, str | None]:
    """Mean METEOR via NLTK when its WordNet data is present locally; else (None, why)."""
    try:
        import nltk
        from nltk.translate.meteor_score import meteor_score

        nltk.data.find("corpora/wordnet")
    except ImportError:
        return (
            None,
            "METEOR not computed: NLTK is not installed (pip install nltk and its WordNet data to enable it)",
        )
    except LookupError:
        return (
            None,
            "METEOR not computed: NLTK's WordNet data is not installed and is never downloaded at run time",
        )
    vals = [meteor_score([tokens(r)], tokens(c)) for c, r in pairs]
    return (sum(vals) / len(vals) if vals else None), None


def classifier_auc(probs: pl.DataFrame, gold: pl.DataFrame) -> dict[str, object] | None:
    """Per-lesion and macro ROC-AUC of `probs` (id, lesion_probs in LESIONS order) against
    `gold` long-form labels (id, lesion, status; positive = 1). None without common ids."""
    from sklearn.metrics import roc_auc_score

    pos = gold.select(
        "id", "lesion", (pl.col("status") == "positive").cast(pl.Int8).alias("y")
    ).pivot(on="lesion", index="id", values="y", aggregate_function="max")
    joined = probs.select("id", "lesion_probs").join(pos, on="id", how="inner").sort("id")
    if joined.height == 0:
        return None
    scores = joined["lesion_probs"].to_list()
    per: dict[str, float | None] = {}
    for i, les in enumerate(LESIONS):
        if les not in joined.columns:
            per[les] = None
            continue
        y = joined[les].fill_null(0).to_list()
        defined = 0 < sum(y) < len(y)
        per[les] = float(roc_auc_score(y, [s[i] for s in scores])) if defined else None
    vals = [v for v in per.values() if v is not None]
    return {
        "n": joined.height,
        "per_lesion": per,
        "macro": sum(vals) / len(vals) if vals else None,
    }


def temporal_hallucination(
    generated: Sequence[str], reference: Sequence[str | None], n_prior: Sequence[int | None]
) -> TemporalHallucination:
    """Comparison language in generated (and reference) texts of studies with no prior study."""
    idx = [i for i, n in enumerate(n_prior) if n == 0]
    hit = sum(1 for i in idx if has_temporal_reference(generated[i]))
    ref_hit = sum(1 for i in idx if has_temporal_reference(reference[i]))
    return TemporalHallucination(
        n_without_prior=len(idx),
        n_with_comparison=hit,
        rate=hit / len(idx) if idx else None,
        reference_rate=ref_hit / len(idx) if idx else None,
    )
