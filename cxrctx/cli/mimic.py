"""`cxrctx build-priors`: C-SRRG-style records from a MIMIC-CXR root."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.cli.progress import progress_display
from cxrctx.errors import CxrctxError
from cxrctx.mimic.build import build_priors


class OutputFormat(str, Enum):
    """parquet shards only, or also records.jsonl."""

    parquet = "parquet"
    jsonl = "jsonl"


class ImageExt(str, Enum):
    """MIMIC-CXR's DICOMs, or MIMIC-CXR-JPG's JPEGs."""

    dcm = "dcm"
    jpg = "jpg"


@app.command("build-priors")
def build_priors_cmd(
    root: Path = typer.Argument(
        ..., help="MIMIC-CXR root (holds mimic-cxr-2.0.0-metadata.csv.gz and files/)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    max_priors: int = typer.Option(
        3, "--max-priors", "-k", min=0, help="How many most recent prior studies to embed."
    ),
    shard_size: int = typer.Option(
        20_000, "--shard-size", min=1, help="Records per Parquet shard."
    ),
    fmt: OutputFormat = typer.Option(
        OutputFormat.parquet, "--format", help="parquet, or jsonl to also write records.jsonl."
    ),
    reports_zip: Path = typer.Option(
        None,
        "--reports-zip",
        help="Read reports from this zip (default: files/, else ROOT/mimic-cxr-reports.zip).",
    ),
    scan_dicom: bool = typer.Option(
        False, "--scan-dicom", help="Read DICOM headers under files/ instead of the metadata CSV."
    ),
    image_ext: ImageExt = typer.Option(
        ImageExt.dcm,
        "--image-ext",
        help="Extension of image paths built from the CSV: dcm (MIMIC-CXR) or jpg (MIMIC-CXR-JPG).",
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        "-j",
        min=1,
        help="Worker processes reading reports on this machine (default: CPU count, at most 8); not Ray actors (the model commands' --workers are).",
    ),
    max_report_bytes: int = typer.Option(
        1 << 20,
        "--max-report-bytes",
        min=1,
        help="Reject a report file or zip entry larger than this (report_too_large).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a non-empty --out written by another cxrctx run."
    ),
) -> None:
    """Join each study with its views, report sections and prior studies (C-SRRG style records).

    \b
    Example:
      cxrctx build-priors /data/mimic-cxr --out work/priors
      cxrctx build-priors /data/mimic-cxr --out work/priors -k 5 --format jsonl \\
          --reports-zip mimic-cxr-reports.zip
    """

    with progress_display("build-priors") as progress:
        try:
            res = build_priors(
                root,
                out,
                max_priors=max_priors,
                rows_per_shard=shard_size,
                jsonl=fmt is OutputFormat.jsonl,
                reports_zip=reports_zip,
                scan_dicom=scan_dicom,
                image_ext=image_ext.value,
                workers=workers,
                max_report_bytes=max_report_bytes,
                overwrite=overwrite,
                progress=progress,
            )
        except CxrctxError as e:
            raise fail(e) from None
    _print_build_summary(res)


def _print_build_summary(res) -> None:
    from rich.columns import Columns
    from rich.table import Table

    c = res.counts
    t = Table(title=f"build-priors → {res.out_dir}", show_header=False, title_justify="left")
    t.add_row("studies in", f"{c['studies_in']:,}")
    t.add_row("records", f"{c['records']:,}")
    t.add_row("rejected studies", f"{c['rejected_studies']:,}")
    t.add_row(
        "images (in / in records / rejected)",
        f"{c['images_in']:,} / {c['images_in_records']:,} / {c['images_rejected']:,}",
    )
    if c.get("unknown_view_position"):
        t.add_row("[yellow]unknown ViewPosition → other[/]", f"{c['unknown_view_position']:,}")
    console.print(t)
    tables = [
        ("rejects by reason", res.rejects_by_reason),
        ("flags", res.flag_counts),
        ("n_prior_studies", res.prior_histogram),
        ("splits", res.split_counts),
    ]
    small = []
    for title, data in tables:
        tt = Table(title=title, title_justify="left")
        tt.add_column("value")
        tt.add_column("count", justify="right")
        for k, v in data.items():
            tt.add_row(str(k), f"{v:,}")
        if not data:
            tt.add_row("(none)", "0")
        small.append(tt)
    console.print(Columns(small))
