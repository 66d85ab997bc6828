"""Label quality on real IU chest X-ray reports: rules vs the regex baseline vs hybrid / LLM.

Same reports, same run, same scoring (`evaluate_labels` with bootstrap 95 % CIs by report):

- rules: `cxrctx.labeling.rules` (the shared lexicon, NegEx-style scope, laterality);
- regex baseline: `keyword_labels` of `cxrctx.labeling` (sentence regex + a
  "no/without" cue before the mention);
- with `--model MODEL.gguf` (llamacpp): the hybrid labeler (`--modes cot,short`: rules
  first, the model only for ambiguous lesions) on the same reports, and `--modes llm` (the
  LLM for every candidate, prompt v1) on the first `--llm-n` of them; per mode the LLM
  calls and output tokens per report and the seconds per report of the whole call.

Exemplar adjudication (`--adjudicate vote,llm`): the examples are the IU *development*
reports with their gold (written to a temporary Parquet file, never into the repo);
an exemplar never comes from the report being labeled, so on `--split dev` this is a
leave-one-report-out estimate. `vote` = rules + the exemplars' kNN vote (threshold
calibrated on the examples); `llm` (needs `--model`) = rules + the model's
log-probability choice between positive / negative with the exemplars in the prompt
(threshold `--llm-threshold`, chosen on dev: the dev run prints the best one), on the
first `--adj-n` reports, with rules and the vote on the same reports beside it.

Presence gold: NegBio's `openi_gld_std14.csv`. Location gold: derived here from IU's MeSH
annotations that carry a side (e.g. `Pleural Effusion/left`), for gold-positive lesions
only; positives whose MeSH terms name no side are not scored for location.

Text = `FINDINGS: …\\n\\nIMPRESSION: …` (reports with neither are excluded). `--split dev`
(default) uses the uids NOT in `openi-testset.txt`; tune only on those. `--split test` is
the held-out list. Data paths are arguments; nothing is copied.

    python benchmarks/label_quality.py --gold-dir DATA/iu-xray --split dev --n 0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.table import Table

from cxrctx.cli.evallabels import report_table
from cxrctx.labeling import EvalReport, evaluate_labels, keyword_labels, load_gold
from cxrctx.labeling.rules import label_documents_rules
from cxrctx.vocab import LESIONS, lexicon

#: IU MeSH heading → lesion (the headings NegBio's 14-label gold looks up).
MESH_LESION: dict[str, str] = {
    "Cardiomegaly": "cardiomegaly",
    "Emphysema": "emphysema",
    "Pulmonary Emphysema": "emphysema",
    "Pleural Effusion": "pleural effusion",
    "Hernia, Hiatal": "hernia",
    "Nodule": "nodule",
    "Pneumothorax": "pneumothorax",
    "Pulmonary Atelectasis": "atelectasis",
    "Thickening": "pleural thickening",
    "Mass": "mass",
    "Pulmonary Edema": "edema",
    "Consolidation": "consolidation",
    "Infiltrate": "infiltration",
    "Pulmonary Fibrosis": "fibrosis",
    "Pneumonia": "pneumonia",
}
SIDES = ("left", "right", "bilateral")


def _test_uids(gold_dir: Path) -> set[str]:
    text = (gold_dir / "openi-testset.txt").read_text()
    return {t.strip().removeprefix("CXR") for t in text.split() if t.strip()}


def load_iu(gold_dir: Path, split: str, n: int, skip: int, seed: int) -> tuple[pl.DataFrame, dict]:
    """Reports of the split (id, text) in seed order, and uid → MeSH string."""
    test = _test_uids(gold_dir)
    rows, mesh = [], {}
    with open(gold_dir / "indiana_reports.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if (split == "test") != (r["uid"] in test):
                continue
            parts = [
                f"{k.upper()}: {r[k].strip()}"
                for k in ("findings", "impression")
                if (r[k] or "").strip()
            ]
            if parts:
                rows.append((r["uid"], "\n\n".join(parts)))
                mesh[r["uid"]] = r["MeSH"] or ""
    rows.sort(key=lambda x: int(x[0]))
    random.Random(seed).shuffle(rows)
    rows = rows[skip : skip + n] if n > 0 else rows[skip:]
    docs = pl.DataFrame(
        {"id": [r[0] for r in rows], "text": [r[1] for r in rows]},
        schema={"id": pl.String, "text": pl.String},
    )
    return docs, mesh


def mesh_locations(mesh: dict[str, str]) -> pl.DataFrame:
    """(id, lesion, location) from MeSH terms with a side qualifier (left+right → bilateral)."""
    rows = []
    for uid, m in mesh.items():
        sides: dict[str, set[str]] = {}
        for term in m.split(";"):
            head, *quals = (p.strip() for p in term.split("/"))
            lesion = MESH_LESION.get(head)
            if lesion:
                sides.setdefault(lesion, set()).update(q for q in quals if q in SIDES)
        for lesion, s in sides.items():
            if s:
                loc = "bilateral" if "bilateral" in s or {"left", "right"} <= s else next(iter(s))
                rows.append({"id": uid, "lesion": lesion, "location": loc})
    return pl.DataFrame(rows, schema={"id": pl.String, "lesion": pl.String, "location": pl.String})


def gold_frame(gold_dir: Path, docs: pl.DataFrame, mesh: dict[str, str]) -> pl.DataFrame:
    gold, _ = load_gold(gold_dir / "openi_gld_std14.csv")
    gold = gold.filter(pl.col("id").is_in(docs["id"].to_list()))
    locs = mesh_locations({k: v for k, v in mesh.items() if k in set(docs["id"].to_list())})
    return gold.join(locs, on=["id", "lesion"], how="left").with_columns(
        pl.when(pl.col("status") == "positive").then(pl.col("location")).alias("location")
    )


def timed(fn, docs: pl.DataFrame, repeat: int) -> tuple[pl.DataFrame, float]:
    """Labels and the best wall time of `repeat` runs (the machine is shared: best of N)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn(docs)
        best = min(best, time.perf_counter() - t0)
    return out, best


