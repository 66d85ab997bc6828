"""`cxrctx release`, `validate`, `rebuild`, `info`: dataset releases and stage folder checks."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrctx.cli.app import app, console, err_console, fail
from cxrctx.cli.engine import (
    AllowPublicApiOpt,
    ApiKeyEnvOpt,
    Backend,
    BackendOpt,
    BaseUrlOpt,
    EngineOptOpt,
    ModelOpt,
    ThreadsOpt,
    TimeoutOpt,
    engine_spec,
)
from cxrctx.cli.progress import progress_display
from cxrctx.errors import CxrctxError
from cxrctx.release import info, make_release, rebuild, validate
from cxrctx.release.info import COUNT_KEYS
from cxrctx.release.meta import read_card_file

if TYPE_CHECKING:
    from cxrctx.release import RebuildReport


class ExportFormat(str, enum.Enum):
    srrg = "srrg"
    maira2 = "maira2"
    jsonl = "jsonl"


class TargetSection(str, enum.Enum):
    """Sections are listed comma-separated on every command (`--sections` of label-lesions
    and evaluate); the release config records both as `findings+impression`."""

    findings = "findings"
    impression = "impression"
    both = "findings,impression"


def _split_table(summary: dict[str, dict[str, int]], title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("count")
    splits = list(summary)
    for s in splits:
        t.add_column(s, justify="right")
    keys = [*COUNT_KEYS, *sorted({k for s in splits for k in summary[s] if k not in COUNT_KEYS})]
    for k in keys:
        if k.startswith("flag:") and not any(summary[s].get(k) for s in splits):
            continue
        t.add_row(k, *[f"{summary[s].get(k, 0):,}" for s in splits])
    return t


def _temporal_line(th: dict[str, dict]) -> str:
    """`temporal hallucination (...): all 3/40 (7.5%), train 2/30 (6.7%), ...`"""
    parts = [
        f"{split} {v['with_comparison']:,}/{v['without_prior']:,}"
        + (f" ({100 * v['rate']:.1f}%)" if v["rate"] is not None else " (n/a)")
        for split, v in sorted(th.items(), key=lambda kv: kv[0] != "all")
    ]
    return "temporal hallucination (comparison language, no prior study): " + ", ".join(parts)


StructuredOpt = Annotated[
    Path | None,
    typer.Option("--structured", help="structure-reports output (fills srrg's structured_report)."),
]
FormatsOpt = Annotated[
    list[ExportFormat],
    typer.Option("--format", help="Extra export table (repeatable): srrg, maira2, jsonl."),
]
TargetOpt = Annotated[
    TargetSection,
    typer.Option(
        "--target",
        help="Target section(s) of the exports (comma-separated, as --sections elsewhere).",
    ),
]
LicenseOpt = Annotated[
    str,
    typer.Option(
        "--license",
        help="Hub licence id (a lower-case SPDX id such as cc-by-4.0), or other with "
        "--license-name/--license-link (default: the PhysioNet Credentialed Health Data License 1.5.0).",
    ),
]
LicenseNameOpt = Annotated[
    str | None, typer.Option("--license-name", help="Licence name (with --license other).")
]
LicenseLinkOpt = Annotated[
    str | None, typer.Option("--license-link", help="Licence URL (with --license other).")
]
TaskCategoriesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--task-category",
        help="Hub task category (repeatable; default image-text-to-text, image-to-text).",
    ),
]
SizeCategoryOpt = Annotated[
    str | None,
    typer.Option(
        "--size-category", help="Hub size category (default: from the number of studies)."
    ),
]
CardOpt = Annotated[
    Path | None,
    typer.Option(
        "--card",
        help="YAML or TOML file of card metadata: license_name, license_link, task_categories, "
        "size_categories, citation, homepage, gated_prompt (options above override it).",
    ),
]
RowsPerFileOpt = Annotated[
    int, typer.Option("--rows-per-file", min=1, help="Rows per Parquet file.")
]
RecordsOpt = Annotated[
    Path | None,
    typer.Option("--records", help="For a label-lesions folder: the records its ids must be in."),
]
ImagenomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--imagenome", help="Your Chest ImaGenome copy: recompute the release's ROI boxes."
    ),
]
LabelsOpt = Annotated[
    Path | None,
    typer.Option("--labels", help="Use this label-lesions output instead of re-labelling."),
]
LabelCacheOpt = Annotated[
    Path | None, typer.Option("--label-cache", help="A label-lesions cache/ to reuse.")
]
RebuildStructuredOpt = Annotated[
    Path | None, typer.Option("--structured", help="structure-reports output, when used.")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-j", min=1, help="build-priors worker processes.")
]


@app.command("release")
def release_cmd(
    records: Path = typer.Option(..., "--records", help="build-priors output folder."),
    out: Path = typer.Option(..., "--out", help="Release folder (public/ and credentialed/)."),
    name: str = typer.Option(..., "--name", help="Dataset name, e.g. my-org/mimic-cxr-context."),
    version: str = typer.Option(..., "--version", help="Release version, e.g. 1.0.0."),
    labels: Path = typer.Option(None, "--labels", help="label-lesions output of these records."),
    rois: Path = typer.Option(None, "--rois", help="build-rois output of these records."),
    structured: StructuredOpt = None,
    formats: FormatsOpt = [],  # noqa: B006 (typer copies the default)
    target: TargetOpt = TargetSection.findings,
    license: LicenseOpt = "other",
    license_name: LicenseNameOpt = None,
    license_link: LicenseLinkOpt = None,
    task_categories: TaskCategoriesOpt = None,
    size_category: SizeCategoryOpt = None,
    citation: str = typer.Option(None, "--citation", help="BibTeX citation shown on the cards."),
    homepage: str = typer.Option(None, "--homepage", help="Project page URL shown on the cards."),
    card: CardOpt = None,
    rows_per_file: RowsPerFileOpt = 20_000,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier release in OUT."),
) -> None:
    """Package stage outputs as a public (IDs only) and a credentialed bundle, with dataset
    cards and croissant.json.

    \b
    Example:
      cxrctx release --records out/records --labels out/labels --out out/release \\
          --name my-org/mimic-cxr-context --version 1.0.0 --format srrg
    """

    given = {
        "license_name": license_name,
        "license_link": license_link,
        "task_categories": task_categories or None,
        "size_categories": [size_category] if size_category else None,
        "citation": citation,
        "homepage": homepage,
    }
    try:
        meta = read_card_file(card) if card is not None else {}
        meta.update({k: v for k, v in given.items() if v is not None})
        with progress_display("release") as progress:
            res = make_release(
                records,
                out=out,
                name=name,
                version=version,
                labels=labels,
                rois=rois,
                structured=structured,
                formats=[f.value for f in formats],
                target=target.value.replace(",", "+"),  # recorded as findings+impression
                license=license,
                rows_per_file=rows_per_file,
                card=meta,
                overwrite=overwrite,
                progress=progress,
            )
    except CxrctxError as e:
        raise fail(e) from None
    console.print(_split_table(res.summary, f"release {res.config.name} {res.config.version}"))
    for b in (res.public, res.credentialed):
        n = sum(len(v) for v in b.tables.values())
        console.print(f"{b.kind}: {len(b.tables)} table(s), {n} file(s) → {b.dir}")


@app.command("validate")
def validate_cmd(
    path: Path = typer.Argument(..., help="A stage output folder, a release bundle or a release."),
    records: RecordsOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Recompute every shard's sha256 and row count, check schemas, counts and invariants;
    exit non-zero with the list of problems.

    \b
    Example:
      cxrctx validate out/release
    """
    from dataclasses import asdict

    from rich.markup import escape

    try:
        rep = validate(path, records=records)
    except CxrctxError as e:
        raise fail(e) from None
    if as_json:
        console.print_json(json.dumps({**asdict(rep), "ok": rep.ok}))
    elif rep.ok:
        checked = ", ".join(dict.fromkeys(rep.checked))
        console.print(
            f"valid: {escape(str(path))} ({rep.stage}; checked {checked})", highlight=False
        )
    else:
        for p in rep.problems:
            err_console.print(f"[red]✗[/] {escape(p)}", highlight=False, soft_wrap=True)
        err_console.print(f"{len(rep.problems)} problem(s) in {escape(str(path))}", highlight=False)
    if not rep.ok:
        raise typer.Exit(1)


