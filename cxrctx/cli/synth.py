"""`cxrctx synth`: a synthetic MIMIC-CXR root."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.errors import CxrctxError


@app.command("synth")
def synth_cmd(
    out_dir: Path = typer.Argument(
        ..., help="Directory to write (new, empty, or an earlier synth output)."
    ),
    patients: int = typer.Option(
        50, "--patients", help="Number of patients (65379 = full MIMIC-CXR size)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed; the same seed gives byte-identical files."
    ),
    dicom: bool = typer.Option(
        False, "--dicom/--no-dicom", help="Also write one tiny real DICOM per image."
    ),
    zip_reports: bool = typer.Option(
        False, "--zip/--no-zip", help="Also write mimic-cxr-reports.zip."
    ),
    images: bool = typer.Option(
        False, "--images", help="Add images with visible lesions (synth_images)."
    ),
    imagenome: bool = typer.Option(
        False, "--imagenome", help="Add Chest ImaGenome-style scene graphs."
    ),
    image_size: int = typer.Option(
        256, "--image-size", help="Side of the --images pictures in pixels."
    ),
    image_format: str = typer.Option(
        "dicom", "--image-format", help="dicom, jpg or both (for --images)."
    ),
) -> None:
    """Write a synthetic MIMIC-CXR root (CSVs, reports, optional DICOMs) with ground truth."""
    import time

    from rich.table import Table

    from cxrctx.synth import generate

    start = time.perf_counter()
    try:
        s = generate(
            out_dir, patients=patients, seed=seed, dicom=dicom, zip_reports=zip_reports, images=images,
            imagenome=imagenome, image_size=image_size, image_format=image_format,
        )  # fmt: skip
    except CxrctxError as e:
        raise fail(e) from None
    table = Table(title=f"synthetic MIMIC-CXR in {s.out_dir} (seed {s.seed})")
    table.add_column("item")
    table.add_column("count", justify="right")
    for name, value in (
        ("patients", s.patients),
        ("studies", s.studies),
        ("images", s.images),
        ("report files", s.report_files),
        ("DICOM files", s.dicom_files),
    ):
        table.add_row(name, f"{value:,}")
    for name, value in sorted(s.image_files.items()):
        table.add_row(name, f"{value:,}")
    table.add_row("files written", f"{s.files_written:,}")
    for key in (
        "same_day",
        "same_datetime_pairs",
        "missing_time",
        "neither",
        "addendum",
        "temporal_reference_without_prior",
    ):
        table.add_row(f"[dim]{key}[/]", f"{s.varieties.get(key, 0):,}")
    console.print(table)
    console.print(
        f"truth: {s.truth_labels}/, {s.truth_studies}   ({time.perf_counter() - start:.1f} s)"
    )
