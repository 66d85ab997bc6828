"""The `cxrctx` command line: each command parses options, calls one library function, prints.

Nothing here does real work; everything is reachable from Python.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from cxrctx import __version__
from cxrctx.errors import CxrctxError

app = typer.Typer(
    name="cxrctx",
    help="Curate clinical-context chest X-ray report-generation datasets from MIMIC-CXR.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"cxrctx {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Curate clinical-context chest X-ray report-generation datasets from MIMIC-CXR."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def fail(exc: CxrctxError) -> typer.Exit:
    """Print a user error on one line and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=getattr(exc, "exit_code", 2))


@app.command("schemas")
def schemas_cmd(
    out_dir: Path = typer.Option(
        None, "--out", help="Directory to write into (default: the repo's schemas/)."
    ),
    check: bool = typer.Option(
        False, "--check", help="Only check; exit 1 when a schema file is stale."
    ),
) -> None:
    """Regenerate the JSON Schemas in schemas/ from the pydantic models."""
    from cxrctx import schema_export

    target = out_dir or schema_export.SCHEMAS_DIR
    if check:
        bad = schema_export.stale(target)
        if bad:
            err_console.print(f"stale schemas: {', '.join(bad)} (run `cxrctx schemas`)")
            raise typer.Exit(1)
        console.print("schemas are current")
        return
    for path in schema_export.write_all(target):
        console.print(str(path))


# --- build-priors / synth (issue: foundation) ----------------------------------------


@app.command("synth")
def synth_cmd(
    out_dir: Path = typer.Argument(
        ..., help="Directory to write (new, empty, or an earlier synth output)."
    ),
    patients: int = typer.Option(
        50, "--patients", help="Number of patients (65379 = full MIMIC-CXR size)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed; the same seed gives byte-identical files."
    ),
    dicom: bool = typer.Option(
        False, "--dicom/--no-dicom", help="Also write one tiny real DICOM per image."
    ),
    zip_reports: bool = typer.Option(
        False, "--zip/--no-zip", help="Also write mimic-cxr-reports.zip."
    ),
    images: bool = typer.Option(
        False, "--images", help="Add images with visible lesions (synth_images)."
    ),
    imagenome: bool = typer.Option(
        False, "--imagenome", help="Add Chest ImaGenome-style scene graphs."
    ),
    image_size: int = typer.Option(
        256, "--image-size", help="Side of the --images pictures in pixels."
    ),
    image_format: str = typer.Option(
        "dicom", "--image-format", help="dicom, jpg or both (for --images)."
    ),
) -> None:
    """Write a synthetic MIMIC-CXR root (CSVs, reports, optional DICOMs) with ground truth."""
    import time

    from rich.table import Table

    from cxrctx.synth import generate

    start = time.perf_counter()
    try:
        s = generate(
            out_dir, patients=patients, seed=seed, dicom=dicom, zip_reports=zip_reports, images=images,
            imagenome=imagenome, image_size=image_size, image_format=image_format,
        )  # fmt: skip
    except CxrctxError as e:
        raise fail(e) from None
    table = Table(title=f"synthetic MIMIC-CXR in {s.out_dir} (seed {s.seed})")
    table.add_column("item")
    table.add_column("count", justify="right")
    for name, value in (
        ("patients", s.patients),
        ("studies", s.studies),
        ("images", s.images),
        ("report files", s.report_files),
        ("DICOM files", s.dicom_files),
    ):
        table.add_row(name, f"{value:,}")
    for name, value in sorted(s.image_files.items()):
        table.add_row(name, f"{value:,}")
    table.add_row("files written", f"{s.files_written:,}")
    for key in (
        "same_day",
        "same_datetime_pairs",
        "missing_time",
        "neither",
        "addendum",
        "temporal_reference_without_prior",
    ):
        table.add_row(f"[dim]{key}[/]", f"{s.varieties.get(key, 0):,}")
    console.print(table)
    console.print(
        f"truth: {s.truth_labels}/, {s.truth_studies}   ({time.perf_counter() - start:.1f} s)"
    )


