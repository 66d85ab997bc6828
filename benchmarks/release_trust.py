"""release / validate / rebuild wall time: this checkout against an earlier revision, same run.

The hardened release (path checks, per-column content checks, card and croissant.json
re-rendered and compared, the Croissant read with mlcroissant, typed rebuild options) does
more work than the release it replaces; this measures how much, on the same inputs, with
runs of the two versions interleaved (medians), so machine load hits both alike.

    python benchmarks/release_trust.py --patients 2000 --baseline-rev 639c716 --repeats 3

The inputs (synthetic root, build-priors, rules labels) are made once with this checkout;
both versions read them. Each timing runs in a fresh interpreter with that version's
`cxrctx` first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP = r"""
import sys, time, json
from pathlib import Path
from cxrctx.release import make_release, rebuild, validate
w, step, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
t = time.perf_counter()
if step == "release":
    make_release(w / "records", labels=w / "labels", out=out, name="bench/ctx", version="1.0.0",
                 formats=["srrg"])
elif step == "validate":
    rep = validate(out)
    assert rep.ok, rep.problems[:3]
else:
    rep = rebuild(out / "public", w / "mimic", out=Path(str(out) + "-rebuild"))
    assert rep.identical, rep.differences[:3]
print(json.dumps({"s": time.perf_counter() - t}))
"""


def _prepare(work: Path, patients: int) -> None:
    from cxrctx.labeling import label_lesions
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    synthesize(work / "mimic", patients=patients, seed=0)
    build_priors(work / "mimic", work / "records", workers=1)
    label_lesions(work / "records", work / "labels", labeler="rules")


def _checkout(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _time(src: Path, work: Path, step: str, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run(
        [sys.executable, "-c", STEP, str(work), step, str(out)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(json.loads(res.stdout.strip().splitlines()[-1])["s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--baseline-rev", required=True, help="git revision of the baseline")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="cxrctx-release-bench-"))
    t0 = time.perf_counter()
    _prepare(work, a.patients)
    print(f"inputs: {a.patients} patients in {time.perf_counter() - t0:.1f}s ({work})")
    versions = {"baseline": _checkout(a.baseline_rev, work / "baseline-src"), "this": ROOT}
    times: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
    for r in range(a.repeats):
        for name, src in versions.items():
            out = work / f"rel-{name}-{r}"
            for step in ("release", "validate", "rebuild"):
                times[name].setdefault(step, []).append(_time(src, work, step, out))
    print(f"| step | baseline {a.baseline_rev} (s) | this (s) | ratio this/baseline |")
    print("|---|---:|---:|---:|")
    for step in ("release", "validate", "rebuild"):
        b, t = (statistics.median(times[v][step]) for v in ("baseline", "this"))
        print(f"| {step} | {b:.2f} | {t:.2f} | {t / b:.2f} |")
    print(json.dumps(times))


if __name__ == "__main__":
    main()
