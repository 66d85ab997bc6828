"""Trainer speed: tiny-preset steps/s, loader items/s (crop cache vs none), paper-preset step time.

Usage (CPU; see BENCHMARKS.md for numbers):
    python benchmarks/train_step.py --patients 120 --steps 30 --paper-batch 1 --threads 2

1. Builds a synthetic root (`cxrctx.synth.synthesize(images=True, imagenome=True)`), records and ROIs.
2. Loader: items/s of the ROI dataset decoding + cropping every image (no cache, the
   baseline) vs reading the `.npz` crop cache, at the tiny preset's sizes and at 224 px.
3. Tiny preset: optimizer steps/s over real batches (forward, all four losses, backward).
4. Paper preset (ViT-B/16 @224, BERT-base-sized text encoder): wall time of one step at a
   reduced batch (`--paper-batch`, default 1: batch 24 = 288 ViT-B passes does not fit a
   2-core budget) and its FLOPs (torch's FlopCounterMode), extrapolated to batch 24.
5. GPU-hours estimate for the paper's schedule on 111,326 training images from the
   measured FLOPs per image and an assumed GPU throughput (printed with the assumptions).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def build_data(work: Path, patients: int, size: int) -> dict[str, Path]:
    from cxrctx.imagenome import build_rois
    from cxrctx.mimic.build import build_priors
    from cxrctx.synth import synthesize

    if not (work / "rois" / "manifest.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        synthesize(
            work / "root",
            patients=patients,
            seed=0,
            images=True,
            imagenome=True,
            image_size=size,
            image_format="jpg",
        )
        build_priors(work / "root", work / "priors", image_ext="jpg", workers=1)
        build_rois(work / "root" / "imagenome", records=work / "priors", out=work / "rois")
    return {
        "root": work / "root",
        "records": work / "priors",
        "rois": work / "rois",
        "labels": work / "root" / "truth",
    }


def loader_rate(
    items, tok, cfg, images: Path, cache: Path | None, size: int, gsize: int, warm: bool
) -> float:
    from cxrctx.train.data import CropStore, RoiDataset, collate

    store = CropStore(images, cache, size, gsize)
    if warm:
        store.prepare(items)
    ds = RoiDataset(items, store, tok, cfg.max_tokens)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate)
    t = time.perf_counter()
    n = sum(len(b["index"]) for b in loader)
    return n / (time.perf_counter() - t)


def one_batch(cfg, tok, B: int, size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    gs = cfg.global_image_size or size
    text = "there is a small left pleural effusion with adjacent atelectasis ."
    return {
        "rois": torch.rand(B, 11, size, size, generator=g),
        "glob": torch.rand(B, gs, gs, generator=g),
        "tokens": torch.tensor([[tok.encode(text, cfg.max_tokens)] * 11] * B),
        "targets": (torch.rand(B, 14, generator=g) > 0.7).float(),
        "roi_keys": torch.randint(0, 4, (B, 11), generator=g),
        "has_text": torch.ones(B, 11, dtype=torch.bool),
        "text_ids": torch.arange(B * 11).view(B, 11),
    }


def step_fn(model, cfg, opt):
    from cxrctx.train.losses import cls_loss, itcl_loss, llcl_loss
    from cxrctx.train.model import ce_loss

    def step(batch):
        out = model(batch)
        loss = ce_loss(out["dec_logits"], batch["tokens"])
        loss = (
            loss
            + llcl_loss(out["refined"], out["raw"], batch["roi_keys"], tau=cfg.temperature_llcl)[0]
        )
        loss = (
            loss
            + itcl_loss(
                out["refined"],
                out["text_emb"],
                batch["has_text"],
                batch["text_ids"],
                tau=cfg.temperature_itcl,
            )[0]
        )
        loss = loss + cls_loss(out["cls_logits"], batch["targets"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--paper-batch", type=int, default=1)
    ap.add_argument("--skip-paper", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "train_step")
    ap.add_argument(
        "--gpu-tflops",
        type=float,
        default=989.0,
        help="Peak dense bf16 TFLOP/s of the GPU (H100 SXM: 989)",
    )
    ap.add_argument("--mfu", type=float, default=0.35, help="Assumed model-FLOPs utilisation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from cxrctx.train.config import make_config
    from cxrctx.train.data import join
    from cxrctx.train.loop import build_model
    from cxrctx.train.tokenizer import WordTokenizer
    from cxrctx.vocab import LESIONS

    res: dict = {"threads": args.threads, "torch": torch.__version__}
    t = time.perf_counter()
    d = build_data(args.work, args.patients, args.size)
    res["data_build_s"] = round(time.perf_counter() - t, 2)
    joined = join(records=d["records"], labels=d["labels"], rois=d["rois"])
    items = joined.items
    res["items"] = len(items)
    tiny = make_config("tiny")
    tok = WordTokenizer.build((t for it in items for t in it.texts), extra=LESIONS)

    # --- loader: uncached (baseline) vs cached
    for label, size, gsize in (
        ("tiny", tiny.image_size_stage1, tiny.global_image_size),
        ("224", 224, 224),
    ):
        cache = args.work / f"cache_{label}"
        shutil.rmtree(cache, ignore_errors=True)
        un = loader_rate(items, tok, tiny, d["root"], None, size, gsize, warm=False)
        ca = loader_rate(items, tok, tiny, d["root"], cache, size, gsize, warm=True)
        res[f"loader_{label}"] = {
            "uncached_items_s": round(un, 1),
            "cached_items_s": round(ca, 1),
            "ratio": round(ca / un, 2),
        }

    # --- tiny steps/s on real batches
    from cxrctx.train.data import CropStore, RoiDataset, collate

    torch.manual_seed(0)
    model = build_model(tiny, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=tiny.lr_stage1, weight_decay=tiny.weight_decay)
    store = CropStore(
        d["root"], args.work / "cache_tiny", tiny.image_size_stage1, tiny.global_image_size
    )
    ds = RoiDataset(items, store, tok, tiny.max_tokens)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=tiny.batch_size, shuffle=True, collate_fn=collate, drop_last=True
    )
    step = step_fn(model, tiny, opt)
    batches = []
    while len(batches) < args.steps + 3:
        batches.extend(b for b in loader if "rois" in b)
    for b in batches[:3]:
        step(b)
    t = time.perf_counter()
    for b in batches[3 : 3 + args.steps]:
        step(b)
    dt = time.perf_counter() - t
    res["tiny"] = {
        "batch": tiny.batch_size,
        "steps_s": round(args.steps / dt, 2),
        "images_s": round(args.steps * tiny.batch_size / dt, 1),
    }

    # --- paper preset, reduced batch
    if not args.skip_paper:
        from torch.utils.flop_counter import FlopCounterMode

        paper = make_config("paper")
        torch.manual_seed(0)
        pm = build_model(paper, tok)
        popt = torch.optim.AdamW(
            pm.parameters(), lr=paper.lr_stage1, weight_decay=paper.weight_decay
        )
        pstep = step_fn(pm, paper, popt)
        B = args.paper_batch
        batch = one_batch(paper, tok, B, 224)
        pstep(batch)  # warm-up
        t = time.perf_counter()
        pstep(batch)
        st = time.perf_counter() - t
        with FlopCounterMode(display=False) as fc:
            pstep(batch)
        flops = fc.get_total_flops()
        # stage 2 at 384: encoders frozen, forward-only for them
        for p in pm.parameters():
            p.requires_grad_(False)
        for p in pm.stage2_parameters():
            p.requires_grad_(True)
        b384 = one_batch(paper, tok, B, 384)
        with FlopCounterMode(display=False) as fc2:
            pstep(b384)
        flops2 = fc2.get_total_flops()
        res["paper"] = {
            "batch_measured": B,
            "params_m": round(sum(p.numel() for p in pm.parameters()) / 1e6, 1),
            "step_s_measured": round(st, 2),
            "step_s_batch24_extrapolated": round(st * 24 / B, 1),
            "stage1_tflop_per_image": round(flops / B / 1e12, 3),
            "stage2_tflop_per_image": round(flops2 / B / 1e12, 3),
        }
        n_train = 111_326
        e1, e2 = paper.epochs_stage1, paper.epochs_stage2
        total = n_train * (e1 * flops / B + e2 * flops2 / B)
        eff = args.gpu_tflops * 1e12 * args.mfu
        res["gpu_hours_estimate"] = {
            "train_images": n_train,
            "epochs": [e1, e2],
            "total_pflop": round(total / 1e15, 1),
            "assumed_tflops": args.gpu_tflops,
            "assumed_mfu": args.mfu,
            "gpu_hours": round(total / eff / 3600, 2),
            "cpu_2core_hours_at_measured_rate": round(n_train * (e1 + e2) * st / B / 3600, 0),
        }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
