"""The CLALA-Net training loop as named phases: open, classifier, stage (epochs → steps), finish.

Stage 0 ("classifier", `cxrctx.train.classifier`): the separate global lesion classifier,
trained first on the full images, its per-lesion thresholds calibrated on validation; it
is then loaded frozen into the model (or taken from another run with `--classifier RUN`).

Stage 1 ("pre-training"): all modules, lr 1e-4, ROI crops at 224 px. Stage 2
("fine-tuning"): only LCA and the text decoder are updated, lr 1e-5, 384 px (CLALA-Net
paper). AdamW with weight decay 0.05 in both. The losses of enabled modules are summed with
their weights; a loss that cannot change any trainable weight in a stage is not computed.

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

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from cxrctx import jsonl
from cxrctx.errors import CxrctxError
from cxrctx.io import (
    atomic_path,
)
from cxrctx.locks import lock_folder
from cxrctx.train import classifier as cls_stage
from cxrctx.train.bert import WordPieceTokenizer
from cxrctx.train.config import TrainConfig
from cxrctx.train.data import CropStore, Item, RoiDataset, collate, join
from cxrctx.train.evaluation import calibrate
from cxrctx.train.events import ProgressFn, TrainEvent, TrainResult
from cxrctx.train.losses import active_losses, label_mix, stage_losses, weighted_total
from cxrctx.train.model import ClalaNet
from cxrctx.train.rundir import (
    _check_run_dir,
    _write_run_files,
    _write_run_manifest,
    _write_skips,
    build_model,
    load_final,
)
from cxrctx.train.runtime import (
    CKPT_FORMAT,
    Dist,
    ListSampler,
    check_config,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    setup_dist,
)
from cxrctx.train.tokenizer import Tokenizer, WordTokenizer, load_tokenizer
from cxrctx.vocab import LESIONS as LESIONS_

__all__ = [
    "TrainingInterrupted",
    "active_losses",
    "build_model",
    "finish_run",
    "load_checkpoint",
    "load_final",
    "open_run",
    "run_stage",
]

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Raised by the test hook `interrupt_after` to simulate a kill (no checkpoint is written)."""


class MetricsLog:
    """`RUN/metrics.jsonl`: one JSON row per logged step/evaluation (rank 0 writes)."""

    def __init__(self, path: Path, main: bool):
        self.path, self.main = path, main

    def write(self, row: dict[str, Any]) -> None:
        if self.main:
            jsonl.append(self.path, [row], sort_keys=True, compact=False)

    def keep(self, pred: Callable[[dict], bool]) -> None:
        """Drop rows a resume or a re-run will write again."""
        if self.main and self.path.exists():
            rows = [r for _, r in jsonl.scan(self.path, jsonl.BadLines()) if pred(r)]
            with atomic_path(self.path) as tmp:
                jsonl.write(tmp, rows, sort_keys=True, compact=False)


@dataclass
class RunContext:
    """Everything the stages share."""

    cfg: TrainConfig
    dist: Dist
    run: Path
    images: Path
    tok: Tokenizer
    model: ClalaNet
    train_items: list[Item]
    val_items: list[Item]
    metrics: MetricsLog
    result: TrainResult
    resume: bool
    resume_state: dict[str, Any] | None
    progress: ProgressFn | None
    interrupt_after: int | None
    joined_skips: int = 0
    skips: list[dict] = field(default_factory=list)
    classifier_src: Path | None = None  # --classifier RUN; None: this run's own classifier/

    @property
    def ckdir(self) -> Path:
        return self.run / "checkpoints"

    def emit(self, ev: TrainEvent) -> None:
        if self.progress is not None and self.dist.main:
            self.progress(ev)


@dataclass
class StageState:
    """Position inside a stage (what a checkpoint stores to resume it)."""

    st: int
    epochs: int
    total: int
    per_rank: int
    epoch: int = 0
    pos: int = 0
    step: int = 0
    stage_step: int = 0


# ----------------------------------------------------------------------------- open


