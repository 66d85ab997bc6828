"""`generate`: ROI sentences from a trained run, merged into one report per study.

Inference path of the CLALA-Net paper (Fig. 1, dashed lines): the image-level classifier
predicts the 14 lesion statuses, which drive LCA; each ROI's refined embedding is decoded
greedily (the paper does not name the decoding method; greedy is our choice) at the last
stage's resolution. The ROI statements are then merged by

- the LLM aggregator (`prompts/aggregate_report/`, through any `cxrctx.llm` backend),
  which prefers positive findings and removes redundancy as the paper describes. It sees
  the regional statements only; the classifier's lesion list is added to its prompt only
  when asked (`aggregator_lesions=True`), because the paper aggregates observation-level
  ROI reports rather than discrete disease labels; or
- the deterministic merge of `cxrctx.reportgen.merge` when no backend is configured.

An LLM answer that cannot be parsed falls back to the deterministic merge for that study
and is counted (`aggregator_failures`). A study whose regions all produced nothing keeps
its row with an empty `report`, is counted as `empty_reports` (not as generated) and is
never sent to the aggregator, which would otherwise write a report from nothing. One
study = its first frontal image with ROIs (PA before AP, then dicom_id). ROI boxes come
from Chest ImaGenome (ground truth); the paper localises ROIs at test time with YOLOv10,
which is not reimplemented here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx.errors import CxrctxError
from cxrctx.io import (
    config_hash,
    open_stage,
    sha256_file,
    write_parquet,
    write_shards,
    write_stage_manifest,
)
from cxrctx.llm.prompt import PromptFile
from cxrctx.output_policy import prepare_output
from cxrctx.progress import as_callback, progress_arg
from cxrctx.reportgen.merge import merge_sentences
from cxrctx.reportgen.tasks import aggregate_reports, load_report_prompt
from cxrctx.train.data import CropStore, RoiDataset, collate
from cxrctx.train.run import items_for, load_run
from cxrctx.vocab import LESIONS, ROIS

if TYPE_CHECKING:
    from cxrctx.llm.base import Engine, Sampling

log = logging.getLogger(__name__)


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
    report: str = Field(
        description="The merged report; empty when no region produced a statement (counted as empty_reports)"
    )
    aggregator: str = Field(description="'merge' or 'llm:<backend>/<model>'")
    aggregator_error: str | None = Field(
        None, description="Why the LLM answer was not used (fell back to merge)"
    )


@dataclass
class GenerateResult:
    """What `generate` wrote: rows = generated + empty reports; skips by reason."""

    out_dir: Path
    rows: int
    counts: dict[str, int] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)


#: progress(phase, done, total): phase "decode" counts studies, "aggregate" LLM-merged ones.
Progress = Callable[[str, int, int], None]


GEN_SCHEMA: dict[str, Any] = {
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


@dataclass
class _Inputs:
    """A loaded run and the studies to generate for (one image each)."""

    cfg: Any
    model: Any
    tok: Any
    device: Any
    size: int
    dataset: Any
    studies: int
    skips: list[dict]


@progress_arg("generate")
def generate(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    split: str | None = "test",
    records: str | os.PathLike | None = None,
    rois: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    engine: Engine | None = None,
    sampling: Sampling | None = None,
    aggregator_lesions: bool = False,
    batch_size: int = 32,
    limit: int | None = None,
    rows_per_shard: int = 50_000,
    device: str | None = None,
    overwrite: bool = False,
    progress: Progress | bool | None = None,
    executor: Any = None,
) -> GenerateResult:
    """Generate one report per study of `split` with the run's final model; see module doc.

    `records` / `rois` / `images` default to the paths the run was trained on. `engine` is
    a `cxrctx.llm` Engine for the LLM aggregator (None = deterministic merge);
    `aggregator_lesions` also gives it the classifier's lesion list (off: the paper's setup).
    """
    progress = as_callback(progress)
    options = {
        "run_dir": str(Path(run_dir).resolve()),
        "split": split,
        "limit": limit,
        "records": str(records) if records else None,
        "rois": str(rois) if rois else None,
        "aggregator": _aggregator_name(engine) if engine is not None else "merge",
        "aggregator_lesions": aggregator_lesions,
        "checkpoint": _checkpoint_sha(run_dir),
    }
    # the shared output policy, before the model is loaded (another run's folder is refused)
    prepare_output(out, stage="generate", config_hash=config_hash(options), overwrite=overwrite)
    inp = _load_inputs(run_dir, split, records, rois, images, limit, device)
    rows = _decode(inp, batch_size, progress)
    empty = sum(1 for r in rows if not r["report"])
    counts = {
        "studies": inp.studies,
        "generated": len(rows) - empty,
        "empty_reports": empty,
        "skipped": len(inp.skips),
        "aggregator_failures": 0,
    }
    prompt: PromptFile | None = None
    if engine is not None:
        prompt = aggregator_prompt(aggregator_lesions)
        todo = [r for r in rows if r["report"]]
        counts["aggregator_failures"] = _aggregate(
            todo, engine, prompt, sampling, Path(out) / "cache", progress, executor
        )
    config = {
        "run_dir": str(run_dir),
        "split": split,
        "image_size": inp.size,
        "decoding": "greedy",
        "aggregator": _aggregator_name(engine) if engine is not None else "merge",
        "aggregate_prompt_sha256": prompt.sha256 if prompt else None,
        "aggregator_lesions": aggregator_lesions if engine is not None else None,
        "limit": limit,
    }
    n = _write(Path(out), rows, inp.skips, config, counts, rows_per_shard)
    reasons = Counter(s["reason"].split(":")[0] for s in inp.skips)
    return GenerateResult(
        out_dir=Path(out), rows=n, counts=counts, skips=dict(sorted(reasons.items()))
    )


def _checkpoint_sha(run_dir: str | os.PathLike) -> str | None:
    """sha256 of the run's final checkpoint (part of the run's identity), if present."""
    ckpt = Path(run_dir) / "checkpoints" / "final.pt"
    return sha256_file(ckpt) if ckpt.is_file() else None


def _load_inputs(
    run_dir: str | os.PathLike,
    split: str | None,
    records: str | os.PathLike | None,
    rois: str | os.PathLike | None,
    images: str | os.PathLike | None,
    limit: int | None,
    device: str | None,
) -> _Inputs:
    """The run's final model and one prepared image per study (PA before AP, then dicom_id)."""
    import torch

    try:  # a finished run: weights and tokenizer match its manifest
        open_stage(run_dir, "train")
    except CxrctxError as e:
        raise CxrctxError(
            f"{e} (generate needs a finished train run: its final checkpoint)"
        ) from None

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
    items.sort(key=lambda it: (it.study_id, it.view_position != "PA", it.dicom_id))
    chosen, seen = [], set()
    for it in items:
        if it.study_id not in seen:
            seen.add(it.study_id)
            chosen.append(it)
    if limit:
        chosen = chosen[:limit]
    size = cfg.image_size_stage2 if info.get("stage") == 2 else cfg.image_size_stage1
    cache = Path(run_dir) / "cache" if cfg.crop_cache else None
    store = CropStore(images, cache, size, cfg.global_image_size or size)
    good, img_skips = store.prepare(chosen)
    ds = RoiDataset(good, store, tok, cfg.max_tokens)
    return _Inputs(cfg, model, tok, dev, size, ds, len(chosen), skips + img_skips)


