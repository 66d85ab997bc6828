"""Trainer GPU check: real optimiser steps of the classifier stage and CLALA-Net stages 1-2
at the paper's sizes; images/s, peak memory and projected GPU-hours for MIMIC-CXR.

Usage:
    python benchmarks/gpu_train_check.py --out train_check.json            # on a GPU machine
    python benchmarks/gpu_train_check.py --out smoke.json --cpu-smoke      # here, in seconds

No data and no network: batches are random tensors of the paper's shapes (ROI crops
11 × 224² in stage 1, 11 × 384² in stage 2, the full image at 224², 64 tokens per ROI), the
model is the paper preset with random weights (`allow_random_init`; weights never change
speed) and a BERT-sized word vocabulary (30,522 entries, like bert-base-uncased). Each part
runs `--warmup` untimed then `--steps` timed steps (forward, the stage's losses, backward,
AdamW), bf16 autocast on CUDA as the trainer does. `--cpu-smoke` runs the same code on the
CPU with the tiny preset's sizes and batch 2: it checks the script, not a speed.

Projection: MIMIC-CXR's 111,326 training images (the paper's count) × the preset's epochs
(classifier, stage 1, stage 2) / measured images/s, plus nothing else (no data loading,
no validation passes): a lower bound of one GPU's hours (`projected_hours_*`: hours on the
device that ran, GPU-hours on a GPU; meaningless in `--cpu-smoke`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIMIC_TRAIN_IMAGES = 111_326


def _batch(cfg, tok, B: int, size: int, dev):
    import torch

    from cxrctx.vocab import LESIONS, ROIS

    R = len(ROIS)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, len(tok), (B, R, cfg.max_tokens), generator=g)
    tokens[..., 0] = tok.bos_id
    tokens[..., -1] = tok.eos_id
    b = {
        "rois": torch.rand(B, R, size, size, generator=g),
        "glob": torch.rand(B, cfg.global_image_size, cfg.global_image_size, generator=g),
        "tokens": tokens,
        "targets": (torch.rand(B, len(LESIONS), generator=g) < 0.2).float(),
        "roi_keys": torch.randint(0, 4, (B, R), generator=g),
        "has_text": torch.ones(B, R, dtype=torch.bool),
        "text_ids": torch.arange(B * R).reshape(B, R),
        "abnormal": (torch.rand(B, R, generator=g) < 0.3).float(),
    }
    return {k: v.to(dev) for k, v in b.items()}


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(step, dev, warmup: int, steps: int, images: int) -> dict:
    import torch

    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    return {"s_per_step": dt / steps, "images_per_s": images * steps / dt, "peak_gib": peak}


def classifier_part(cfg, dev, args) -> dict:
    import torch
    import torch.nn.functional as F

    from cxrctx.train.classifier import LesionClassifier
    from cxrctx.vocab import LESIONS

    model = LesionClassifier(cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.classifier_lr)
    B, G = cfg.classifier_batch_size if not args.cpu_smoke else 2, cfg.global_image_size
    x = torch.rand(B, G, G, device=dev)
    y = (torch.rand(B, len(LESIONS), device=dev) < 0.2).float()
    amp = dev.type == "cuda"

    def step() -> None:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = _time(step, dev, args.warmup, args.steps, B)
    out.update(batch=B, image_size=G, params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    return out


def stage_part(cfg, tok, st: int, dev, args) -> dict:
    import torch

    from cxrctx.train.loop import build_model
    from cxrctx.train.losses import stage_losses, weighted_total

    model = build_model(cfg, tok).to(dev).train()
    for p in model.parameters():
        p.requires_grad_(st == 1)
    if st == 2:
        for p in model.stage2_parameters():
            p.requires_grad_(True)
    if model.classifier is not None:
        for p in model.classifier.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr_stage1 if st == 1 else cfg.lr_stage2)
    B = cfg.batch_size if not args.cpu_smoke else 2
    size = cfg.image_size_stage1 if st == 1 else cfg.image_size_stage2
    batch = _batch(cfg, tok, B, size, dev)
    amp = dev.type == "cuda"

    def step() -> None:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(batch, label_mix=0.5 if st == 1 else 0.0)
        losses, _ = stage_losses(cfg, st, out, batch)
        total = weighted_total(cfg, losses)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or 1e9)
        opt.step()

    out = _time(step, dev, args.warmup, args.steps, B)
    out.update(batch=B, roi_size=size, trainable_params_m=sum(p.numel() for p in params) / 1e6)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON result file")
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU (a script check)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps per part (GPU 10, smoke 1)"
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 3, smoke 1)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from cxrctx.train import make_config
    from cxrctx.train.tokenizer import SPECIALS, WordTokenizer

    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and not args.cpu_smoke
    if not gpu and not args.cpu_smoke:
        sys.exit("no CUDA device: run with --cpu-smoke to check the script on a CPU")
    dev = torch.device("cuda" if gpu else "cpu")
    args.steps = args.steps or (10 if gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    cfg = make_config("tiny") if args.cpu_smoke else make_config("paper", allow_random_init=True)
    vocab = list(SPECIALS) + [
        f"w{i}" for i in range((300 if args.cpu_smoke else 30522) - len(SPECIALS))
    ]
    tok = WordTokenizer(vocab)
    t0 = time.perf_counter()
    parts = {"classifier": classifier_part(cfg, dev, args)}
    parts["stage1"] = stage_part(cfg, tok, 1, dev, args)
    parts["stage2"] = stage_part(cfg, tok, 2, dev, args)
    epochs = {
        "classifier": cfg.classifier_epochs,
        "stage1": cfg.epochs_stage1,
        "stage2": cfg.epochs_stage2,
    }
    for name, p in parts.items():
        p["epochs"] = epochs[name]
        p["projected_hours_mimic"] = MIMIC_TRAIN_IMAGES * epochs[name] / p["images_per_s"] / 3600
    result = {
        "check": "gpu_train_check",
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "device": torch.cuda.get_device_name(0) if gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "preset": cfg.preset,
        "mimic_train_images": MIMIC_TRAIN_IMAGES,
        "parts": parts,
        "projected_hours_total": sum(p["projected_hours_mimic"] for p in parts.values()),
        "wall_s": time.perf_counter() - t0,
        "ok": True,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