def llm_labels(args, docs: pl.DataFrame, mode: str = "llm") -> tuple[pl.DataFrame, float, dict]:
    """Labels of the LLM path (`mode` llm) or the hybrid (cot / short), wall seconds of the
    whole call (rules included) and the per-path counts (LLM calls, output tokens, ...)."""
    from cxrctx.labeling import label_documents, label_documents_hybrid
    from cxrctx.llm import Sampling, get_engine

    engine = get_engine("llamacpp", args.model, n_threads=args.threads, n_ctx=4096)
    cache = args.cache_dir / mode if args.cache_dir else None
    t0 = time.perf_counter()
    try:
        if mode == "llm":
            res = label_documents(docs, engine, sampling=Sampling(max_tokens=384), cache_dir=cache)
        else:
            res = label_documents_hybrid(
                docs,
                engine,
                mode=mode,
                sampling=Sampling(max_tokens=384),
                cache_dir=cache,
                prompt=args.hybrid_prompt,
            )
    finally:
        engine.close()
    wall = time.perf_counter() - t0
    keys = (
        "llm_called",
        "engine_requests",
        "completion_tokens",
        "failed",
        "cached",
        "rules",
        "llm",
        "not_mentioned",
        "llm_changed",
    )
    info = {k: int(res.counts.get(k, 0)) for k in keys}
    return res.labels, wall, info


def dev_examples(gold_dir: Path, path: Path) -> Path:
    """The IU development reports with their gold as an examples file (id, text, lesions)."""
    docs, mesh = load_iu(gold_dir, "dev", 0, 0, 0)
    gold = gold_frame(gold_dir, docs, mesh)
    wide = gold.pivot(on="lesion", index="id", values="status")
    docs.join(wide, on="id").write_parquet(path)
    return path


