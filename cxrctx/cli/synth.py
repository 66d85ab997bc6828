"""`cxrctx synth`: a synthetic MIMIC-CXR root."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from cxrctx.cli.app import app, console, fail
from cxrctx.cli.progress import progress_display
from cxrctx.errors import CxrctxError
from cxrctx.synth import ImageFormat, SynthSummary, synthesize

#: Rare cases shown in the summary table (all of them are in truth/synth.json).
_SHOWN_VARIETIES = (
    "same_day",
    "same_datetime_pairs",
    "missing_time",
    "neither",
    "addendum",
    "temporal_reference_without_prior",
)


def _table(s: SynthSummary) -> Table:
    table = Table(title=f"synthetic MIMIC-CXR in {s.out_dir} (seed {s.seed})")
    table.add_column("item")
    table.add_column("count", justify="right")
    for name, value in (
        ("patients", s.patients),
        ("studies", s.studies),
        ("images", s.images),
        ("report files", s.report_files),
        ("DICOM files", s.dicom_files),
        *sorted(s.image_files.items()),
        ("files written", s.files_written),
    ):
        table.add_row(name, f"{value:,}")
    for key in _SHOWN_VARIETIES:
        table.add_row(f"[dim]{key}[/]", f"{s.varieties.get(key, 0):,}")
    return table


@app.command("synth")
def synth_cmd(
    out_dir: Path = typer.Argument(
        None,
        metavar="OUT_DIR",
        help="Directory to write (new, empty, or an earlier synth output); or --out.",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Same as OUT_DIR."),
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
        False, "--images", help="Add rendered images whose lesions follow the truth."
    ),
    imagenome: bool = typer.Option(
        False, "--imagenome", help="Add Chest ImaGenome-style scene graphs of the frontal images."
    ),
    image_size: int = typer.Option(
        256, "--image-size", help="Longer side of the --images pictures in pixels."
    ),
    image_format: ImageFormat = typer.Option(
        ImageFormat.dicom, "--image-format", help="Files per image with --images."
    ),
) -> None:
    """Write a synthetic MIMIC-CXR root (CSVs, reports, optional DICOMs) with ground truth.

    \b
    Example:
      cxrctx synth out/mimic --patients 200 --seed 0 --dicom --zip
      cxrctx synth --out out/syn --patients 150 --images --imagenome \\
          --image-format jpg
    """
    if (out_dir is None) == (out is None):
        raise fail(CxrctxError("give the output directory once: OUT_DIR or --out"))
    start = time.perf_counter()
    with progress_display("synth") as progress:
        try:
            s = synthesize(
                out_dir or out,
                patients=patients,
                seed=seed,
                dicom=dicom,
                zip_reports=zip_reports,
                images=images,
                imagenome=imagenome,
                image_size=image_size,
                image_format=image_format,
                progress=progress,
            )
        except CxrctxError as e:
            raise fail(e) from None
    console.print(_table(s))
    console.print(
        f"truth: {s.truth_labels}/, {s.truth_studies}   ({time.perf_counter() - start:.1f} s)"
    )
