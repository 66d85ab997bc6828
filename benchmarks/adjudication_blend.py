"""Does the model help where the exemplar vote is unsure? IU development reports only.

The exemplar vote (`cxrctx.labeling.adjudicate`, no model) decides the rules' ambiguous
readings; the 1.5B model with the same exemplars lost to it on dev. This asks a narrower
question: consult the model only where the vote's P(positive) lies within a band around
its threshold, or blend the two probabilities. Everything is chosen and measured on the
development split (leave-one-report-out exemplars, as in `label_quality.py`):

1. rules label every report; the vote gives P_vote for every ambiguous reading with
   exemplars; the model's log-probability choice gives P_llm for the readings with
   |P_vote − t_vote| ≤ `--max-band` (the widest band tried), cached on disk;
2. policies, each on the same reports: `vote` (P_vote ≥ t_vote); `band(b, t)`: P_llm ≥ t
   where |P_vote − t_vote| ≤ b, else the vote; `blend(w, t)`: w·P_llm + (1 − w)·P_vote ≥ t
   where the model was asked, else the vote;
3. honest selection: 2-fold cross-validation over reports (folds by a hash of the report
   id): the policy and its parameters are chosen on one fold (micro-F1) and scored on the
   other; the pooled out-of-fold labels are compared with the vote on the same reports,
   with a paired bootstrap over reports (1,000 resamples) of the micro-F1 difference.
   The in-sample best (chosen and scored on the same reports) is printed too, marked as
   such (optimistic by construction).
4. `--split test`, once, at the end: the policy frozen on dev (`--policy`, e.g. the
   in-sample best `blend:0.25:0.55`) on the held-out test reports, the examples being
   all the development reports; rules, vote and vote + model scored side by side
   (micro-F1 and location with bootstrap CIs, paired differences, seconds and output
   tokens per report).

    python benchmarks/adjudication_blend.py --gold-dir DATA/iu-xray \\
        --model MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --threads 1 \\
        --max-band 0.3 --cache-dir CACHE --json blend.json
    python benchmarks/adjudication_blend.py --gold-dir DATA/iu-xray --split test \\
        --policy blend:0.25:0.55 --model MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \\
        --threads 2 --max-band 0.3 --cache-dir CACHE --json blend_test.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_quality import dev_examples, gold_frame, load_iu, score

from cxrctx.labeling.adjudicate import (
    MentionChoiceTask,
    MentionItem,
    calibrate_vote,
    load_adjudication_prompt,
    vote_decisions,
)
from cxrctx.labeling.exemplars import ExemplarIndex, ambiguous_mentions, read_examples
from cxrctx.labeling.rules import label_documents_rules
from cxrctx.llm.base import Sampling
from cxrctx.llm.cache import ResultCache
from cxrctx.llm.runner import run_task

BANDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
THRESH = tuple(round(0.05 * i, 2) for i in range(1, 20))
WEIGHTS = (0.25, 0.5, 0.75, 1.0)


def model_probs(args, items: list[MentionItem]) -> tuple[dict, dict]:
    """P_llm per (doc id, lesion) for `items`, and the call counts / tokens / seconds."""
    from cxrctx.llm import get_engine

    engine = get_engine("llamacpp", args.model, n_threads=args.threads, n_ctx=4096)
    out: dict[tuple[str, str], float] = {}
    info = {"asked": len(items), "unusable": 0, "unscored": 0}

    def take(results) -> None:
        for r in results:
            key = (r.item.mention.doc_id, r.item.mention.lesion)
            if r.answer is None:
                info["unusable"] += 1
                continue
            p = r.answer.prob("positive")
            if p is None:
                info["unscored"] += 1
                p = float(r.answer.choice == "positive")
            out[key] = p
        print(f"  model: {len(out)}/{len(items)} answered", flush=True)

    t0 = time.perf_counter()
    try:
        with ResultCache(args.cache_dir) as cache:
            stats = run_task(
                MentionChoiceTask(load_adjudication_prompt()),
                items,
                engine,
                cache=cache,
                sampling=Sampling(max_tokens=8),
                on_batch=take,
                total=len(items),
            )
    finally:
        engine.close()
    info.update(
        seconds=time.perf_counter() - t0,
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
        cached=stats.cached,
    )
    return out, info


def no_repack() -> None:
    """Make llama-cpp-python load models with `use_extra_bufts = False` (no repacked
    weights): the benchmark's workaround for a build that crashes in those kernels."""
    import llama_cpp
    import llama_cpp.llama as ll

    default = llama_cpp.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    ll.llama_cpp.llama_model_default_params = params


