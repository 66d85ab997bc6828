"""The engine options every model-calling command shares, defined once, and the executor
and progress display of one model-calling library call.

A command declares the options with these Annotated aliases (same names, help and
choices everywhere) and turns them into an EngineSpec with `engine_spec(...)`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from cxrctx.cli.app import console, err_console
from cxrctx.cli.progress import progress_display
from cxrctx.errors import CxrctxError
from cxrctx.llm.ray_executor import RayExecutor
from cxrctx.llm.spec import EngineSpec, parse_engine_opts


class Backend(str, enum.Enum):
    """Real backends only (the fake engine is for tests and the Python API)."""

    llamacpp = "llamacpp"
    openai = "openai"
    vllm = "vllm"


BackendOpt = Annotated[
    Backend | None,
    typer.Option(
        "--backend",
        help="llamacpp (CPU, a .gguf path), openai (an OpenAI-compatible "
        "server at --base-url) or vllm (GPU, in process).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="GGUF path (llamacpp), served model name (openai), model name or dir (vllm).",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url", help="openai: the server URL, e.g. http://127.0.0.1:8000/v1 (required)."
    ),
]
ApiKeyEnvOpt = Annotated[
    str, typer.Option("--api-key-env", help="openai: name of the env var holding the API key.")
]
EngineOptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--engine-opt",
        help="Backend option KEY=JSON, repeatable (n_ctx=4096, "
        "enable_prefix_caching=false, concurrency=16, dtype=bfloat16).",
    ),
]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", min=0.001, help="openai: seconds per request.")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="llamacpp: CPU threads (default: the free CPUs; 1 on a loaded machine).",
    ),
]
AllowFailuresOpt = Annotated[
    bool,
    typer.Option(
        "--allow-failures", help="Exit 0 even when some documents failed (they stay in failures/)."
    ),
]
AllowPublicApiOpt = Annotated[
    bool,
    typer.Option(
        "--allow-public-api",
        help="Send MIMIC-derived text to a public API host anyway: only "
        "when your data use agreement covers that route (e.g. Azure OpenAI with human review "
        "opted out, AWS Bedrock, Google Vertex AI).",
    ),
]


def engine_spec(
    backend: Backend | None,
    model: str | None,
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    engine_opt: list[str] | None = None,
    timeout: float | None = None,
    threads: int | None = None,
    allow_public_api: bool = False,
) -> EngineSpec | None:
    """The EngineSpec of the shared options, or None when no backend was chosen."""
    if backend is None:
        return None
    if not model:
        raise CxrctxError(f"--backend {backend.value} needs --model")
    return EngineSpec(
        backend=backend.value,
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        timeout_s=timeout,
        threads=threads,
        allow_public_api=allow_public_api,
        options=parse_engine_opts(engine_opt),
    )


def exit_if_failed(failed: int, allow_failures: bool, where: str) -> None:
    """Exit 1 when work failed, unless the user allowed it."""
    if failed and not allow_failures:
        err_console.print(
            f"{failed} document(s) failed; see {where} (--allow-failures to exit 0 anyway)",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(code=1)


# ---------------------------------------------------------------------------- executors


class ExecutorKind(str, enum.Enum):
    """Where the model calls run: this process, or Ray Data actors (one engine each)."""

    local = "local"
    ray = "ray"


ExecutorOpt = Annotated[
    ExecutorKind,
    typer.Option(
        "--executor",
        help="local (this process) or ray (Ray Data actors, one engine per "
        "worker: GPUs with vllm, CPUs with llamacpp/openai); needs pip install 'cxrctx[ray]'.",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="ray: address of a running cluster (e.g. auto or "
        "ray://head:10001); default: start a local Ray with --workers workers.",
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="--executor ray: Ray actors, one engine each (vllm: one GPU each); not processes (build-priors' --workers are).",
    ),
]
PlanOpt = Annotated[
    bool,
    typer.Option(
        "--plan",
        help="Label a sample (--plan-sample) into OUT/plan-sample and print "
        "output tokens and LLM calls per document and the projected GPU-hours.",
    ),
]
PlanSampleOpt = Annotated[
    int, typer.Option("--plan-sample", min=1, help="--plan: documents to label as the sample.")
]
PlanThroughputOpt = Annotated[
    float,
    typer.Option(
        "--plan-throughput",
        min=1e-6,
        help="--plan: output tokens/s of one GPU "
        "(default: ~6,300, an 8B model on one H100 with vLLM, datatrove's benchmark).",
    ),
]
PlanGpuOpt = Annotated[
    str, typer.Option("--plan-gpu", help="--plan: name of the GPU the throughput is for.")
]


def make_executor(kind: ExecutorKind, ray_address: str | None, workers: int) -> Any:
    """None for the local executor, else a RayExecutor (Ray starts on first use)."""
    if kind == ExecutorKind.local:
        if ray_address is not None or workers != 1:
            raise CxrctxError("--ray-address and --workers apply to --executor ray only")
        return None

    return RayExecutor(workers, address=ray_address)


@contextmanager
def executor_scope(kind: ExecutorKind, ray_address: str | None, workers: int) -> Iterator[Any]:
    """The executor of the options, closed (a Ray started here shut down) at the end."""
    ex = make_executor(kind, ray_address, workers)
    try:
        yield ex
    finally:
        if ex is not None:
            ex.close()


@contextmanager
def model_run(
    kind: ExecutorKind, ray_address: str | None, workers: int, command: str, disable: bool = False
) -> Iterator[dict[str, Any]]:
    """`executor=` and `progress=` for one model-calling library call: the executor of the
    options (closed at the end) and the progress display (documents, tokens/s, failures)."""
    with (
        executor_scope(kind, ray_address, workers) as ex,
        progress_display(command, disable=disable) as progress,
    ):
        yield {"executor": ex, "progress": progress}


def print_plan(plan: Any) -> None:
    """The token budget of a `--plan` run (a cxrctx.llm.plan.Plan)."""
    from rich.table import Table

    t = Table(title="token plan", show_header=False)
    rows = [
        ("sample", f"{plan.sample_documents} documents ({plan.llm_documents} needed the model)"),
        ("LLM calls per document", f"{plan.llm_calls_per_document:.3f}"),
        ("output tokens per document", f"{plan.output_tokens_per_document:.1f}"),
        (
            "full input",
            f"{plan.total_documents} documents, ~{plan.projected_output_tokens:,} output tokens",
        ),
        (
            "projected GPU-hours",
            f"{plan.projected_gpu_hours:.3f} on {plan.gpu} at {plan.throughput_tokens_per_s:,.0f} output tok/s",
        ),
        (
            "budget",
            f"all of MIMIC-CXR ({plan.budget_reports:,} reports) in <= {plan.budget_gpu_hours:g} GPU-hours "
            f"needs <= {plan.budget_tokens_per_report:.0f} output tokens/report",
        ),
        (
            "this sample on all of MIMIC",
            f"{plan.budget_projected_gpu_hours:.2f} GPU-hours ("
            f"{'within' if plan.within_budget else 'OVER'} budget)",
        ),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
