"""The 1.5B model as the exemplar retriever: its embeddings vs TF-IDF (IU development only).

The exemplar vote (`cxrctx.labeling.exemplars`) finds the k most similar labeled
ambiguous mentions of the same lesion with TF-IDF (word 1-2-grams plus reason and cue
tokens). Asking the 1.5B model to decide those mentions lost to the vote; this asks
whether the model earns a place as the *encoder* instead: the same vote with cosine
similarity over the model's mean-pooled embeddings of each mention, or a mix
alpha * TF-IDF + (1 - alpha) * embedding.

Exemplars and queries are the 421 ambiguous mentions of the IU development reports that
have a gold status, leave-one-report-out (an exemplar from the same report or the same
text never counts), exactly as `label_quality.py --adjudicate vote` scores the vote.
Every (alpha, k, threshold) is scored by micro-F1 over all development label rows (the
rules' rows with the ambiguous ones replaced); the choice is made by 2-fold
cross-validation over reports and scored out of fold, against the production vote
(TF-IDF, k 5, threshold 0.5) with a paired bootstrap over reports.

    python benchmarks/embedding_retrieval.py --gold-dir DATA/iu-xray \\
        --model MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --threads 2 \\
        --cache emb.npz --json emb.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adjudication_blend import fold_of, micro_f1, paired_bootstrap
from label_quality import dev_examples, gold_frame, load_iu

from cxrctx.labeling.exemplars import (
    GOLD_VALUES,
    Exemplar,
    ExemplarIndex,
    Mention,
    ambiguous_mentions,
    read_examples,
    vote,
)
from cxrctx.labeling.rules import label_documents_rules

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
KS = (5, 9, 15)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
QUERY = "Radiology report sentence: {s}\nIs {lesion} present?"


def exemplar_pairs(gold_dir: Path) -> list[tuple[Mention, str]]:
    """(ambiguous mention, gold status) for every dev report, as the vote's index sees them."""
    with tempfile.TemporaryDirectory() as tmp:
        df = read_examples(dev_examples(gold_dir, Path(tmp) / "examples.parquet"))
    pairs = []
    for row in df.iter_rows(named=True):
        for m in ambiguous_mentions(str(row["id"]), row["text"]):
            if row.get(m.lesion) in GOLD_VALUES:
                pairs.append((m, row[m.lesion]))
    return pairs


