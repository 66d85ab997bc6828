"""`cxrctx structure-reports`: SRRG-structured reports, checked for faithfulness."""

from __future__ import annotations

import enum
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrctx.cli.app import app, console, fail
from cxrctx.cli.engine import (
    AllowFailuresOpt,
    AllowPublicApiOpt,
    ApiKeyEnvOpt,
    Backend,
    BaseUrlOpt,
    EngineOptOpt,
    ExecutorKind,
    ExecutorOpt,
    PlanGpuOpt,
    PlanOpt,
    PlanSampleOpt,
    PlanThroughputOpt,
    RayAddressOpt,
    ThreadsOpt,
    TimeoutOpt,
    WorkersOpt,
    engine_spec,
    exit_if_failed,
    model_run,
    print_plan,
)
from cxrctx.cli.progress import progress_display
from cxrctx.errors import CxrctxError
from cxrctx.llm import Sampling
from cxrctx.structure.plan import plan_structure_reports
from cxrctx.structure.run import structure_reports

if TYPE_CHECKING:
    from cxrctx.llm.plan import Plan
    from cxrctx.structure.run import StructureRun


class StructureBackend(str, enum.Enum):
    """rules (no model) or one of the shared LLM backends."""

    rules = "rules"
    llamacpp = "llamacpp"
    openai = "openai"
    vllm = "vllm"


RecordsArg = Annotated[
    Path,
    typer.Argument(
        help="build-priors output dir, or a .parquet/.csv/.jsonl file with id, findings, impression"
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option("--out", help="Output directory (structured/, failures/, cache/, manifest.json)."),
]
BackendOpt = Annotated[
    StructureBackend | None,
    typer.Option(
        "--backend",
        show_default=False,
        help="rules (no model; the default without --model), llamacpp (CPU, a .gguf path; the default with --model), openai (an OpenAI-compatible server at --base-url) or vllm (GPU, in process).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="GGUF path (llamacpp), served model name (openai), model name or dir (vllm): it rewrites the rules' draft. Without it the rules structure everything.",
    ),
]
PriorsOpt = Annotated[
    bool,
    typer.Option(
        "--priors",
        help="Also structure the reports of each record's prior studies (each prior once).",
    ),
]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-tokens", min=1, help="Output token limit per answer.")
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size", min=1, help="Reports per engine call / output batch (default per backend)."
    ),
]
PromptOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        help="Prompt version (default 2: rewrite the rules' draft; 1: from scratch) or a prompt JSON file.",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace a non-empty --out written by another cxrctx run (the same configuration resumes without it).",
    ),
]


