"""`cxrctx generate` and `cxrctx evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.cli.engine import trainer_engine
from cxrctx.errors import CxrctxError


@app.command("generate")
def generate_cmd(
    run_dir: Path = typer.Argument(..., help="A finished train run directory."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output directory (generated/part-*.parquet, skips.parquet, manifest.json).",
    ),
    split: str = typer.Option("test", "--split", help="train / validate / test, or 'all'."),
    records: Path = typer.Option(None, "--records", help="Default: the run's."),
    rois: Path = typer.Option(None, "--rois", help="Default: the run's."),
    images: Path = typer.Option(None, "--images", help="Default: the run's."),
    backend: str = typer.Option(
        None,
        "--backend",
        help="LLM aggregator backend (llamacpp, openai, vllm); none = deterministic merge.",
    ),
    model: str = typer.Option(None, "--model", help="Model for the aggregator backend."),
    opt: list[str] = typer.Option(None, "--opt", help="Engine option KEY=VALUE (repeatable)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N studies."),
) -> None:
    """ROI sentences from the trained model, merged into one report per study."""
    from cxrctx.reportgen.generate import generate

    try:
        engine = trainer_engine(backend, model, opt, "")
        res = generate(
            run_dir,
            out=out,
            split=None if split == "all" else split,
            records=records,
            rois=rois,
            images=images,
            engine=engine,
            limit=limit,
        )
    except CxrctxError as e:
        raise fail(e) from None
    c = res.counts
    console.print(
        f"generate: {c['generated']} reports for {c['studies']} studies, {c['skipped']} skipped, "
        f"{c['aggregator_failures']} aggregator fallbacks → {out}"
    )
    for reason, n in res.skips.items():
        console.print(f"  skipped: {reason}: {n}")


@app.command("evaluate")
def evaluate_cmd(
    generated: Path = typer.Argument(..., help="A generate output directory."),
    reference: Path = typer.Option(
        ..., "--reference", help="build-priors output holding the reference reports."
    ),
    reference_labels: Path = typer.Option(
        None, "--reference-labels", help="Labels for the reference side (skips labeling it)."
    ),
    out: Path = typer.Option(
        None, "--out", help="Write evaluation.json and per_study.parquet here."
    ),
    sections: str = typer.Option(
        "findings,impression",
        "--sections",
        help="Reference sections: findings, impression or both.",
    ),
    labeler_backend: str = typer.Option(
        None, "--labeler-backend", help="LLM backend for lesion labels (none = keyword labeler)."
    ),
    labeler_model: str = typer.Option(None, "--labeler-model"),
    labeler_opt: list[str] = typer.Option(None, "--labeler-opt", help="Engine option KEY=VALUE."),
    judge_backend: str = typer.Option(
        None, "--judge-backend", help="LLM backend for the consistency judge (none = skipped)."
    ),
    judge_model: str = typer.Option(None, "--judge-model"),
    judge_opt: list[str] = typer.Option(None, "--judge-opt", help="Engine option KEY=VALUE."),
) -> None:
    """Lesion P/R/F1, ROUGE-L (METEOR when available offline) and the LLM consistency judge."""
    from cxrctx.reportgen.evaluate import evaluate, report_table

    try:
        lab = trainer_engine(labeler_backend, labeler_model, labeler_opt, "labeler")
        judge = trainer_engine(judge_backend, judge_model, judge_opt, "judge")
        rep = evaluate(
            generated,
            reference=reference,
            reference_labels=reference_labels,
            labeler_engine=lab,
            judge_engine=judge,
            sections=tuple(s.strip() for s in sections.split(",") if s.strip()),
            out=out,
        )
    except CxrctxError as e:
        raise fail(e) from None
    console.print(report_table(rep))
    for n in rep.notes:
        console.print(f"  note: {n}")
