"""`cxrctx eval-labels`: label quality against a gold set or another run."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.errors import CxrctxError


@app.command("eval-labels")
def eval_labels_cmd(
    labels: Path = typer.Argument(..., help="A label-lesions output dir (or labels Parquet)."),
    against: Path = typer.Option(
        ..., "--against", help="Gold: MIMIC CheXpert/NegBio CSV, IU gold CSV, or another label run."
    ),
    uncertain: str = typer.Option(
        "positive", "--uncertain", help="CheXpert -1.0: positive, negative or ignore."
    ),
    json_path: Path = typer.Option(None, "--json", help="Write the report as JSON."),
    png_path: Path = typer.Option(
        None, "--png", help="Write a P/R/F1 bar chart (needs matplotlib)."
    ),
) -> None:
    """Per-lesion precision / recall / F1 / kappa of labels against a gold or another run."""
    from cxrctx.labeling import eval_labels
    from cxrctx.labeling.evaluate import report_table

    if uncertain not in ("positive", "negative", "ignore"):
        raise fail(
            CxrctxError(f"--uncertain must be positive, negative or ignore (got {uncertain!r})")
        )
    try:
        report = eval_labels(
            labels, against, uncertain=uncertain, json_path=json_path, png_path=png_path
        )  # type: ignore[arg-type]
    except CxrctxError as e:
        raise fail(e) from None
    console.print(report_table(report))
    if report.n_gold_only or report.n_pred_only:
        console.print(
            f"not scored: {report.n_gold_only} gold-only and {report.n_pred_only} label-only documents",
            highlight=False,
        )
