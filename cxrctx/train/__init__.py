"""The CLALA-Net reference trainer (the CLALA-Net paper): config, data, model, losses, loop.

Python API: `make_config(preset, **overrides) -> TrainConfig`, `train(cfg, records=...,
labels=..., rois=..., images=..., out=...) -> TrainResult`, `load_run(run_dir)`.
torch and timm are imported only when `train` / `load_run` are first used, so the config
(and its JSON Schema) is usable without them.
"""

from __future__ import annotations

from typing import Any

from cxrctx.train.config import PRESETS, TrainConfig, make_config, validate_config

__all__ = ["PRESETS", "TrainConfig", "load_run", "make_config", "train", "validate_config"]


def __getattr__(name: str) -> Any:
    if name in ("train", "load_run", "TrainResult", "evaluate_classifier"):
        from cxrctx.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
