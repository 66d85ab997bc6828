"""`cxrctx label-lesions`: lesion labels of each report."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING

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
from cxrctx.labeling.models import Labeler, LabelLesionsConfig
from cxrctx.labeling.plan import plan_label_lesions
from cxrctx.labeling.stage import label_lesions
from cxrctx.labeling.tables import LabelRun
from cxrctx.llm.base import Sampling

if TYPE_CHECKING:
    from cxrctx.llm.plan import Plan


class LabelBackend(str, enum.Enum):
    """rules (no model) or one of the shared LLM backends."""

    rules = "rules"
    llamacpp = "llamacpp"
    openai = "openai"
    vllm = "vllm"


# --mode lists the labelers that use a model: the one Labeler enum without rules.
if TYPE_CHECKING:
    Mode = Labeler
else:
    Mode = enum.Enum("Mode", {m.name: m.value for m in Labeler if m is not Labeler.rules}, type=str)


@app.command("label-lesions")
def label_lesions_cmd(
    input_path: Path = typer.Argument(..., help="build-priors output dir, or a .parquet/.csv/.jsonl file"),
    out: Path = typer.Option(..., "--out", help="Output directory (labels/, documents/, failures/, cache/, manifest.json)."),
    backend: LabelBackend = typer.Option(None, "--backend", show_default=False, help="rules (no model; the default without --model), llamacpp (CPU, a .gguf path; the default with --model), openai (an OpenAI-compatible server at --base-url) or vllm (GPU, in process)."),
    model: str = typer.Option(None, "--model", help="GGUF path (llamacpp), served model name (openai), model name or dir (vllm). Without it the rules label everything."),
    mode: Mode = typer.Option(Mode.cot, "--mode", help="With a model: cot (hybrid, short reasoning), short (hybrid, status/location only) or llm (the model labels every candidate)."),
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_failures: AllowFailuresOpt = False,
    allow_public_api: AllowPublicApiOpt = False,
    sections: str = typer.Option("findings,impression", "--sections", help="Record sections to label, comma-separated (build-priors input)."),
    id_column: str = typer.Option("id", "--id-column", help="Id column of a table input."),
    text_column: str = typer.Option("text", "--text-column", help="Text column of a table input."),
    shard: str = typer.Option(None, "--shard", help="Label slice i of n (e.g. 0/4); slices write part i and merge in one OUT."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N documents."),
    max_report_bytes: int = typer.Option(1 << 20, "--max-report-bytes", min=1, help="Reject a document whose text is larger than this (too_large, a failure row; never labeled or sent), as build-priors does."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the first prompt and the schema; call no model."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace another run's output in --out (only ever a cxrctx output); the same configuration resumes without it."),
    max_tokens: int = typer.Option(384, "--max-tokens", min=1, help="Output token limit per answer."),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Documents per engine call / output batch (default per backend; openai: 32 x concurrency)."),
    no_prepass: bool = typer.Option(False, "--no-prepass", help="Ask the model about all 14 lesions for every report."),
    prompt: str = typer.Option(None, "--prompt", help="Prompt version (e.g. 1) or a prompt JSON file (hybrid modes: prompts/label_lesions/hybrid_vN.json)."),
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    plan: PlanOpt = False,
    plan_sample: PlanSampleOpt = 200,
    plan_throughput: PlanThroughputOpt = 6300.0,
    plan_gpu: PlanGpuOpt = "H100 (8B model, vLLM)",
) -> None:  # fmt: skip
    """Label the 14 lesions (status, location, rationale) of each report.

    Without --model the deterministic rules label everything (milliseconds per report).
    With a model the default is hybrid: the rules first, the model only for the lesions
    the rules mark ambiguous, shown their evidence sentences (--mode cot / short);
    --mode llm asks the model about every candidate lesion. Exits 1 when any document
    failed (see OUT/failures/) unless --allow-failures.

    \b
    Example:
      cxrctx label-lesions out/priors --out out/labels-rules
      cxrctx label-lesions out/priors --out out/labels \\
          --model qwen2.5-1.5b-instruct-q4_k_m.gguf
      cxrctx label-lesions reports.csv --id-column uid --text-column report \\
          --out out/labels --backend openai --base-url http://127.0.0.1:8000/v1 \\
          --model local
      cxrctx label-lesions out/priors --out out/labels --backend vllm \\
          --model Qwen/Qwen2.5-7B-Instruct --executor ray --ray-address auto \\
          --workers 8 --plan --plan-throughput 6300
    """
    secs = [s.strip() for s in sections.split(",") if s.strip()]
    labeler = _labeler(backend, model, mode)
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
    config = LabelLesionsConfig(
        sections=secs, id_column=id_column, text_column=text_column, shard=shard, limit=limit,
        dry_run=dry_run, overwrite=overwrite, sampling=sampling, batch_size=batch_size,
        prepass=not no_prepass, prompt=prompt, max_report_bytes=max_report_bytes,
    )  # fmt: skip
    if labeler is Labeler.rules:
        _run_rules(input_path, out, config)
        return
    try:
        spec = engine_spec(
            Backend((backend or LabelBackend.llamacpp).value), model, base_url=base_url, api_key_env=api_key_env,
            engine_opt=engine_opt, timeout=timeout, threads=threads, allow_public_api=allow_public_api,
        )  # fmt: skip
        assert spec is not None  # a backend was chosen
        if plan and (shard or dry_run):
            raise CxrctxError("--plan projects the whole input: drop --shard and --dry-run")
        with model_run(executor, ray_address, workers, "label-lesions", disable=dry_run) as run:
            if plan:
                budget = plan_label_lesions(
                    input_path, out, labeler=labeler, config=config, engine=spec, sample=plan_sample,
                    throughput_tokens_per_s=plan_throughput, gpu=plan_gpu, **run,
                )  # fmt: skip
            else:
                result = label_lesions(input_path, out, labeler=labeler, config=config, engine=spec, **run)
    except CxrctxError as e:
        raise fail(e) from None
    _present(budget if plan else result, labeler, allow_failures)


def _labeler(backend: LabelBackend | None, model: str | None, mode: Mode) -> Labeler:
    """The rules when --backend rules, or neither --backend nor --model; else --mode."""
    if backend is LabelBackend.rules or (backend is None and not model):
        if model:
            raise fail(CxrctxError("--backend rules takes no --model"))
        return Labeler.rules
    return Labeler(mode.value)


def _present(outcome: LabelRun | Plan, mode: Labeler, allow_failures: bool) -> None:
    """The plan, the dry run's prompt, or the summary line (exit 1 when documents failed)."""
    if not isinstance(outcome, LabelRun):
        print_plan(outcome)
        return
    if outcome.dry_run is not None:
        _print_dry_run(outcome.dry_run)
        return
    _print_summary(outcome, mode)
    c = outcome.result.counts if outcome.result else {}
    exit_if_failed(c.get("failed", 0), allow_failures, f"{outcome.out_dir}/failures/")


