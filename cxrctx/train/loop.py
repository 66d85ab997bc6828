"""The two-stage CLALA-Net training loop: checkpoints, exact resume, metrics JSONL, DDP.

Stage 1 ("pre-training"): all modules, lr 1e-4, ROI crops at 224 px. Stage 2
("fine-tuning"): only LCA and the text decoder are updated, lr 1e-5, 384 px (CLALA-Net paper).
AdamW with weight decay 0.05 in both. The losses of enabled modules are summed with their
weights; in stage 2 the classifier is frozen, so its loss is not computed.

Resume: `RUN/checkpoints/last.pt` holds model, optimiser and scheduler states, the stage,
epoch and position inside the epoch, the global step, the full config and every RNG
state. The sampler's order depends only on (seed, stage, epoch), so a resumed run skips
the batches already seen and continues bit-for-bit like an uninterrupted run (CPU; on GPUs
up to non-deterministic kernels). Checkpoints are read with `torch.load(weights_only=True)`.

Multi-GPU: the same code path; when `WORLD_SIZE` > 1 (torchrun) a process group is
initialised, the model is wrapped in DDP and a DistributedSampler shards each epoch
(the single-process run uses the same sampler with one replica). `batch_size` is global.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_path, atomic_write_text, write_parquet
from cxrctx.train.config import RUNTIME_FIELDS, TrainConfig, validate_config
from cxrctx.train.data import CropStore, Item, RoiDataset, collate, join
from cxrctx.train.losses import cls_loss, itcl_loss, llcl_loss
from cxrctx.train.model import ClalaNet, ce_loss
from cxrctx.train.tokenizer import WordTokenizer
from cxrctx.vocab import LESIONS

log = logging.getLogger(__name__)

CKPT_FORMAT = 1


class TrainingInterrupted(RuntimeError):
    """Raised by the test hook `interrupt_after` to simulate a kill (no checkpoint is written)."""


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    stages: list[int]
    counts: dict[str, int] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def setup_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Dist(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
    return Dist(world=world, rank=rank, local_rank=local, device=dev)


class ListSampler(Sampler[int]):
    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------- RNG + checkpoints


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict[str, Any]) -> None:
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CxrctxError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e


def check_config(saved: dict[str, Any], cfg: TrainConfig, source: Path) -> None:
    """Refuse a checkpoint written under another (model/optimisation) config, naming the fields."""
    old = validate_config(saved, source=str(source))
    a = old.model_dump(mode="json", exclude=RUNTIME_FIELDS)
    b = cfg.model_dump(mode="json", exclude=RUNTIME_FIELDS)
    diff = sorted(k for k in a if a[k] != b.get(k))
    if diff:
        shown = ", ".join(f"{k}: {a[k]!r} → {b[k]!r}" for k in diff[:4])
        raise CxrctxError(
            f"{source}: checkpoint comes from another config ({shown}); use a new --out or the same config"
        )


# ----------------------------------------------------------------------------- evaluation


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC by ranks (ties averaged); None when a class is absent."""
    pos, neg = labels.sum(), len(labels) - labels.sum()
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


@torch.no_grad()
def evaluate_classifier(
    model: ClalaNet, ds: RoiDataset, device: torch.device, batch_size: int = 64
) -> dict[str, Any]:
    """Per-lesion AUC, macro-AUC, accuracy vs the majority-class baseline and decoder CE on `ds`."""
    model.eval()
    probs, targets, ces = [], [], []
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, collate_fn=collate, generator=torch.Generator()
    )
    for batch in loader:
        if "rois" not in batch:
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = model(batch, status_source="predictions")
        ces.append(float(ce_loss(out["dec_logits"], batch["tokens"])))
        if "cls_logits" in out:
            probs.append(torch.sigmoid(out["cls_logits"]).float().cpu().numpy())
        targets.append(batch["targets"].cpu().numpy())
    model.train()
    res: dict[str, Any] = {"n": len(ds), "ce": float(np.mean(ces)) if ces else None}
    if not probs:
        return res
    p, t = np.concatenate(probs), np.concatenate(targets)
    per = {les: auc(p[:, i], t[:, i]) for i, les in enumerate(LESIONS)}
    vals = [v for v in per.values() if v is not None]
    pred = p > model.cfg.classifier_threshold
    res.update(
        {
            "auc": per,
            "macro_auc": float(np.mean(vals)) if vals else None,
            "accuracy": float((pred == (t > 0.5)).mean()),
            "majority_accuracy": float(np.maximum(t.mean(0), 1 - t.mean(0)).mean()),
        }
    )
    return res


