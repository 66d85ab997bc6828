"""`cxrctx generate` and `cxrctx evaluate`."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.cli.engine import (
    AllowFailuresOpt,
    AllowPublicApiOpt,
    ApiKeyEnvOpt,
    BackendOpt,
    BaseUrlOpt,
    EngineOptOpt,
    ExecutorKind,
    ExecutorOpt,
    ModelOpt,
    RayAddressOpt,
    ThreadsOpt,
    TimeoutOpt,
    WorkersOpt,
    engine_spec,
    executor_scope,
    exit_if_failed,
)
from cxrctx.errors import CxrctxError


class LlmUse(str, enum.Enum):
    """What `evaluate` asks the model (with --backend)."""

    both = "both"
    judge = "judge"
    labels = "labels"


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
    limit: int = typer.Option(None, "--limit", help="Only the first N studies."),
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_failures: AllowFailuresOpt = False,
    allow_public_api: AllowPublicApiOpt = False,
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """ROI sentences from the trained model, merged into one report per study.

    With --backend the LLM aggregator merges them (a study whose answer stays unusable
    falls back to the deterministic merge and counts as a failure); without, the
    deterministic merge does.
    """
    from cxrctx.llm.runner import driver_engine
    from cxrctx.reportgen.generate import generate

    try:
        spec = engine_spec(
            backend, model, base_url=base_url, api_key_env=api_key_env, engine_opt=engine_opt,
            timeout=timeout, threads=threads, allow_public_api=allow_public_api,
        )  # fmt: skip
        with executor_scope(executor, ray_address, workers) as ex:
            engine = driver_engine(ex, spec) if spec is not None else None
            res = generate(
                run_dir,
                out=out,
                split=None if split == "all" else split,
                records=records,
                rois=rois,
                images=images,
                engine=engine,
                limit=limit,
                executor=ex,
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
    exit_if_failed(
        c.get("aggregator_failures", 0), allow_failures, f"{out}/generated (aggregator_error)"
    )


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
    llm_for: LlmUse = typer.Option(
        LlmUse.both,
        "--llm-for",
        help="With --backend: the lesion labels, the consistency judge or both.",
    ),
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_failures: AllowFailuresOpt = False,
    allow_public_api: AllowPublicApiOpt = False,
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """Lesion P/R/F1, ROUGE-L (METEOR when available offline) and the LLM consistency judge.

    Without --backend the lesion labels come from the keyword labeler and the judge is
    skipped; with it, the model labels both sides and/or judges (--llm-for).
    """
    from cxrctx.llm.runner import driver_engine
    from cxrctx.reportgen.evaluate import evaluate, report_table

    try:
        spec = engine_spec(
            backend, model, base_url=base_url, api_key_env=api_key_env, engine_opt=engine_opt,
            timeout=timeout, threads=threads, allow_public_api=allow_public_api,
        )  # fmt: skip
        with executor_scope(executor, ray_address, workers) as ex:
            engine = driver_engine(ex, spec) if spec is not None else None
            lab = engine if llm_for in (LlmUse.both, LlmUse.labels) else None
            judge = engine if llm_for in (LlmUse.both, LlmUse.judge) else None
            rep = evaluate(
                generated,
                reference=reference,
                reference_labels=reference_labels,
                labeler_engine=lab,
                judge_engine=judge,
                sections=tuple(s.strip() for s in sections.split(",") if s.strip()),
                out=out,
                executor=ex,
            )
    except CxrctxError as e:
        raise fail(e) from None
    console.print(report_table(rep))
    for n in rep.notes:
        console.print(f"  note: {n}")
    exit_if_failed(rep.judge.failures if rep.judge else 0, allow_failures, "the judge notes above")