def fold_of(doc_id: str) -> int:
    return hashlib.sha256(doc_id.encode()).digest()[0] % 2


def decide(table: pl.DataFrame, policy: tuple, t_vote: float) -> np.ndarray:
    """Predicted positive (bool per row of `table`) under one policy."""
    pv, pl_, amb = table["p_vote"].to_numpy(), table["p_llm"].to_numpy(), table["amb"].to_numpy()
    rules = table["rule_pos"].to_numpy()
    vote = np.where(amb, pv >= t_vote, rules)
    kind = policy[0]
    if kind == "vote":
        return vote
    asked = amb & ~np.isnan(pl_)
    if kind == "band":
        _, b, t = policy
        use = asked & (np.abs(pv - t_vote) <= b + 1e-9)
        return np.where(use, pl_ >= t, vote)
    _, w, t = policy
    p = w * np.nan_to_num(pl_) + (1 - w) * pv
    return np.where(asked, p >= t, vote)


def micro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """Micro-F1 over (report, lesion) rows: the binary F1 of the flattened rows."""
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, zero_division=0.0))


def policies() -> list[tuple]:
    out: list[tuple] = [("vote",)]
    out += [("band", b, t) for b in BANDS for t in THRESH]
    out += [("blend", w, t) for w in WEIGHTS for t in THRESH]
    return out


def best_policy(table: pl.DataFrame, t_vote: float) -> tuple[tuple, float]:
    gold = table["gold_pos"].to_numpy()
    scored = [(micro_f1(decide(table, p, t_vote), gold), p) for p in policies()]
    f, p = max(scored, key=lambda x: x[0])
    return p, f


def paired_bootstrap(table: pl.DataFrame, a: np.ndarray, b: np.ndarray, n: int) -> dict:
    """micro-F1(a) − micro-F1(b), resampling reports (95 % interval)."""
    gold = table["gold_pos"].to_numpy()
    ids = table["id"].to_numpy()
    uniq, inv = np.unique(ids, return_inverse=True)

    def counts(pred):
        tp = np.bincount(inv, weights=(pred & gold), minlength=len(uniq))
        fp = np.bincount(inv, weights=(pred & ~gold), minlength=len(uniq))
        fn = np.bincount(inv, weights=(~pred & gold), minlength=len(uniq))
        return tp, fp, fn

    ca, cb = counts(a), counts(b)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(n):
        s = rng.integers(0, len(uniq), len(uniq))
        fa = [c[s].sum() for c in ca]
        fb = [c[s].sum() for c in cb]
        f1a = 2 * fa[0] / max(1, 2 * fa[0] + fa[1] + fa[2])
        f1b = 2 * fb[0] / max(1, 2 * fb[0] + fb[1] + fb[2])
        diffs.append(f1a - f1b)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": micro_f1(a, gold) - micro_f1(b, gold), "low": float(lo), "high": float(hi)}


def build_table(rules: pl.DataFrame, gold: pl.DataFrame, pv: dict, pllm: dict) -> pl.DataFrame:
    """One row per scored (report, lesion): rule status, gold, P_vote, P_llm (NaN: not asked)."""
    g = gold.select("id", "lesion", (pl.col("status") == "positive").alias("gold_pos"))
    t = rules.select("id", "lesion", (pl.col("status") == "positive").alias("rule_pos")).join(
        g, on=["id", "lesion"], how="inner"
    )
    keys = list(pv)
    d = pl.DataFrame(
        {
            "id": [k[0] for k in keys],
            "lesion": [k[1] for k in keys],
            "p_vote": [pv[k] for k in keys],
            "p_llm": [pllm.get(k, float("nan")) for k in keys],
        },
        schema={"id": pl.String, "lesion": pl.String, "p_vote": pl.Float64, "p_llm": pl.Float64},
    )
    t = t.join(d, on=["id", "lesion"], how="left")
    return t.with_columns(
        pl.col("p_vote").is_not_null().alias("amb"),
        pl.col("p_vote").fill_null(0.0),
        pl.col("p_llm").fill_null(float("nan")),
    )


