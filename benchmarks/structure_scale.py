"""structure-reports with the rules at MIMIC scale: reports per second (not a test).

Input: a build-priors output of a large synthetic root (`cxrctx synth --patients N`, then
`cxrctx build-priors`). Each configuration runs the whole stage (`structure_reports`:
manifest check of the input, rules draft + full faithfulness check of every report,
parquet shards, manifest) into a fresh folder. Baseline in the same run: the trivial
structurer that reads the same records and writes every FINDINGS sentence verbatim
under `Other` and every IMPRESSION sentence as an item (no organ placement, no check),
i.e. the floor of loading, sentence splitting and writing.

    python benchmarks/structure_scale.py --records /tmp/records --out /tmp/structure_scale \
        --workers 1,2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import polars as pl

from cxrctx.structure.check import sentences
from cxrctx.structure.run import iter_items, load_reports, structure_reports


def trivial(records: Path, out: Path) -> int:
    """Verbatim sentences, no placement, no check: load, split, write."""
    frame = load_reports(records).frame
    rows = [{"id": it.id, "other": sentences(it.findings), "impression_items": sentences(it.impression)}
            for it in iter_items(frame) if it.problem is None]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(out / "part-00000.parquet")
    return frame.height


def timed(fn) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), os.times()
    value = fn()
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user)
    return time.perf_counter() - t0, cpu, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=Path, required=True, help="build-priors output folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", default="1,2", help="comma list of process counts for the rules")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {}
    for rep in range(args.repeats):
        target = args.out / "trivial"
        shutil.rmtree(target, ignore_errors=True)
        wall, cpu, n = timed(lambda t=target: trivial(args.records, t))
        results.setdefault("trivial", []).append({"reports": n, "wall_s": wall, "cpu_s": cpu,
                                                  "reports_per_s": n / wall})  # fmt: skip
        for w in (int(x) for x in args.workers.split(",")):
            target = args.out / f"rules-w{w}"
            shutil.rmtree(target, ignore_errors=True)
            wall, cpu, run = timed(
                lambda w=w, t=target: structure_reports(args.records, t, workers=w)
            )
            c = run.result.counts  # type: ignore[attr-defined]
            results.setdefault(f"rules_workers_{w}", []).append({
                "reports": c["reports"], "structured": c["structured"], "failed": c["failed"],
                "empty": c["empty"], "wall_s": wall, "cpu_s": cpu,
                "reports_per_s": c["reports"] / wall,
            })  # fmt: skip
        print(
            f"repeat {rep + 1}: " + json.dumps({k: v[-1] for k, v in results.items()}), flush=True
        )
    base = min(r["wall_s"] for r in results["trivial"])
    summary = {k: {**min(v, key=lambda r: r["wall_s"]),
                   "x_trivial_wall": min(r["wall_s"] for r in v) / base} for k, v in results.items()}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"runs": results, "best": summary}, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
