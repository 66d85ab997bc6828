"""structure-reports on real text: the rules vs an LLM rewriting their draft vs an LLM
structuring from scratch, on the same IU X-ray development reports (not a test).

Reports: IU uids NOT in openi-testset.txt (the test set stays held out). Measured per
mode, same check for all (support, coverage, numbers, sides, negation, lesion labels and
organ placement):

- pass rate: reports whose own answer passed (for `rewrite`, without falling back);
- wrong_organ rate: reports whose final answer put a bullet under another organ;
- bullets per report (FINDINGS bullets of the written report; impression items apart);
- seconds and output tokens per report.

Modes:
- `rules`: the embedded default, no model, on ALL development reports with text (and on
  the LLM sample) — plus, in the same run, the old no-model keyword router (first
  keyword wins, every sentence verbatim) as the trivial baseline;
- `rewrite`: the model rewrites the rules' draft (prompt v2; a failing rewrite falls back
  to the draft: counted, never written as the model's);
- `scratch`: the model structures the report itself (prompt v1).

Each model mode appends one JSON line per report to OUT/<mode>.jsonl (cache in
OUT/cache-<mode>), so modes can run in parallel processes and a cut-short run still
counts; `--table` prints the table over the reports every listed mode finished.

    python benchmarks/structure_quality.py --iu DATA/iu-xray --out /tmp/sq --modes rules
    python benchmarks/structure_quality.py --iu DATA/iu-xray --out /tmp/sq --modes rewrite \
        --model MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --n 20 --threads 1 &
    python benchmarks/structure_quality.py --iu DATA/iu-xray --out /tmp/sq --modes scratch \
        --model MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --n 20 --threads 1 &
    python benchmarks/structure_quality.py --iu DATA/iu-xray --out /tmp/sq --table
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import polars as pl
from scipy import stats

from cxrctx.llm.base import Sampling
from cxrctx.llm.spec import EngineSpec, make_engine
from cxrctx.structure.check import check_structured, sentences
from cxrctx.structure.run import structure_items, structure_items_rules
from cxrctx.structure.task import StructureItem
from cxrctx.vocab import SRRG_ORGAN_KEYS, SRRG_ORGANS

ROUTES = (  # (organ, keywords) — the baseline's router, first match wins
    ("Tubes, Catheters, and Support Devices", r"\b(?:tube|catheter|line|pacemaker|wire|clip|port|stent|device|sternotomy)s?\b"),
    ("Pleura", r"pleura|effusion|pneumothorax|costophrenic"),
    ("Cardiovascular", r"heart|cardi|aort|vascular|pericard"),
    ("Hila and Mediastinum", r"hil|mediastin|trachea"),
    ("Musculoskeletal and Chest Wall", r"bone|osseous|\bribs?\b|spine|spondyl|degenerative|fracture|soft tissue"),
    ("Abdominal", r"abdom|diaphragm|bowel|gas|subdiaphragmatic|hernia"),
    ("Lungs and Airways", r"lung|pulmonary|airspace|opacit|consolidation|atelectasis|nodule|pneumonia|edema|granuloma"),
)  # fmt: skip
PROMPTS = {"rewrite": 2, "scratch": 1}


def dev_reports(iu: Path, *, both: bool) -> list[StructureItem]:
    """IU development reports in uid order: with `both`, those with FINDINGS and
    IMPRESSION (the LLM sample is drawn from these), else those with either."""
    test = {ln.strip().removeprefix("CXR") for ln in (iu / "openi-testset.txt").read_text().split()}
    df = pl.read_csv(iu / "indiana_reports.csv", infer_schema_length=0).filter(
        ~pl.col("uid").is_in(list(test))
    )
    f, i = pl.col("findings").str.strip_chars(), pl.col("impression").str.strip_chars()
    has_f, has_i = f.is_not_null() & (f != ""), i.is_not_null() & (i != "")
    df = df.filter((has_f & has_i) if both else (has_f | has_i))
    df = df.with_columns(pl.col("uid").cast(pl.Int64)).sort("uid")
    return [
        StructureItem(str(u), (fi or "").strip(), (im or "").strip())
        for u, fi, im in df.select("uid", "findings", "impression").iter_rows()
    ]


# ---------------------------------------------------------------------------- statistics


def rate(k: int, n: int) -> dict:
    """k/n with its Wilson 95 % interval."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None}
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    return {"k": k, "n": n, "rate": k / n, "ci95": [ci.low, ci.high]}


