"""The global lesion classifier: its own network, trained first, frozen in stages 1 and 2.

CLALA-Net takes its image-level lesion predictions from a *separate* vision-language model
(BioViL-T) trained on the LLM-extracted lesion labels, and LCA injects those predictions
into the ROI features; the paper's ablations leave that network untouched. Here: any timm
backbone on the full image (tiny preset: a quarter-width ResNet-18 on one grey channel;
paper preset: a ViT-B/16 or a local CLIP-style image tower in timm layout, weights given by
the user, never downloaded), BCE on the 14 lesion statuses, AdamW with cosine decay.

After training, per-lesion thresholds are calibrated on the validation split (the grid
threshold with the best F1) and stored in the checkpoint next to the weights. The run
folder `RUN/classifier/` holds `classifier.pt`, `eval.json` and a `manifest.json`
(stage `train-classifier`), so another run can reuse it (`--classifier RUN`) after its
sha256 is checked. `last.pt` there resumes an interrupted classifier stage per epoch.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_write_text, file_entry, open_stage, write_stage_manifest
from cxrctx.train.config import CLASSIFIER_FIELDS, TrainConfig
from cxrctx.train.data import CropStore, ImageError, Item
from cxrctx.train.runtime import Dist, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cxrctx.vocab import LESIONS

log = logging.getLogger(__name__)

CLS_FORMAT = 1
STAGE_NAME = "train-classifier"


class LesionClassifier(nn.Module):
    """Full grey image (B, G, G) in [0, 1] → 14 lesion logits (any timm backbone)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        import timm

        self.in_chans = cfg.classifier_in_chans
        kw: dict[str, Any] = dict(
            pretrained=False,
            num_classes=len(LESIONS),
            in_chans=cfg.classifier_in_chans,
            **cfg.classifier_kwargs,
        )
        try:  # ViT-like models take the input size; CNNs do not
            self.net: Any = timm.create_model(
                cfg.classifier_name, img_size=cfg.global_image_size, **kw
            )
        except TypeError:
            self.net = timm.create_model(cfg.classifier_name, **kw)
        except RuntimeError as e:  # an unknown timm name
            raise CxrctxError(f"classifier_name {cfg.classifier_name!r}: {e}") from e
        if cfg.classifier_weights:
            self._load(cfg.classifier_weights)

    def _load(self, path: str) -> None:
        """Backbone weights from a local file; the 14-lesion head stays new."""
        from cxrctx.train.model import load_state

        sd = load_state(path)
        head = {id(p) for p in self.net.get_classifier().parameters()}
        head_names = {n for n, p in self.net.named_parameters() if id(p) in head}
        own = self.net.state_dict()
        if (
            "pos_embed" in sd
            and "pos_embed" in own
            and sd["pos_embed"].shape != own["pos_embed"].shape
        ):
            from timm.layers import resample_abs_pos_embed

            n_prefix = (
                0 if getattr(self.net, "no_embed_class", False) else self.net.num_prefix_tokens
            )
            sd["pos_embed"] = resample_abs_pos_embed(
                sd["pos_embed"], self.net.patch_embed.grid_size, num_prefix_tokens=n_prefix
            )
        sd = {
            k: v
            for k, v in sd.items()
            if k not in head_names and k in own and v.shape == own[k].shape
        }
        missing, _ = self.net.load_state_dict(sd, strict=False)
        missing = [k for k in missing if k not in head_names]
        if missing:
            raise CxrctxError(
                f"{path}: weights do not fit classifier {self.net.__class__.__name__} (missing {missing[:3]}…)"
            )

    def forward(self, glob: torch.Tensor) -> torch.Tensor:
        x = ((glob - 0.5) / 0.25).unsqueeze(1).expand(-1, self.in_chans, -1, -1)
        return self.net(x)


class GlobalDataset:
    """Full images and lesion targets of prepared items (read from the shared crop cache)."""

    def __init__(self, items: list[Item], store: CropStore):
        self.items, self.store = items, store

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | None:
        try:
            _, glob = self.store.get(self.items[i])
        except ImageError:
            return None
        return {
            "glob": torch.from_numpy(glob.astype(np.float32) / 255.0),
            "targets": torch.tensor(self.items[i].targets, dtype=torch.float32),
        }


