"""How often LLM-structured reports pass the faithfulness check (not a test).

On N development reports of the IU X-ray collection (uids not in openi-testset.txt, with
both FINDINGS and IMPRESSION), structure each with a GGUF model through the shared
runner (one repair with the check's reason) and report: share passing first time /
after repair / failing (by reason), seconds per report and output tokens per report.

Baseline in the same run: a no-model keyword router that copies each FINDINGS sentence
verbatim under an organ header (and each IMPRESSION sentence as an item). It passes the
check unless the check rejects verbatim copies, so its pass share measures the check's
false rejections, and its time the check's own cost.

    python benchmarks/structure_quality.py --iu /path/to/iu-xray \
        --model /path/to/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --n 50 --threads 1 \
        --out /tmp/structure_bench/qwen
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import polars as pl

from cxrctx.llm.base import Sampling
from cxrctx.llm.spec import EngineSpec, make_engine
from cxrctx.structure.check import check_structured, sentences
from cxrctx.structure.run import structure_items
from cxrctx.structure.task import StructureItem, reason_code
from cxrctx.vocab import SRRG_ORGANS

ROUTES = (  # (organ, keywords) — the baseline's router, first match wins
    ("Tubes, Catheters, and Support Devices", r"\b(?:tube|catheter|line|pacemaker|wire|clip|port|stent|device|sternotomy)s?\b"),
    ("Pleura", r"pleura|effusion|pneumothorax|costophrenic"),
    ("Cardiovascular", r"heart|cardi|aort|vascular|pericard"),
    ("Hila and Mediastinum", r"hil|mediastin|trachea"),
    ("Musculoskeletal and Chest Wall", r"bone|osseous|\bribs?\b|spine|spondyl|degenerative|fracture|soft tissue"),
    ("Abdominal", r"abdom|diaphragm|bowel|gas|subdiaphragmatic|hernia"),
    ("Lungs and Airways", r"lung|pulmonary|airspace|opacit|consolidation|atelectasis|nodule|pneumonia|edema|granuloma"),
)  # fmt: skip


def dev_reports(iu: Path, n: int) -> list[StructureItem]:
    test = {ln.strip().removeprefix("CXR") for ln in (iu / "openi-testset.txt").read_text().split()}
    df = pl.read_csv(iu / "indiana_reports.csv", infer_schema_length=0)
    df = df.filter(
        ~pl.col("uid").is_in(list(test))
        & pl.col("findings").is_not_null()
        & pl.col("impression").is_not_null()
    )
    return [
        StructureItem(str(u), f.strip(), i.strip())
        for u, f, i in df.head(n).select("uid", "findings", "impression").iter_rows()
    ]


def baseline(items: list[StructureItem]) -> dict:
    """The keyword router's pass share and seconds per report (check included)."""
    t0 = time.perf_counter()
    passed = 0
    for it in items:
        organs: dict[str, list[str]] = {o: [] for o in SRRG_ORGANS}
        for s in sentences(it.findings):
            low = s.lower()
            organ = next((o for o, pat in ROUTES if re.search(pat, low)), "Other")
            organs[organ].append(s)
        bullets = [b for o in SRRG_ORGANS for b in organs[o]]
        passed += check_structured(
            it.findings, it.impression, bullets, sentences(it.impression)
        ).passed
    dt = time.perf_counter() - t0
    return {"reports": len(items), "passed": passed, "seconds_per_report": dt / max(1, len(items))}


def run_model(items: list[StructureItem], args: argparse.Namespace, baseline_fig: dict) -> dict:
    """Structure the reports one at a time, rewriting summary.json after each, so a run
    cut short still reports what it finished."""
    spec = EngineSpec(backend="llamacpp", model=args.model, threads=args.threads,
                      options={"n_ctx": args.n_ctx})  # fmt: skip
    engine = make_engine(spec)
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    structured, failures = [], []
    seconds = 0.0
    summary: dict = {}
    try:
        for k, item in enumerate(items, 1):
            t0 = time.perf_counter()
            res = structure_items([item], engine, sampling=Sampling(max_tokens=args.max_tokens),
                                  cache_dir=args.out / "cache", batch_size=1)  # fmt: skip
            seconds += time.perf_counter() - t0
            for key, v in res.counts.items():
                counts[key] = counts.get(key, 0) + v
            for key, v in res.reasons.items():
                reasons[key] = reasons.get(key, 0) + v
            structured.append(res.frames["structured"])
            failures.append(res.frames["failures"])
            summary = _summary(
                args, k, counts, reasons, seconds, pl.concat(structured), pl.concat(failures)
            )
            _write(args.out, {"baseline_keyword_router": baseline_fig, "model": summary})
            print(
                f"{k}/{len(items)} {seconds / k:.0f} s/report, {counts['structured']} passed",
                flush=True,
            )
    finally:
        engine.close()
    return summary


def _summary(args: argparse.Namespace, n: int, c: dict[str, int], reasons: dict[str, int],
             seconds: float, st: pl.DataFrame, fails: pl.DataFrame) -> dict:  # fmt: skip
    return {
        "model": Path(args.model).name, "reports": n,
        "passed_first_time": c["passed_first_time"], "passed_after_repair": c["passed_after_repair"],
        "failed": c["failed"], "failures_by_reason": reasons, "first_reasons": _first_reasons(fails),
        "engine_requests": c["engine_requests"], "repair_requests": c["repair_requests"],
        "seconds_per_report": seconds / max(1, n),
        "output_tokens_per_report": c["completion_tokens"] / max(1, n),
        "prompt_tokens_per_report": c["prompt_tokens"] / max(1, n), "cached": c["cached"],
        "examples": [
            {"uid": r["id"], "findings": r["structured_findings"], "impression": r["structured_impression"]}
            for r in st.head(args.examples).iter_rows(named=True)
        ],
        "failure_samples": [
            {"uid": r["id"], "reason": r["reason"][:300]} for r in fails.head(8).iter_rows(named=True)
        ],
    }  # fmt: skip


def _write(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _first_reasons(fails: pl.DataFrame) -> dict[str, int]:
    """Codes of the first attempt's problem of the failed reports (from '(after repair; first: ...)')."""
    out: dict[str, int] = {}
    for reason in fails["reason"].to_list():
        m = re.search(r"\(after repair; first: (.*)\)$", reason or "")
        code = reason_code(m.group(1)) if m else "no_repair"
        out[code] = out.get(code, 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--iu", type=Path, required=True, help="IU X-ray folder (CSV + openi-testset.txt)"
    )
    ap.add_argument("--model", required=True, help="GGUF path")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--max-tokens", type=int, default=768)
    ap.add_argument("--examples", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True, help="folder for cache + summary.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    items = dev_reports(args.iu, args.n)
    base = baseline(items)
    summary = {"baseline_keyword_router": base, "model": run_model(items, args, base)}
    print(json.dumps({k: v for k, v in summary["model"].items() if k != "examples"}, indent=2))
    print(json.dumps(summary["baseline_keyword_router"], indent=2))


if __name__ == "__main__":
    main()