def _decode(inp: _Inputs, batch_size: int, progress: Progress | None) -> list[dict]:
    """Greedy ROI sentences + classifier probabilities per study, merged deterministically."""
    import torch

    cfg, ds, tok = inp.cfg, inp.dataset, inp.tok
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, collate_fn=collate
    )
    rows: list[dict] = []
    total = len(ds)
    for batch in loader:
        if "rois" in batch:
            res = inp.model.generate(
                batch["rois"].to(inp.device),
                batch["glob"].to(inp.device),
                bos=tok.bos_id,
                eos=tok.eos_id,
                max_len=cfg.max_tokens,
            )
            probs = res["probs"].float().cpu().numpy()
            toks = res["tokens"].cpu().numpy()
            status = res["status"].cpu().numpy() if "status" in res else None
            for b, idx in enumerate(batch["index"].tolist()):
                texts = [tok.decode(toks[b, r]) for r in range(len(ROIS))]
                hard = status[b] if status is not None else None
                rows.append(_row(ds.items[idx], texts, probs[b], hard, cfg))
        if progress:
            progress("decode", len(rows), total)
    return rows


def _row(item: Any, texts: list[str], probs: Any, hard: Any, cfg: Any) -> dict:
    """One generated row (GEN_SCHEMA) with the deterministic merge as its report. The
    predicted lesions are the model's own decisions (its validation-calibrated thresholds,
    stored in the checkpoint), the same statuses that drove LCA while decoding."""
    roi_sents = [{"roi": roi, "text": t} for roi, t in zip(ROIS, texts, strict=True)]
    p = [float(round(x, 6)) for x in probs]
    if not cfg.use_classifier:
        predicted: list[str] = []
    elif hard is not None:
        predicted = [les for les, h in zip(LESIONS, hard, strict=True) if bool(h)]
    else:
        predicted = [les for les, x in zip(LESIONS, p, strict=True) if x > cfg.classifier_threshold]
    return {
        "study_id": item.study_id,
        "subject_id": item.subject_id,
        "dicom_id": item.dicom_id,
        "split": item.split,
        "roi_sentences": roi_sents,
        "lesion_probs": p,
        "predicted_lesions": predicted,
        "report": merge_sentences([(s["roi"], s["text"]) for s in roi_sents]),
        "aggregator": "merge",
        "aggregator_error": None,
    }