def _print_summary(run: LabelRun, mode: Labeler) -> None:
    """One line: documents, labels per decision path, failures, engine requests."""
    c = run.result.counts if run.result else {}
    if mode is not Labeler.llm:
        console.print(
            f"[bold]label-lesions[/] (hybrid, {mode.value}) → {run.out_dir}: {c.get('documents', 0)} documents, "
            f"{c.get('labeled', 0)} labeled; label rows by rules {c.get('rules', 0)}, by the LLM {c.get('llm', 0)} "
            f"({c.get('llm_changed', 0)} changed from the rule reading), not mentioned {c.get('not_mentioned', 0)}; "
            f"{c.get('llm_called', 0)} documents asked ({c.get('cached', 0)} from cache), {c.get('failed', 0)} failed, "
            f"{c.get('empty', 0)} empty, {c.get('too_large', 0)} too large; {c.get('engine_requests', 0)} engine requests in {run.seconds:.1f}s",
            highlight=False,
        )
        return
    console.print(
        f"[bold]label-lesions[/] → {run.out_dir}: {c.get('documents', 0)} documents, {c.get('labeled', 0)} labeled "
        f"({c.get('llm_called', 0)} by the LLM, {c.get('cached', 0)} from cache, {c.get('no_candidate', 0)} with no "
        f"lesion mentioned), {c.get('failed', 0)} failed ({c.get('transient_failed', 0)} transient: a re-run retries them), "
        f"{c.get('empty', 0)} empty, {c.get('too_large', 0)} too large, {c.get('duplicate_id', 0) + c.get('missing_id', 0)} missing/duplicate ids; "
        f"{c.get('engine_requests', 0)} engine requests in {run.seconds:.1f}s",
        highlight=False,
    )


def _print_dry_run(info: dict) -> None:
    console.print(f"[bold]dry run[/]: {info['documents']} documents; nothing was called")
    for m in info.get("messages", []):
        console.rule(m["role"])
        console.print(m["content"], highlight=False, markup=False)
    if "candidates" in info:
        console.print(
            f"candidates of the first document: {', '.join(info['candidates']) or '(none: LLM skipped)'}",
            markup=False,
        )
    console.rule("answer schema (schemas/lesion_answer.schema.json)")
    console.print_json(json.dumps(info["schema"]))


def _run_rules(input_path: Path, out: Path, config: LabelLesionsConfig) -> None:
    """The rules label everything (no model), same output layout."""
    try:
        with progress_display("label-lesions", disable=config.dry_run) as progress:
            run = label_lesions(
                input_path, out, labeler=Labeler.rules, config=config, progress=progress,
            )  # fmt: skip
    except CxrctxError as e:
        raise fail(e) from None
    if run.dry_run is not None:
        console.print(f"[bold]dry run[/]: {run.dry_run['documents']} documents; nothing written")
        if "reading" in run.dry_run:
            console.print_json(json.dumps(run.dry_run["reading"]))
        return
    c = run.result.counts if run.result else {}
    console.print(
        f"[bold]label-lesions[/] (rules) → {run.out_dir}: {c.get('documents', 0)} documents, "
        f"{c.get('labeled', 0)} labeled; label rows by rules {c.get('rules', 0)} ({c.get('ambiguous', 0)} "
        f"ambiguous), not mentioned {c.get('not_mentioned', 0)}; {c.get('empty', 0)} empty, {c.get('too_large', 0)} too large, "
        f"{c.get('duplicate_id', 0)} missing/duplicate ids in {run.seconds:.1f}s",
        highlight=False,
    )
