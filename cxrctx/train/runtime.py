"""Process-level plumbing of a training run: devices/DDP, RNG state, checkpoints.

Checkpoints hold only tensors and plain types, so they load with
`torch.load(weights_only=True)` (no pickled code runs when a checkpoint is read).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_path
from cxrctx.train.config import RUNTIME_FIELDS, TrainConfig, validate_config

CKPT_FORMAT = 2


@dataclass
class Dist:
    """Where this process runs: world size, rank and device (world 1 without torchrun)."""

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
    """A process group when torchrun set WORLD_SIZE > 1 (nccl on GPUs, gloo on CPUs)."""
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


class ListSampler(Sampler[list[int]]):
    """Yields precomputed batches (so a resumed epoch can start in the middle)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors/plain types (weights_only-loadable)."""
    np_state: Any = np.random.get_state()
    py = random.getstate()
    return {
        "python": [py[0], list(py[1]), py[2]],
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