def _collate(batch: list[dict | None]) -> dict[str, torch.Tensor]:
    good = [b for b in batch if b is not None]
    return {k: torch.stack([b[k] for b in good]) for k in good[0]} if good else {}


def _shift(x: torch.Tensor, gen: torch.Generator, frac: float = 0.06) -> torch.Tensor:
    """Random translation by up to `frac` of the side (edge padding): the one augmentation
    that keeps a lateralised lesion on its side."""
    n = x.shape[-1]
    m = max(1, round(frac * n))
    pad = F.pad(x.unsqueeze(1), (m, m, m, m), mode="replicate").squeeze(1)
    dx, dy = (int(v) for v in torch.randint(0, 2 * m + 1, (2,), generator=gen))
    return pad[:, dy : dy + n, dx : dx + n]


@torch.no_grad()
def predict(
    model: nn.Module, ds: GlobalDataset, device: torch.device, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets over `ds` (eval mode)."""
    model.eval()
    probs, targets = [], []
    loader: DataLoader[Any] = DataLoader(cast(Any, ds), batch_size=batch_size, collate_fn=_collate)
    for b in loader:
        if b:
            probs.append(torch.sigmoid(model(b["glob"].to(device)).float()).cpu().numpy())
            targets.append(b["targets"].numpy())
    if not probs:
        return np.zeros((0, len(LESIONS))), np.zeros((0, len(LESIONS)))
    return np.concatenate(probs), np.concatenate(targets)


def calibrate_thresholds(p: np.ndarray, t: np.ndarray, default: float) -> np.ndarray:
    """Per lesion, the grid threshold with the best validation F1."""
    from cxrctx.train.evaluation import best_threshold  # (evaluation imports the model)

    return np.array([best_threshold(p[:, i], t[:, i], default) for i in range(len(LESIONS))])


def scores(p: np.ndarray, t: np.ndarray, thr: np.ndarray) -> dict[str, Any]:
    """Per-lesion AUC and F1 at `thr`, macro-AUC, micro/macro F1 (JSON-ready)."""
    from cxrctx.train.evaluation import classifier_metrics, f1_at, micro_macro_f1

    res = classifier_metrics(p, t, thr)
    res["f1"] = {
        les: (f1_at(p[:, i], t[:, i], float(thr[i])) if (t[:, i] > 0.5).any() else None)
        for i, les in enumerate(LESIONS)
    }
    res["f1_micro"], res["f1_macro"] = micro_macro_f1(p, t, thr)
    res["thresholds"] = dict(zip(LESIONS, thr.tolist(), strict=True))
    res["n"] = int(p.shape[0])
    return res


# ----------------------------------------------------------------------------- the stage


def _epoch(model, fwd, loader, opt, sched, gen, dev, budget: int) -> float:
    """One epoch of at most `budget` steps; the mean loss."""
    model.train()
    total, n = 0.0, 0
    for b in loader:
        if n >= budget:
            break
        if not b:
            continue
        x = _shift(b["glob"], gen).to(dev)
        loss = F.binary_cross_entropy_with_logits(fwd(x).float(), b["targets"].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        total, n = total + float(loss.detach()), n + 1
    return total / max(1, n)


def _last_state(path: Path, cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    if not (resume and path.exists()):
        return None
    st = load_checkpoint(path)
    if st.get("classifier_config") != cfg.classifier_fields():
        raise CxrctxError(
            f"{path}: classifier checkpoint from another classifier config; use a new --out"
        )
    return st


def fit(
    cfg: TrainConfig,
    *,
    train_ds: GlobalDataset,
    val_ds: GlobalDataset | None,
    out: Path,
    dist: Dist,
    resume: bool,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Train the classifier, calibrate its thresholds on `val_ds`, write `out/` (rank 0).

    Returns the validation scores (empty without a validation split)."""
    dev = dist.device
    torch.manual_seed(cfg.seed + 7)
    model = LesionClassifier(cfg).to(dev)
    fwd: nn.Module = model
    if dist.world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dev.type == "cuda" else None
        )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.classifier_lr, weight_decay=cfg.weight_decay)
    per_rank = max(1, cfg.classifier_batch_size // dist.world)
    per_epoch = math.ceil(math.ceil(len(train_ds) / dist.world) / per_rank)
    steps = min(cfg.classifier_epochs * per_epoch, cfg.max_steps or 10**12)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps)))
    )
    sampler: DistributedSampler[Any] = DistributedSampler(
        cast(Any, train_ds), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    last = out / "last.pt"
    state = _last_state(last, cfg, resume)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["gen"])
        set_rng_state(state["rng"])
        start = state["epoch"]
    for epoch in range(start, cfg.classifier_epochs):
        if epoch * per_epoch >= steps:
            break
        sampler.set_epoch(epoch)
        loader: DataLoader[Any] = DataLoader(
            cast(Any, train_ds),
            batch_size=per_rank,
            sampler=sampler,
            collate_fn=_collate,
            num_workers=cfg.num_workers,
        )
        loss = _epoch(model, fwd, loader, opt, sched, gen, dev, steps - epoch * per_epoch)
        if dist.main:
            save_checkpoint(
                last,
                {
                    "format": CLS_FORMAT,
                    "classifier_config": cfg.classifier_fields(),
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "gen": gen.get_state(),
                    "rng": rng_state(),
                },
            )
        if on_epoch is not None:
            on_epoch(epoch + 1, cfg.classifier_epochs, loss)
    return _finish(cfg, model, val_ds, out, dist)