def mean(values: list[float]) -> dict:
    """Mean with a bootstrap 95 % interval (percentile, 2000 resamples, seed 0)."""
    if not values:
        return {"mean": None, "n": 0}
    if len(set(values)) == 1:
        return {"mean": values[0], "n": len(values), "ci95": [values[0], values[0]]}
    ci = stats.bootstrap((values,), lambda x, axis: x.mean(axis=axis), n_resamples=2000,
                         method="percentile", random_state=0).confidence_interval  # fmt: skip
    return {"mean": sum(values) / len(values), "n": len(values), "ci95": [ci.low, ci.high]}


# ---------------------------------------------------------------------------- modes


def _n_findings_bullets(row: dict) -> int:
    return sum(len(row[SRRG_ORGAN_KEYS[o]] or []) for o in SRRG_ORGANS)


def run_rules(items: list[StructureItem]) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    res = structure_items_rules(items)
    dt = time.perf_counter() - t0
    st = res.frames["structured"]
    per = [{"uid": r["id"], "passed": True, "wrong_organ": False, "bullets": _n_findings_bullets(r),
            "items": len(r["impression_items"]), "tokens": 0} for r in st.iter_rows(named=True)]  # fmt: skip
    per += [{"uid": r["id"], "passed": False, "wrong_organ": "wrong_organ" in r["reason"],
             "bullets": 0, "items": 0, "tokens": 0} for r in res.frames["failures"].iter_rows(named=True)]  # fmt: skip
    return {"reports": len(items), "seconds": dt, "failed_by_reason": res.reasons}, per


def keyword_router(items: list[StructureItem]) -> dict:
    """The trivial baseline: every sentence verbatim under its first keyword's organ."""
    t0 = time.perf_counter()
    passed = wrong = 0
    for it in items:
        organs: dict[str, list[str]] = {o: [] for o in SRRG_ORGANS}
        for s in sentences(it.findings):
            organ = next((o for o, pat in ROUTES if re.search(pat, s.lower())), "Other")
            organs[organ].append(s)
        res = check_structured(it.findings, it.impression, [b for bs in organs.values() for b in bs],
                               sentences(it.impression), organs=organs)  # fmt: skip
        passed += res.passed
        wrong += "wrong_organ" in res.codes
    dt = time.perf_counter() - t0
    return {"pass": rate(passed, len(items)), "wrong_organ": rate(wrong, len(items)),
            "seconds_per_report": dt / max(1, len(items))}  # fmt: skip


def _final_reason(reason: str | None) -> str:
    """The last attempt's part of a reason ('... (after repair; first: ...)')."""
    return (reason or "").split("(after repair; first:", 1)[0]


def run_model(mode: str, items: list[StructureItem], args: argparse.Namespace) -> None:
    """One report per call, one JSON line per report in OUT/<mode>.jsonl (done ones skipped)."""
    path = args.out / f"{mode}.jsonl"
    done = (
        {json.loads(ln)["uid"] for ln in path.read_text().splitlines()} if path.exists() else set()
    )
    spec = EngineSpec(backend="llamacpp", model=args.model, threads=args.threads,
                      options={"n_ctx": args.n_ctx})  # fmt: skip
    engine = make_engine(spec)
    try:
        for k, item in enumerate(items, 1):
            if item.id in done:
                continue
            t0 = time.perf_counter()
            res = structure_items([item], engine, sampling=Sampling(max_tokens=args.max_tokens),
                                  cache_dir=args.out / f"cache-{mode}", batch_size=1,
                                  prompt=PROMPTS[mode])  # fmt: skip
            rec = _record(mode, item, res, time.perf_counter() - t0)
            with path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"{mode} {k}/{len(items)} uid {item.id}: {rec['outcome']} {rec['seconds']:.0f}s",
                  flush=True)  # fmt: skip
    finally:
        engine.close()