def adjudicated(args, docs: pl.DataFrame, rules: pl.DataFrame, index, how: str, threshold: float):
    """Rules labels with the ambiguous mentions decided by `how` (vote / llm): labels,
    seconds (rules + adjudication), counts, and the decisions' P(positive) per mention."""
    from cxrctx.labeling.adjudicate import adjudicate, apply_decisions

    engine = None
    if how == "llm":
        from cxrctx.llm import get_engine

        engine = get_engine("llamacpp", args.model, n_threads=args.threads, n_ctx=4096)
    t0 = time.perf_counter()
    try:
        cache = args.cache_dir / f"adjudicate-{how}" if args.cache_dir else None
        adj = adjudicate(docs, index, adjudicator=how, engine=engine, cache_dir=cache)
    finally:
        if engine is not None:
            engine.close()
    secs = time.perf_counter() - t0
    probs = {k: d.p_positive for k, d in adj.decisions.items()}
    return apply_decisions(rules, adj, threshold), secs, adj.counts, probs


def run_adjudication(args, con: Console, docs, gold, rules, rules_s, reps, llm_info) -> None:
    """The exemplar vote and the exemplar-guided LLM choice beside the rules, same reports."""
    import tempfile

    from cxrctx.labeling.adjudicate import calibrate_vote
    from cxrctx.labeling.exemplars import ExemplarIndex, calibrate, read_examples

    hows = [h for h in args.adjudicate.split(",") if h]
    with tempfile.TemporaryDirectory() as tmp:
        ex_path = dev_examples(args.gold_dir, Path(tmp) / "examples.parquet")
        t0 = time.perf_counter()
        index = ExemplarIndex.from_examples(ex_path, k=args.k)
        build_s = time.perf_counter() - t0
        t_vote, curve = calibrate_vote(index, read_examples(ex_path))
    con.print(
        f"exemplar index: {index.size()} ambiguous mentions of the dev reports, k={args.k}, "
        f"built in {build_s:.1f} s; vote threshold {t_vote} (examples LOO micro-F1 {curve[t_vote]:.4f})"
    )
    sub = docs.head(args.adj_n) if args.adj_n else docs
    ids = sub["id"].to_list()
    g_sub = gold.filter(pl.col("id").is_in(ids))
    r_sub = rules.filter(pl.col("id").is_in(ids))
    n = sub.height
    if n < docs.height:
        reps[f"rules, same {n}"] = (score(args, r_sub, g_sub), rules_s * n / docs.height, n)
    for how in hows:
        thr = t_vote if how == "vote" else args.llm_threshold
        labels, secs, counts, probs = adjudicated(args, sub, r_sub, index, how, thr)
        secs += rules_s * n / docs.height  # the rules reading comes first
        name = f"rules + exemplar {how}, {n}"
        reps[name] = (score(args, labels, g_sub), secs, n)
        best, curve = calibrate(r_sub, g_sub, probs)
        llm_info[name] = {
            "n": n,
            "seconds": secs,
            "s_per_report": secs / n,
            "threshold": thr,
            "best_threshold_on_these": best,
            "f1_by_threshold": curve,
            "output_tokens_per_report": counts["adjudication_completion_tokens"] / n,
            **counts,
        }
        con.print(
            f"{name}: {json.dumps({k: v for k, v in llm_info[name].items() if k != 'f1_by_threshold'})}"
        )
        save_json(args, docs, reps, llm_info)


def location_errors(labels: pl.DataFrame, gold: pl.DataFrame) -> dict:
    """Where the location errors are: of the rows positive in both with a gold side, the
    wrong ones by the rules' clarity (an adjudicator only sees the ambiguous ones) and by
    (predicted, gold) location; the ceiling of deciding the side of ambiguous rows."""
    g = gold.select("id", "lesion", pl.col("status").alias("gs"), pl.col("location").alias("gl"))
    j = labels.join(g, on=["id", "lesion"]).filter(
        (pl.col("gs") == "positive") & pl.col("gl").is_not_null() & (pl.col("status") == "positive")
    )
    bad = j.filter(pl.col("location") != pl.col("gl"))
    amb = bad.filter(pl.col("clarity") == "ambiguous").height
    pairs = bad.group_by("location", "gl").len().sort("len", descending=True)
    differ = pl.col("rationale").str.contains("sides_differ")  # the rules' side is a guess
    return {
        "scored": j.height,
        "wrong": bad.height,
        "wrong_ambiguous": amb,
        "sides_differ_scored": j.filter(differ).height,
        "sides_differ_wrong": bad.filter(differ).height,
        "wrong_by_pair": {f"{a} -> gold {b}": n for a, b, n in pairs.iter_rows()},
        "accuracy": 1 - bad.height / max(1, j.height),
        "ceiling_fixing_ambiguous": 1 - (bad.height - amb) / max(1, j.height),
    }