def parse_policy(text: str) -> tuple:
    """`vote`, `band:B:T` or `blend:W:T` → the policy tuple `decide` takes."""
    kind, *nums = text.split(":")
    if kind == "vote" and not nums:
        return ("vote",)
    if kind in ("band", "blend") and len(nums) == 2:
        return (kind, float(nums[0]), float(nums[1]))
    raise SystemExit(f"--policy {text!r}: use vote, band:B:T or blend:W:T")


def readings(args, docs: pl.DataFrame) -> tuple[dict, list[MentionItem], float, dict]:
    """The vote's P(positive) for every ambiguous reading of `docs` (examples: all the
    development reports, leave-one-report-out), the readings inside the band (→ model),
    the vote threshold and counts."""
    with tempfile.TemporaryDirectory() as tmp:
        ex = dev_examples(args.gold_dir, Path(tmp) / "examples.parquet")
        index = ExemplarIndex.from_examples(ex, k=args.k)
        t_vote, _ = calibrate_vote(index, read_examples(ex))
    mentions = [
        m
        for i, t in zip(docs["id"].to_list(), docs["text"].to_list(), strict=True)
        for m in ambiguous_mentions(i, t)
    ]
    voted = vote_decisions(mentions, index)
    pv = {k: d.p_positive for k, (d, _) in voted.items()}
    items = [
        MentionItem(m, voted[(m.doc_id, m.lesion)][1])
        for m in mentions
        if (m.doc_id, m.lesion) in voted
        and abs(pv[(m.doc_id, m.lesion)] - t_vote) <= args.max_band + 1e-9
    ]
    if args.max_calls:
        items = items[: args.max_calls]
    print(
        f"{docs.height} {args.split} reports, {len(mentions)} ambiguous readings, {len(voted)} "
        f"with exemplars; vote threshold {t_vote}; {len(items)} within ±{args.max_band} → model",
        flush=True,
    )
    counts = {"ambiguous": len(mentions), "with_exemplars": len(voted)}
    return pv, items, t_vote, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gold-dir", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument(
        "--policy",
        default="blend:0.25:0.55",
        help="--split test only: the policy frozen on dev (vote, band:B:T, blend:W:T)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-band", type=float, default=0.3)
    ap.add_argument("--max-calls", type=int, default=0, help="0 = every reading in the band")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--no-repack",
        action="store_true",
        help="load the GGUF without llama.cpp's repacked CPU weights (a llama-cpp-python "
        "0.3.36 build here segfaults in them on any prompt batch > 1 token)",
    )
    args = ap.parse_args(argv)
    policy = parse_policy(args.policy)
    if args.no_repack:
        no_repack()
    docs, mesh = load_iu(args.gold_dir, args.split, 0, 0, 13)
    gold = gold_frame(args.gold_dir, docs, mesh)
    t0 = time.perf_counter()
    rules = label_documents_rules(docs).labels
    rules_s = time.perf_counter() - t0
    pv, items, t_vote, counts = readings(args, docs)
    pllm, info = model_probs(args, items)
    table = build_table(rules, gold, pv, pllm)
    if args.split == "test":
        result = frozen(args, table, rules, gold, t_vote, policy)
        result["s_per_report"] = (rules_s + info["seconds"]) / docs.height
        result["output_tokens_per_report"] = info["completion_tokens"] / docs.height
    else:
        result = evaluate(table, t_vote, args.bootstrap)
    result.update(
        split=args.split,
        reports=docs.height,
        **counts,
        t_vote=t_vote,
        max_band=args.max_band,
        model=os.path.basename(args.model),
        threads=args.threads,
        load_avg=os.getloadavg(),
        model_info=info,
    )
    print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def decided_labels(rules: pl.DataFrame, table: pl.DataFrame, pred: np.ndarray) -> pl.DataFrame:
    """The rules' label rows with the ambiguous readings set to `pred` (a reading turned
    negative loses its side, as `apply_decisions` does)."""
    d = table.select("id", "lesion", "amb").with_columns(pl.Series("_pos", pred))
    j = rules.join(d.filter(pl.col("amb")), on=["id", "lesion"], how="left")
    hit = pl.col("_pos").is_not_null()
    status = pl.when(pl.col("_pos")).then(pl.lit("positive")).otherwise(pl.lit("negative"))
    j = j.with_columns(pl.when(hit).then(status).otherwise(pl.col("status")).alias("status"))
    neg = hit & (pl.col("status") == "negative")
    loc = pl.when(neg).then(pl.lit("not mentioned")).otherwise(pl.col("location"))
    return j.with_columns(loc.alias("location")).drop("amb", "_pos")