def _record(mode: str, item: StructureItem, res, seconds: float) -> dict:
    c = res.counts
    st, fails = res.frames["structured"], res.frames["failures"]
    row = st.row(0, named=True) if st.height else None
    by_model = row is not None and row["structured_by"] == "model"
    reason = row["fallback_reason"] if row is not None else fails.row(0, named=True)["reason"]
    outcome = ("passed_first_time" if c["passed_first_time"] else "passed_after_repair"
               if c["passed_after_repair"] else "fallback" if row is not None else "failed")  # fmt: skip
    return {
        "uid": item.id, "mode": mode, "outcome": outcome, "passed": by_model,
        "wrong_organ": (not by_model) and "wrong_organ" in _final_reason(reason),
        "reason": None if by_model else reason,
        "bullets": _n_findings_bullets(row) if row else 0,
        "model_bullets": _n_findings_bullets(row) if by_model else None,
        "items": len(row["impression_items"]) if row else 0,
        "tokens": c["completion_tokens"], "prompt_tokens": c["prompt_tokens"],
        "requests": c["engine_requests"], "seconds": seconds,
        "report": row["structured_report"] if row else None,
    }  # fmt: skip


# ---------------------------------------------------------------------------- table


def summarize(per: list[dict], seconds: list[float] | None = None) -> dict:
    n = len(per)
    out = {
        "reports": n,
        "pass": rate(sum(p["passed"] for p in per), n),
        "wrong_organ": rate(sum(p["wrong_organ"] for p in per), n),
        "bullets_per_report": mean([float(p["bullets"]) for p in per]),
        "output_tokens_per_report": mean([float(p["tokens"]) for p in per]),
    }
    if seconds is not None:
        out["seconds_per_report"] = mean(seconds)
    mb = [float(p["model_bullets"]) for p in per if p.get("model_bullets") is not None]
    if mb:
        out["bullets_per_passing_model_report"] = mean(mb)
    outcomes: dict[str, int] = {}
    for p in per:
        outcomes[p.get("outcome", "passed" if p["passed"] else "failed")] = (
            outcomes.get(p.get("outcome", "passed" if p["passed"] else "failed"), 0) + 1
        )
    out["outcomes"] = outcomes
    return out


def table(args: argparse.Namespace, sample: list[StructureItem]) -> dict:
    model_modes = [m for m in ("rewrite", "scratch") if (args.out / f"{m}.jsonl").exists()]
    recs = {m: {json.loads(ln)["uid"]: json.loads(ln)
                for ln in (args.out / f"{m}.jsonl").read_text().splitlines()} for m in model_modes}  # fmt: skip
    common = [it for it in sample if all(it.id in recs[m] for m in model_modes)]
    t0 = time.perf_counter()
    _, rules_per = run_rules(common)
    rules_s = (time.perf_counter() - t0) / max(1, len(common))
    out = {"common_reports": [it.id for it in common],
           "rules": summarize(rules_per, [rules_s] * len(common))}  # fmt: skip
    for m in model_modes:
        per = [recs[m][it.id] for it in common]
        out[m] = summarize(per, [p["seconds"] for p in per])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--iu", type=Path, required=True, help="IU X-ray folder (CSV + openi-testset.txt)"
    )
    ap.add_argument(
        "--out", type=Path, required=True, help="folder for caches, jsonl and summaries"
    )
    ap.add_argument("--modes", default="rules", help="comma list of rules, rewrite, scratch")
    ap.add_argument("--table", action="store_true", help="print the table of the finished reports")
    ap.add_argument("--model", help="GGUF path (rewrite / scratch)")
    ap.add_argument(
        "--n", type=int, default=20, help="LLM sample: the first N dev reports with both sections"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--max-tokens", type=int, default=512)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sample = dev_reports(args.iu, both=True)[: args.n]
    if args.table:
        result = table(args, sample)
        (args.out / "table.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    for mode in args.modes.split(","):
        if mode == "rules":
            items = dev_reports(args.iu, both=False)
            fig, per = run_rules(items)
            result = {"all_dev": {**summarize(per), **fig,
                                  "reports_per_s": len(items) / fig["seconds"]},
                      "keyword_router_baseline": keyword_router(items)}  # fmt: skip
            (args.out / "rules.json").write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
        else:
            if not args.model:
                ap.error(f"--modes {mode} needs --model")
            run_model(mode, sample, args)


if __name__ == "__main__":
    main()
