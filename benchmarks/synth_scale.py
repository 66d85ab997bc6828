"""Time `cxrctx.synth.synthesize` at full MIMIC-CXR size, one worker process vs several.

    python benchmarks/synth_scale.py --patients 65379 --processes 1,2

Each run happens in a fresh child process so its peak RSS is measured alone. The
single-process run is the baseline; the output is identical either way (chunks are
seeded independently), only the wall time differs.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from cxrctx.synth import synthesize
t = time.perf_counter()
s = synthesize(sys.argv[1], patients=int(sys.argv[2]), seed=int(sys.argv[3]), processes=int(sys.argv[4]))
rss = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"seconds": time.perf_counter() - t, "studies": s.studies, "images": s.images,
                  "files": s.files_written, "rss_kib": rss}))
"""


def run_once(out: Path, patients: int, seed: int, processes: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), str(patients), str(seed), str(processes)],
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(
        processes=processes,
        wall_s=round(wall, 1),
        cpu_s=round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        peak_rss_mib=round(res["rss_kib"] / 1024),  # largest single process (Linux: KiB)
        seconds=round(res["seconds"], 1),
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--patients", type=int, default=65379)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--processes",
        default="1,2",
        help="comma-separated worker counts; the first is the baseline",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "_work" / "synth")
    a = ap.parse_args()
    rows = [run_once(a.out, a.patients, a.seed, int(p)) for p in a.processes.split(",")]
    base = rows[0]["wall_s"]
    print("| processes | studies | images | wall s | CPU s | peak RSS MiB | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['processes']} | {r['studies']:,} | {r['images']:,} | {r['wall_s']} | {r['cpu_s']} "
            f"| {r['peak_rss_mib']:,} | {base / r['wall_s']:.2f}x |"
        )
    shutil.rmtree(a.out, ignore_errors=True)


if __name__ == "__main__":
    main()
