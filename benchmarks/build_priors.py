"""Benchmark `build_priors` at full MIMIC-CXR scale against a plain pandas + per-file baseline.

    nice python benchmarks/build_priors.py                     # 65,379 patients (~228k studies)
    python benchmarks/build_priors.py --patients 2000          # quick look
    python benchmarks/build_priors.py --reference /tmp/old     # + byte-identity vs old code
    python benchmarks/build_priors.py --warm --repeat 5        # warm page cache, medians of 5

`--reference DIR` runs the `cxrctx` package found in DIR (e.g. `git archive REV cxrctx |
tar -x -C DIR`) on the same root and compares the sha256 of every output file (but the
manifest) with ours.
`--baseline-path DIR` adds DIR to the baseline's import path (where pandas lives).

The synthetic root (reports only, no DICOM) is generated once into the cache directory.
Both pipelines run in fresh subprocesses, one after the other, in the same invocation;
each reports wall time and the peak RSS of its whole process tree (sampled from /proc,
summing the main process and its workers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# --- the baseline, written the way a researcher would -------------------------------------


def baseline(root: Path, out: Path, k: int = 3) -> int:
    """pandas for the CSVs, a Python loop over studies reading one report file at a time."""
    import pandas as pd

    from cxrctx.mimic.sections import has_temporal_reference, parse_report

    meta = pd.read_csv(
        root / "mimic-cxr-2.0.0-metadata.csv.gz", dtype={"StudyDate": str, "StudyTime": str}
    )
    t = meta["StudyTime"].fillna("")
    whole = t.str.split(".").str[0].str.zfill(6)
    frac = t.str.split(".").str[1].fillna("0")
    meta["dt"] = pd.to_datetime(
        meta["StudyDate"] + whole + "." + frac, format="%Y%m%d%H%M%S.%f", errors="coerce"
    )
    meta["dt"] = meta["dt"].fillna(pd.to_datetime(meta["StudyDate"], format="%Y%m%d"))
    split = (
        pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
        .drop_duplicates("study_id")
        .set_index("study_id")["split"]
        .to_dict()
    )
    chexpert = (
        pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
        .set_index("study_id")
        .drop(columns="subject_id")
        .to_dict("index")
    )
    order = {"PA": 0, "AP": 1, "LATERAL": 2, "LL": 2}
    meta["o"] = meta["ViewPosition"].map(order).fillna(3)
    meta = meta.sort_values(["study_id", "o", "dicom_id"])
    images = {}
    for sid, g in meta.groupby("study_id", sort=False):
        images[sid] = [
            {
                "dicom_id": r.dicom_id,
                "view_position": r.ViewPosition,
                "path": f"files/p{str(r.subject_id)[:2]}/p{r.subject_id}/s{sid}/{r.dicom_id}.dcm",
            }
            for r in g.itertuples()
        ]
    studies = (
        meta.groupby("study_id")
        .agg(subject_id=("subject_id", "first"), dt=("dt", "min"))
        .reset_index()
    )
    parsed = {}
    for row in studies.itertuples():
        s = str(row.subject_id)
        path = root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{row.study_id}.txt"
        try:
            text = path.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            continue
        parsed[row.study_id] = parse_report(text)._asdict()
    records = []
    for _, g in studies.sort_values(["subject_id", "dt", "study_id"]).groupby("subject_id"):
        rows = list(g.itertuples())
        for i, row in enumerate(rows):
            if row.study_id not in parsed:
                continue
            earlier = [r for r in rows[:i] if r.dt < row.dt]
            priors = [
                {
                    "study_id": p.study_id,
                    "days_before": (row.dt.normalize() - p.dt.normalize()).days,
                    **{
                        f: parsed.get(p.study_id, {}).get(f)
                        for f in ("indication", "findings", "impression")
                    },
                    "images": images[p.study_id],
                }
                for p in reversed(earlier[-k:])
            ]
            sec = parsed[row.study_id]
            rec = {
                "subject_id": row.subject_id,
                "study_id": row.study_id,
                "study_datetime": row.dt,
                **sec,
            }
            rec["split"] = split.get(row.study_id)
            rec["chexpert"] = chexpert.get(row.study_id)
            rec["images"] = images[row.study_id]
            rec["priors"] = priors
            rec["n_prior_studies"] = len(earlier)
            rec["temporal"] = not earlier and has_temporal_reference(
                sec["findings"], sec["impression"]
            )
            records.append(rec)
    df = pd.DataFrame(records)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "records.parquet")
    return len(df)


def ours(root: Path, out: Path, workers: int) -> int:
    import shutil

    from cxrctx.mimic import build_priors

    shutil.rmtree(out, ignore_errors=True)

    return build_priors(root, out, workers=workers).counts["records"]


# --- measurement --------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """RSS (bytes) of `pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def warm_up(root: Path) -> None:
    """Read every input file once, untimed, so each run starts from a warm page cache (the
    target is stated warm; this VM reclaims idle page cache within minutes)."""
    for p in root.rglob("*"):
        if p.is_file():
            p.read_bytes()


def measure(cmd: list[str], path: Path | None = None, warm: Path | None = None) -> dict:
    import resource

    if warm is not None:
        warm_up(warm)

    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the whole tree (workers are reaped by the child, the child by us).
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "cpu_s": round(cpu, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(peak / 2**30, 3),
        "records": int(out.strip().splitlines()[-1]),
    }


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every output file but the manifest (whose config may gain keys between
    versions) and the folder lock (it names the writer's pid), by relative path."""
    import hashlib

    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and not p.name.startswith(".cxrctx-lock")
    }


def _summary(runs: list[dict]) -> dict:
    """Median wall and CPU over repeated runs (each run's figures kept under `runs`)."""
    import statistics

    out = {k: runs[0][k] for k in ("records",)}
    for k in ("wall_s", "cpu_s", "peak_rss_gib"):
        out[k] = round(statistics.median(r[k] for r in runs), 2)
    out["runs"] = [{k: r[k] for k in ("wall_s", "cpu_s", "load_avg_1m")} for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=65_379)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=HERE / "_work")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--warm", action="store_true", help="read the whole root once before each timed run"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="runs of ours (and the reference), medians kept"
    )
    ap.add_argument("--reference", type=Path, help="directory holding a reference cxrctx package")
    ap.add_argument("--baseline-path", type=Path, help="extra import path for the baseline")
    ap.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "ours":
        print(ours(a.root, a.out, a.workers))
        return
    if a.child == "baseline":
        print(baseline(a.root, a.out))
        return

    root = a.cache / f"synth-{a.patients}-s{a.seed}"
    if not (root / ".complete").exists():
        from cxrctx.synth import synthesize

        t0 = time.perf_counter()
        synthesize(root, patients=a.patients, seed=a.seed, dicom=False)
        (root / ".complete").write_text("")
        print(f"generated {root} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    n_reports = sum(1 for _ in (root / "files").glob("p*/p*/s*.txt"))
    me = [sys.executable, __file__, "--root", str(root), "--workers", str(a.workers)]
    res = {
        "patients": a.patients,
        "reports": n_reports,
        "workers": a.workers,
        "cpus": os.cpu_count(),
    }
    warm = root if a.warm else None
    ref_out = a.cache / "out-reference"
    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    for _ in range(a.repeat):  # ours and the reference interleaved: the same noise for both
        out = str(a.cache / "out-ours")
        runs["ours"].append(measure([*me, "--child", "ours", "--out", out], warm=warm))
        if a.reference is not None:
            cmd = [*me, "--child", "ours", "--out", str(ref_out)]
            runs["reference"].append(measure(cmd, a.reference, warm))
    for name, rs in runs.items():
        if rs:
            res[name] = _summary(rs)
    if a.reference is not None:
        res["identical_to_reference"] = _digests(a.cache / "out-ours") == _digests(ref_out)
    if not a.skip_baseline:
        res["baseline"] = measure(
            [*me, "--child", "baseline", "--out", str(a.cache / "out-baseline")],
            a.baseline_path,
            warm,
        )
        res["speedup"] = round(res["baseline"]["wall_s"] / res["ours"]["wall_s"], 2)
        res["speedup_cpu"] = round(res["baseline"]["cpu_s"] / res["ours"]["cpu_s"], 2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
