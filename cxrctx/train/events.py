"""What a training run reports: one `TrainEvent` per step / evaluation / stage boundary
(to a `ProgressFn`), and the `TrainResult` at the end. Torch-free, so the trainer's loop
(which needs torch) and its torch-free entry points (`cxrctx.train.run`) share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrainResult:
    """What a run did: steps, the stages finished, item counts, skip reasons, last validation."""

    run_dir: Path
    global_step: int
    stages: list[int]
    counts: dict[str, int] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    classifier: dict[str, Any] = field(default_factory=dict)  # its validation scores


@dataclass(frozen=True)
class TrainEvent:
    """One progress report. `kind`: stage_start (total known), step, eval, stage_end."""

    kind: Literal["stage_start", "step", "eval", "stage_end"]
    stage: int
    step: int
    total: int
    epoch: int = 0
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[TrainEvent], None]
