"""The CLALA-Net losses of stages 1-2: LLCL, ITCL (both InfoNCE), decoder cross-entropy, finding gate.

(The global lesion classifier's BCE belongs to its own stage, `cxrctx.train.classifier`.)

LLCL (CLALA-Net paper, "Lesion-level contrastive learning"): anchors are LCA-refined ROI
embeddings; comparison embeddings are *raw* ROI embeddings (no LCA) of *other* images; a
pair is positive when both are the same anatomical ROI and share a lesion (its location is
implied: a lesion only concerns the ROIs on its side, see `lesion_rois`). ROIs with no
positive lesion are a class of their own ("status" pairs, `pair_normals`). Everything
else in the batch is a negative. With several positives an anchor's loss is the mean of
the per-positive InfoNCE terms (supervised-contrastive form; the paper's formula shows a
single positive). Anchors without any positive are skipped; a batch with none gives an
exact 0 that still carries the graph (never NaN).

ITCL: each ROI embedding against the embedding of its own sentences, other ROIs' texts in
the batch as negatives, symmetric (image→text and text→image, as in CLIP — the paper shows
one direction; we use both). Only ROIs that have sentences take part; identical texts
count as the same caption (not as false negatives): their probabilities are pooled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from cxrctx.train.config import TrainConfig
from cxrctx.train.model import ce_loss, finding_loss


def _zero(*ts: torch.Tensor) -> torch.Tensor:
    return sum((t.sum() * 0.0 for t in ts), torch.zeros((), device=ts[0].device))


def _multi_positive_nce(
    logits: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, *, pooled: bool = False
) -> tuple[torch.Tensor, int]:
    """Mean over rows with ≥1 positive of mean_p[-log softmax(logits[valid])_p].

    `pooled=True` uses -log Σ_p softmax_p instead: positives act as one target (identical
    captions), so a row whose entries are all positive costs exactly 0.
    """
    has = pos.any(1)
    n = int(has.sum())
    if n == 0:
        return _zero(logits), 0
    # keep only rows with a positive: each has ≥1 valid entry, so no all -inf row (NaN grads)
    logits, pos, valid = logits[has], pos[has], valid[has] & True
    valid = valid | pos
    logits = logits.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    if pooled:
        per_row = lse - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
        return per_row.mean(), n
    logp = logits - lse[:, None]
    logp = logp.masked_fill(~pos, 0.0)  # also removes -inf of invalid entries
    per_row = -(logp.sum(1) / pos.sum(1))
    return per_row.mean(), n


def llcl_loss(
    anchors: torch.Tensor,
    comps: torch.Tensor,
    keys: torch.Tensor,
    *,
    tau: float,
    pair_normals: bool = True,
) -> tuple[torch.Tensor, int]:
    """anchors, comps (B, R, d); keys (B, R) int64 lesion bit masks. Returns (loss, n_anchors used)."""
    B, R, _ = anchors.shape
    a = F.normalize(anchors.reshape(B * R, -1).float(), dim=-1)
    c = F.normalize(comps.reshape(B * R, -1).float(), dim=-1)
    img = torch.arange(B, device=a.device).repeat_interleave(R)
    roi = torch.arange(R, device=a.device).repeat(B)
    k = keys.reshape(-1)
    other = img[:, None] != img[None, :]
    same_roi = roi[:, None] == roi[None, :]
    share = (k[:, None] & k[None, :]) != 0
    if pair_normals:
        share = share | ((k[:, None] == 0) & (k[None, :] == 0))
    pos = other & same_roi & share
    logits = a @ c.T / tau
    return _multi_positive_nce(logits, pos, other)


def itcl_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    has_text: torch.Tensor,
    text_ids: torch.Tensor,
    *,
    tau: float,
) -> tuple[torch.Tensor, int]:
    """img_emb, txt_emb (B, R, d); has_text (B, R) bool; text_ids (B, R): equal ids = same text."""
    m = has_text.reshape(-1)
    n = int(m.sum())
    if n < 2:
        return _zero(img_emb, txt_emb), 0
    i = F.normalize(img_emb.reshape(-1, img_emb.shape[-1])[m].float(), dim=-1)
    t = F.normalize(txt_emb.reshape(-1, txt_emb.shape[-1])[m].float(), dim=-1)
    ids = text_ids.reshape(-1)[m]
    pos = ids[:, None] == ids[None, :]
    valid = torch.ones_like(pos)
    logits = i @ t.T / tau
    l1, _ = _multi_positive_nce(logits, pos, valid, pooled=True)
    l2, _ = _multi_positive_nce(logits.T, pos, valid, pooled=True)
    return (l1 + l2) / 2, n


# ----------------------------------------------------------------------------- per stage


def label_mix(cfg: TrainConfig, st: int, stage_step: int, total: int) -> float:
    """Share of the labels in LCA's statuses: 0 in stage 2 (the test-time input)."""
    if st == 2 or cfg.lca_train_source == "predictions":
        return 0.0
    if cfg.lca_train_source == "labels":
        return 1.0
    return max(0.0, 1.0 - stage_step / max(1.0, cfg.lca_schedule_fraction * total))


def active_losses(cfg: TrainConfig, st: int) -> list[str]:
    """The losses that can change a trainable weight in this stage (the rest are not computed).

    In stage 2 only LCA, the finding head and the decoder train: without LCA the contrastive
    losses see frozen embeddings only. The classifier is frozen in both stages."""
    names = ["ce"]
    if cfg.use_finding_head and cfg.weight_finding > 0:
        names.append("finding")
    if cfg.use_llcl and cfg.weight_llcl > 0 and (st == 1 or cfg.use_lca):
        names.append("llcl")
    if cfg.use_itcl and cfg.weight_itcl > 0 and (st == 1 or cfg.use_lca):
        names.append("itcl")
    return names


def stage_losses(cfg: TrainConfig, st: int, outp: dict, batch: dict) -> tuple[dict, dict]:
    """The active losses of this stage (name → tensor) and their pair/anchor counts."""
    names = active_losses(cfg, st)

    losses: dict[str, torch.Tensor] = {
        "ce": ce_loss(outp["dec_logits"], batch["tokens"], per_sequence=cfg.ce_per_sequence)
    }
    extra: dict[str, Any] = {}
    if "finding" in names:
        losses["finding"] = finding_loss(outp["finding_logits"], batch["abnormal"])
    if "llcl" in names:
        losses["llcl"], extra["llcl_anchors"] = llcl_loss(
            outp["refined"],
            outp["raw"],
            batch["roi_keys"],
            tau=cfg.temperature_llcl,
            pair_normals=cfg.llcl_pair_normals,
        )
    if "itcl" in names:
        losses["itcl"], extra["itcl_pairs"] = itcl_loss(
            outp["refined"],
            outp["text_emb"],
            batch["has_text"],
            batch["text_ids"],
            tau=cfg.temperature_itcl,
        )
    return losses, extra


def weighted_total(cfg: TrainConfig, losses: dict[str, torch.Tensor]) -> torch.Tensor:
    w = {
        "ce": cfg.weight_ce,
        "llcl": cfg.weight_llcl,
        "itcl": cfg.weight_itcl,
        "finding": cfg.weight_finding,
    }
    return sum((w[k] * v for k, v in losses.items()), torch.zeros((), device=losses["ce"].device))