@app.command("structure-reports")
def structure_reports_cmd(
    records: RecordsArg,
    out: OutOpt,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_failures: AllowFailuresOpt = False,
    allow_public_api: AllowPublicApiOpt = False,
    priors: PriorsOpt = False,
    id_column: str = typer.Option("id", "--id-column", help="Study id column of a table input."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N records."),
    max_tokens: MaxTokensOpt = 768,
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: BatchSizeOpt = None,
    prompt: PromptOpt = None,
    overwrite: OverwriteOpt = False,
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    plan: PlanOpt = False,
    plan_sample: PlanSampleOpt = 200,
    plan_throughput: PlanThroughputOpt = 6300.0,
    plan_gpu: PlanGpuOpt = "H100 (8B model, vLLM)",
) -> None:
    """Rewrite each report into the SRRG layout (organ headers with bullets, numbered
    impression); keep only answers that pass the faithfulness check.

    Without --model the rules do it (no model, thousands of reports a minute): each
    FINDINGS sentence under the organ header it names, each IMPRESSION sentence a list
    item. With --model the LLM rewrites that draft into a concise style; a rewrite that
    fails the check after one repair falls back to the draft (counted).
    A build-priors input is checked against its manifest (sha256 of every shard) first.
    The same configuration into the same --out resumes (from its cache with a model);
    another run's folder is refused unless --overwrite. Every answer is checked against
    its source (bullets supported by source sentences, no sentence dropped, sides and
    numbers kept, same rule-read lesion labels, each bullet under its own organ); a report
    that cannot be structured is recorded in OUT/failures/, never written as a structured
    report. Exits 1 when any report failed unless --allow-failures. --plan (with a
    model) structures a sample into OUT/plan-sample and prints the projected GPU-hours.

    \b
    Example:
      cxrctx structure-reports out/priors --out out/structured
      cxrctx structure-reports out/priors --out out/structured \\
          --model qwen2.5-1.5b-instruct-q4_k_m.gguf
      cxrctx structure-reports out/priors --priors --out out/structured \\
          --backend openai --base-url http://127.0.0.1:8000/v1 --model local
      cxrctx structure-reports out/priors --out out/structured --backend vllm \\
          --model Qwen/Qwen2.5-7B-Instruct --executor ray --ray-address auto \\
          --workers 8 --plan --plan-throughput 6300
    """
    opts = SimpleNamespace(**locals())  # the parsed options by name, for the phases below
    if _rules_chosen(backend, model):
        _structure_with_rules(opts)
        return
    try:
        outcome = _structure_with_model(opts)
    except CxrctxError as e:
        raise fail(e) from None
    except OSError as e:
        raise fail(_write_error(e, out)) from None
    if plan:
        print_plan(outcome)
        return
    _print_summary(outcome)
    exit_if_failed(outcome.result.counts["failed"], allow_failures, f"{outcome.out_dir}/failures/")


def _structure_with_rules(o: SimpleNamespace) -> None:
    """Structure every report with the rules (no model)."""
    if o.plan:
        raise fail(CxrctxError("--plan projects a model's cost: give --model"))
    _run_rules(
        o.records,
        o.out,
        priors=o.priors,
        id_column=o.id_column,
        limit=o.limit,
        overwrite=o.overwrite,
        allow_failures=o.allow_failures,
        workers=o.workers,
    )


def _structure_with_model(o: SimpleNamespace) -> Any:
    """Structure (or --plan) with the engine the options name."""
    spec = engine_spec(
        Backend((o.backend or StructureBackend.llamacpp).value),
        o.model,
        base_url=o.base_url,
        api_key_env=o.api_key_env,
        engine_opt=o.engine_opt,
        timeout=o.timeout,
        threads=o.threads,
        allow_public_api=o.allow_public_api,
    )
    assert spec is not None
    task = dict(
        engine=spec,
        priors=o.priors,
        id_column=o.id_column,
        limit=o.limit,
        sampling=Sampling(temperature=o.temperature, max_tokens=o.max_tokens, seed=o.seed),
        batch_size=o.batch_size,
        prompt=o.prompt,
        overwrite=o.overwrite,
    )
    with model_run(o.executor, o.ray_address, o.workers, "structure-reports") as run:
        if o.plan:
            return _plan(o.records, o.out, o.plan_sample, o.plan_throughput, o.plan_gpu, task | run)
        return _structure(o.records, o.out, task | run)


def _rules_chosen(backend: StructureBackend | None, model: str | None) -> bool:
    """Whether the rules structure everything: --backend rules, or neither option."""
    if backend is StructureBackend.rules or (backend is None and not model):
        if model:
            raise fail(CxrctxError("--backend rules takes no --model"))
        return True
    return False


def _run_rules(records: Path, out: Path, *, allow_failures: bool, **opts: Any) -> None:
    """The rules run (no model): structure, print the summary, exit 1 on failures."""
    try:
        with progress_display("structure-reports") as progress:
            run = structure_reports(records, out, progress=progress, **opts)
    except CxrctxError as e:
        raise fail(e) from None
    except OSError as e:
        raise fail(_write_error(e, out)) from None
    _print_summary(run)
    exit_if_failed(run.result.counts["failed"], allow_failures, f"{run.out_dir}/failures/")


def _write_error(e: OSError, out: Path) -> CxrctxError:
    """A disk error while writing (full disk, read-only folder) as one line naming the file;
    what was finished stays (shards and cache are written atomically), a re-run resumes."""
    where = e.filename or out
    return CxrctxError(
        f"{where}: cannot write ({e.strerror or e}); "
        "free space or fix permissions, then re-run to resume"
    )


def _structure(records: Path, out: Path, task: dict[str, Any]) -> StructureRun:
    """The structuring run (`task`: the model and report options)."""

    return structure_reports(records, out, **task)


def _plan(
    records: Path, out: Path, sample: int, throughput: float, gpu: str, task: dict[str, Any]
) -> Plan:
    """`--plan`: structure a sample into OUT/plan-sample and project the token budget."""
    return plan_structure_reports(
        records, out, sample=sample, throughput_tokens_per_s=throughput, gpu=gpu, **task
    )


def _print_summary(run: StructureRun) -> None:
    """One line: reports, how they passed the check, failures by reason, engine use."""
    c = run.result.counts
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(run.result.reasons.items())) or "none"
    if c["by_model"] == 0 and c["engine_requests"] == 0:
        console.print(
            f"[bold]structure-reports[/] (rules) → {run.out_dir}: {c['reports']} reports ({c['records']} records, "
            f"{c['priors']} priors), {c['structured']} structured, {c['failed']} failed (by reason: {reasons}), "
            f"{c['empty']} empty, {c['duplicate_id'] + c['missing_id']} missing/duplicate ids in {run.seconds:.1f}s",
            highlight=False,
        )
        return
    fallbacks = ", ".join(f"{k} {v}" for k, v in sorted(run.result.fallbacks.items())) or "none"
    console.print(
        f"[bold]structure-reports[/] → {run.out_dir}: {c['reports']} reports ({c['records']} records, "
        f"{c['priors']} priors), {c['structured']} structured ({c['passed_first_time']} first time, "
        f"{c['passed_after_repair']} after repair, {c['cached']} from cache, {c['rules_fallback']} kept the rules' "
        f"draft: {fallbacks}), {c['failed']} failed "
        f"(by reason: {reasons}; {c['transient_failed']} transient: a re-run retries them), "
        f"{c['empty']} empty, {c['duplicate_id'] + c['missing_id']} missing/duplicate ids; "
        f"{c['engine_requests']} engine requests, {c['completion_tokens']} output tokens in {run.seconds:.1f}s",
        highlight=False,
    )
