"""Validation of a trained model: classifier ROC-AUC (scikit-learn), threshold calibration, decoder CE.

Thresholds: per lesion, the one of a fixed grid that maximises F1 on the validation split
(a lesion without both classes keeps the default), set once by the classifier stage and
kept; the same for the per-ROI finding gate over all ROIs at the end of stages 1 and 2.
They are stored in the model (and so in every later checkpoint).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrctx.train.data import RoiDataset, collate
from cxrctx.train.model import ClalaNet, ce_loss
from cxrctx.vocab import LESIONS


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC-AUC (scikit-learn); None when one class is absent (AUC undefined)."""
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    labels = np.asarray(labels) > 0.5
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


@torch.no_grad()
def collect(model: ClalaNet, ds: RoiDataset, device: torch.device, batch_size: int = 64) -> dict:
    """Run the inference path over `ds`: classifier probabilities, targets, decoder CE."""
    model.eval()
    probs, targets, ces, finding, abnormal = [], [], [], [], []
    loader: DataLoader[Any] = DataLoader(
        cast(Any, ds),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        generator=torch.Generator(),
    )
    for batch in loader:
        if "rois" not in batch:
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = model(batch)
        ces.append(float(ce_loss(out["dec_logits"], batch["tokens"])))
        if "finding_logits" in out:
            finding.append(torch.sigmoid(out["finding_logits"]).float().cpu().numpy().ravel())
            abnormal.append(batch["abnormal"].cpu().numpy().ravel())
        if "cls_logits" in out:
            probs.append(torch.sigmoid(out["cls_logits"]).float().cpu().numpy())
        targets.append(batch["targets"].cpu().numpy())
    model.train()
    cat = lambda xs: np.concatenate(xs) if xs else None  # noqa: E731
    return {
        "probs": cat(probs),
        "targets": cat(targets),
        "finding": cat(finding),
        "abnormal": cat(abnormal),
        "ce": float(np.mean(ces)) if ces else None,
    }


GRID = np.round(np.linspace(0.02, 0.98, 49), 2)


def f1_at(p: np.ndarray, t: np.ndarray, thr: float) -> float:
    pred, gold = p > thr, t > 0.5
    tp = float((pred & gold).sum())
    denom = float(pred.sum() + gold.sum())
    return 2 * tp / denom if denom else 0.0


def best_threshold(p: np.ndarray, t: np.ndarray, default: float) -> float:
    """The grid threshold with the highest F1; `default` when a class is absent."""
    gold = t > 0.5
    if gold.all() or not gold.any():
        return default
    scores = [f1_at(p, t, float(x)) for x in GRID]
    return float(GRID[int(np.argmax(scores))])


def micro_macro_f1(p: np.ndarray, t: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    """Classifier-only lesion F1 (micro over all lesion decisions, macro over lesions with positives)."""
    pred, gold = p > thr[None, :], t > 0.5
    tp, fp, fn = (pred & gold).sum(), (pred & ~gold).sum(), (~pred & gold).sum()
    micro = float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else 0.0
    per = [f1_at(p[:, i], t[:, i], float(thr[i])) for i in range(p.shape[1]) if gold[:, i].any()]
    return micro, float(np.mean(per)) if per else 0.0


def calibrate(model: ClalaNet, ds: RoiDataset, device: torch.device) -> dict[str, Any]:
    """Set the model's finding threshold from `ds` (validation); return the metrics, the
    frozen classifier's at its own calibrated thresholds included."""
    got = collect(model, ds, device)
    res: dict[str, Any] = {"n": len(ds), "ce": got["ce"]}
    if got["probs"] is not None:
        p, t = got["probs"], got["targets"]
        thr = model.lesion_thresholds.cpu().numpy().astype(float)
        res.update(classifier_metrics(p, t, thr))
        res["thresholds"] = dict(zip(LESIONS, thr.tolist(), strict=True))
        res["f1_micro"], res["f1_macro"] = micro_macro_f1(p, t, thr)
    if got["finding"] is not None:
        f, a = got["finding"], got["abnormal"]
        ft = best_threshold(f, a, 0.5)
        model.finding_threshold.fill_(ft)
        res.update(finding_auc=auc(f, a), finding_threshold=ft, finding_f1=f1_at(f, a, ft))
    return res


def classifier_metrics(p: np.ndarray, t: np.ndarray, threshold: Any) -> dict[str, Any]:
    """Per-lesion AUC, macro-AUC over lesions with both classes, accuracy vs the majority class."""
    per = {les: auc(p[:, i], t[:, i]) for i, les in enumerate(LESIONS)}
    vals = [v for v in per.values() if v is not None]
    pred = p > threshold
    return {
        "auc": per,
        "macro_auc": float(np.mean(vals)) if vals else None,
        "accuracy": float((pred == (t > 0.5)).mean()),
        "majority_accuracy": float(np.maximum(t.mean(0), 1 - t.mean(0)).mean()),
    }


def evaluate_classifier(
    model: ClalaNet, ds: RoiDataset, device: torch.device, batch_size: int = 64
) -> dict[str, Any]:
    """Per-lesion AUC, macro-AUC, accuracy vs the majority-class baseline and decoder CE on `ds`."""
    got = collect(model, ds, device, batch_size)
    res: dict[str, Any] = {"n": len(ds), "ce": got["ce"]}
    if got["probs"] is not None:
        res.update(classifier_metrics(got["probs"], got["targets"], model.cfg.classifier_threshold))
    return res
