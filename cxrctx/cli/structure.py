"""`cxrctx structure-reports`: SRRG-structured reports, checked for faithfulness."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@app.command("structure-reports")
def structure_reports_cmd(
    records: Path = typer.Argument(..., help="build-priors output dir, or a .parquet/.csv/.jsonl file with id, findings, impression"),
    out: Path = typer.Option(..., "--out", help="Output directory (structured/, failures/, cache/, manifest.json)."),
    backend: StructureBackend = typer.Option(None, "--backend", show_default=False, help="rules (no model; the default without --model), llamacpp (CPU, a .gguf path; the default with --model), openai (an OpenAI-compatible server at --base-url) or vllm (GPU, in process)."),
    model: str = typer.Option(None, "--model", help="GGUF path (llamacpp), served model name (openai), model name or dir (vllm): it rewrites the rules' draft. Without it the rules structure everything."),
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_failures: AllowFailuresOpt = False,
    allow_public_api: AllowPublicApiOpt = False,
    priors: bool = typer.Option(False, "--priors", help="Also structure the reports of each record's prior studies (each prior once)."),
    id_column: str = typer.Option("id", "--id-column", help="Study id column of a table input."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N records."),
    max_tokens: int = typer.Option(768, "--max-tokens", min=1, help="Output token limit per answer."),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Reports per engine call / output batch (default per backend)."),
    prompt: str = typer.Option(None, "--prompt", help="Prompt version (default 2: rewrite the rules' draft; 1: from scratch) or a prompt JSON file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out written by another cxrctx run (the same configuration resumes without it)."),
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    plan: PlanOpt = False,
    plan_sample: PlanSampleOpt = 200,
    plan_throughput: PlanThroughputOpt = 6300.0,
    plan_gpu: PlanGpuOpt = "H100 (8B model, vLLM)",
) -> None:  # fmt: skip
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

    if _rules_chosen(backend, model):
        if plan:
            raise fail(CxrctxError("--plan projects a model's cost: give --model"))
        _run_rules(records, out, priors=priors, id_column=id_column, limit=limit,
                   overwrite=overwrite, allow_failures=allow_failures, workers=workers)  # fmt: skip
        return
    try:
        spec = engine_spec(
            Backend((backend or StructureBackend.llamacpp).value), model, base_url=base_url, api_key_env=api_key_env, engine_opt=engine_opt,
            timeout=timeout, threads=threads, allow_public_api=allow_public_api,
        )  # fmt: skip
        assert spec is not None
        task = dict(
            engine=spec, priors=priors, id_column=id_column, limit=limit,
            sampling=Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed),
            batch_size=batch_size, prompt=prompt, overwrite=overwrite,
        )  # fmt: skip
        with model_run(executor, ray_address, workers, "structure-reports") as run:
            if plan:
                budget = _plan(records, out, plan_sample, plan_throughput, plan_gpu, task | run)
            else:
                result = _structure(records, out, task | run)
    except CxrctxError as e:
        raise fail(e) from None
    except OSError as e:
        raise fail(_write_error(e, out)) from None
    if plan:
        print_plan(budget)
        return
    _print_summary(result)
    exit_if_failed(result.result.counts["failed"], allow_failures, f"{result.out_dir}/failures/")


def _rules_chosen(backend: StructureBackend | None, model: str | None) -> bool:
    """Whether the rules structure everything: --backend rules, or neither option."""
    if backend is StructureBackend.rules or (backend is None and not model):
        if model:
            raise fail(CxrctxError("--backend rules takes no --model"))
        return True
    return False


def _run_rules(records: Path, out: Path, *, allow_failures: bool, **opts: Any) -> None:
    """The rules run (no model): structure, print the summary, exit 1 on failures."""
    from cxrctx.structure.run import structure_reports

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
    return CxrctxError(f"{where}: cannot write ({e.strerror or e}); "
                       "free space or fix permissions, then re-run to resume")  # fmt: skip


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
