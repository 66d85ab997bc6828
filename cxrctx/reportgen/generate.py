"""`generate`: ROI sentences from a trained run, merged into one report per study.

Inference path of the CLALA-Net paper (Fig. 1, dashed lines): the image-level classifier predicts the
14 lesion statuses, which drive LCA; each ROI's refined embedding is decoded greedily
(the paper does not name the decoding method; greedy is our choice) at the stage-2
resolution. The ROI statements are then merged by

- the LLM aggregator (`prompts/aggregate_report/`, through any `cxrctx.llm` backend),
  which prefers positive findings and removes redundancy as the paper describes; or
- a deterministic merge when no backend is configured: positive sentences first (ROI
  order), then negative ones, duplicates removed, a negative sentence dropped when a
  positive one names the same lesion (the paper's "prefer positive findings" rule) or when
  a broader negative sentence already rules out all its lesions.

An LLM answer that cannot be parsed falls back to the deterministic merge for that study
and is counted (`aggregator_failures`). One study = its first frontal image with ROIs
(PA before AP, then dicom_id). ROI boxes come from Chest ImaGenome (ground truth); the
paper localises ROIs at test time with YOLOv10, which is not reimplemented here.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import write_manifest, write_parquet, write_shards
from cxrctx.models import Manifest
from cxrctx.vocab import LESIONS, ROIS

log = logging.getLogger(__name__)

_NEG_RE = re.compile(
    r"\b(no|not|without|negative|normal|clear|unremarkable|resolved|free of)\b", re.I
)
_LESION_WORDS = {
    "cardiomegaly": (
        "cardiomegaly",
        "heart is enlarged",
        "enlarged heart",
        "heart size is enlarged",
        "cardiac silhouette is enlarged",
    ),
    "emphysema": ("emphysema",),
    "pleural effusion": ("effusion",),
    "hernia": ("hernia",),
    "nodule": ("nodule",),
    "pneumothorax": ("pneumothora",),
    "atelectasis": ("atelecta",),
    "pleural thickening": ("pleural thickening",),
    "mass": ("mass",),
    "edema": ("edema",),
    "consolidation": ("consolidat",),
    "infiltration": ("infiltrat",),
    "fibrosis": ("fibros", "fibrotic"),
    "pneumonia": ("pneumonia",),
}


class RoiSentence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roi: str
    text: str


class GeneratedReport(BaseModel):
    """One generated report (rows of `OUT/generated/part-*.parquet`)."""

    model_config = ConfigDict(extra="forbid")

    study_id: int
    subject_id: int
    dicom_id: str
    split: str | None
    roi_sentences: list[RoiSentence] = Field(
        description="Greedy decoder output per ROI (empty text = nothing to say)"
    )
    lesion_probs: list[float] = Field(
        description="Classifier probabilities in cxrctx.models.LESIONS order"
    )
    predicted_lesions: list[str] = Field(
        description="Lesions above the classifier threshold (these drove LCA)"
    )
    report: str
    aggregator: str = Field(description="'merge' or 'llm:<backend>/<model>'")
    aggregator_error: str | None = Field(
        None, description="Why the LLM answer was not used (fell back to merge)"
    )


@dataclass
class GenerateResult:
    out_dir: Path
    rows: int
    counts: dict[str, int] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)


def split_sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat) if s.strip()]


def mentioned_lesions(sentence: str) -> set[str]:
    s = sentence.lower()
    return {les for les, words in _LESION_WORDS.items() if any(w in s for w in words)}


def is_negative(sentence: str) -> bool:
    return bool(_NEG_RE.search(sentence))


def merge_sentences(roi_texts: list[tuple[str, str]]) -> str:
    """Deterministic aggregator: positives first, dedupe, positive wins over negative per lesion."""
    seen: set[str] = set()
    pos: list[str] = []
    neg: list[str] = []
    for _, text in roi_texts:
        for s in split_sentences(text):
            key = re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()
            if not key or key in seen:
                continue
            seen.add(key)
            (neg if is_negative(s) else pos).append(s)
    positive_lesions = set().union(*(mentioned_lesions(s) for s in pos)) if pos else set()
    neg = [s for s in neg if not (mentioned_lesions(s) & positive_lesions)]
    # a negative sentence whose lesions an earlier-kept, broader negative already rules out is redundant
    covered: set[str] = set()
    keep: set[int] = set()
    for i in sorted(range(len(neg)), key=lambda i: -len(mentioned_lesions(neg[i]))):
        les = mentioned_lesions(neg[i])
        if les and les <= covered:
            continue
        covered |= les
        keep.add(i)
    return " ".join(pos + [s for i, s in enumerate(neg) if i in keep])


GEN_SCHEMA = {
    "study_id": pl.Int64,
    "subject_id": pl.Int64,
    "dicom_id": pl.String,
    "split": pl.String,
    "roi_sentences": pl.List(pl.Struct({"roi": pl.String, "text": pl.String})),
    "lesion_probs": pl.List(pl.Float64),
    "predicted_lesions": pl.List(pl.String),
    "report": pl.String,
    "aggregator": pl.String,
    "aggregator_error": pl.String,
}


def generate(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    split: str | None = "test",
    records: str | os.PathLike | None = None,
    rois: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    engine: Any = None,
    sampling: Any = None,
    batch_size: int = 32,
    limit: int | None = None,
    rows_per_shard: int = 50_000,
    device: str | None = None,
    executor: Any = None,
) -> GenerateResult:
    """Generate one report per study of `split` with the run's final model; see module doc.

    `records` / `rois` / `images` default to the paths the run was trained on.
    `engine` is a `cxrctx.llm` Engine for the LLM aggregator (None = deterministic merge);
    `executor` runs its batches (None = in this process; a RayExecutor = on Ray actors).
    """
    import torch

    from cxrctx.train.data import CropStore, RoiDataset, collate
    from cxrctx.train.loop import items_for, load_run

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg, model, tok, info = load_run(run_dir, dev)
    records = records or info.get("records")
    rois = rois or info.get("rois")
    images = images or info.get("images")
    if not (records and rois and images):
        raise CxrctxError(
            f"{run_dir}: run.json lacks input paths; pass --records, --rois and --images"
        )
    items, skips = items_for(cfg, records=records, labels=None, rois=rois, split=split)
    if not items:
        raise CxrctxError(f"{rois}: no images with ROIs in split {split!r}")
    # one image per study: PA before AP, then dicom_id
    items.sort(key=lambda it: (it.study_id, it.view_position != "PA", it.dicom_id))
    chosen, seen = [], set()
    for it in items:
        if it.study_id not in seen:
            seen.add(it.study_id)
            chosen.append(it)
    if limit:
        chosen = chosen[:limit]
    size = cfg.image_size_stage2 if info.get("stage") == 2 else cfg.image_size_stage1
    store = CropStore(
        images,
        Path(run_dir) / "cache" if cfg.crop_cache else None,
        size,
        cfg.global_image_size or size,
    )
    good, img_skips = store.prepare(chosen)
    skips = skips + img_skips
    ds = RoiDataset(good, store, tok, cfg.max_tokens)
    rows: list[dict] = []
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, collate_fn=collate
    )
    for batch in loader:
        if "rois" not in batch:
            continue
        res = model.generate(
            batch["rois"].to(dev),
            batch["glob"].to(dev),
            bos=tok.bos_id,
            eos=tok.eos_id,
            max_len=cfg.max_tokens,
        )
        probs = res["probs"].float().cpu().numpy()
        toks = res["tokens"].cpu().numpy()
        for b, idx in enumerate(batch["index"].tolist()):
            it = ds.items[idx]
            roi_sents = [{"roi": ROIS[r], "text": tok.decode(toks[b, r])} for r in range(len(ROIS))]
            p = [float(round(x, 6)) for x in probs[b]]
            rows.append(
                {
                    "study_id": it.study_id,
                    "subject_id": it.subject_id,
                    "dicom_id": it.dicom_id,
                    "split": it.split,
                    "roi_sentences": roi_sents,
                    "lesion_probs": p,
                    "predicted_lesions": [
                        les
                        for les, x in zip(LESIONS, p, strict=True)
                        if x > cfg.classifier_threshold
                    ]
                    if cfg.use_classifier
                    else [],
                    "report": merge_sentences([(s["roi"], s["text"]) for s in roi_sents]),
                    "aggregator": "merge",
                    "aggregator_error": None,
                }
            )
    counts = {
        "studies": len(chosen),
        "generated": len(rows),
        "skipped": len(skips),
        "aggregator_failures": 0,
    }
    prompt_sha = None
    if engine is not None and rows:
        from cxrctx.reportgen.tasks import aggregate_reports

        failures, prompt_sha, _ = aggregate_reports(
            rows, engine, sampling=sampling, cache_dir=Path(out) / "cache", executor=executor
        )
        counts["aggregator_failures"] = failures
    out_dir = Path(out)
    df = pl.DataFrame(rows, schema=GEN_SCHEMA).sort("study_id")
    shards = write_shards(df, out_dir / "generated", rows_per_shard, relative_to=out_dir)
    sk = pl.DataFrame(
        skips, schema={"dicom_id": pl.String, "study_id": pl.Int64, "reason": pl.String}
    ).sort("dicom_id")
    sk_info = write_parquet(sk, out_dir / "skips.parquet")
    manifest = Manifest(
        tool_version=__version__,
        stage="generate",
        schema_version=1,
        config={
            "run_dir": str(run_dir),
            "split": split,
            "image_size": size,
            "decoding": "greedy",
            "aggregator": rows[0]["aggregator"] if rows else "merge",
            "aggregate_prompt_sha256": prompt_sha,
            "limit": limit,
        },
        shards=shards,
        tables=[sk_info.model_copy(update={"path": "skips.parquet"})],
        counts=counts,
    )
    write_manifest(manifest, out_dir / "manifest.json")
    from collections import Counter

    return GenerateResult(
        out_dir=out_dir,
        rows=df.height,
        counts=counts,
        skips=dict(sorted(Counter(s["reason"].split(":")[0] for s in skips).items())),
    )