def embed(args, pairs: list[tuple[Mention, str]]) -> np.ndarray:
    """Unit-norm mean-pooled embeddings of each mention's question (cached in --cache)."""
    if args.cache and args.cache.exists():
        return np.load(args.cache)["e"]
    from llama_cpp import Llama

    llm = Llama(
        args.model, embedding=True, n_ctx=512, n_threads=args.threads, verbose=False, pooling_type=1
    )
    t0, rows = time.perf_counter(), []
    for i, (m, _) in enumerate(pairs):
        v = np.asarray(llm.embed(QUERY.format(s=m.sentence_text, lesion=m.lesion)), np.float32)
        v = v.mean(0) if v.ndim > 1 else v
        rows.append(v / np.linalg.norm(v))
        if i % 100 == 0:
            print(f"  embedded {i}/{len(pairs)} in {time.perf_counter() - t0:.0f} s", flush=True)
    e = np.stack(rows)
    print(f"  {len(pairs)} embeddings in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.cache:
        np.savez(args.cache, e=e)
    return e


def similarities(pairs, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF-IDF and embedding cosine matrices (same lesion only), and the excluded pairs."""
    idx = ExemplarIndex.build(pairs)
    n = len(pairs)
    les = np.array([m.lesion for m, _ in pairs])
    s_t, s_e = np.zeros((n, n)), emb @ emb.T
    for lesion, li in idx.lesions.items():
        ii = np.where(les == lesion)[0]
        x = li.vectorizer.transform([pairs[i][0].index_text() for i in ii])
        s_t[np.ix_(ii, ii)] = (x @ x.T).toarray()
    doc = np.array([m.doc_id for m, _ in pairs])
    sha = np.array([m.text_sha256 for m, _ in pairs])
    excluded = (doc[:, None] == doc) | (sha[:, None] == sha) | (les[:, None] != les)
    return s_t, s_e, excluded


def vote_probs(sim: np.ndarray, excluded: np.ndarray, pairs, k: int) -> np.ndarray:
    """The production vote (`exemplars.vote`) over the k nearest under `sim` (NaN: none)."""
    s = np.where(excluded, -np.inf, sim)
    order = np.argsort(-s, axis=1)[:, :k]
    p = np.full(len(pairs), np.nan)
    for i, js in enumerate(order):
        near = [
            Exemplar(pairs[j][0], pairs[j][1], float(s[i, j])) for j in js if np.isfinite(s[i, j])
        ]
        got = vote(near)
        if got is not None:
            p[i] = got
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gold-dir", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help=".npz of the embeddings")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    docs, mesh = load_iu(args.gold_dir, "dev", 0, 0, 13)
    gold = gold_frame(args.gold_dir, docs, mesh).select(
        "id", "lesion", (pl.col("status") == "positive").alias("gold_pos")
    )
    rules = label_documents_rules(docs).labels
    table = rules.select("id", "lesion", (pl.col("status") == "positive").alias("rule_pos"))
    table = table.join(gold, on=["id", "lesion"], how="inner")
    pairs = exemplar_pairs(args.gold_dir)
    s_t, s_e, excluded = similarities(pairs, embed(args, pairs))
    at = {(m.doc_id, m.lesion): i for i, (m, _) in enumerate(pairs)}
    row = np.array([at.get(k, -1) for k in zip(table["id"], table["lesion"], strict=True)])
    rule_pos, gold_pos = table["rule_pos"].to_numpy(), table["gold_pos"].to_numpy()

    def predict(p: np.ndarray, t: float) -> np.ndarray:
        out = rule_pos.copy()
        amb = row >= 0
        pi = p[row[amb]]
        out[amb] = np.where(np.isnan(pi), rule_pos[amb], pi >= t)
        return out

    grid = {}
    for a, k in itertools.product(ALPHAS, KS):
        p = vote_probs(a * s_t + (1 - a) * s_e, excluded, pairs, k)
        grid.update({(a, k, t): predict(p, t) for t in THRESHOLDS})
    production = grid[(1.0, 5, 0.5)]
    folds = np.array([fold_of(i) for i in table["id"]])
    cv, chosen = np.zeros(len(folds), bool), []
    for f in (0, 1):
        train = folds != f
        best = max(grid, key=lambda c: micro_f1(grid[c][train], gold_pos[train]))
        chosen.append(best)
        cv[folds == f] = grid[best][folds == f]
    amb = row >= 0
    result = {
        "exemplars": len(pairs),
        "rows": table.height,
        "micro_f1": {
            "rules": micro_f1(rule_pos, gold_pos),
            "vote_tfidf_k5_t0.5": micro_f1(production, gold_pos),
            **{f"embedding_only_k{k}_t0.5": micro_f1(grid[(0.0, k, 0.5)], gold_pos) for k in KS},
            "cv_chosen": micro_f1(cv, gold_pos),
        },
        "accuracy_on_ambiguous": {
            "vote_tfidf": float((production[amb] == gold_pos[amb]).mean()),
            "embedding_only_k5": float((grid[(0.0, 5, 0.5)][amb] == gold_pos[amb]).mean()),
            "cv_chosen": float((cv[amb] == gold_pos[amb]).mean()),
        },
        "cv_folds_chosen(alpha,k,t)": chosen,
        "in_sample_top5": sorted(
            ((micro_f1(v, gold_pos), c) for c, v in grid.items()), reverse=True
        )[:5],
        "cv_minus_vote": paired_bootstrap(table, cv, production, args.bootstrap),
    }
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