def score(args, labels: pl.DataFrame, g: pl.DataFrame) -> EvalReport:
    return evaluate_labels(
        labels.select("id", "lesion", "status", "location"),
        g,
        lesions=LESIONS,
        gold_kind="iu_negbio+mesh_sides",
        n_boot=args.bootstrap,
    )


def ci(rep: EvalReport, key: str) -> str:
    v = getattr(rep, key)
    if v is None:
        return "undefined"
    iv = rep.ci.overall.get(key) if rep.ci else None
    if iv is None or iv.low is None:
        return f"{v:.3f}"
    return f"{v:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def summary_table(reps: dict[str, tuple[EvalReport, float, int]], title: str) -> Table:
    t = Table(title=title)
    for c in (
        "labeler",
        "n",
        "micro P",
        "micro R",
        "micro F1 [95% CI]",
        "macro F1 [95% CI]",
        "location acc [95% CI] (n)",
        "s/report",
        "reports/s",
    ):
        t.add_column(c, justify="left" if c == "labeler" else "right")
    for name, (rep, secs, n) in reps.items():
        loc_n = sum(s.location_n for s in rep.lesions)
        t.add_row(
            name,
            str(n),
            f"{rep.micro_precision or 0:.3f}",
            f"{rep.micro_recall or 0:.3f}",
            ci(rep, "micro_f1"),
            ci(rep, "macro_f1"),
            f"{ci(rep, 'location_accuracy')} ({loc_n})",
            f"{secs / n:.2e}",
            f"{n / secs:,.0f}",
        )
    return t


def lesion_table(reps: dict[str, tuple[EvalReport, float, int]]) -> Table:
    t = Table(title="per-lesion P / R / F1 (support)")
    t.add_column("lesion")
    t.add_column("support", justify="right")
    for name in reps:
        t.add_column(name, justify="right")
    first = next(iter(reps.values()))[0]
    for i, s in enumerate(first.lesions):
        cells = []
        for rep, _, _ in reps.values():
            x = rep.lesions[i]
            cells.append(
                " / ".join("—" if v is None else f"{v:.2f}" for v in (x.precision, x.recall, x.f1))
            )
        t.add_row(s.lesion, str(s.support), *cells)
    return t