@app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="A stage output folder, a release bundle or a release."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """What a stage folder or release is: stage, version, config, inputs, counts, per-split table
    (a release: its public and its credentialed bundle).

    \b
    Example:
      cxrctx info out/release --json
    """

    try:
        res = info(path)
    except CxrctxError as e:
        raise fail(e) from None
    if as_json:
        console.print_json(json.dumps(res.to_dict(), default=str))
        return
    for one in (res, *res.bundles.values()):
        _print_info(one)


def _print_info(res) -> None:
    from rich.table import Table

    t = Table(
        title=f"{res.stage} (schema v{res.schema_version}, cxrctx {res.tool_version})",
        show_header=False,
        title_justify="left",
    )
    t.add_row("folder", res.path)
    for k, v in res.config.items():
        t.add_row(f"config.{k}", json.dumps(v, default=str)[:100])
    for i in res.inputs[:10]:
        t.add_row("input", f"{i['path']}  sha256 {i['sha256'][:16]}…")
    if len(res.inputs) > 10:
        t.add_row("input", f"… {len(res.inputs) - 10} more")
    rows = {f"rows:{n}": r for n, r in res.tables.items() if f"{n}_rows" not in res.counts}
    for k, v in {**res.counts, **rows}.items():
        t.add_row(k, f"{v:,}")
    console.print(t)
    if res.splits:
        console.print(_split_table(res.splits, "per split"))
    if res.temporal_hallucination:
        console.print(_temporal_line(res.temporal_hallucination), highlight=False)
    for n in res.notes:
        console.print(f"[dim]{n}[/]")