def _load_items(
    cfg: TrainConfig, records: Any, labels: Any, rois: Any, run: Path, main: bool
) -> tuple[list[Item], list[Item], list[dict], Tokenizer]:
    """Join the inputs, split them, and build (or check) the run's tokenizer."""
    joined = join(
        records=records, labels=labels, rois=rois, order_findings_first=cfg.findings_first
    )
    train_items = [it for it in joined.items if it.split == "train"]
    val_items = [it for it in joined.items if it.split == "validate"]
    if not train_items:
        raise CxrctxError(
            f"{rois}: no usable training images (split 'train') after joining records, labels and ROIs"
        )
    tok: Tokenizer
    if cfg.text_model:
        tok = WordPieceTokenizer.from_pretrained(cfg.text_model)
    else:
        tok = WordTokenizer.build(
            (t for it in train_items for t in it.texts),
            extra=LESIONS_,
            min_freq=cfg.vocab_min_freq,
            max_size=cfg.vocab_max_size,
        )
    tok_path = run / "tokenizer.json"
    if tok_path.exists() and load_tokenizer(tok_path).vocab != tok.vocab:
        raise CxrctxError(
            f"{tok_path}: the training data changed since this run started (vocabulary differs)"
        )
    if main:
        tok.save(tok_path)
    return train_items, val_items, list(joined.skips), tok


def _restore(ctx: RunContext, first_stage: int) -> None:
    """Load `last.pt` for --resume and drop metrics rows the resumed run will write again."""
    last = ctx.ckdir / "last.pt"
    state = load_checkpoint(last) if (ctx.resume and last.exists()) else None
    if state is None:
        ctx.metrics.keep(lambda m: m["stage"] < first_stage)
        return
    check_config(state["config"], ctx.cfg, last)
    if state.get("vocab_size") != len(ctx.tok):
        raise CxrctxError(
            f"{last}: vocabulary size differs from this data ({state.get('vocab_size')} vs {len(ctx.tok)})"
        )
    ctx.metrics.keep(lambda m: (m["stage"], m["step"]) <= (state["stage"], state["global_step"]))
    ctx.resume_state = state


def open_run(
    cfg: TrainConfig,
    *,
    records: Any,
    labels: Any,
    rois: Any,
    images: Any,
    out: Path,
    stages: list[int],
    resume: bool,
    progress: ProgressFn | None,
    interrupt_after: int | None,
    classifier: Path | None = None,
) -> RunContext:
    """Check the run dir, write config/run info, join the data, build the model, restore."""
    random_parts = cfg.random_init_parts()
    if cfg.preset == "paper" and random_parts and not cfg.allow_random_init:
        raise CxrctxError(
            f"the paper preset pretrains {' and '.join(random_parts)} but none is given: "
            "--set vit_weights=FILE --set text_model=BERT_DIR --set classifier_weights=FILE (local files), "
            "or --set allow_random_init=true to train from random weights (not the paper's model)"
        )
    dist = setup_dist()
    _check_run_dir(out, cfg, stages, resume)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        lock_folder(out)  # one training run per --out ("in use by pid N")
        inputs = {"records": str(records), "labels": str(labels), "rois": str(rois)}
        src = str(cls_stage.classifier_dir(classifier)) if classifier else None
        _write_run_files(out, cfg, {**inputs, "images": str(images), "classifier": src})
    dist.barrier()
    train_items, val_items, skips, tok = _load_items(cfg, records, labels, rois, out, dist.main)
    seed_everything(cfg.seed)
    model = build_model(cfg, tok).to(dist.device)
    ctx = RunContext(
        cfg=cfg,
        dist=dist,
        run=out,
        images=Path(images),
        tok=tok,
        model=model,
        train_items=train_items,
        val_items=val_items,
        metrics=MetricsLog(out / "metrics.jsonl", dist.main),
        result=TrainResult(run_dir=out, global_step=0, stages=[]),
        resume=resume,
        resume_state=None,
        progress=progress,
        interrupt_after=interrupt_after,
        joined_skips=len(skips),
        skips=skips,
        classifier_src=classifier,
    )
    if cfg.preset == "paper" and random_parts:
        msg = f"paper preset with random {' and '.join(random_parts)}: not the paper's pretrained model"
        log.warning(msg)
        ctx.result.warnings.append(msg)
    _restore(ctx, stages[0])
    return ctx


# ----------------------------------------------------------------------------- one stage


def _prepared(ctx: RunContext, size: int) -> tuple[list[Item], list[Item], CropStore]:
    """Decode (and cache) every image of train/validate at this size; count skips."""
    cfg, dist = ctx.cfg, ctx.dist
    cache = ctx.run / "cache" if cfg.crop_cache else None
    store = CropStore(ctx.images, cache, size, cfg.global_image_size or size)
    for turn in (True, False):  # rank 0 fills the cache first, the others then read it
        if dist.main == turn:
            tr, s1 = store.prepare(ctx.train_items, workers=cfg.num_workers)
            va, s2 = store.prepare(ctx.val_items, workers=cfg.num_workers)
        if turn:
            dist.barrier()
    ctx.skips.extend(s1 + s2)
    if not tr:
        raise CxrctxError(
            f"{ctx.images}: none of the {len(ctx.train_items)} training images could be read (see skips)"
        )
    return tr, va, store