# ----------------------------------------------------------------------------- main entry


def _lesion_tokens(tok: WordTokenizer, max_tokens: int) -> torch.Tensor:
    return torch.tensor([tok.encode(les, max_tokens) for les in LESIONS], dtype=torch.long)


def build_model(cfg: TrainConfig, tok: WordTokenizer) -> ClalaNet:
    return ClalaNet(cfg, len(tok), _lesion_tokens(tok, cfg.max_tokens))


def _lr_lambda(kind: str, total: int) -> Callable[[int], float]:
    if kind == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / max(1, total)))
    return lambda s: 1.0


def _write_skips(run_dir: Path, skips: list[dict]) -> None:
    df = pl.DataFrame(
        skips, schema={"dicom_id": pl.String, "study_id": pl.Int64, "reason": pl.String}
    )
    write_parquet(
        df.unique(subset=["dicom_id"], keep="first", maintain_order=True).sort("dicom_id"),
        run_dir / "skips.parquet",
    )


def _payload(
    cfg: TrainConfig,
    vocab_size: int,
    model,
    opt,
    sched,
    *,
    st: int,
    ep: int,
    pos: int,
    step: int,
    stage_step: int,
    done: bool = False,
) -> dict[str, Any]:
    """Everything a resume needs (only tensors and plain types: loadable with weights_only=True)."""
    return {
        "format": CKPT_FORMAT,
        "config": cfg.model_dump(mode="json"),
        "fingerprint": cfg.fingerprint(),
        "vocab_size": vocab_size,
        "stage": st,
        "stage_done": done,
        "epoch": ep,
        "pos": pos,
        "global_step": step,
        "stage_step": stage_step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
    }


