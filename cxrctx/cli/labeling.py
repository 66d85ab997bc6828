"""`cxrctx label-lesions`: lesion labels of each report."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrctx.cli.app import app, console, err_console, fail
from cxrctx.errors import CxrctxError


def _engine_options(backend: str, **kw: object) -> dict[str, object]:
    """Only the options that apply to `backend` and were given."""
    per = {
        "llamacpp": ("n_ctx", "n_threads", "seed", "grammar"),
        "openai": ("base_url", "api_key_env", "concurrency", "timeout_s", "max_retries"),
        "vllm": (
            "tensor_parallel_size",
            "dtype",
            "max_model_len",
            "gpu_memory_utilization",
            "seed",
        ),
        "fake": (),
    }
    return {k: v for k, v in kw.items() if v is not None and k in per.get(backend, ())}


@app.command("label-lesions")
def label_lesions_cmd(
    input_path: Path = typer.Argument(
        ..., help="build-priors output dir, or a .parquet/.csv/.jsonl file"
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output directory (labels/, documents/, failures/, cache/, manifest.json).",
    ),
    backend: str = typer.Option(
        "llamacpp",
        "--backend",
        help="llamacpp (CPU, GGUF path), openai (any OpenAI-compatible server) or vllm (GPU).",
    ),
    model: str = typer.Option(
        ...,
        "--model",
        help="GGUF path (llamacpp), served model name (openai), model name or dir (vllm).",
    ),
    sections: str = typer.Option(
        "findings,impression",
        "--sections",
        help="Record sections to label, comma-separated (build-priors input).",
    ),
    id_column: str = typer.Option("id", "--id-column", help="Id column of a table input."),
    text_column: str = typer.Option("text", "--text-column", help="Text column of a table input."),
    shard: str = typer.Option(
        None,
        "--shard",
        help="Label slice i of n (e.g. 0/4); slices write part i and merge in one OUT.",
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N documents."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the first prompt and the schema; call no model."
    ),
    max_tokens: int = typer.Option(
        384, "--max-tokens", min=1, help="Output token limit per answer."
    ),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(
        None, "--batch-size", min=1, help="Documents per engine call / cache flush."
    ),
    no_prepass: bool = typer.Option(
        False, "--no-prepass", help="Ask the model about all 14 lesions for every report."
    ),
    prompt: str = typer.Option(
        None, "--prompt", help="Prompt version (e.g. 1) or a prompt JSON file."
    ),
    base_url: str = typer.Option(
        None, "--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1."
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--api-key-env", help="openai: env var holding the API key."
    ),
    concurrency: int = typer.Option(
        None, "--concurrency", min=1, help="openai: concurrent requests."
    ),
    timeout_s: float = typer.Option(None, "--timeout", help="openai: seconds per request."),
    n_ctx: int = typer.Option(None, "--n-ctx", help="llamacpp: context length."),
    n_threads: int = typer.Option(None, "--threads", help="llamacpp: CPU threads."),
    grammar: str = typer.Option(
        None, "--grammar", help="llamacpp: fallback (default), always or never."
    ),
    tensor_parallel_size: int = typer.Option(
        None, "--tensor-parallel-size", help="vllm: GPUs per model."
    ),
    dtype: str = typer.Option(None, "--dtype", help="vllm: auto, bfloat16, float16."),
    max_model_len: int = typer.Option(None, "--max-model-len", help="vllm: context length."),
    gpu_memory_utilization: float = typer.Option(
        None, "--gpu-memory-utilization", help="vllm: GPU memory fraction."
    ),
) -> None:
    """Label the 14 lesions (status, location, rationale) of each report with an LLM."""
    import json as _json

    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from cxrctx.labeling import label_lesions
    from cxrctx.llm import Sampling

    opts = _engine_options(
        backend, n_ctx=n_ctx, n_threads=n_threads, seed=seed, grammar=grammar, base_url=base_url,
        api_key_env=api_key_env, concurrency=concurrency, timeout_s=timeout_s,
        tensor_parallel_size=tensor_parallel_size, dtype=dtype, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
    )  # fmt: skip
    secs = [s.strip() for s in sections.split(",") if s.strip()]
    with Progress(
        TextColumn("labeling"), BarColumn(), TextColumn("{task.completed}/{task.total} docs"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, transient=True, disable=dry_run,
    ) as bar:  # fmt: skip
        task = bar.add_task("label", total=None, rate="")
        t0 = [0.0]

        def on_progress(done: int, total: int, tokens: int) -> None:
            import time as _t

            if t0[0] == 0.0:
                t0[0] = _t.perf_counter()
            dt = max(1e-9, _t.perf_counter() - t0[0])
            rate = f"{done / dt:.2f} docs/s, {tokens / dt:.0f} tok/s" if done else ""
            bar.update(task, total=total, completed=done, rate=rate)

        try:
            run = label_lesions(
                input_path, out, backend=backend, model=model, engine_options=opts, sections=secs,
                id_column=id_column, text_column=text_column, shard=shard, limit=limit, dry_run=dry_run,
                sampling=Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed),
                batch_size=batch_size, prepass=not no_prepass, prompt=prompt, progress=on_progress,
            )  # fmt: skip
        except CxrctxError as e:
            raise fail(e) from None
    if run.dry_run is not None:
        info = run.dry_run
        console.print(f"[bold]dry run[/]: {info['documents']} documents; nothing was called")
        for m in info.get("messages", []):
            console.rule(m["role"])
            console.print(m["content"], highlight=False, markup=False)
        if "candidates" in info:
            console.print(
                f"candidates of the first document: {', '.join(info['candidates']) or '(none: LLM skipped)'}"
            )
        console.rule("answer schema (schemas/lesion_answer.schema.json)")
        console.print_json(_json.dumps(info["schema"]))
        return
    c = run.result.counts if run.result else {}
    console.print(
        f"[bold]label-lesions[/] → {run.out_dir}: {c.get('documents', 0)} documents, {c.get('labeled', 0)} labeled "
        f"({c.get('llm_called', 0)} by the LLM, {c.get('cached', 0)} from cache, {c.get('no_candidate', 0)} with no "
        f"lesion mentioned), {c.get('failed', 0)} failed, {c.get('empty', 0)} empty, {c.get('duplicate_id', 0)} duplicate ids; "
        f"{c.get('engine_requests', 0)} engine requests in {run.seconds:.1f}s",
        highlight=False,
    )
    if c.get("failed"):
        err_console.print(
            f"[yellow]{c['failed']} document(s) failed; see {run.out_dir}/failures/[/]"
        )