def _datasets(ctx: RunContext, size: int) -> tuple[RoiDataset, RoiDataset | None]:
    """The ROI datasets of a stage at its crop size."""
    cfg = ctx.cfg
    tr, va, store = _prepared(ctx, size)
    val = RoiDataset(va, store, ctx.tok, cfg.max_tokens) if va else None
    return RoiDataset(tr, store, ctx.tok, cfg.max_tokens), val


def _stage_done_already(ctx: RunContext, st: int) -> bool:
    """On --resume, a finished stage is loaded instead of trained again."""
    done = ctx.ckdir / f"stage{st}.pt"
    rs = ctx.resume_state
    if not (ctx.resume and done.exists()):
        return False
    if rs is not None and rs["stage"] <= st and not rs.get("stage_done"):
        return False
    ck = load_checkpoint(done)
    check_config(ck["config"], ctx.cfg, done)
    ctx.model.load_state_dict(ck["model"])
    ctx.result.global_step = ck["global_step"]
    ctx.result.stages.append(st)
    return True


def _trainable(ctx: RunContext, st: int) -> tuple[list[torch.nn.Parameter], torch.nn.Module]:
    """Stage 1 trains everything, stage 2 only LCA + decoder; DDP wraps per stage."""
    model = ctx.model
    for p in model.parameters():
        p.requires_grad_(st == 1)
    if st == 2:
        for p in model.stage2_parameters():
            p.requires_grad_(True)
    if model.classifier is not None:  # trained in its own stage, frozen here
        for p in model.classifier.parameters():
            p.requires_grad_(False)
    fwd: torch.nn.Module = model
    if ctx.dist.world > 1:  # DDP fixes the trainable set at construction
        fwd = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[ctx.dist.local_rank] if ctx.dist.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    return [p for p in model.parameters() if p.requires_grad], fwd


def _lr_lambda(kind: str, total: int) -> Callable[[int], float]:
    if kind == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / max(1, total)))
    return lambda s: 1.0


def _payload(ctx: RunContext, s: StageState, opt: Any, sched: Any, done: bool) -> dict[str, Any]:
    """Everything a resume needs (only tensors and plain types: loadable with weights_only=True)."""
    return {
        "format": CKPT_FORMAT,
        "config": ctx.cfg.model_dump(mode="json"),
        "fingerprint": ctx.cfg.fingerprint(),
        "vocab_size": len(ctx.tok),
        "stage": s.st,
        "stage_done": done,
        "epoch": s.epoch,
        "pos": s.pos,
        "global_step": s.step,
        "stage_step": s.stage_step,
        "model": ctx.model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
    }


def _resume_stage(ctx: RunContext, s: StageState, opt: Any, sched: Any) -> None:
    rs, ctx.resume_state = ctx.resume_state, None
    if rs is None or rs["stage"] != s.st or rs.get("stage_done"):
        return
    ctx.model.load_state_dict(rs["model"])
    opt.load_state_dict(rs["optimizer"])
    sched.load_state_dict(rs["scheduler"])
    s.epoch, s.pos, s.step, s.stage_step = (
        rs["epoch"],
        rs["pos"],
        rs["global_step"],
        rs["stage_step"],
    )
    set_rng_state(rs["rng"])
    log.info("resuming stage %d at epoch %d, batch %d (step %d)", s.st, s.epoch, s.pos, s.step)


def _step(ctx: RunContext, s: StageState, fwd: torch.nn.Module, batch: dict, opt, params) -> tuple:
    """Forward, losses, backward, optimiser step; returns (total loss, losses, extra)."""
    cfg, dev = ctx.cfg, ctx.dist.device
    batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
    amp = cfg.amp and dev.type == "cuda"
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
        outp = fwd(batch, label_mix=label_mix(cfg, s.st, s.stage_step, s.total))
    losses, extra = stage_losses(cfg, s.st, outp, batch)
    total = weighted_total(cfg, losses)
    if not torch.isfinite(total):
        shown = {k: float(v) for k, v in losses.items()}
        raise CxrctxError(f"non-finite loss at stage {s.st} step {s.step}: {shown}")
    opt.zero_grad(set_to_none=True)
    total.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    return total, losses, extra


