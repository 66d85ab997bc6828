"""The pieces of `benchmarks/gpu_check.sh`: trainer steps, vLLM labeling throughput, merge.

    python benchmarks/gpu_check.py train --out train.json [--cpu-smoke]
    python benchmarks/gpu_check.py label --out label.json [--model HF_FOLDER] [--cpu-smoke]
    python benchmarks/gpu_check.py merge --out gpu_check.json part.json ...

`train`: the trainer's paper preset (ViT-B/16 @224 stage 1, @384 stage 2, batch 24, bf16
autocast on CUDA) for real optimizer steps on synthetic batches: images/s per stage, peak
GPU memory, and the GPU-hours of the paper's schedule on MIMIC-CXR's 111,326 training
images projected from the measured images/s. `--cpu-smoke` runs one tiny step at batch 1
so the script itself is tested on machines without a GPU (its figures mean nothing).

`label`: where vLLM is importable and a model folder is given, `label-lesions`' library
(`label_documents`, the llm labeler) on synthetic reports through the vllm
backend: reports/s and output tokens/s. Otherwise the part says why it was skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: MIMIC-CXR training images the paper's schedule runs over
TRAIN_IMAGES = 111_326


def _sync(torch: Any, dev: Any) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def stage_rate(
    torch: Any, model: Any, cfg: Any, tok: Any, dev: Any, size: int, B: int, steps: int
) -> dict[str, Any]:
    """Images/s of `steps` optimizer steps at `size` px, batch `B` (after 2 warm-up steps)."""
    from train_step import one_batch, step_fn

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    step = step_fn(model, cfg, opt)
    batch = {k: v.to(dev) for k, v in one_batch(cfg, tok, B, size).items()}
    amp = bool(cfg.amp) and dev.type == "cuda"
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
        for _ in range(min(2, steps)):
            step(batch)
        _sync(torch, dev)
        t = time.perf_counter()
        for _ in range(steps):
            loss = step(batch)
        _sync(torch, dev)
    dt = time.perf_counter() - t
    return {
        "size": size,
        "batch": B,
        "steps": steps,
        "seconds": round(dt, 3),
        "images_s": round(steps * B / dt, 2),
        "last_loss": round(loss, 4),
    }


def train_part(smoke: bool, steps: int) -> dict[str, Any]:
    import torch

    from cxrctx.train.config import make_config
    from cxrctx.train.loop import build_model
    from cxrctx.train.tokenizer import WordTokenizer
    from cxrctx.vocab import LESIONS

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    paper = make_config("paper", allow_random_init=True) if not smoke else make_config("tiny")
    B = 1 if smoke else paper.batch_size
    sizes = (paper.image_size_stage1, paper.image_size_stage2) if not smoke else (32, 32)
    tok = WordTokenizer.build(["there is a small left pleural effusion ."], extra=LESIONS)
    torch.manual_seed(0)
    model = build_model(paper, tok).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res: dict[str, Any] = {
        "preset": paper.preset,
        "device": str(dev),
        "torch": torch.__version__,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }
    res["stage1"] = stage_rate(torch, model, paper, tok, dev, sizes[0], B, steps)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.stage2_parameters():
        p.requires_grad_(True)
    res["stage2"] = stage_rate(torch, model, paper, tok, dev, sizes[1], B, steps)
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    e1, e2 = paper.epochs_stage1, paper.epochs_stage2
    hours = TRAIN_IMAGES * (e1 / res["stage1"]["images_s"] + e2 / res["stage2"]["images_s"]) / 3600
    res["projection"] = {
        "train_images": TRAIN_IMAGES,
        "epochs": [e1, e2],
        "gpu_hours" if dev.type == "cuda" else "device_hours": round(hours, 2),
    }
    return res


def label_part(model: str | None, reports: int, batch: int, smoke: bool) -> dict[str, Any]:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"skipped": "vLLM is not importable in this environment"}
    if not model:
        return {"skipped": "no --model folder (a Hugging Face model folder vLLM can load)"}
    from vllm_vs_llamacpp import label_run, make_reports

    from cxrctx.llm import get_engine

    docs = make_reports(reports)
    t = time.perf_counter()
    opts: dict[str, Any] = {"max_model_len": 4096}
    if smoke:
        opts["kv_cache_space_gib"] = 1
    engine = get_engine("vllm", model, **opts)
    start = time.perf_counter() - t
    out: dict[str, Any] = {"model": model, "engine_start_s": round(start, 2), "batch_size": batch}
    out["llm"] = label_run(engine, docs, "llm", batch)
    return out


def merge(parts: list[Path], out: Path) -> None:
    merged: dict[str, Any] = {"host": platform.node(), "python": platform.python_version()}
    for p in parts:
        try:
            merged[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            merged[p.stem] = {"error": f"{type(e).__name__}: {e}"}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2))
    tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--steps", type=int, default=20)
    tr.add_argument("--cpu-smoke", action="store_true")
    lb = sub.add_parser("label")
    lb.add_argument("--out", type=Path, required=True)
    lb.add_argument("--model", default=None)
    lb.add_argument("--reports", type=int, default=512)
    lb.add_argument("--batch", type=int, default=512)
    lb.add_argument("--cpu-smoke", action="store_true")
    mg = sub.add_parser("merge")
    mg.add_argument("--out", type=Path, required=True)
    mg.add_argument("parts", type=Path, nargs="+")
    a = ap.parse_args()
    if a.cmd == "merge":
        merge(a.parts, a.out)
        return
    t = time.perf_counter()
    if a.cmd == "train":
        res = train_part(a.cpu_smoke, 1 if a.cpu_smoke else a.steps)
    else:
        res = label_part(a.model, 4 if a.cpu_smoke else a.reports, a.batch, a.cpu_smoke)
    res["wall_s"] = round(time.perf_counter() - t, 1)
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