def train(
    cfg: TrainConfig,
    *,
    records: str | os.PathLike,
    labels: str | os.PathLike,
    rois: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    stage: str = "both",
    resume: bool = False,
    progress: bool = False,
    interrupt_after: int | None = None,
) -> TrainResult:
    """Train CLALA-Net; see the module docstring. Returns step count, counts and last evaluation."""
    if stage not in ("1", "2", "both"):
        raise CxrctxError(f"--stage must be 1, 2 or both (got {stage!r})")
    stages = [1, 2] if stage == "both" else [int(stage)]
    dist = setup_dist()
    run = Path(out)
    ckdir = run / "checkpoints"
    last_path = ckdir / "last.pt"
    cfg_path = run / "config.json"
    if cfg_path.exists():
        check_config(json.loads(cfg_path.read_text()), cfg, cfg_path)
    if last_path.exists() and not resume and 1 in stages:
        raise CxrctxError(
            f"{run}: already holds checkpoints; pass --resume to continue or choose another --out"
        )
    if 2 in stages and 1 not in stages and not (ckdir / "stage1.pt").exists():
        raise CxrctxError(
            f"{ckdir / 'stage1.pt'}: stage 2 needs a finished stage 1 in this run dir"
        )
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
        atomic_write_text(
            run / "run.json",
            json.dumps(
                {
                    "tool_version": __version__,
                    "records": str(records),
                    "labels": str(labels),
                    "rois": str(rois),
                    "images": str(images),
                    "fingerprint": cfg.fingerprint(),
                },
                indent=2,
            )
            + "\n",
        )
    dist.barrier()

    # ---- data
    joined = join(records=records, labels=labels, rois=rois)
    train_items = [it for it in joined.items if it.split == "train"]
    val_items = [it for it in joined.items if it.split == "validate"]
    if not train_items:
        raise CxrctxError(
            f"{rois}: no usable training images (split 'train') after joining records, labels and ROIs"
        )
    tok_path = run / "tokenizer.json"
    tok = WordTokenizer.build(
        (t for it in train_items for t in it.texts),
        extra=LESIONS,
        min_freq=cfg.vocab_min_freq,
        max_size=cfg.vocab_max_size,
    )
    if tok_path.exists() and WordTokenizer.load(tok_path).vocab != tok.vocab:
        raise CxrctxError(
            f"{tok_path}: the training data changed since this run started (vocabulary differs)"
        )
    if dist.main:
        tok.save(tok_path)
    skips = list(joined.skips)
    cache_dir = run / "cache" if cfg.crop_cache else None

    def datasets(size: int) -> tuple[RoiDataset, RoiDataset | None]:
        store = CropStore(images, cache_dir, size, cfg.global_image_size or size)
        if dist.main:
            tr, s1 = store.prepare(train_items, workers=cfg.num_workers)
            va, s2 = store.prepare(val_items, workers=cfg.num_workers)
        dist.barrier()
        if not dist.main:
            tr, s1 = store.prepare(train_items, workers=cfg.num_workers)
            va, s2 = store.prepare(val_items, workers=cfg.num_workers)
        skips.extend(s1 + s2)
        if not tr:
            raise CxrctxError(
                f"{images}: none of the {len(train_items)} training images could be read (see skips)"
            )
        return RoiDataset(tr, store, tok, cfg.max_tokens), (
            RoiDataset(va, store, tok, cfg.max_tokens) if va else None
        )

    # ---- model
    seed_everything(cfg.seed)
    model = build_model(cfg, tok).to(dist.device)
    ckdir.mkdir(parents=True, exist_ok=True)
    metrics_path = run / "metrics.jsonl"
    result = TrainResult(run_dir=run, global_step=0, stages=[])

    resume_state = load_checkpoint(last_path) if (resume and last_path.exists()) else None
    if resume_state is not None:
        check_config(resume_state["config"], cfg, last_path)
        if resume_state.get("vocab_size") != len(tok):
            raise CxrctxError(
                f"{last_path}: vocabulary size differs from this data ({resume_state.get('vocab_size')} vs {len(tok)})"
            )
        if dist.main and metrics_path.exists():  # drop metrics logged after the checkpoint
            keep = []
            for line in metrics_path.read_text().splitlines():
                m = json.loads(line)
                if (m["stage"], m["step"]) <= (resume_state["stage"], resume_state["global_step"]):
                    keep.append(line)
            atomic_write_text(metrics_path, "".join(k + "\n" for k in keep))
    elif dist.main and metrics_path.exists():  # a fresh stage: drop its (and later) old rows
        keep = [
            line
            for line in metrics_path.read_text().splitlines()
            if json.loads(line)["stage"] < stages[0]
        ]
        atomic_write_text(metrics_path, "".join(k + "\n" for k in keep))

    def log_metrics(row: dict[str, Any]) -> None:
        if dist.main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")

    for st in stages:
        done_path = ckdir / f"stage{st}.pt"
        if (
            resume
            and done_path.exists()
            and (
                resume_state is None or resume_state["stage"] > st or resume_state.get("stage_done")
            )
        ):
            ck = load_checkpoint(done_path)
            check_config(ck["config"], cfg, done_path)
            model.load_state_dict(ck["model"])
            result.global_step = ck["global_step"]
            result.stages.append(st)
            continue
        if (
            st == 2
            and 1 not in result.stages
            and (resume_state is None or resume_state["stage"] != 2)
        ):
            ck = load_checkpoint(ckdir / "stage1.pt")
            check_config(ck["config"], cfg, ckdir / "stage1.pt")
            model.load_state_dict(ck["model"])
        size = cfg.image_size_stage1 if st == 1 else cfg.image_size_stage2
        train_ds, val_ds = datasets(size)
        for p in model.parameters():
            p.requires_grad_(st == 1)
        if st == 2:
            for p in model.stage2_parameters():
                p.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        fwd: torch.nn.Module = model
        if dist.world > 1:  # wrapped per stage: DDP fixes the trainable set at construction
            fwd = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        lr = cfg.lr_stage1 if st == 1 else cfg.lr_stage2
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        per_rank = max(1, cfg.batch_size // dist.world)
        sampler = DistributedSampler(
            train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed + st
        )
        steps_per_epoch = math.ceil(len(sampler) / per_rank)
        epochs = cfg.epochs_stage1 if st == 1 else cfg.epochs_stage2
        total = epochs * steps_per_epoch
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.lr_schedule, total))
        epoch, pos, step = 0, 0, result.global_step
        stage_step = 0
        if (
            resume_state is not None
            and resume_state["stage"] == st
            and not resume_state.get("stage_done")
        ):
            model.load_state_dict(resume_state["model"])
            opt.load_state_dict(resume_state["optimizer"])
            sched.load_state_dict(resume_state["scheduler"])
            epoch, pos = resume_state["epoch"], resume_state["pos"]
            step, stage_step = resume_state["global_step"], resume_state["stage_step"]
            set_rng_state(resume_state["rng"])
            log.info("resuming stage %d at epoch %d, batch %d (step %d)", st, epoch, pos, step)
        resume_state = None
        status_source = cfg.lca_train_source

        bar = None
        if progress and dist.main:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            bar = Progress(
                TextColumn(f"stage {st}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeRemainingColumn(),
            )
            task = bar.add_task("train", total=total, completed=stage_step, loss="")
            bar.start()
        model.train()
        payload = functools.partial(_payload, cfg, len(tok), model, opt, sched, st=st)
        try:
            while epoch < epochs and stage_step < total:
                sampler.set_epoch(epoch)
                order = list(sampler)
                batches = [order[i : i + per_rank] for i in range(0, len(order), per_rank)]
                loader = DataLoader(
                    train_ds,
                    batch_sampler=ListSampler(batches[pos:]),  # type: ignore[arg-type]
                    num_workers=cfg.num_workers,
                    collate_fn=collate,
                    # its own generator: creating an iterator must not draw from the global
                    # RNG (dropout), or a resumed epoch would shift the dropout masks
                    generator=torch.Generator().manual_seed(cfg.seed * 1000 + st * 100 + epoch),
                )
                for batch in loader:
                    if stage_step >= total:
                        break
                    dropped = batch.pop("dropped", 0)
                    pos += 1
                    stage_step += 1
                    step += 1
                    if "rois" not in batch:
                        log_metrics(
                            {
                                "stage": st,
                                "epoch": epoch,
                                "step": step,
                                "dropped": dropped,
                                "skipped_batch": True,
                            }
                        )
                        continue
                    batch = {k: v.to(dist.device, non_blocking=True) for k, v in batch.items()}
                    use_amp = cfg.amp and dist.device.type == "cuda"
                    with torch.autocast(
                        device_type=dist.device.type, dtype=torch.bfloat16, enabled=use_amp
                    ):
                        outp = fwd(batch, status_source=status_source)
                    losses: dict[str, torch.Tensor] = {
                        "ce": ce_loss(outp["dec_logits"].float(), batch["tokens"])
                    }
                    total_loss = cfg.weight_ce * losses["ce"]
                    extra: dict[str, Any] = {}
                    if cfg.use_llcl:
                        losses["llcl"], extra["llcl_anchors"] = llcl_loss(
                            outp["refined"],
                            outp["raw"],
                            batch["roi_keys"],
                            tau=cfg.temperature_llcl,
                            pair_normals=cfg.llcl_pair_normals,
                        )
                        total_loss = total_loss + cfg.weight_llcl * losses["llcl"]
                    if cfg.use_itcl:
                        losses["itcl"], extra["itcl_pairs"] = itcl_loss(
                            outp["refined"],
                            outp["text_emb"],
                            batch["has_text"],
                            batch["text_ids"],
                            tau=cfg.temperature_itcl,
                        )
                        total_loss = total_loss + cfg.weight_itcl * losses["itcl"]
                    if cfg.use_classifier and st == 1:
                        losses["cls"] = cls_loss(outp["cls_logits"], batch["targets"])
                        total_loss = total_loss + cfg.weight_cls * losses["cls"]
                    if not torch.isfinite(total_loss):
                        raise CxrctxError(
                            f"non-finite loss at stage {st} step {step}: { {k: float(v) for k, v in losses.items()} }"
                        )
                    opt.zero_grad(set_to_none=True)
                    total_loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    sched.step()
                    if bar is not None:
                        bar.update(task, advance=1, loss=f"loss {float(total_loss.detach()):.3f}")
                    if step % cfg.log_every == 0 or stage_step == total:
                        row = {
                            "stage": st,
                            "epoch": epoch,
                            "step": step,
                            "loss": float(total_loss.detach()),
                            "lr": sched.get_last_lr()[0],
                            "dropped": dropped,
                        }
                        row.update({k: float(v.detach()) for k, v in losses.items()})
                        row.update(extra)
                        log_metrics(row)
                    if interrupt_after is not None and step >= interrupt_after:
                        raise TrainingInterrupted(f"interrupted after step {step}")
                    if step % cfg.checkpoint_every == 0 and dist.main:
                        save_checkpoint(
                            last_path, payload(ep=epoch, pos=pos, step=step, stage_step=stage_step)
                        )
                else:
                    epoch, pos = epoch + 1, 0
                    if dist.main:
                        save_checkpoint(
                            last_path, payload(ep=epoch, pos=pos, step=step, stage_step=stage_step)
                        )
                    continue
                break  # max_steps reached inside the epoch
        finally:
            if bar is not None:
                bar.stop()
        ev = (
            evaluate_classifier(model, val_ds, dist.device)
            if (val_ds is not None and dist.main)
            else {}
        )
        if ev:
            log_metrics({"stage": st, "step": step, "eval": ev})
        if dist.main:
            payload = _payload(
                cfg,
                len(tok),
                model,
                opt,
                sched,
                st=st,
                ep=epoch,
                pos=pos,
                step=step,
                stage_step=stage_step,
                done=True,
            )
            save_checkpoint(
                done_path,
                {
                    k: payload[k]
                    for k in (
                        "format",
                        "config",
                        "fingerprint",
                        "vocab_size",
                        "stage",
                        "global_step",
                        "model",
                    )
                },
            )
            save_checkpoint(last_path, payload)
        dist.barrier()
        result.global_step = step
        result.stages.append(st)
        result.eval = ev
    if dist.main:
        final = load_checkpoint(ckdir / f"stage{result.stages[-1]}.pt")
        save_checkpoint(ckdir / "final.pt", final)
        _write_skips(run, skips)
    result.counts = {
        "train_items": len(train_items),
        "val_items": len(val_items),
        "joined_skips": len(joined.skips),
    }
    from collections import Counter

    # an image skipped in both stages counts once
    unique = {s["dicom_id"]: s for s in reversed(skips)}
    result.skips = dict(sorted(Counter(s["reason"].split(":")[0] for s in unique.values()).items()))
    return result


def load_run(
    run_dir: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[TrainConfig, ClalaNet, WordTokenizer, dict]:
    """Load a finished run's final model (weights_only), its config, tokenizer and run info."""
    run = Path(run_dir)
    path = run / "checkpoints" / "final.pt"
    if not path.exists():
        raise CxrctxError(f"{path}: no final checkpoint (has training finished?)")
    ck = load_checkpoint(path)
    cfg = validate_config(ck["config"], source=str(path))
    tok = WordTokenizer.load(run / "tokenizer.json")
    if ck.get("vocab_size") != len(tok):
        raise CxrctxError(
            f"{path}: checkpoint vocabulary ({ck.get('vocab_size')}) does not match {run / 'tokenizer.json'} ({len(tok)})"
        )
    model = build_model(cfg, tok)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise CxrctxError(
            f"{path}: weights do not fit the configured model ({str(e).splitlines()[0]})"
        ) from e
    info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
    info["stage"] = ck.get("stage")
    return cfg, model.to(device).eval(), tok, info


def items_for(
    cfg: TrainConfig,
    *,
    records: str | os.PathLike,
    labels: str | os.PathLike | None,
    rois: str | os.PathLike,
    split: str | None,
) -> tuple[list[Item], list[dict]]:
    joined = join(records=records, labels=labels, rois=rois, require_labels=False)
    items = [it for it in joined.items if split is None or it.split == split]
    return items, joined.skips