def _epoch_loader(ctx: RunContext, s: StageState, ds: RoiDataset, sampler) -> DataLoader[Any]:
    sampler.set_epoch(s.epoch)
    order = list(sampler)
    batches = [order[i : i + s.per_rank] for i in range(0, len(order), s.per_rank)]
    return DataLoader(
        cast(Any, ds),
        batch_sampler=ListSampler(batches[s.pos :]),
        num_workers=ctx.cfg.num_workers,
        collate_fn=collate,
        # its own generator: creating an iterator must not draw from the global RNG
        # (dropout), or a resumed epoch would shift the dropout masks
        generator=torch.Generator().manual_seed(ctx.cfg.seed * 1000 + s.st * 100 + s.epoch),
    )


def _train_epochs(ctx: RunContext, s: StageState, ds: RoiDataset, opt, sched, params, fwd) -> None:
    """Epochs → batches → steps, with logging, progress events and rolling checkpoints."""
    cfg, main = ctx.cfg, ctx.dist.main
    sampler: DistributedSampler[Any] = DistributedSampler(
        cast(Any, ds),
        num_replicas=ctx.dist.world,
        rank=ctx.dist.rank,
        shuffle=True,
        seed=cfg.seed + s.st,
    )
    last = ctx.ckdir / "last.pt"
    ctx.model.train()
    while s.epoch < s.epochs and s.stage_step < s.total:
        for batch in _epoch_loader(ctx, s, ds, sampler):
            if s.stage_step >= s.total:
                break
            dropped = batch.pop("dropped", 0)
            s.pos, s.stage_step, s.step = s.pos + 1, s.stage_step + 1, s.step + 1
            row: dict[str, Any] = {
                "stage": s.st,
                "epoch": s.epoch,
                "step": s.step,
                "dropped": dropped,
            }
            if "rois" not in batch:
                ctx.metrics.write({**row, "skipped_batch": True})
                continue
            total, losses, extra = _step(ctx, s, fwd, batch, opt, params)
            sched.step()
            loss = float(total.detach())
            ctx.emit(TrainEvent("step", s.st, s.stage_step, s.total, s.epoch, loss))
            if s.step % cfg.log_every == 0 or s.stage_step == s.total:
                row.update(loss=loss, lr=sched.get_last_lr()[0], **extra)
                row.update({k: float(v.detach()) for k, v in losses.items()})
                ctx.metrics.write(row)
            if ctx.interrupt_after is not None and s.step >= ctx.interrupt_after:
                raise TrainingInterrupted(f"interrupted after step {s.step}")
            if s.step % cfg.checkpoint_every == 0 and main:
                save_checkpoint(last, _payload(ctx, s, opt, sched, done=False))
        else:
            s.epoch, s.pos = s.epoch + 1, 0
            if main:
                save_checkpoint(last, _payload(ctx, s, opt, sched, done=False))
            continue
        break  # max_steps reached inside the epoch


def _finish_stage(ctx: RunContext, s: StageState, val_ds, opt, sched) -> None:
    """Validate, write `stageN.pt` (weights) and `last.pt` (full state)."""
    ev: dict[str, Any] = {}
    if val_ds is not None and ctx.dist.main:
        ev = calibrate(ctx.model, val_ds, ctx.dist.device)
        ctx.metrics.write({"stage": s.st, "step": s.step, "eval": ev})
        ctx.emit(TrainEvent("eval", s.st, s.stage_step, s.total, s.epoch, metrics=ev))
    if ctx.dist.main:
        payload = _payload(ctx, s, opt, sched, done=True)
        keep = ("format", "config", "fingerprint", "vocab_size", "stage", "global_step", "model")
        save_checkpoint(ctx.ckdir / f"stage{s.st}.pt", {k: payload[k] for k in keep})
        save_checkpoint(ctx.ckdir / "last.pt", payload)
    ctx.dist.barrier()
    ctx.result.global_step = s.step
    ctx.result.stages.append(s.st)
    ctx.result.eval = ev
    ctx.emit(TrainEvent("stage_end", s.st, s.stage_step, s.total, s.epoch, metrics=ev))