@app.command("rebuild")
def rebuild_cmd(
    public_dir: Path = typer.Argument(..., help="The release's public/ bundle (or the release)."),
    mimic_root: Path = typer.Argument(..., help="Your MIMIC-CXR root (reports + CSVs)."),
    out: Path = typer.Option(..., "--out", help="Folder for the rebuilt stages and release."),
    backend: BackendOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    engine_opt: EngineOptOpt = None,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    allow_public_api: AllowPublicApiOpt = False,
    imagenome: ImagenomeOpt = None,
    labels: LabelsOpt = None,
    label_cache: LabelCacheOpt = None,
    rois: Path = typer.Option(None, "--rois", help="build-rois output, when the release has ROIs."),
    structured: RebuildStructuredOpt = None,
    workers: WorkersOpt = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier rebuild in OUT."),
) -> None:
    """Re-run a release's recorded stages on your MIMIC-CXR copy and check every sha256.

    A downloaded bundle is untrusted: the label engine is the one your options name
    (--backend/--model/--base-url/--api-key-env/--allow-public-api), never the one the
    bundle records; a rules-labelled release needs none. Without --model a model-labelled
    release needs --labels or --label-cache.

    \b
    Example:
      cxrctx rebuild release/public /data/mimic-cxr --out rebuilt
      cxrctx rebuild release/public /data/mimic-cxr --out rebuilt \\
          --model qwen2.5-1.5b-instruct-q4_k_m.gguf \\
          --imagenome /data/chest-imagenome
    """

    try:
        spec = engine_spec(
            backend if backend is not None or model is None else Backend.llamacpp,
            model,
            base_url=base_url,
            api_key_env=api_key_env,
            engine_opt=engine_opt,
            timeout=timeout,
            threads=threads,
            allow_public_api=allow_public_api,
        )
        with progress_display("rebuild") as progress:
            rep = rebuild(
                public_dir,
                mimic_root,
                out=out,
                engine=spec,
                labels=labels,
                label_cache=label_cache,
                rois=rois,
                imagenome=imagenome,
                structured=structured,
                workers=workers,
                overwrite=overwrite,
                progress=progress,
            )
    except CxrctxError as e:
        raise fail(e) from None
    _present_rebuild(rep)


def _present_rebuild(rep: RebuildReport) -> None:
    """Each note and difference on stderr; exit 1 unless the rebuild is identical."""
    from rich.markup import escape

    for n in rep.input_notes:
        err_console.print(f"[yellow]input:[/] {escape(n)}", highlight=False)
    for d in rep.differences:
        err_console.print(
            f"[red]differs:[/] {escape(d.path)}: {escape(d.reason)}",
            highlight=False,
            soft_wrap=True,
        )
    for n in rep.study_notes:
        err_console.print(f"  {escape(n)}", highlight=False)
    for s in rep.skipped:
        err_console.print(f"[yellow]not rebuilt:[/] {escape(s)}", highlight=False)
    if rep.identical:
        console.print(
            f"identical: {rep.compared} files match the release byte for byte → {rep.out_dir / 'release'}"
        )
        return
    err_console.print(f"{len(rep.differences)} of {rep.compared} file(s) differ")
    raise typer.Exit(1)
