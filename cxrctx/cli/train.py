"""`cxrctx train`: the reference CLALA-Net trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.errors import CxrctxError


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
    preset: str = typer.Option(
        "tiny", "--preset", help="tiny (CPU, seconds) or paper (ViT-B/16, batch 24, 15 epochs)."
    ),
    stage: str = typer.Option("both", "--stage", help="1, 2 or both."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/last.pt."),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help="Override a config field: KEY=JSON (e.g. --set batch_size=8 --set use_llcl=false).",
    ),
    config_file: Path = typer.Option(
        None, "--config", help="A JSON TrainConfig file (overrides the preset)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the reference CLALA-Net (single process, or under torchrun for DDP)."""
    import json as _json

    try:
        from cxrctx.train.config import make_config, validate_config

        overrides: dict[str, object] = {}
        for s in set_ or []:
            key, sep, val = s.partition("=")
            if not sep:
                raise CxrctxError(f"--set {s!r}: expected KEY=VALUE")
            try:
                overrides[key] = _json.loads(val)
            except ValueError:
                overrides[key] = val
        if config_file is not None:
            try:
                data = _json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise CxrctxError(f"{config_file}: cannot read config ({e})") from e
            cfg = validate_config({**data, **overrides}, source=str(config_file))
        else:
            cfg = make_config(preset, **overrides)
        from cxrctx.train.loop import train

        res = train(
            cfg,
            records=records,
            labels=labels,
            rois=rois,
            images=images,
            out=out,
            stage=stage,
            resume=resume,
            progress=progress,
        )
    except CxrctxError as e:
        raise fail(e) from None
    console.print(f"train: stages {res.stages} done, {res.global_step} steps → {out}")
    console.print(f"  items: {res.counts}")
    for reason, n in res.skips.items():
        console.print(f"  skipped: {reason}: {n}")
    if res.eval.get("macro_auc") is not None:
        console.print(
            f"  validation: classifier macro-AUC {res.eval['macro_auc']:.3f}, accuracy {res.eval['accuracy']:.3f} "
            f"(majority {res.eval['majority_accuracy']:.3f}), decoder CE {res.eval['ce']:.3f}"
        )