def _finish(
    cfg: TrainConfig, model: LesionClassifier, val_ds: GlobalDataset | None, out: Path, dist: Dist
) -> dict[str, Any]:
    thr = np.full(len(LESIONS), cfg.classifier_threshold)
    ev: dict[str, Any] = {}
    if val_ds is not None and len(val_ds):
        p, t = predict(model, val_ds, dist.device)
        thr = calibrate_thresholds(p, t, cfg.classifier_threshold)
        ev = scores(p, t, thr)
    if dist.main:
        save_checkpoint(
            out / "classifier.pt",
            {
                "format": CLS_FORMAT,
                "classifier_config": cfg.classifier_fields(),
                "model": model.state_dict(),
                "thresholds": torch.as_tensor(thr, dtype=torch.float32),
            },
        )
        atomic_write_text(out / "eval.json", json.dumps(ev, indent=2, sort_keys=True) + "\n")
        files = [file_entry(out / n, out) for n in ("classifier.pt", "eval.json")]
        write_stage_manifest(
            out,
            stage=STAGE_NAME,
            schema_version=1,
            config=cfg,
            files=files,
            counts={"val_items": int(ev.get("n", 0))},
        )
        (out / "last.pt").unlink(missing_ok=True)
    dist.barrier()
    return ev


def classifier_dir(path: str | Path) -> Path:
    """A run folder or its `classifier/` subfolder → the classifier stage folder."""
    p = Path(path)
    return p / "classifier" if (p / "classifier").is_dir() else p


def load_trained(path: str | Path) -> dict[str, Any]:
    """A finished classifier (manifest and sha256 checked): its config fields, weights, thresholds."""
    d = classifier_dir(path)
    try:
        open_stage(d, STAGE_NAME)
    except CxrctxError as e:
        raise CxrctxError(
            f"{e} (--classifier needs a finished classifier stage: cxrctx train --stage classifier)"
        ) from None
    ck = load_checkpoint(d / "classifier.pt")
    if ck.get("format") != CLS_FORMAT or set(ck.get("classifier_config", {})) != CLASSIFIER_FIELDS:
        raise CxrctxError(f"{d / 'classifier.pt'}: not a classifier checkpoint of this cxrctx")
    ck["eval"] = json.loads((d / "eval.json").read_text()) if (d / "eval.json").is_file() else {}
    return ck
