"""The trainer's public entry points: `train`, `load_run`, `items_for` and what they report.

This module imports torch only inside the functions, so `cxrctx.train` (and its config
and JSON Schema) can be imported without the training extra; calling `train` without
torch raises a CxrctxError that names the install command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrctx.errors import CxrctxError
from cxrctx.progress import as_callback, progress_arg
from cxrctx.train.config import TrainConfig, TrainStage
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
) -> TrainResult:
    """Train CLALA-Net in two stages (see `cxrctx.train.loop`); returns counts and the last validation.

    `progress` receives a `TrainEvent` per step and per stage start/end (rank 0 only).
    `interrupt_after` (tests) raises TrainingInterrupted after that global step.
    """
    progress = as_callback(progress)
    require_torch()
    from cxrctx.train import loop

    try:
        st = TrainStage(stage)
    except ValueError:
        raise CxrctxError(f"--stage must be 1, 2 or both (got {stage!r})") from None
    stages = [1, 2] if st is TrainStage.BOTH else [int(st.value)]
    ctx = loop.open_run(
        cfg,
        records=records,
        labels=labels,
        rois=rois,
        images=images,
        out=Path(out),
        stages=stages,
        resume=resume,
        progress=progress,
        interrupt_after=interrupt_after,
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
