"""`cxrctx train`: the reference CLALA-Net trainer (presentation: options, progress, summary)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.cli.progress import progress_display
from cxrctx.errors import CxrctxError
from cxrctx.train import train
from cxrctx.train.config import Preset, TrainConfig, TrainStage, make_config, validate_config
from cxrctx.train.events import TrainResult


def _overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for s in pairs:
        key, sep, val = s.partition("=")
        if not sep:
            raise CxrctxError(f"--set {s!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(val)
        except ValueError:
            out[key] = val
    return out


def _config(preset: Preset, config_file: Path | None, pairs: list[str]) -> TrainConfig:
    overrides = _overrides(pairs)
    if config_file is None:
        return make_config(preset, **overrides)
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CxrctxError(f"{config_file}: cannot read config ({e})") from e
    return validate_config({**data, **overrides}, source=str(config_file))


def _summary(res: TrainResult, out: Path) -> None:
    c = res.classifier
    if c.get("macro_auc") is not None:
        console.print(
            f"  classifier (validation): macro-AUC {c['macro_auc']:.3f}, micro-F1 {c['f1_micro']:.3f} "
            f"at calibrated thresholds, macro-F1 {c['f1_macro']:.3f}"
        )
    if not res.stages:
        console.print(f"train: classifier done → {out / 'classifier'} (reuse: --classifier {out})")
        return
    console.print(f"train: stages {res.stages} done, {res.global_step} steps → {out}")
    console.print(f"  items: {res.counts}")
    for reason, n in res.skips.items():
        console.print(f"  skipped: {reason}: {n}")
    for w in res.warnings:
        console.print(f"  warning: {w}", markup=False)
    ev = res.eval
    if ev.get("macro_auc") is not None:
        console.print(
            f"  validation: classifier macro-AUC {ev['macro_auc']:.3f}, accuracy {ev['accuracy']:.3f} "
            f"(majority {ev['majority_accuracy']:.3f}), decoder CE {ev['ce']:.3f}"
        )


@app.command("train")
def train_cmd(
    records: Path = typer.Option(..., "--records", help="build-priors output."),
    labels: Path = typer.Option(
        ..., "--labels", help="label-lesions output (or a synthetic root's truth/)."
    ),
    rois: Path = typer.Option(..., "--rois", help="build-rois output."),
    images: Path = typer.Option(
        ..., "--images", help="Root the image paths are relative to (MIMIC-CXR or -JPG)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Run directory (checkpoints, metrics.jsonl, config.json, tokenizer.json).",
    ),
    preset: Preset = typer.Option(
        Preset.TINY,
        "--preset",
        help="tiny (CPU, minutes) or paper (ViT-B/16, batch 24, 15 epochs; needs local weights).",
    ),
    stage: TrainStage = typer.Option(
        TrainStage.BOTH,
        "--stage",
        help="classifier (the global lesion classifier alone), 1, 2 or both; 1 and both "
        "train the classifier first unless the run has one or --classifier gives one.",
    ),
    classifier: Path = typer.Option(
        None,
        "--classifier",
        help="Reuse the trained lesion classifier of another run (RUN or RUN/classifier) "
        "instead of training one; it is loaded frozen.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/last.pt."),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help="Override a config field: KEY=JSON (e.g. --set batch_size=8 --set use_llcl=false).",
    ),
    config_file: Path = typer.Option(
        None, "--config", help="A JSON TrainConfig file (overrides the preset)."
    ),
    progress: bool = typer.Option(
        True,
        "--progress/--no-progress",
        help="A progress bar on a terminal; plain lines every 30 s otherwise.",
    ),
) -> None:
    """Train the global lesion classifier, then the reference CLALA-Net (single process, or under torchrun for DDP).

    \b
    Example:
      cxrctx train --records out/priors --labels out/syn/truth --rois out/rois \\
        --images out/syn --out out/run --preset tiny
      cxrctx train ... --out out/run-nolca --classifier out/run \\
        --set use_lca=false
      torchrun --nproc-per-node 8 -m cxrctx.cli train ... --preset paper \\
        --set vit_weights=vit_b16_in1k.safetensors \\
        --set text_model=bert-base-uncased/ \\
        --set classifier_weights=vit_b16_in1k.safetensors
    """

    try:
        cfg = _config(preset, config_file, set_ or [])
        with progress_display("train", disable=not progress) as show:
            res = train(
                cfg,
                records=records,
                labels=labels,
                rois=rois,
                images=images,
                out=out,
                stage=stage,
                resume=resume,
                progress=show,
                classifier=classifier,
            )
    except CxrctxError as e:
        raise fail(e) from None
    _summary(res, out)