def aggregator_prompt(lesions: bool) -> PromptFile:
    """The aggregator prompt; with `lesions` its user message also lists the predicted lesions
    (the same file, so the same sha256)."""
    prompt = load_report_prompt("aggregate_report", version=2)
    if lesions:
        data = {**prompt.data, "user_template": prompt.data["user_template_with_lesions"]}
        return dataclasses.replace(prompt, data=data)
    return prompt


def _aggregator_name(engine: Engine) -> str:
    return f"llm:{getattr(engine, 'backend', '?')}/{getattr(engine, 'model', '?')}"


def _aggregate(
    rows: list[dict],
    engine: Engine,
    prompt: PromptFile,
    sampling: Sampling | None,
    cache_dir: Path,
    progress: Progress | None,
    executor: Any = None,
) -> int:
    """LLM-merge `rows` in place through the aggregator task (shared cache, one repair); a
    study whose answer stays unusable keeps the merge. Returns the failures."""
    if not rows:
        return 0
    failures, _, _ = aggregate_reports(
        rows, engine, sampling=sampling, cache_dir=cache_dir, prompt=prompt, executor=executor
    )
    if progress:
        progress("aggregate", len(rows), len(rows))
    return failures


def _write(
    out_dir: Path,
    rows: list[dict],
    skips: list[dict],
    config: dict[str, Any],
    counts: dict[str, int],
    rows_per_shard: int,
) -> int:
    """generated/part-*.parquet (by study_id), skips.parquet and manifest.json; returns rows."""
    df = pl.DataFrame(rows, schema=GEN_SCHEMA).sort("study_id")
    shards = write_shards(df, out_dir / "generated", rows_per_shard, relative_to=out_dir)
    sk = pl.DataFrame(
        skips, schema={"dicom_id": pl.String, "study_id": pl.Int64, "reason": pl.String}
    ).sort("dicom_id")
    sk_info = write_parquet(sk, out_dir / "skips.parquet")
    write_stage_manifest(
        out_dir,
        stage="generate",
        schema_version=1,
        config=config,
        shards=shards,
        tables=[sk_info.model_copy(update={"path": "skips.parquet"})],
        counts=counts,
    )
    return df.height
