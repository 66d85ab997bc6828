"""`cxrctx eval-labels`: label quality against a gold set or another run (tables live here)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cxrctx.cli.app import app, console, fail
from cxrctx.errors import CxrctxError
from cxrctx.labeling import eval_labels
from cxrctx.labeling.evaluate import Uncertain
from cxrctx.labeling.models import EvalReport


def _f(x: float | None, undefined: str = "—") -> str:
    return undefined if x is None else f"{x:.3f}"


def _ci(report: EvalReport, key: str, lesion: str | None = None) -> str:
    if report.ci is None:
        return ""
    iv = report.ci.lesions.get(lesion, {}).get(key) if lesion else report.ci.overall.get(key)
    if iv is None or iv.low is None or iv.high is None:
        return ""
    return f" [{iv.low:.2f}, {iv.high:.2f}]"


def report_table(report: EvalReport, title: str | None = None) -> Table:
    """Per lesion, then micro / macro rows; bootstrap 95 % intervals in brackets when present."""
    has_loc = any(s.location_n for s in report.lesions)
    t = Table(title=title or f"labels vs {report.gold_kind} ({report.n_docs} documents)")
    for c in ("lesion", "support", "tp", "fp", "fn", "precision", "recall", "F1", "kappa", "agree"):
        t.add_column(c, justify="left" if c == "lesion" else "right")
    if has_loc:
        t.add_column("loc acc", justify="right")
    for s in report.lesions:
        row = [
            s.lesion,
            str(s.support),
            str(s.tp),
            str(s.fp),
            str(s.fn),
            _f(s.precision) + _ci(report, "precision", s.lesion),
            _f(s.recall) + _ci(report, "recall", s.lesion),
            _f(s.f1) + _ci(report, "f1", s.lesion),
            _f(s.kappa, "undefined"),
            _f(s.agreement),
        ]
        if has_loc:
            row.append(_f(s.location_accuracy) + (f" (n={s.location_n})" if s.location_n else ""))
        t.add_row(*row)
    sup = sum(s.support for s in report.lesions)
    tp, fp, fn = (sum(getattr(s, a) for s in report.lesions) for a in ("tp", "fp", "fn"))
    t.add_section()
    loc = [_f(report.location_accuracy) + _ci(report, "location_accuracy")] if has_loc else []
    t.add_row(
        "micro",
        str(sup),
        str(tp),
        str(fp),
        str(fn),
        *(
            _f(getattr(report, f"micro_{k}")) + _ci(report, f"micro_{k}")
            for k in ("precision", "recall", "f1")
        ),
        "",
        "",
        *loc,
    )
    t.add_row(
        f"macro ({len(report.macro_lesions)} lesions)",
        "",
        "",
        "",
        "",
        *(
            _f(getattr(report, f"macro_{k}")) + _ci(report, f"macro_{k}")
            for k in ("precision", "recall", "f1")
        ),
        "",
        "",
        *([""] if has_loc else []),
    )
    return t


def confusion_table(report: EvalReport) -> Table | None:
    """Gold location (rows) × predicted location (columns) over true positives."""
    if not report.location_confusion:
        return None
    cols = ["left", "right", "bilateral", "not mentioned"]
    seen = {p for row in report.location_confusion.values() for p in row}
    cols += sorted(seen - set(cols))
    t = Table(title="location: gold (rows) × predicted (columns), true positives")
    t.add_column("gold \\ pred")
    for c in cols:
        t.add_column(c, justify="right")
    for g in [c for c in cols if c in report.location_confusion]:
        t.add_row(g, *(str(report.location_confusion[g].get(c, 0)) for c in cols))
    return t


@app.command("eval-labels")
def eval_labels_cmd(
    labels: Path = typer.Argument(..., help="A label-lesions output dir (or labels Parquet)."),
    against: Path = typer.Option(
        ...,
        "--against",
        help="Gold: MIMIC CheXpert/NegBio CSV (.csv or .csv.gz), IU gold CSV, or another label run.",
    ),
    uncertain: Uncertain = typer.Option(
        Uncertain.positive,
        "--uncertain",
        help="How an uncertain label is scored: a CheXpert/NegBio -1.0 in the gold, and "
        "status=uncertain in a run labeled with label-lesions --uncertain keep.",
    ),
    n_boot: int = typer.Option(
        1000, "--bootstrap", min=0, help="Bootstrap resamples for 95 % CIs (0 = none)."
    ),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (same seed, same intervals)."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the report as JSON instead of tables (as validate and info do).",
    ),
    json_path: Path = typer.Option(
        None, "--json-out", help="Also write the report as JSON to this file."
    ),
    png_path: Path = typer.Option(
        None, "--png", help="Write a P/R/F1 bar chart (needs matplotlib)."
    ),
) -> None:
    """Per-lesion precision / recall / F1 / kappa of labels against a gold or another run,
    with bootstrap 95 % intervals (documents resampled) and a location confusion table.

    \b
    Example:
        cxrctx eval-labels out/labels --against mimic-cxr-2.0.0-chexpert.csv.gz \\
            --uncertain ignore --json-out eval.json
    """
    try:
        report = eval_labels(
            labels,
            against,
            uncertain=uncertain,
            json_path=json_path,
            png_path=png_path,
            n_boot=n_boot,
            seed=seed,
        )
    except CxrctxError as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    console.print(report_table(report))
    if (conf := confusion_table(report)) is not None:
        console.print(conf)
    if report.fp_without_support:
        fps = ", ".join(f"{k} ({v})" for k, v in report.fp_without_support.items())
        console.print(
            f"false positives on lesions without gold support (precision 0, in the macro): {fps}",
            highlight=False,
            markup=False,
        )
    if report.ci is not None:
        console.print(
            f"[…]: bootstrap 95 % intervals, {report.ci.n_boot} resamples of documents, seed {report.ci.seed}",
            highlight=False,
            markup=False,
        )
    if report.n_gold_only or report.n_pred_only:
        console.print(
            f"not scored: {report.n_gold_only} gold-only and {report.n_pred_only} label-only documents",
            highlight=False,
        )
