"""The sentence-regex keyword labeler: the cheap baseline the rules labeler is measured
against (benchmarks/label_quality.py), and how `evaluate` labels empty reports (all
negative). Not a labeler to use: it knows no hedges, no scope and few synonyms.
"""

from __future__ import annotations

import re

import polars as pl

from cxrctx.vocab import LESIONS, split_sentences

__all__ = ["keyword_labels"]

_NEG_CUES = re.compile(r"\b(no|without|negative for|free of|resolved|clear of|not)\b", re.I)
_KEYWORDS = {
    "cardiomegaly": (
        r"cardiomegaly",
        r"(heart|cardiac silhouette)[^.]*\benlarge",
        r"enlarge[^.]*\b(heart|cardiac)",
    ),
    "emphysema": (r"emphysema", r"hyperinflat"),
    "pleural effusion": (r"effusion",),
    "hernia": (r"hernia",),
    "nodule": (r"nodul",),
    "pneumothorax": (r"pneumothora",),
    "atelectasis": (r"atelecta",),
    "pleural thickening": (r"pleural thickening",),
    "mass": (r"\bmass(es)?\b",),
    "edema": (r"edema",),
    "consolidation": (r"consolidat",),
    "infiltration": (r"infiltrat",),
    "fibrosis": (r"fibros", r"fibrotic"),
    "pneumonia": (r"pneumonia",),
}


def keyword_labels(docs: pl.DataFrame) -> pl.DataFrame:
    """The old sentence-regex labeler, kept as the cheap baseline the rules labeler is
    measured against (benchmarks/label_quality.py); also labels empty reports all-negative.

    A lesion is positive when a sentence names it and no negation cue precedes the mention.
    Location: left/right/bilateral words in that sentence.
    """
    rows = []
    for id_, text in docs.select("id", "text").iter_rows():
        flat = " ".join((text or "").split())
        sentences = [flat[a:b] for a, b in split_sentences(flat)]
        for les in LESIONS:
            status, loc = "negative", "not mentioned"
            for s in sentences:
                low = s.lower()
                for pat in _KEYWORDS[les]:
                    m = re.search(pat, low)
                    if m and not _NEG_CUES.search(low[: m.start()]):
                        status = "positive"
                        loc = (
                            "bilateral"
                            if re.search(r"\b(bilateral|both|bibasilar)\b", low)
                            else "left"
                            if "left" in low
                            else "right"
                            if "right" in low
                            else "not mentioned"
                        )
                        break
                if status == "positive":
                    break
            rows.append({"id": str(id_), "lesion": les, "status": status, "location": loc})
    return pl.DataFrame(
        rows,
        schema={"id": pl.String, "lesion": pl.String, "status": pl.String, "location": pl.String},
    )
