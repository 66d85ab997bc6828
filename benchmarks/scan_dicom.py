"""Benchmark the DICOM header scan (`build-priors --scan-dicom`): files/s with 1 vs N processes.

    nice python benchmarks/scan_dicom.py --patients 3700      # ≈ 20.5k synthetic DICOM files

The synthetic root (with tiny real DICOMs) is generated once into the cache directory.
Files are read once before timing so every run sees a warm page cache; the baseline is
the same pydicom call in one process (`--workers 1`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from cxrctx.mimic.dicom_scan import find_dicoms, scan_dicoms

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=3700)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=HERE / "_work")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    root = a.cache / f"synth-dicom-{a.patients}-s{a.seed}"
    if not (root / ".complete").exists():
        from cxrctx.synth import synthesize

        synthesize(root, patients=a.patients, seed=a.seed, dicom=True)
        (root / ".complete").write_text("")
    t0 = time.perf_counter()
    rels = find_dicoms(root / "files")
    list_s = time.perf_counter() - t0
    size = 0
    for r in rels:  # warm the page cache
        size += len((root / r).read_bytes())
    res = {
        "files": len(rels),
        "mean_file_bytes": size // max(1, len(rels)),
        "list_s": round(list_s, 2),
        "cpus": os.cpu_count(),
        "runs": [],
    }
    for w in a.workers:
        t0 = time.perf_counter()
        rows, errors = scan_dicoms(root, rels, workers=w)
        dt = time.perf_counter() - t0
        assert len(rows) + len(errors) == len(rels)
        res["runs"].append(
            {
                "workers": w,
                "wall_s": round(dt, 2),
                "files_per_s": round(len(rels) / dt),
                "errors": len(errors),
            }
        )
    base = res["runs"][0]["wall_s"]
    for r in res["runs"]:
        r["speedup_vs_first"] = round(base / r["wall_s"], 2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
