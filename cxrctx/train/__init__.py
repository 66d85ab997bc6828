"""The CLALA-Net reference trainer (the CLALA-Net paper): config, data, model, losses, loop.

Python API: `make_config(preset, **overrides) -> TrainConfig`, `train(cfg, records=...,
labels=..., rois=..., images=..., out=...) -> TrainResult`, `load_run(run_dir)`.
Importing this package needs neither torch nor timm (the config and its JSON Schema work
without them); `train` and `load_run` raise a CxrctxError naming
`pip install 'cxrctx[train]'` when they are missing.
"""

from __future__ import annotations

from cxrctx.train.config import (
    PRESETS,
    Preset,
    TrainConfig,
    TrainStage,
    make_config,
    validate_config,
)
from cxrctx.train.events import ProgressFn, TrainEvent, TrainResult
from cxrctx.train.run import items_for, load_run, train

__all__ = [
    "PRESETS",
    "Preset",
    "ProgressFn",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "TrainStage",
    "items_for",
    "load_run",
    "make_config",
    "train",
    "validate_config",
]
