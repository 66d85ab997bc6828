"""Label quality on real IU chest X-ray reports against NegBio's 14-label gold.

Labels the reports whose uid is NOT in `openi-testset.txt` (the dev split; `--split test`
for the held-out 770 once the prompt is frozen), findings + impression, with a GGUF model
through the llamacpp engine, and scores them with `evaluate_labels`. In the same run, a
naive zero-shot 14-field JSON prompt labels the first `--baseline-n` of the same reports
with the same model, for the ratio. Data paths are arguments; nothing is copied.

    python benchmarks/label_quality.py --gold-dir DATA/iu-xray --model MODEL.gguf --n 200
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import polars as pl
from rich.console import Console

from cxrctx.labeling import LabelResult, evaluate_labels, label_documents, load_gold
from cxrctx.labeling.evaluate import report_table
from cxrctx.llm import ChatRequest, Completion, Sampling, extract_json, get_engine
from cxrctx.llm.fake import FakeEngine
from cxrctx.vocab import LESIONS

NAIVE_SYSTEM = (
    "You are a radiologist. Read the chest X-ray report and, for each of these 14 lesions, say whether "
    "it is present (positive) or absent (negative) and its location (left, right, bilateral, not mentioned): "
    + ", ".join(LESIONS)
    + '. Answer with JSON only: an object with all 14 lesion names as keys, each {"status": ..., "location": ...}.'
)


def naive_schema() -> dict:
    entry = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["positive", "negative"]},
            "location": {"type": "string", "enum": ["left", "right", "bilateral", "not mentioned"]},
        },
        "required": ["status", "location"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {n: entry for n in LESIONS},
        "required": list(LESIONS),
        "additionalProperties": False,
    }


def load_iu(gold_dir: Path, split: str, n: int, skip: int, seed: int) -> pl.DataFrame:
    test = {
        line.strip().removeprefix("CXR")
        for line in (gold_dir / "openi-testset.txt").read_text().split()
        if line.strip()
    }
    rows = []
    with open(gold_dir / "indiana_reports.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            in_test = r["uid"] in test
            if (split == "test") != in_test:
                continue
            parts = [
                f"{k.upper()}: {r[k].strip()}"
                for k in ("findings", "impression")
                if (r[k] or "").strip()
            ]
            if parts:
                rows.append((r["uid"], "\n\n".join(parts)))
    rows.sort(key=lambda x: int(x[0]))
    random.Random(seed).shuffle(rows)
    rows = rows[skip : skip + n] if n > 0 else rows[skip:]
    return pl.DataFrame(
        {"id": [r[0] for r in rows], "text": [r[1] for r in rows]},
        schema={"id": pl.String, "text": pl.String},
    )


def naive_labels(engine, docs: pl.DataFrame, sampling: Sampling) -> tuple[pl.DataFrame, float, int]:
    schema = naive_schema()
    rows, fails = [], 0
    t0 = time.perf_counter()
    for doc_id, text in zip(docs["id"], docs["text"], strict=True):
        req = ChatRequest(
            messages=[
                {"role": "system", "content": NAIVE_SYSTEM},
                {"role": "user", "content": text},
            ],
            json_schema=schema,
        )
        c = engine.complete([req], sampling)[0]
        try:
            ans = extract_json(c.text)
        except ValueError:
            fails += 1
            continue
        for lesion in LESIONS:
            e = ans.get(lesion) or {}
            rows.append(
                {
                    "id": doc_id,
                    "lesion": lesion,
                    "status": e.get("status", "negative"),
                    "location": e.get("location", "not mentioned"),
                }
            )
    return (
        pl.DataFrame(
            rows,
            schema={
                "id": pl.String,
                "lesion": pl.String,
                "status": pl.String,
                "location": pl.String,
            },
        ),
        time.perf_counter() - t0,
        fails,
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
    ap.add_argument("--model", required=True, help="GGUF path (llamacpp)")
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--n", type=int, default=200, help="reports to label (0 = all of the split)")
    ap.add_argument(
        "--skip",
        type=int,
        default=0,
        help="skip this many of the shuffled reports (keep dev iterations apart)",
    )
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument(
        "--baseline-n",
        type=int,
        default=0,
        help="also run the naive 14-field prompt on the first N",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--prompt", default=None, help="prompt version or file")
    ap.add_argument(
        "--cache-dir", type=Path, default=None, help="result cache (omit for a cold measurement)"
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--chunk", type=int, default=8, help="reports per label_documents call")
    ap.add_argument(
        "--only-cached",
        action="store_true",
        help="score only the reports already in --cache-dir (e.g. after an interrupted run); calls no model",
    )
    ap.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="stop after this many seconds (report the n done)",
    )
    ap.add_argument(
        "--errors", type=int, default=0, help="print up to N disagreements (dev split only)"
    )
    args = ap.parse_args(argv)
    con = Console()

    docs = load_iu(args.gold_dir, args.split, args.n, args.skip, args.seed)
    gold, kind = load_gold(args.gold_dir / "openi_gld_std14.csv")
    gold = gold.filter(pl.col("id").is_in(docs["id"].to_list()))
    if args.only_cached:
        import shutil
        import tempfile

        if args.cache_dir is None:
            sys.exit("--only-cached needs --cache-dir")
        tmp_cache = (
            Path(tempfile.mkdtemp()) / "cache"
        )  # misses must not be written into the real cache
        shutil.copytree(args.cache_dir, tmp_cache)
        args.cache_dir = tmp_cache
        # same backend/model identity as the real run, so the cache keys match; any call is a miss
        engine = FakeEngine(
            args.model, responder=lambda r: Completion("", "error", error="not cached")
        )
        engine.backend = "llamacpp"
    else:
        engine = get_engine("llamacpp", args.model, n_threads=args.threads, n_ctx=4096)
    sampling = Sampling(max_tokens=args.max_tokens)
    naive = None
    if args.baseline_n:  # first, so a --time-budget cut never drops the baseline
        sub = docs.head(args.baseline_n)
        nl, nwall, nfail = naive_labels(engine, sub, sampling)
        naive = (sub, nl, nwall, nfail)
        print(f"naive baseline: {sub.height} reports in {nwall:.0f}s", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    # chunks, so a --time-budget run stops cleanly and reports the n it actually labeled
    parts, done = [], 0
    for start in range(0, docs.height, args.chunk):
        chunk = docs.slice(start, args.chunk)
        part = label_documents(
            chunk, engine, sampling=sampling, cache_dir=args.cache_dir, prompt=args.prompt
        )
        if args.only_cached and part.counts["cached"] < part.counts["llm_called"]:
            break
        parts.append(part)
        done += chunk.height
        el = time.perf_counter() - t0
        print(
            f"[{el:7.0f}s] {done}/{docs.height} reports, {el / done:.1f} s/report",
            file=sys.stderr,
            flush=True,
        )
        if args.time_budget and el > args.time_budget:
            break
    wall = time.perf_counter() - t0
    docs = docs.head(done)
    gold = gold.filter(pl.col("id").is_in(docs["id"].to_list()))
    res = LabelResult(
        labels=pl.concat([r.labels for r in parts]),
        documents=pl.concat([r.documents for r in parts]),
        failures=pl.concat([r.failures for r in parts]),
        counts={k: sum(r.counts[k] for r in parts) for k in parts[0].counts},
        provenance=parts[0].provenance,
    )
    rep = evaluate_labels(res.labels, gold, gold_kind=kind)
    con.print(
        report_table(
            rep, title=f"cxrctx label-lesions vs IU NegBio gold — {args.split}, n={docs.height}"
        )
    )
    out_tok = int(res.documents["completion_tokens"].sum())
    summary = {
        "split": args.split, "n": docs.height, "skip": args.skip, "seed": args.seed, "model": Path(args.model).name,
        "counts": res.counts, "wall_s": round(wall, 1), "s_per_report": round(wall / max(1, docs.height), 2),
        "output_tokens": out_tok, "micro_f1": rep.micro_f1, "macro_f1": rep.macro_f1,
        "micro_precision": rep.micro_precision, "micro_recall": rep.micro_recall,
    }  # fmt: skip
    if naive is not None:
        sub, nl, nwall, nfail = naive
        sub = sub.filter(pl.col("id").is_in(docs["id"].to_list()))
        g_sub = gold.filter(pl.col("id").is_in(sub["id"].to_list()))
        nrep = evaluate_labels(
            nl.filter(pl.col("id").is_in(sub["id"].to_list())), g_sub, gold_kind=kind
        )
        orep = evaluate_labels(
            res.labels.filter(pl.col("id").is_in(sub["id"].to_list())), g_sub, gold_kind=kind
        )
        con.print(
            report_table(nrep, title=f"naive zero-shot 14-field JSON — same model, n={sub.height}")
        )
        osec = float(
            res.documents.filter(pl.col("id").is_in(sub["id"].to_list()))["latency_s"].sum()
        )
        summary["baseline"] = {
            "n": sub.height, "failures": nfail, "s_per_report": round(nwall / max(1, args.baseline_n), 2),
            "micro_f1": nrep.micro_f1, "macro_f1": nrep.macro_f1, "ours_micro_f1_same_docs": orep.micro_f1,
            "ours_macro_f1_same_docs": orep.macro_f1, "ours_engine_s_per_report_same_docs": round(osec / max(1, sub.height), 2),
        }  # fmt: skip
    engine.close()
    if args.errors and args.split == "dev":
        j = res.labels.join(gold.rename({"status": "gold"}), on=["id", "lesion"]).filter(
            pl.col("status") != pl.col("gold")
        )
        texts = dict(zip(docs["id"], docs["text"], strict=True))
        for r in j.head(args.errors).iter_rows(named=True):
            con.print(
                f"[bold]{r['id']} {r['lesion']}[/] pred={r['status']} gold={r['gold']} :: {r['rationale']}\n  {texts[r['id']][:400]}",
                highlight=False,
            )
    con.print_json(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