def run_classifier(ctx: RunContext) -> None:
    """Stage 0: train the global lesion classifier into RUN/classifier/ (a finished one is
    kept on --resume)."""
    out = ctx.run / "classifier"
    if ctx.resume and (out / "manifest.json").exists():
        ctx.result.classifier = cls_stage.load_trained(out)["eval"]
        return
    cfg = ctx.cfg
    tr, va, store = _prepared(ctx, cfg.image_size_stage1)
    ctx.emit(TrainEvent("stage_start", 0, 0, cfg.classifier_epochs))

    def on_epoch(epoch: int, total: int, loss: float) -> None:
        ctx.metrics.write({"stage": 0, "step": epoch, "epoch": epoch, "loss": loss})
        ctx.emit(TrainEvent("step", 0, epoch, total, epoch, loss))

    ev = cls_stage.fit(
        cfg,
        train_ds=cls_stage.GlobalDataset(tr, store),
        val_ds=cls_stage.GlobalDataset(va, store) if va else None,
        out=out,
        dist=ctx.dist,
        resume=ctx.resume,
        on_epoch=on_epoch,
    )
    ctx.metrics.write({"stage": 0, "step": cfg.classifier_epochs, "eval": ev})
    ctx.result.classifier = ev
    ctx.emit(TrainEvent("stage_end", 0, cfg.classifier_epochs, cfg.classifier_epochs, metrics=ev))


def _install_classifier(ctx: RunContext) -> None:
    """Load the trained classifier (this run's or --classifier's) frozen into the model."""
    if not ctx.cfg.use_classifier:
        return
    src = ctx.classifier_src or ctx.run / "classifier"
    if (
        not (cls_stage.classifier_dir(src) / "manifest.json").exists()
        and ctx.classifier_src is None
    ):
        raise CxrctxError(
            f"{src}: stage 1 needs the lesion classifier: run --stage classifier first, "
            "--stage all, or pass --classifier RUN"
        )
    ck = cls_stage.load_trained(src)
    if ck["classifier_config"] != ctx.cfg.classifier_fields():
        raise CxrctxError(f"{src}: the classifier was trained under another classifier config")
    ctx.model.load_classifier(ck["model"], ck["thresholds"])
    if not ctx.result.classifier:
        ctx.result.classifier = ck["eval"]


def run_stage(ctx: RunContext, st: int) -> None:
    """Train one stage (or load it when a resumed run already finished it)."""
    cfg = ctx.cfg
    if st == 0:
        run_classifier(ctx)
        return
    if _stage_done_already(ctx, st):
        return
    if st == 1:
        _install_classifier(ctx)
    rs = ctx.resume_state
    if st == 2 and 1 not in ctx.result.stages and (rs is None or rs["stage"] != 2):
        ck = load_checkpoint(ctx.ckdir / "stage1.pt")
        check_config(ck["config"], cfg, ctx.ckdir / "stage1.pt")
        ctx.model.load_state_dict(ck["model"])
    train_ds, val_ds = _datasets(ctx, cfg.image_size_stage1 if st == 1 else cfg.image_size_stage2)
    params, fwd = _trainable(ctx, st)
    opt = torch.optim.AdamW(
        params, lr=cfg.lr_stage1 if st == 1 else cfg.lr_stage2, weight_decay=cfg.weight_decay
    )
    per_rank = max(1, cfg.batch_size // ctx.dist.world)
    epochs = cfg.epochs_stage1 if st == 1 else cfg.epochs_stage2
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / ctx.dist.world) / per_rank)
    total = min(epochs * steps_per_epoch, cfg.max_steps or 10**12)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.lr_schedule, total))
    s = StageState(st, epochs, total, per_rank, step=ctx.result.global_step)
    _resume_stage(ctx, s, opt, sched)
    ctx.emit(TrainEvent("stage_start", st, s.stage_step, total, s.epoch))
    _train_epochs(ctx, s, train_ds, opt, sched, params, fwd)
    _finish_stage(ctx, s, val_ds, opt, sched)


# ----------------------------------------------------------------------------- finish


def finish_run(ctx: RunContext) -> TrainResult:
    """`final.pt` = the last stage's weights; `skips.parquet`; counts for the caller."""
    res = ctx.result
    res.counts = {
        "train_items": len(ctx.train_items),
        "val_items": len(ctx.val_items),
        "joined_skips": ctx.joined_skips,
    }
    unique = {s["dicom_id"]: s for s in reversed(ctx.skips)}  # skipped in both stages: once
    res.skips = dict(sorted(Counter(s["reason"].split(":")[0] for s in unique.values()).items()))
    if not res.stages:  # the classifier stage alone: no CLALA-Net weights yet
        return res
    if ctx.dist.main:
        final = load_checkpoint(ctx.ckdir / f"stage{ctx.result.stages[-1]}.pt")
        save_checkpoint(ctx.ckdir / "final.pt", final)
        _write_skips(ctx.run, ctx.skips)
        _write_run_manifest(ctx.run, ctx.cfg, res)
    return res
