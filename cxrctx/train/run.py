"""The trainer's public entry points: `train`, `load_run`, `items_for` and what they report.

This module imports torch only inside the functions, so `cxrctx.train` (and its config
and JSON Schema) can be imported without the training extra; calling `train` without
torch raises a CxrctxError that names the install command.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrctx.errors import CxrctxError
from cxrctx.progress import as_callback, progress_arg
from cxrctx.train.config import TrainConfig, TrainStage, validate_config
from cxrctx.train.data import join
from cxrctx.train.events import ProgressFn, TrainResult

if TYPE_CHECKING:
    from cxrctx.train.data import Item
    from cxrctx.train.model import ClalaNet
    from cxrctx.train.tokenizer import Tokenizer


def require_torch() -> None:
    """Raise a one-line CxrctxError when the training extra (torch, timm) is missing."""
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise CxrctxError(
            f"training needs torch and timm ({e.name} is not installed): pip install 'cxrctx[train]'"
        ) from e


@progress_arg("train")
def train(
    cfg: TrainConfig,
    *,
    records: str | os.PathLike,
    labels: str | os.PathLike,
    rois: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    stage: TrainStage | str = TrainStage.BOTH,
    resume: bool = False,
    progress: ProgressFn | bool | None = None,
    interrupt_after: int | None = None,
    classifier: str | os.PathLike | None = None,
) -> TrainResult:
    """Train the global lesion classifier (stage 0) and CLALA-Net's two stages (see
    `cxrctx.train.loop`); returns counts, the classifier's and the last validation.

    `classifier`: a finished classifier (a run folder or its `classifier/`) to load frozen
    instead of training one; its classifier fields replace `cfg`'s. `progress` receives a
    `TrainEvent` per step and per stage start/end (rank 0 only; stage 0 = the classifier).
    `interrupt_after` (tests) raises TrainingInterrupted after that global step.
    An OSError while writing (a full disk, a read-only --out) is a one-line CxrctxError.
    """
    progress = as_callback(progress)
    require_torch()
    stages, cfg = _plan(cfg, stage, Path(out), classifier)
    try:
        return _run(
            cfg,
            records,
            labels,
            rois,
            images,
            Path(out),
            stages,
            resume,
            progress,
            interrupt_after,
            Path(classifier) if classifier else None,
        )
    except OSError as e:  # a full disk, a read-only or vanished --out: one line, like every stage
        what = "cannot write" if e.errno in _WRITE_ERRNOS else "file error"
        raise CxrctxError(
            f"{e.filename or out}: {what} ({e.strerror or e}); training stopped"
        ) from None


_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


_STAGES = {
    TrainStage.CLASSIFIER: [0],
    TrainStage.ONE: [1],
    TrainStage.TWO: [2],
    TrainStage.BOTH: [1, 2],
}


def _plan(
    cfg: TrainConfig, stage: TrainStage | str, out: Path, classifier: str | os.PathLike | None
) -> tuple[list[int], TrainConfig]:
    """The stages to run (0 = the classifier, first when stage 1 needs one the run lacks)
    and the config (a reused classifier brings its own fields)."""
    try:
        st = TrainStage(stage)
    except ValueError:
        choices = ", ".join(s.value for s in TrainStage)
        raise CxrctxError(f"--stage must be one of {choices} (got {stage!r})") from None
    stages = list(_STAGES[st])
    if st is TrainStage.CLASSIFIER and (classifier is not None or not cfg.use_classifier):
        why = "--classifier reuses one" if classifier is not None else "use_classifier=false"
        raise CxrctxError(f"--stage classifier trains a classifier, but {why}")
    have = (out / "classifier" / "manifest.json").exists()
    if 1 in stages and cfg.use_classifier and classifier is None and not have:
        stages.insert(0, 0)
    if classifier is None:
        return stages, cfg
    from cxrctx.train.classifier import load_trained

    fields = load_trained(Path(classifier))["classifier_config"]
    return stages, validate_config(
        {**cfg.model_dump(mode="json"), **fields}, source=str(classifier)
    )


def _run(
    cfg, records, labels, rois, images, out, stages, resume, progress, interrupt_after, classifier
) -> TrainResult:
    from cxrctx.train import loop

    ctx = loop.open_run(
        cfg,
        records=records,
        labels=labels,
        rois=rois,
        images=images,
        out=out,
        stages=stages,
        resume=resume,
        progress=progress,
        interrupt_after=interrupt_after,
        classifier=classifier,
    )
    for s in stages:
        loop.run_stage(ctx, s)
    return loop.finish_run(ctx)


def load_run(
    run_dir: str | os.PathLike, device: Any = "cpu"
) -> tuple[TrainConfig, ClalaNet, Tokenizer, dict]:
    """A finished run's final model (weights_only load), its config, tokenizer and run info."""
    require_torch()
    from cxrctx.train import loop

    return loop.load_final(Path(run_dir), device)


def items_for(
    cfg: TrainConfig,
    *,
    records: str | os.PathLike,
    labels: str | os.PathLike | None,
    rois: str | os.PathLike,
    split: str | None,
) -> tuple[list[Item], list[dict]]:
    """The joined items of one split (all when None) and the join's skips (generation side)."""
    joined = join(records=records, labels=labels, rois=rois, require_labels=False)
    items = [it for it in joined.items if split is None or it.split == split]
    return items, joined.skips
