"""`cxrctx label-lesions`: lesion labels of each report."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated

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
from cxrctx.llm.spec import EngineSpec

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


class AdjudicatorChoice(str, enum.Enum):
    """Who decides the ambiguous readings with --examples: the exemplar vote or the model."""

    vote = "vote"
    llm = "llm"


class UncertainChoice(str, enum.Enum):
    """What a hedged positive reading is written as (CheXpert-style policy)."""

    positive = "positive"
    negative = "negative"
    keep = "keep"


InputPathArg = Annotated[
    Path, typer.Argument(help="build-priors output dir, or a .parquet/.csv/.jsonl file")
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out", help="Output directory (labels/, documents/, failures/, cache/, manifest.json)."
    ),
]
BackendOpt = Annotated[
    LabelBackend | None,
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
        help="GGUF path (llamacpp), served model name (openai), model name or dir (vllm). Without it the rules label everything.",
    ),
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="With a model: cot (hybrid, short reasoning), short (hybrid, status/location only) or llm (the model labels every candidate).",
    ),
]
SectionsOpt = Annotated[
    str,
    typer.Option(
        "--sections",
        help="Record sections to label, comma-separated (build-priors input). The default "
        "falls back to last_paragraph when both are empty; a study with text only in header "
        "sections gets 14 not_mentioned rows with section header_only.",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard", help="Label slice i of n (e.g. 0/4); slices write part i and merge in one OUT."
    ),
]
MaxReportBytesOpt = Annotated[
    int,
    typer.Option(
        "--max-report-bytes",
        min=1,
        help="Reject a document whose text is larger than this (too_large, a failure row; never labeled or sent), as build-priors does.",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the first prompt and the schema; call no model.")
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace another run's output in --out (only ever a cxrctx output); the same configuration resumes without it.",
    ),
]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-tokens", min=1, help="Output token limit per answer.")
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Documents per engine call / output batch (default per backend; openai: 32 x concurrency).",
    ),
]
NoPrepassOpt = Annotated[
    bool, typer.Option("--no-prepass", help="Ask the model about all 14 lesions for every report.")
]
PromptOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        help="Prompt version (e.g. 1) or a prompt JSON file (hybrid modes: prompts/label_lesions/hybrid_vN.json).",
    ),
]
ExamplesOpt = Annotated[
    Path | None,
    typer.Option(
        "--examples",
        help="Labeled reports (.parquet/.csv/.jsonl: id, text, one column per lesion with positive/negative): the ambiguous readings are decided with the most similar labeled mentions (never from the same report).",
    ),
]
AdjudicatorOpt = Annotated[
    AdjudicatorChoice,
    typer.Option(
        "--adjudicator",
        help="With --examples: vote (the exemplars' kNN vote, no model; the default) or llm (the model's log-probability choice with the exemplars in the prompt; needs --model).",
    ),
]
KOpt = Annotated[
    int, typer.Option("--k", min=1, help="With --examples: exemplars per ambiguous reading.")
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="With --examples: P(positive) >= threshold is positive (default: the vote's is calibrated on the examples; the model's is 0.5: pass the one chosen on development data).",
    ),
]
UncertainOpt = Annotated[
    UncertainChoice,
    typer.Option(
        "--uncertain",
        help="Hedged positive readings the rules leave undecided: positive (default, what the trainer reads), negative, or keep (status=uncertain). Recorded in the manifest.",
    ),
]


@app.command("label-lesions")
def label_lesions_cmd(
    input_path: InputPathArg,
    out: OutOpt,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    mode: ModeOpt = Mode.cot,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_failures: AllowFailuresOpt = False,
    allow_public_api: AllowPublicApiOpt = False,
    sections: SectionsOpt = "findings,impression",
    id_column: str = typer.Option("id", "--id-column", help="Id column of a table input."),
    text_column: str = typer.Option("text", "--text-column", help="Text column of a table input."),
    shard: ShardOpt = None,
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N documents."),
    max_report_bytes: MaxReportBytesOpt = 1 << 20,
    dry_run: DryRunOpt = False,
    overwrite: OverwriteOpt = False,
    max_tokens: MaxTokensOpt = 384,
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: BatchSizeOpt = None,
    no_prepass: NoPrepassOpt = False,
    prompt: PromptOpt = None,
    executor: ExecutorOpt = ExecutorKind.local,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = 1,
    plan: PlanOpt = False,
    plan_sample: PlanSampleOpt = 200,
    plan_throughput: PlanThroughputOpt = 6300.0,
    plan_gpu: PlanGpuOpt = "H100 (8B model, vLLM)",
    examples: ExamplesOpt = None,
    adjudicator: AdjudicatorOpt = AdjudicatorChoice.vote,
    k: KOpt = 5,
    threshold: ThresholdOpt = None,
    uncertain: UncertainOpt = UncertainChoice.positive,
) -> None:
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
    opts = SimpleNamespace(**locals())  # the parsed options by name, for the phases below
    labeler = _labeler(backend, model, mode, examples, adjudicator)
    config = _config(opts)
    if labeler is Labeler.rules:
        spec = None
        if examples is not None and adjudicator is AdjudicatorChoice.llm:
            if not model:
                raise fail(CxrctxError("--adjudicator llm needs --model"))
            spec = _engine(opts)
        _run_rules(input_path, out, config, spec)
        return
    try:
        outcome = _label_with_model(opts, labeler, config)
    except CxrctxError as e:
        raise fail(e) from None
    _present(outcome, labeler, allow_failures)


def _config(o: SimpleNamespace) -> LabelLesionsConfig:
    """The stage configuration the options describe (a one-line error when invalid)."""
    sampling = Sampling(temperature=o.temperature, max_tokens=o.max_tokens, seed=o.seed)
    try:
        return LabelLesionsConfig(
            sections=[s.strip() for s in o.sections.split(",") if s.strip()],
            id_column=o.id_column,
            text_column=o.text_column,
            shard=o.shard,
            limit=o.limit,
            dry_run=o.dry_run,
            overwrite=o.overwrite,
            sampling=sampling,
            batch_size=o.batch_size,
            prepass=not o.no_prepass,
            prompt=o.prompt,
            max_report_bytes=o.max_report_bytes,
            examples=o.examples,
            adjudicator=o.adjudicator.value,
            k=o.k,
            threshold=o.threshold,
            uncertain=o.uncertain.value,
        )
    except ValueError as e:
        raise fail(CxrctxError(str(e).splitlines()[-1] if str(e) else "invalid options")) from None


def _engine(o: SimpleNamespace) -> EngineSpec | None:
    """The engine the shared engine options name (llamacpp unless --backend)."""
    return engine_spec(
        Backend((o.backend or LabelBackend.llamacpp).value),
        o.model,
        base_url=o.base_url,
        api_key_env=o.api_key_env,
        engine_opt=o.engine_opt,
        timeout=o.timeout,
        threads=o.threads,
        allow_public_api=o.allow_public_api,
    )


def _label_with_model(
    o: SimpleNamespace, labeler: Labeler, config: LabelLesionsConfig
) -> LabelRun | Plan:
    """Label (or --plan) with the engine the options name."""
    spec = _engine(o)
    assert spec is not None  # a backend was chosen
    if o.plan and (o.shard or o.dry_run):
        raise CxrctxError("--plan projects the whole input: drop --shard and --dry-run")
    with model_run(o.executor, o.ray_address, o.workers, "label-lesions", disable=o.dry_run) as run:
        if o.plan:
            return plan_label_lesions(
                o.input_path,
                o.out,
                labeler=labeler,
                config=config,
                engine=spec,
                sample=o.plan_sample,
                throughput_tokens_per_s=o.plan_throughput,
                gpu=o.plan_gpu,
                **run,
            )
        return label_lesions(
            o.input_path, o.out, labeler=labeler, config=config, engine=spec, **run
        )


def _labeler(
    backend: LabelBackend | None,
    model: str | None,
    mode: Mode,
    examples: Path | None,
    adjudicator: AdjudicatorChoice,
) -> Labeler:
    """The rules when --backend rules, neither --backend nor --model, or --examples (the
    rules, then the exemplars decide the ambiguous readings); else --mode."""
    if examples is not None:
        if model and adjudicator is AdjudicatorChoice.vote:
            raise fail(
                CxrctxError(
                    "--examples with --model: add --adjudicator llm (the vote needs no model)"
                )
            )
        return Labeler.rules
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
            f"{c.get('header_only', 0)} header-only, {c.get('empty', 0)} empty, {c.get('too_large', 0)} too large; {c.get('engine_requests', 0)} engine requests in {run.seconds:.1f}s",
            highlight=False,
        )
        return
    console.print(
        f"[bold]label-lesions[/] → {run.out_dir}: {c.get('documents', 0)} documents, {c.get('labeled', 0)} labeled "
        f"({c.get('llm_called', 0)} by the LLM, {c.get('cached', 0)} from cache, {c.get('no_candidate', 0)} with no "
        f"lesion mentioned), {c.get('failed', 0)} failed ({c.get('transient_failed', 0)} transient: a re-run retries them), "
        f"{c.get('header_only', 0)} header-only, {c.get('empty', 0)} empty, {c.get('too_large', 0)} too large, {c.get('duplicate_id', 0) + c.get('missing_id', 0)} missing/duplicate ids; "
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


def _run_rules(
    input_path: Path, out: Path, config: LabelLesionsConfig, spec: EngineSpec | None
) -> None:
    """The rules label everything, then the `--examples` adjudication of the ambiguous
    readings (the vote, or the model of `spec`) and the uncertainty policy."""
    try:
        with progress_display("label-lesions", disable=config.dry_run) as progress:
            run = label_lesions(
                input_path,
                out,
                labeler=Labeler.rules,
                config=config,
                engine=spec,
                progress=progress,
            )
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
        f"ambiguous), not mentioned {c.get('not_mentioned', 0)}; {c.get('header_only', 0)} header-only (no report body: "
        f"all not mentioned), {c.get('empty', 0)} empty, {c.get('too_large', 0)} too large, "
        f"{c.get('duplicate_id', 0)} missing/duplicate ids in {run.seconds:.1f}s",
        highlight=False,
    )
    if c.get("adjudication_mentions") or c.get("uncertain"):
        console.print(
            f"ambiguous readings adjudicated: {c.get('adjudicated_vote', 0)} by the exemplar vote, "
            f"{c.get('adjudicated_llm', 0)} by the model ({c.get('adjudication_llm_failed', 0)} model "
            f"answers unusable, vote kept; {c.get('adjudication_no_exemplars', 0)} without exemplars, "
            f"rules kept); uncertain rows (--uncertain): {c.get('uncertain', 0)}",
            highlight=False,
        )