def show_errors(
    con: Console,
    labels: pl.DataFrame,
    gold: pl.DataFrame,
    docs: pl.DataFrame,
    n: int,
    lesion: str | None,
) -> None:
    j = labels.join(
        gold.select(
            "id", "lesion", pl.col("status").alias("gold"), pl.col("location").alias("gloc")
        ),
        on=["id", "lesion"],
    )
    bad = j.filter(
        (pl.col("status") != pl.col("gold"))
        | (
            (pl.col("gold") == "positive")
            & pl.col("gloc").is_not_null()
            & (pl.col("gloc") != pl.col("location"))
        )
    )
    if lesion:
        bad = bad.filter(pl.col("lesion") == lesion)
    texts = dict(zip(docs["id"], docs["text"], strict=True))
    for r in bad.head(n).iter_rows(named=True):
        con.print(
            f"[bold]{r['id']} {r['lesion']}[/] pred={r['status']}/{r['location']} gold={r['gold']}/{r['gloc']} :: {r['rationale']}\n  {texts[r['id']][:500]!r}",
            highlight=False,
            markup=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--gold-dir",
        type=Path,
        required=True,
        help="folder with indiana_reports.csv, openi_gld_std14.csv, openi-testset.txt",
    )
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--n", type=int, default=0, help="reports (0 = all of the split)")
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95 %% CIs"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timing: best of this many runs")
    ap.add_argument("--model", default=None, help="GGUF path: also run the model (llamacpp)")
    ap.add_argument(
        "--modes", default="cot", help="with --model: comma list of cot, short (hybrid), llm"
    )
    ap.add_argument("--hybrid-prompt", default=None, help="hybrid prompt version or file")
    ap.add_argument("--llm-n", type=int, default=40, help="--mode llm on the first N reports only")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--adjudicate", default="", help="comma list of vote, llm (needs --model)")
    ap.add_argument("--k", type=int, default=5, help="exemplars per ambiguous mention")
    ap.add_argument("--adj-n", type=int, default=0, help="adjudication on the first N reports")
    ap.add_argument("--llm-threshold", type=float, default=0.5, help="P(positive) threshold")
    ap.add_argument(
        "--errors", type=int, default=0, help="print up to N rules disagreements (dev split only)"
    )
    ap.add_argument("--errors-lesion", default=None)
    args = ap.parse_args(argv)
    con = Console()
    docs, mesh = load_iu(args.gold_dir, args.split, args.n, args.skip, args.seed)
    gold = gold_frame(args.gold_dir, docs, mesh)
    label_documents_rules(docs.head(5))  # compile the lexicon outside the timing
    rules, rules_s = timed(lambda d: label_documents_rules(d).labels, docs, args.repeat)
    kw, kw_s = timed(keyword_labels, docs, args.repeat)

    reps = {
        "rules (cxrctx)": (score(args, rules, gold), rules_s, docs.height),
        "regex baseline (keyword_labels)": (score(args, kw, gold), kw_s, docs.height),
    }
    llm_info: dict[str, dict] = {"rules location errors": location_errors(rules, gold)}
    con.print(f"rules location errors: {json.dumps(llm_info['rules location errors'])}")
    if args.adjudicate:
        run_adjudication(args, con, docs, gold, rules, rules_s, reps, llm_info)
    for mode in (
        [m for m in args.modes.split(",") if m] if args.model and not args.adjudicate else []
    ):
        sub = docs.head(args.llm_n) if mode == "llm" else docs
        ids = sub["id"].to_list()
        g_sub = gold.filter(pl.col("id").is_in(ids))
        ll, ll_s, info = llm_labels(args, sub, mode)
        name = f"{'hybrid ' + mode if mode != 'llm' else 'llm (all candidates)'}, {sub.height}"
        reps[name] = (score(args, ll, g_sub), ll_s, sub.height)
        if sub.height < docs.height:
            reps[f"rules, same {sub.height}"] = (
                score(args, rules.filter(pl.col("id").is_in(ids)), g_sub),
                rules_s * sub.height / docs.height,
                sub.height,
            )
        n = max(1, sub.height)
        llm_info[name] = {
            "n": sub.height,
            "seconds": ll_s,
            "s_per_report": ll_s / n,
            "llm_calls_per_report": info["engine_requests"] / n,
            "output_tokens_per_report": info["completion_tokens"] / n,
            **info,
        }
        con.print(f"{name}: {json.dumps(llm_info[name])}")
        save_json(args, docs, reps, llm_info)
        if args.errors and args.split == "dev":
            show_errors(con, ll.filter(pl.col("source") == "llm"), gold, docs, args.errors, None)
    con.print(
        summary_table(
            reps,
            f"IU {args.split} split, {docs.height} reports (seed {args.seed}, skip {args.skip}); lexicon sha256 {lexicon().sha256[:12]}",
        )
    )
    con.print(lesion_table(reps))
    con.print(report_table(reps["rules (cxrctx)"][0], title="rules: eval-labels view"))
    if args.errors and args.split == "dev":
        show_errors(
            con, label_documents_rules(docs).labels, gold, docs, args.errors, args.errors_lesion
        )
    save_json(args, docs, reps, llm_info)
    return 0


def save_json(args, docs: pl.DataFrame, reps: dict, llm_info: dict) -> None:
    """Write the figures so far (called after each model mode, so a long run keeps them)."""
    if not args.json:
        return
    out = {
        "split": args.split,
        "n": docs.height,
        "seed": args.seed,
        "skip": args.skip,
        "lexicon_sha256": lexicon().sha256,
        "llm": llm_info,
        "model": args.model,
        "threads": args.threads,
        "load_avg": os.getloadavg(),
        "hybrid_prompt": args.hybrid_prompt,
        "labelers": {
            k: {"s_per_report": s / n, "report": r.model_dump(mode="json")}
            for k, (r, s, n) in reps.items()
        },
    }
    args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