@app.command("build-priors")
def build_priors_cmd(
    root: Path = typer.Argument(
        ..., help="MIMIC-CXR root (holds mimic-cxr-2.0.0-metadata.csv.gz and files/)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    max_priors: int = typer.Option(
        3, "--max-priors", "-k", min=0, help="How many most recent prior studies to embed."
    ),
    shard_size: int = typer.Option(
        20_000, "--shard-size", min=1, help="Records per Parquet shard."
    ),
    fmt: str = typer.Option(
        "parquet", "--format", help="parquet, or jsonl to also write records.jsonl."
    ),
    reports_zip: Path = typer.Option(
        None,
        "--reports-zip",
        help="Read reports from this zip (default: files/, else ROOT/mimic-cxr-reports.zip).",
    ),
    scan_dicom: bool = typer.Option(
        False, "--scan-dicom", help="Read DICOM headers under files/ instead of the metadata CSV."
    ),
    image_ext: str = typer.Option(
        "dcm", "--image-ext", help="Extension of image paths built from the CSV (dcm or jpg)."
    ),
    workers: int = typer.Option(
        None, "--workers", "-j", min=1, help="Worker processes (default: CPU count, at most 8)."
    ),
) -> None:
    """Join each study with its views, report sections and prior studies (C-SRRG style records)."""
    from cxrctx.mimic.build import build_priors

    if fmt not in ("parquet", "jsonl"):
        raise fail(CxrctxError(f"--format {fmt!r}: expected parquet or jsonl"))
    try:
        res = build_priors(
            root,
            out,
            max_priors=max_priors,
            rows_per_shard=shard_size,
            jsonl=fmt == "jsonl",
            reports_zip=reports_zip,
            scan_dicom=scan_dicom,
            image_ext=image_ext,
            workers=workers,
            progress=True,
        )
    except CxrctxError as e:
        raise fail(e) from None
    _print_build_summary(res)


def _print_build_summary(res) -> None:
    from rich.table import Table

    c = res.counts
    t = Table(title=f"build-priors → {res.out_dir}", show_header=False, title_justify="left")
    t.add_row("studies in", f"{c['studies_in']:,}")
    t.add_row("records", f"{c['records']:,}")
    t.add_row("rejected studies", f"{c['rejected_studies']:,}")
    t.add_row(
        "images (in / in records / rejected)",
        f"{c['images_in']:,} / {c['images_in_records']:,} / {c['images_rejected']:,}",
    )
    if c.get("unknown_view_position"):
        t.add_row("[yellow]unknown ViewPosition → other[/]", f"{c['unknown_view_position']:,}")
    console.print(t)
    from rich.columns import Columns

    tables = [
        ("rejects by reason", res.rejects_by_reason),
        ("flags", res.flag_counts),
        ("n_prior_studies", res.prior_histogram),
        ("splits", res.split_counts),
    ]
    small = []
    for title, data in tables:
        tt = Table(title=title, title_justify="left")
        tt.add_column("value")
        tt.add_column("count", justify="right")
        for k, v in data.items():
            tt.add_row(str(k), f"{v:,}")
        if not data:
            tt.add_row("(none)", "0")
        small.append(tt)
    console.print(Columns(small))


# --- label-lesions / eval-labels (issue: labeling) -----------------------------------


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


@app.command("eval-labels")
def eval_labels_cmd(
    labels: Path = typer.Argument(..., help="A label-lesions output dir (or labels Parquet)."),
    against: Path = typer.Option(
        ..., "--against", help="Gold: MIMIC CheXpert/NegBio CSV, IU gold CSV, or another label run."
    ),
    uncertain: str = typer.Option(
        "positive", "--uncertain", help="CheXpert -1.0: positive, negative or ignore."
    ),
    json_path: Path = typer.Option(None, "--json", help="Write the report as JSON."),
    png_path: Path = typer.Option(
        None, "--png", help="Write a P/R/F1 bar chart (needs matplotlib)."
    ),
) -> None:
    """Per-lesion precision / recall / F1 / kappa of labels against a gold or another run."""
    from cxrctx.labeling import eval_labels
    from cxrctx.labeling.evaluate import report_table

    if uncertain not in ("positive", "negative", "ignore"):
        raise fail(
            CxrctxError(f"--uncertain must be positive, negative or ignore (got {uncertain!r})")
        )
    try:
        report = eval_labels(
            labels, against, uncertain=uncertain, json_path=json_path, png_path=png_path
        )  # type: ignore[arg-type]
    except CxrctxError as e:
        raise fail(e) from None
    console.print(report_table(report))
    if report.n_gold_only or report.n_pred_only:
        console.print(
            f"not scored: {report.n_gold_only} gold-only and {report.n_pred_only} label-only documents",
            highlight=False,
        )


# --- build-rois / train / generate / evaluate (issue: trainer) -----------------------


def _trainer_engine(backend: str | None, model: str | None, options: list[str] | None, what: str):
    """An LLM engine from --*-backend/--*-model/--*-opt KEY=VALUE, or None."""
    if not backend:
        return None
    from cxrctx.llm import get_engine

    pre = f"--{what}-" if what else "--"
    if not model:
        raise CxrctxError(f"{pre}backend {backend} needs {pre}model")
    opts: dict[str, object] = {}
    for o in options or []:
        key, sep, val = o.partition("=")
        if not sep:
            raise CxrctxError(f"{pre}opt {o!r}: expected KEY=VALUE")
        opts[key] = (
            int(val)
            if val.lstrip("-").isdigit()
            else float(val)
            if val.replace(".", "", 1).isdigit()
            else val
        )
    return get_engine(backend, model, **opts)