def frozen(args, table, rules, gold, t_vote: float, policy: tuple) -> dict:
    """The held-out run: rules, vote and the frozen vote + model policy, same reports."""
    preds = {
        "rules": table["rule_pos"].to_numpy(),
        "vote": decide(table, ("vote",), t_vote),
        "vote + model": decide(table, policy, t_vote),
    }
    out: dict = {"policy": policy, "labelers": {}}
    for name, pred in preds.items():
        rep = score(args, decided_labels(rules, table, pred), gold)
        ci = rep.ci.overall if rep.ci else {}
        out["labelers"][name] = {
            "micro_f1": rep.micro_f1,
            "micro_f1_ci": [ci["micro_f1"].low, ci["micro_f1"].high] if "micro_f1" in ci else None,
            "location_accuracy": rep.location_accuracy,
            "location_ci": [ci["location_accuracy"].low, ci["location_accuracy"].high]
            if "location_accuracy" in ci
            else None,
            "micro_f1_table": micro_f1(pred, table["gold_pos"].to_numpy()),
        }
    out["model_minus_vote"] = paired_bootstrap(
        table, preds["vote + model"], preds["vote"], args.bootstrap
    )
    out["model_minus_rules"] = paired_bootstrap(
        table, preds["vote + model"], preds["rules"], args.bootstrap
    )
    return out


def evaluate(table: pl.DataFrame, t_vote: float, n_boot: int) -> dict:
    """Vote, in-sample best, and the 2-fold cross-validated choice, with paired bootstraps."""
    gold = table["gold_pos"].to_numpy()
    vote = decide(table, ("vote",), t_vote)
    rules = table["rule_pos"].to_numpy()
    ins_p, ins_f = best_policy(table, t_vote)
    folds = table["id"].map_elements(fold_of, return_dtype=pl.Int64).to_numpy()
    cv = np.zeros(table.height, dtype=bool)
    chosen = []
    for f in (0, 1):
        train = table.filter(pl.Series(folds != f))
        p, fit = best_policy(train, t_vote)
        chosen.append({"fold_scored": f, "policy": p, "train_f1": fit})
        mask = folds == f
        cv[mask] = decide(table.filter(pl.Series(mask)), p, t_vote)
    asked = table.filter(pl.col("p_llm").is_not_nan())
    asked_gold = asked["gold_pos"].to_numpy()
    return {
        "rows": table.height,
        "readings_asked": asked.height,
        "micro_f1": {
            "rules": micro_f1(rules, gold),
            "vote": micro_f1(vote, gold),
            "in_sample_best": ins_f,
            "cv_chosen": micro_f1(cv, gold),
            "model_alone_on_asked_t0.5": micro_f1(asked["p_llm"].to_numpy() >= 0.5, asked_gold),
            "vote_on_asked": micro_f1(asked["p_vote"].to_numpy() >= t_vote, asked_gold),
        },
        "accuracy_on_asked": {
            "vote": float(((asked["p_vote"].to_numpy() >= t_vote) == asked_gold).mean())
            if asked.height
            else None,
            "model_t0.5": float(((asked["p_llm"].to_numpy() >= 0.5) == asked_gold).mean())
            if asked.height
            else None,
        },
        "in_sample_best_policy": ins_p,
        "cv_folds": chosen,
        "cv_minus_vote": paired_bootstrap(table, cv, vote, n_boot),
        "in_sample_minus_vote": paired_bootstrap(table, decide(table, ins_p, t_vote), vote, n_boot),
    }


if __name__ == "__main__":
    sys.exit(main())
