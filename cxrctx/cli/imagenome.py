"""`cxrctx build-rois`: the 11 CLALA-Net ROIs from Chest ImaGenome scene graphs."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.errors import CxrctxError
from cxrctx.imagenome import build_rois


@app.command("build-rois")
def build_rois_cmd(
    imagenome_dir: Path = typer.Argument(
        ..., help="Chest ImaGenome root (or its silver_dataset/scene_graph folder)."
    ),
    records: Path = typer.Option(
        ..., "--records", help="build-priors output (or its records/ folder)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory (rois/part-*.parquet, rejects.parquet, manifest.json)."
    ),
    all_views: bool = typer.Option(
        False, "--all-views", help="Also count non-frontal images without a scene graph as rejects."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier build-rois output of another configuration in OUT.",
    ),
) -> None:
    """Keep the 11 CLALA-Net ROIs of each image's scene graph: cleaned boxes, sentences, abnormal flag.

    \b
    Example:
      cxrctx build-rois /data/chest-imagenome --records out/records --out out/rois
    """
    try:
        res = build_rois(
            imagenome_dir, records=records, out=out, frontal_only=not all_views, overwrite=overwrite
        )
    except CxrctxError as e:
        raise fail(e) from None
    c = res.counts
    console.print(
        f"build-rois: {c['images_written']} images written, {c['images_rejected']} rejected "
        f"(of {c['images_considered']} considered; {c['skipped_non_frontal']} non-frontal without a scene graph skipped; "
        f"{c['boxes_clipped']} boxes clipped) → {out}"
    )
    for reason, n in sorted(res.reasons.items()):
        console.print(f"  rejected: {reason}: {n}")