@app.command("build-rois")
def build_rois_cmd(
    imagenome_dir: Path = typer.Argument(
        ..., help="Chest ImaGenome root (or its silver_dataset/scene_graph folder)."
    ),
    records: Path = typer.Option(
        ..., "--records", help="build-priors output (or its records/ folder)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory (rois/part-*.parquet, rejects.parquet, manifest.json)."
    ),
    all_views: bool = typer.Option(
        False, "--all-views", help="Also count non-frontal images without a scene graph as rejects."
    ),
) -> None:
    """Keep the 11 CLALA-Net ROIs of each image's scene graph: cleaned boxes, sentences, abnormal flag."""
    from cxrctx.imagenome import build_rois

    try:
        res = build_rois(imagenome_dir, records=records, out=out, frontal_only=not all_views)
    except CxrctxError as e:
        raise fail(e) from None
    c = res.counts
    console.print(
        f"build-rois: {c['images_written']} images written, {c['images_rejected']} rejected "
        f"(of {c['images_considered']} considered; {c['skipped_non_frontal']} non-frontal without a scene graph skipped; "
        f"{c['boxes_clipped']} boxes clipped) → {out}"
    )
    for reason, n in sorted(res.reasons.items()):
        console.print(f"  rejected: {reason}: {n}")


@app.command("train")
def train_cmd(
    records: Path = typer.Option(..., "--records", help="build-priors output."),
    labels: Path = typer.Option(
        ..., "--labels", help="label-lesions output (or a synthetic root's truth/)."
    ),
    rois: Path = typer.Option(..., "--rois", help="build-rois output."),
    images: Path = typer.Option(
        ..., "--images", help="Root the image paths are relative to (MIMIC-CXR or -JPG)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Run directory (checkpoints, metrics.jsonl, config.json, tokenizer.json).",
    ),
    preset: str = typer.Option(
        "tiny", "--preset", help="tiny (CPU, seconds) or paper (ViT-B/16, batch 24, 15 epochs)."
    ),
    stage: str = typer.Option("both", "--stage", help="1, 2 or both."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/last.pt."),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help="Override a config field: KEY=JSON (e.g. --set batch_size=8 --set use_llcl=false).",
    ),
    config_file: Path = typer.Option(
        None, "--config", help="A JSON TrainConfig file (overrides the preset)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the reference CLALA-Net (single process, or under torchrun for DDP)."""
    import json as _json

    try:
        from cxrctx.train.config import make_config, validate_config

        overrides: dict[str, object] = {}
        for s in set_ or []:
            key, sep, val = s.partition("=")
            if not sep:
                raise CxrctxError(f"--set {s!r}: expected KEY=VALUE")
            try:
                overrides[key] = _json.loads(val)
            except ValueError:
                overrides[key] = val
        if config_file is not None:
            try:
                data = _json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise CxrctxError(f"{config_file}: cannot read config ({e})") from e
            cfg = validate_config({**data, **overrides}, source=str(config_file))
        else:
            cfg = make_config(preset, **overrides)
        from cxrctx.train.loop import train

        res = train(
            cfg,
            records=records,
            labels=labels,
            rois=rois,
            images=images,
            out=out,
            stage=stage,
            resume=resume,
            progress=progress,
        )
    except CxrctxError as e:
        raise fail(e) from None
    console.print(f"train: stages {res.stages} done, {res.global_step} steps → {out}")
    console.print(f"  items: {res.counts}")
    for reason, n in res.skips.items():
        console.print(f"  skipped: {reason}: {n}")
    if res.eval.get("macro_auc") is not None:
        console.print(
            f"  validation: classifier macro-AUC {res.eval['macro_auc']:.3f}, accuracy {res.eval['accuracy']:.3f} "
            f"(majority {res.eval['majority_accuracy']:.3f}), decoder CE {res.eval['ce']:.3f}"
        )


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
    from cxrctx.generate import generate

    try:
        engine = _trainer_engine(backend, model, opt, "")
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
    from cxrctx.evaluate import evaluate, report_table

    try:
        lab = _trainer_engine(labeler_backend, labeler_model, labeler_opt, "labeler")
        judge = _trainer_engine(judge_backend, judge_model, judge_opt, "judge")
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


if __name__ == "__main__":  # pragma: no cover
    app()
