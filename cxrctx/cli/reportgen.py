"""`cxrctx generate` and `cxrctx evaluate`: options in, one library call, results out."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from cxrctx.cli.progress import progress_display
from cxrctx.errors import CxrctxError
from cxrctx.llm.runner import driver_engine
from cxrctx.reportgen.evaluate import CRITERIA, evaluate
from cxrctx.reportgen.generate import generate

if TYPE_CHECKING:
    from rich.table import Table

    from cxrctx.reportgen.evaluate import EvaluationReport
    from cxrctx.reportgen.generate import GenerateResult


class SplitChoice(str, Enum):
    """Which records split to generate for."""

    train = "train"
    validate = "validate"
    test = "test"
    all = "all"


class SectionsChoice(str, Enum):
    """Which record sections form the reference text."""

    both = "findings,impression"
    findings = "findings"
    impression = "impression"


class LlmUse(str, Enum):
    """What `evaluate` asks the model (with --backend)."""

    both = "both"
    judge = "judge"
    labels = "labels"


SplitOpt = Annotated[
    SplitChoice,
    typer.Option(
        "--split",
        help="Records split (MIMIC-CXR's names, as in its split CSV and the records: validate, not the hub's validation), or all.",
    ),
]
AggregatorLesionsOpt = Annotated[
    bool,
    typer.Option(
        "--aggregator-lesions",
        help="Also give the LLM aggregator the classifier's lesion list (off: regional statements only, as in the paper).",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace a non-empty --out written by another cxrctx run."),
]
ReferenceLabelsOpt = Annotated[
    Path | None,
    typer.Option("--reference-labels", help="Labels for the reference side (skips labeling it)."),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write evaluation.json and per_study.parquet here.")
]
SectionsOpt = Annotated[
    SectionsChoice, typer.Option("--sections", help="Record sections that form the reference text.")
]
LlmForOpt = Annotated[
    LlmUse,
    typer.Option(
        "--llm-for", help="With --backend: the lesion labels, the consistency judge or both."
    ),
]


@app.command("generate")
def generate_cmd(
    run_dir: Path = typer.Argument(..., help="A finished train run directory."),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output directory (generated/part-*.parquet, skips.parquet, manifest.json).",
    ),
    split: SplitOpt = SplitChoice.test,
    records: Path = typer.Option(None, "--records", help="Default: the run's."),
    rois: Path = typer.Option(None, "--rois", help="Default: the run's."),
    images: Path = typer.Option(None, "--images", help="Default: the run's."),
    aggregator_lesions: AggregatorLesionsOpt = False,
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
    overwrite: OverwriteOpt = False,
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """ROI sentences from the trained model, merged into one report per study.

    With --backend the LLM aggregator merges them (a study whose answer stays unusable
    falls back to the deterministic merge and counts as a failure); without, the
    deterministic merge does. A study whose regions all produced nothing keeps an empty
    report and is counted; empty reports and aggregator failures make the command exit 1
    (unless --allow-failures).

    \b
    Example:
        cxrctx generate out/run --split test --out out/gen
        cxrctx generate out/run --out out/gen-llm --backend llamacpp \\
            --model model.gguf
        cxrctx generate out/run --out out/gen-llm --backend vllm \\
            --model Qwen/Qwen2.5-7B-Instruct --executor ray --ray-address auto \\
            --workers 4
    """
    try:
        spec = engine_spec(
            backend,
            model,
            base_url=base_url,
            api_key_env=api_key_env,
            engine_opt=engine_opt,
            timeout=timeout,
            threads=threads,
            allow_public_api=allow_public_api,
        )
        with (
            executor_scope(executor, ray_address, workers) as ex,
            progress_display("generate") as progress,
        ):
            engine = driver_engine(ex, spec) if spec is not None else None
            res = generate(
                run_dir,
                out=out,
                split=None if split is SplitChoice.all else split.value,
                records=records,
                rois=rois,
                images=images,
                engine=engine,
                aggregator_lesions=aggregator_lesions,
                limit=limit,
                overwrite=overwrite,
                progress=progress,
                executor=ex,
            )
    except CxrctxError as e:
        raise fail(e) from None
    _present_generate(res, out, allow_failures)


def _present_generate(res: GenerateResult, out: Path, allow_failures: bool) -> None:
    """The counts and skip reasons; exit 1 on empty reports or aggregator failures."""
    c = res.counts
    console.print(
        f"generate: {c['generated']} reports for {c['studies']} studies, "
        f"{c['empty_reports']} empty (failed), {c['skipped']} skipped, "
        f"{c['aggregator_failures']} aggregator fallbacks → {out}",
        highlight=False,
    )
    for reason, n in res.skips.items():
        console.print(f"  skipped: {reason}: {n}", highlight=False, markup=False)
    exit_if_failed(
        c.get("empty_reports", 0) + c.get("aggregator_failures", 0),
        allow_failures,
        f"{out}/generated (empty reports, aggregator_error)",
    )


@app.command("evaluate")
def evaluate_cmd(
    generated: Path = typer.Argument(..., help="A generate output directory."),
    reference: Path = typer.Option(
        ..., "--reference", help="build-priors output holding the reference reports."
    ),
    reference_labels: ReferenceLabelsOpt = None,
    out: OutOpt = None,
    sections: SectionsOpt = SectionsChoice.both,
    llm_for: LlmForOpt = LlmUse.both,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_failures: AllowFailuresOpt = False,
    allow_public_api: AllowPublicApiOpt = False,
    overwrite: OverwriteOpt = False,
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """Lesion P/R/F1, classifier AUC, ROUGE-L, temporal hallucination, METEOR (when available
    offline) and the LLM consistency judge.

    Without --backend the lesion labels come from the rules labeler and the judge is
    skipped; with it, the model labels both sides and/or judges (--llm-for).

    \b
    Example:
        cxrctx evaluate out/gen --reference out/priors \\
            --reference-labels out/syn/truth --out out/eval
    """
    try:
        spec = engine_spec(
            backend,
            model,
            base_url=base_url,
            api_key_env=api_key_env,
            engine_opt=engine_opt,
            timeout=timeout,
            threads=threads,
            allow_public_api=allow_public_api,
        )
        with (
            executor_scope(executor, ray_address, workers) as ex,
            progress_display("evaluate") as progress,
        ):
            engine = driver_engine(ex, spec) if spec is not None else None
            lab = engine if llm_for in (LlmUse.both, LlmUse.labels) else None
            judge = engine if llm_for in (LlmUse.both, LlmUse.judge) else None
            rep = evaluate(
                generated,
                reference=reference,
                reference_labels=reference_labels,
                labeler_engine=lab,
                judge_engine=judge,
                sections=tuple(sections.value.split(",")),
                out=out,
                overwrite=overwrite,
                progress=progress,
                executor=ex,
            )
    except CxrctxError as e:
        raise fail(e) from None
    console.print(evaluation_table(rep))
    for n in rep.notes:
        console.print(f"  note: {n}", highlight=False, markup=False)
    exit_if_failed(rep.judge.failures if rep.judge else 0, allow_failures, "the judge notes above")


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def evaluation_table(rep: EvaluationReport) -> Table:
    """A rich table of `evaluate`'s headline numbers and per-lesion F1."""
    from rich.table import Table

    t = Table(
        title=f"evaluate: {rep.n_pairs} studies ({'+'.join(rep.reference_sections)}), labeler {rep.labeler}"
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    les = rep.lesion or {}
    t.add_row(
        "lesion macro P / R / F1",
        f"{_f(les.get('macro_precision'))} / {_f(les.get('macro_recall'))} / {_f(les.get('macro_f1'))}",
    )
    t.add_row("lesion micro F1", _f(les.get("micro_f1")))
    for s in les.get("lesions", []):
        if s.get("support"):
            t.add_row(f"  {s['lesion']} F1 (n={s['support']})", _f(s.get("f1")))
    if rep.classifier_auc is not None:
        t.add_row("classifier macro-AUC", _f(rep.classifier_auc.get("macro")))
    t.add_row("ROUGE-L (F1)", _f(rep.rouge_l))
    t.add_row("METEOR", _f(rep.meteor))
    th = rep.temporal_hallucination
    if th is not None:
        t.add_row(
            f"temporal hallucination (n={th.n_without_prior} without prior)",
            f"{_f(th.rate)} (reference {_f(th.reference_rate)})",
        )
    t.add_row("empty generated reports", str(rep.n_empty_generated))
    if rep.judge is not None:
        for c in CRITERIA:
            t.add_row(f"judge {c}", _f(getattr(rep.judge, c)))
        t.add_row("judge total (/20)", _f(rep.judge.total))
    return t
