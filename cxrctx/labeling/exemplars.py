"""Labeled examples for the ambiguous mentions: load, retrieve the nearest, vote.

An examples file (`--examples FILE`: Parquet, CSV or JSONL) holds labeled reports:
columns `id`, `text` and one column per lesion named as in the label rows (e.g.
`pleural effusion`) with `positive` / `negative` (empty = that lesion unlabeled there).
A user builds it from any labeled sample (a hand-checked subset, CheXpert/NegBio labels).

Each example report is read by the rules; every lesion the rules find *ambiguous* there
(hedged, borderline, conflicting, unsettled scope, sides that differ) becomes an
exemplar: its evidence sentences, the reasons and cue words, and the gold status of the
example. The reason matters as much as the wording (on IU development reports "sides
differ" readings are mostly positive, "hedged" and "borderline" ones mostly negative),
so reasons and cues enter the text that is indexed as tokens of their own.

Retrieval is scikit-learn's TF-IDF (word 1–2-grams) with a brute-force cosine
`NearestNeighbors` per lesion: the k most similar exemplars of the same lesion. An
exemplar from the document being labeled (same id, or the same text) is never returned,
so labeling the examples themselves is a leave-one-document-out estimate.

The vote: P(positive) = the similarity-weighted share of positive exemplars among the
k; positive when it reaches the threshold. `calibrate` picks the threshold that
maximises micro-F1 over the example reports (rule labels with the ambiguous ones replaced
by the decisions, leave-one-document-out), so it is chosen on labeled data, never on the
documents being labeled, and is stored with the run's config.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from cxrctx import jsonl
from cxrctx.errors import CxrctxError
from cxrctx.labeling.models import RulesReading
from cxrctx.labeling.rules import read_report
from cxrctx.vocab import LESIONS

DEFAULT_K = 5
GOLD_VALUES = ("positive", "negative")
#: thresholds `calibrate` tries (P(positive) ≥ t → positive)
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass(frozen=True)
class Mention:
    """One ambiguous lesion reading of one document (what an adjudicator decides)."""

    doc_id: str
    text_sha256: str
    lesion: str
    sentences: tuple[str, ...]
    reasons: tuple[str, ...]
    cues: tuple[str, ...]
    rule_status: str
    rule_location: str

    @property
    def sentence_text(self) -> str:
        return " ".join(" ".join(s.split()) for s in self.sentences)

    def index_text(self) -> str:
        """What TF-IDF sees: reason and cue tokens, then the evidence sentences."""
        tags = [f"reason_{r}" for r in self.reasons]
        tags += ["cue_" + "_".join(c.lower().split()) for c in self.cues]
        return " ".join([*tags, self.sentence_text.lower()])


@dataclass(frozen=True)
class Exemplar:
    """A retrieved labeled mention and its cosine similarity to the query."""

    mention: Mention
    gold: str
    similarity: float


def text_sha(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def ambiguous_mentions(
    doc_id: str, text: str, reading: RulesReading | None = None
) -> list[Mention]:
    """The ambiguous lesions of one document as Mentions (rules reading of the stripped text)."""
    t = text.strip()
    reading = reading or read_report(t)
    sha = text_sha(t)
    return [
        Mention(
            doc_id,
            sha,
            r.lesion,
            tuple(e.text or t[e.start : e.end] for e in r.evidence),
            tuple(r.reasons),
            tuple(r.cues),
            r.status,
            r.location,
        )
        for r in reading.lesions
        if r.clarity == "ambiguous"
    ]


# ---------------------------------------------------------------------------- loading


def read_examples(path: str | os.PathLike) -> pl.DataFrame:
    """The examples table (id, text, lesion columns as strings), checked: a clear one-line
    error naming the file (and row) for anything unusable."""
    p = Path(path)
    if not p.is_file():
        raise CxrctxError(f"{p}: examples file not found")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(p)
        elif suffix in (".csv", ".tsv"):
            df = pl.read_csv(p, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
        elif suffix in (".jsonl", ".ndjson"):
            df = jsonl.read_frame(p)
        else:
            raise CxrctxError(f"{p}: examples must be .parquet, .csv or .jsonl")
    except CxrctxError:
        raise
    except Exception as e:
        raise CxrctxError(f"{p}: cannot read examples ({type(e).__name__}: {str(e)[:200]})") from e
    missing = [c for c in ("id", "text") if c not in df.columns]
    lesions = [c for c in df.columns if c in LESIONS]
    if missing or not lesions:
        need = ", ".join(missing) if missing else "a lesion column (e.g. 'pleural effusion')"
        raise CxrctxError(f"{p}: examples need {need} (columns: {', '.join(df.columns)})")
    df = df.select([pl.col(c).cast(pl.String) for c in ("id", "text", *lesions)])
    for les in lesions:
        vals = df[les].str.strip_chars().str.to_lowercase()
        bad = df.with_row_index("row").filter(
            vals.is_not_null() & (vals != "") & ~vals.is_in(GOLD_VALUES)
        )
        if bad.height:
            r = bad.row(0, named=True)
            raise CxrctxError(
                f"{p}: row {r['row'] + 1} (id {r['id']}): {les!r} is {r[les]!r}; "
                "use positive, negative or empty"
            )
        df = df.with_columns(vals.replace("", None).alias(les))
    return df.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != ""))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- index


@dataclass
class _LesionIndex:
    mentions: list[Mention]
    gold: list[str]
    vectorizer: Any
    nn: Any


@dataclass
class ExemplarIndex:
    """Per-lesion TF-IDF + cosine nearest neighbours over the examples' ambiguous mentions."""

    k: int = DEFAULT_K
    lesions: dict[str, _LesionIndex] = field(default_factory=dict)
    source: str = ""
    sha256: str = ""

    @classmethod
    def build(cls, mentions: Iterable[tuple[Mention, str]], k: int = DEFAULT_K) -> ExemplarIndex:
        """An index over (mention, gold status) pairs."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.neighbors import NearestNeighbors

        by: dict[str, list[tuple[Mention, str]]] = {}
        for m, g in mentions:
            by.setdefault(m.lesion, []).append((m, g))
        out = cls(k=k)
        for les, pairs in by.items():
            vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"[a-z_]+")
            x = vec.fit_transform([m.index_text() for m, _ in pairs])
            nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(x)
            out.lesions[les] = _LesionIndex([m for m, _ in pairs], [g for _, g in pairs], vec, nn)
        return out

    @classmethod
    def from_examples(cls, path: str | os.PathLike, k: int = DEFAULT_K) -> ExemplarIndex:
        """The index of an examples file (see the module docstring for its columns)."""
        df = read_examples(path)
        pairs = []
        lesions = [c for c in df.columns if c in LESIONS]
        for row in df.iter_rows(named=True):
            for m in ambiguous_mentions(str(row["id"]), row["text"]):
                g = row.get(m.lesion) if m.lesion in lesions else None
                if g in GOLD_VALUES:
                    pairs.append((m, g))
        idx = cls.build(pairs, k)
        idx.source, idx.sha256 = str(path), file_sha256(path)
        return idx

    def size(self) -> int:
        return sum(len(li.mentions) for li in self.lesions.values())

    def neighbours(self, queries: Sequence[Mention], k: int | None = None) -> list[list[Exemplar]]:
        """The k nearest exemplars of each query's lesion, never from the query's document."""
        k = k or self.k
        out: list[list[Exemplar]] = [[] for _ in queries]
        by: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by.setdefault(q.lesion, []).append(i)
        for les, idxs in by.items():
            li = self.lesions.get(les)
            if li is None:
                continue
            x = li.vectorizer.transform([queries[i].index_text() for i in idxs])
            n = min(len(li.mentions), k + 8)
            dist, nbr = li.nn.kneighbors(x, n_neighbors=n)
            for row, i in enumerate(idxs):
                q = queries[i]
                got = [
                    Exemplar(li.mentions[j], li.gold[j], float(1.0 - d))
                    for d, j in zip(dist[row], nbr[row], strict=True)
                    if li.mentions[j].doc_id != q.doc_id
                    and li.mentions[j].text_sha256 != q.text_sha256
                ]
                out[i] = got[:k]
        return out


def vote(exemplars: Sequence[Exemplar]) -> float | None:
    """P(positive): the similarity-weighted share of positive exemplars (None if none)."""
    if not exemplars:
        return None
    w = [max(e.similarity, 0.0) + 1e-3 for e in exemplars]
    pos = sum(wi for wi, e in zip(w, exemplars, strict=True) if e.gold == "positive")
    return round(pos / sum(w), 6)


def calibrate(
    rows: pl.DataFrame, gold: pl.DataFrame, probs: dict[tuple[str, str], float]
) -> tuple[float, dict[float, float]]:
    """The threshold (and micro-F1 per threshold) that maximises micro-F1 of `rows`
    (label rows id, lesion, status) with the rows in `probs` ((id, lesion) → P(positive))
    decided by P ≥ t, scored against `gold` (id, lesion, status)."""
    g = gold.select("id", "lesion", pl.col("status").alias("gold"))
    base = rows.select("id", "lesion", "status").join(g, on=["id", "lesion"], how="inner")
    keys = pl.DataFrame(
        {"id": [k[0] for k in probs], "lesion": [k[1] for k in probs], "p": list(probs.values())},
        schema={"id": pl.String, "lesion": pl.String, "p": pl.Float64},
    )
    base = base.join(keys, on=["id", "lesion"], how="left")
    scores: dict[float, float] = {}
    for t in THRESHOLDS:
        pred = (
            pl.when(pl.col("p").is_null())
            .then(pl.col("status"))
            .otherwise(
                pl.when(pl.col("p") >= t).then(pl.lit("positive")).otherwise(pl.lit("negative"))
            )
        )
        d = base.with_columns(pred.alias("pred"))
        tp = d.filter((pl.col("pred") == "positive") & (pl.col("gold") == "positive")).height
        fp = d.filter((pl.col("pred") == "positive") & (pl.col("gold") != "positive")).height
        fn = d.filter((pl.col("pred") != "positive") & (pl.col("gold") == "positive")).height
        scores[t] = 2 * tp / max(1, 2 * tp + fp + fn)
    best = max(scores.values())
    # the middle of the best plateau: the least sensitive choice among equals
    ties = [t for t, s in scores.items() if s == best]
    return ties[len(ties) // 2], scores
