"""`build_priors`: a MIMIC-CXR root → C-SRRG-style records shards, rejects and a manifest.

The heavy lifting is columnar (polars): CSV parsing, date/time normalisation, image
ordering and the prior join (a per-patient self-join, filtered and ranked) run without
per-study Python loops. Only listing the patient folders, reading and sectioning is per
file, and it runs in worker processes in chunks, started first; the main process reads
the CSVs and joins priors meanwhile, then attaches the texts. Shards are written on one
thread per core. Records are not validated one by one with pydantic: the
frame is cast to one explicit schema (`cxrctx.mimic.schema`) and a test validates rows
against `cxrctx.models.Record`.

Fatal problems (missing root or metadata, corrupt gzip, missing columns, malformed rows,
duplicate dicom_ids) raise `CxrctxError` before anything is written. Per-study problems
become rows of `rejects.parquet`. Progress goes through a `progress(task, done, total)`
callback; the library never draws anything.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx.errors import CxrctxError
from cxrctx.io import (
    config_hash,
    input_file,
    write_parquet,
    write_shards,
    write_stage_manifest,
)
from cxrctx.limits import MAX_REPORT_BYTES
from cxrctx.mimic import layout as L
from cxrctx.mimic.flags import with_flags, with_temporal_language
from cxrctx.mimic.images import load_images, prepare_images, study_table
from cxrctx.mimic.priors import join_priors
from cxrctx.mimic.reader import ReportReader, report_source
from cxrctx.mimic.schema import RECORD_SCHEMA, conform
from cxrctx.mimic.summary import reconcile, reject_table, summaries, write_jsonl
from cxrctx.models import RECORD_SCHEMA_VERSION, Manifest
from cxrctx.output_policy import prepare_output
from cxrctx.progress import as_callback, progress_arg

log = logging.getLogger(__name__)

#: The stage name written into manifests and the output-folder marker.
STAGE = "build-priors"

#: Per-study reject reasons (image-level ones are listed apart).

ProgressFn = Callable[[str, int, int], None]
"""`progress(task, done, total)`: `done` of `total` items of `task` ("reports",
"DICOM headers") are finished. Called once with done=0 when a task starts."""


class BuildPriorsConfig(BaseModel):
    """Resolved configuration of a build-priors run (stored in the manifest)."""

    model_config = ConfigDict(extra="forbid")

    max_priors: int = Field(3, ge=0, description="K: how many most recent priors to embed")
    rows_per_shard: int = Field(20_000, ge=1)
    formats: list[Literal["parquet", "jsonl"]] = Field(default_factory=lambda: ["parquet"])  # type: ignore[arg-type]
    reports_source: Literal["files", "zip"] = "files"
    reports_zip: str | None = Field(None, description="Zip name relative to the root, or as given")
    scan_dicom: bool = False
    image_ext: str = Field(
        "dcm", description="Extension of image paths built from the metadata CSV"
    )
    workers: int = Field(1, ge=1, description="Worker processes for reports and DICOM headers")
    max_report_bytes: int = Field(
        MAX_REPORT_BYTES,
        ge=1,
        description="A report file or zip entry larger than this is rejected (report_too_large)",
    )


@dataclass
class BuildResult:
    """What a run produced; the CLI prints it, scripts can use it."""

    out_dir: Path
    manifest: Manifest
    rejects_by_reason: dict[str, int]
    flag_counts: dict[str, int]
    prior_histogram: dict[str, int]
    split_counts: dict[str, int]
    warnings: dict[str, int] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest.counts


@dataclass
class _Inputs:
    """Everything read from the root before the studies are assembled."""

    img: pl.DataFrame
    rejects: list[dict]
    files: list[Path]
    split: pl.DataFrame | None
    chexpert: pl.DataFrame | None
    negbio: pl.DataFrame | None
    unknown_views: int


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class _Ticker:
    """Turns per-chunk increments into cumulative `progress(task, done, total)` calls."""

    def __init__(self, progress: ProgressFn | None, task: str) -> None:
        self.progress, self.task, self.done, self.total = progress, task, 0, 0

    def start(self, total: int) -> None:
        self.total = total
        if self.progress:
            self.progress(self.task, 0, total)

    def advance(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.task, self.done, self.total)


@progress_arg("build-priors")
def build_priors(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_priors: int = 3,
    rows_per_shard: int = 20_000,
    jsonl: bool = False,
    reports_zip: str | os.PathLike | None = None,
    scan_dicom: bool = False,
    image_ext: str = "dcm",
    workers: int | None = None,
    max_report_bytes: int = MAX_REPORT_BYTES,
    overwrite: bool = False,
    progress: ProgressFn | bool | None = None,
) -> BuildResult:
    """Build C-SRRG-style records from a MIMIC-CXR root into `out`.

    Writes `records/part-NNNNN.parquet`, `rejects.parquet`, `manifest.json` (and
    `records.jsonl` with `jsonl=True`). Raises `CxrctxError` on fatal input problems,
    before anything is written. A non-empty `out` of another run is refused unless
    `overwrite` (the output policy every stage shares); the same configuration re-runs.
    """
    progress = as_callback(progress)
    _check_out(Path(out))
    lay = L.discover(root, reports_zip, need_metadata=not scan_dicom)
    cfg = BuildPriorsConfig(
        max_priors=max_priors,
        rows_per_shard=rows_per_shard,
        formats=["parquet", "jsonl"] if jsonl else ["parquet"],
        reports_source=lay.reports_source,
        reports_zip=_rel_name(lay.reports_zip, lay.root) if lay.reports_zip else None,
        scan_dicom=scan_dicom,
        image_ext=image_ext,
        workers=workers or default_workers(),
        max_report_bytes=max_report_bytes,
    )
    run_key = {**cfg.model_dump(mode="json", exclude={"workers"}), "root": str(lay.root.resolve())}
    claim = functools.partial(
        prepare_output, out, stage=STAGE, config_hash=config_hash(run_key), overwrite=overwrite
    )
    if Path(out).is_dir() and any(Path(out).iterdir()):
        claim()  # refuse another run's folder (or resume ours) before any work
    # Start listing and reading every report in worker processes; the columnar work overlaps.
    reader = ReportReader(lay, cfg.workers, cfg.max_report_bytes)
    try:
        return _build(lay, cfg, Path(out), reader, progress, claim)
    finally:
        reader.close()


def _build(
    lay: L.MimicLayout,
    cfg: BuildPriorsConfig,
    out: Path,
    reader: ReportReader,
    progress: ProgressFn | None,
    claim: Callable[[], object],
) -> BuildResult:
    """The phases of a run, in order; each names what it adds to `rejects`. `claim` takes
    the output folder (output policy) once the inputs proved readable, before writing."""
    t0 = time.perf_counter()

    def done(name: str) -> None:
        log.info("build-priors: %s done at %.1fs", name, time.perf_counter() - t0)

    inp = _read_inputs(lay, cfg, progress)
    # The metadata alone places studies in time: the prior join runs while the workers
    # are still reading reports (a study found only as a report has no date, no priors).
    meta_studies = study_table(inp.img)
    timeline = _placed(meta_studies).filter(pl.col("study_datetime").is_not_null())
    pairs, stats = join_priors(timeline, cfg.max_priors)
    done("inputs read, priors joined")
    tick = _Ticker(progress, reader.unit)
    tick.start(reader.n)
    reports = _own_reports(lay, reader.collect(tick.advance), meta_studies, inp.rejects)
    done("reports read")
    studies, studies_in = _assemble_studies(meta_studies, reports, inp.rejects)
    studies = _reject_unplaced(studies, inp.rejects)
    _reject_missing_reports(lay, studies, inp.rejects)
    good = _report_rejects(lay, reports, studies, inp.rejects)
    prior_lists = _prior_lists(timeline, pairs, good)
    done("study table and prior lists")
    rec = _assemble_records(studies, good, stats, prior_lists, inp)
    rej = reject_table(inp.rejects)
    done("records assembled")
    counts = reconcile(rec, rej, inp.img, inp.unknown_views, studies_in)
    summary = summaries(rec, rej, cfg.max_priors)
    claim()
    manifest = _write(out, rec, rej, cfg, lay, inp.files, counts, summary)
    done("written")
    return BuildResult(
        out_dir=out,
        manifest=manifest,
        rejects_by_reason=summary["rejects_by_reason"],
        flag_counts=summary["flags"],
        prior_histogram=summary["n_prior_studies_histogram"],
        split_counts=summary["splits"],
        warnings={"unknown_view_position": inp.unknown_views} if inp.unknown_views else {},
    )


def _check_out(out: Path) -> None:
    """Fail before any work when `out` cannot be a writable folder (nothing is created)."""
    if out.exists() and not out.is_dir():
        raise CxrctxError(f"{out}: --out exists and is not a directory")
    p = out
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise CxrctxError(f"{out}: cannot create the output folder: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise CxrctxError(f"{out}: cannot write the output folder ({p} is not writable)")


def _rel_name(p: Path, root: Path) -> str:
    """`p` relative to the root when inside it, else as given (for manifests)."""
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


# --- phases -----------------------------------------------------------------------------


def _read_inputs(
    lay: L.MimicLayout, cfg: BuildPriorsConfig, progress: ProgressFn | None
) -> _Inputs:
    """Images and the optional label/split tables; every fatal input check happens here."""
    tick = _Ticker(progress, "DICOM headers")
    img, rejects, files = load_images(
        lay,
        scan_dicom=cfg.scan_dicom,
        workers=cfg.workers,
        on_start=tick.start,
        on_progress=tick.advance,
    )
    split = L.read_split(lay.split) if lay.split else None
    chexpert = L.read_label_csv(lay.chexpert) if lay.chexpert else None
    negbio = L.read_label_csv(lay.negbio) if lay.negbio else None
    files += [p for p in (lay.split, lay.chexpert, lay.negbio, lay.reports_zip) if p is not None]
    img = prepare_images(img, cfg.image_ext)
    unknown_views = int(img["unknown_view"].sum())
    if unknown_views:
        vals = img.filter("unknown_view")["view_position"].unique().sort().to_list()
        log.warning(
            "%d image(s) with an unknown ViewPosition (%s) were grouped as 'other'",
            unknown_views,
            ", ".join(map(str, vals[:10])),
        )
    return _Inputs(img, rejects, files, split, chexpert, negbio, unknown_views)


def _own_reports(
    lay: L.MimicLayout, reports: pl.DataFrame, studies: pl.DataFrame, rejects: list[dict]
) -> pl.DataFrame:
    """One report per study, found under the study's own patient (metadata subject_id; a
    study known only from its report keeps the first copy found). Every other file is its
    own reject and is never used: `misfiled_report` under another patient (it must not hide
    the real one), `duplicate_report` for a second copy."""
    tagged = (
        reports.with_row_index("_order")
        .join(
            studies.select("study_id", pl.col("subject_id").alias("_meta")),
            on="study_id",
            how="left",
            maintain_order="left",
        )
        .with_columns((pl.col("subject_id") != pl.col("_meta")).fill_null(False).alias("_other"))
    )
    own = tagged.filter(~pl.col("_other"))
    keep = own.unique("study_id", keep="first", maintain_order=True)
    if keep.height == reports.height:
        return reports  # the normal case: one file per study, each under its own patient
    used = dict(zip(keep["study_id"].to_list(), keep["report_path"].to_list(), strict=True))
    extra = tagged.join(keep.select("_order"), on="_order", how="anti").sort("study_id", "_order")
    for row in extra.iter_rows(named=True):
        sid, where = row["study_id"], report_source(lay, row["report_path"])
        uses = f"; the study uses {used[sid]}" if sid in used else ""
        if row["_other"]:
            reason, what = (
                "misfiled_report",
                f"filed under patient {row['subject_id']}, not {row['_meta']}",
            )
        else:
            reason, what = "duplicate_report", "a second copy"
        rejects.append({"study_id": sid, "source": f"{where} ({what}{uses})", "reason": reason})
    return keep.drop("_order", "_meta", "_other")


def _assemble_studies(
    studies: pl.DataFrame, reports: pl.DataFrame, rejects: list[dict]
) -> tuple[pl.DataFrame, int]:
    """Studies = metadata ∪ reports ∪ studies only seen in image rejects; (table, count in)."""
    meta_ids = studies.select("study_id", "subject_id")
    report_only = reports.join(meta_ids, on="study_id", how="anti")
    rejected_image_studies = {r["study_id"] for r in rejects if r["study_id"] is not None}
    orphan = sorted(
        rejected_image_studies
        - set(studies["study_id"].to_list())
        - set(reports["study_id"].to_list())
    )
    studies = pl.concat(
        [
            studies,
            report_only.select("study_id", "subject_id").with_columns(
                pl.lit(False).alias(c) for c in ("bad_date", "bad_time", "time_known")
            ),
        ],
        how="diagonal_relaxed",
    ).join(
        reports.select("study_id", "report_path", pl.col("subject_id").alias("_report_subject")),
        on="study_id",
        how="left",
    )
    # A report filed under another patient is not this study's report.
    studies = studies.with_columns(
        pl.when(pl.col("_report_subject") == pl.col("subject_id"))
        .then(pl.col("report_path"))
        .alias("report_path"),
        pl.col("images").fill_null([]),
    )
    for sid in orphan:
        rejects.append(
            {
                "study_id": sid,
                "source": "no readable image and no report",
                "reason": "missing_report",
            }
        )
    return studies, studies.height + len(orphan)


def _reject_unplaced(studies: pl.DataFrame, rejects: list[dict]) -> pl.DataFrame:
    """A study with a bad date or time cannot be placed in time: reject it."""
    bad = studies.filter(pl.col("bad_date") | pl.col("bad_time"))
    for row in bad.select("study_id", "bad_date", "_bad_date_src", "_bad_time_src").iter_rows(
        named=True
    ):
        reason = "bad_study_date" if row["bad_date"] else "bad_study_time"
        src = row["_bad_date_src"] if row["bad_date"] else row["_bad_time_src"]
        rejects.append({"study_id": row["study_id"], "source": src, "reason": reason})
    return _placed(studies)


def _placed(studies: pl.DataFrame) -> pl.DataFrame:
    """Studies whose date and time are usable (the others are rejected)."""
    return studies.filter(~(pl.col("bad_date") | pl.col("bad_time")))


def _reject_missing_reports(lay: L.MimicLayout, studies: pl.DataFrame, rejects: list[dict]) -> None:
    """A placed study without a report file (where MIMIC would have it) is rejected."""
    expected = studies.select(
        "study_id",
        "report_path",
        L.report_relpath_expr().alias("_expected"),
    )
    for row in expected.filter(pl.col("report_path").is_null()).iter_rows(named=True):
        where = report_source(lay, row["_expected"])
        rejects.append(
            {
                "study_id": row["study_id"],
                "source": f"{where} (not found)",
                "reason": "missing_report",
            }
        )


def _report_rejects(
    lay: L.MimicLayout, reports: pl.DataFrame, studies: pl.DataFrame, rejects: list[dict]
) -> pl.DataFrame:
    """Sections of the readable reports of the remaining studies; unreadable ones → rejects."""
    texts = reports.join(
        studies.select("study_id", "report_path"), on=["study_id", "report_path"], how="semi"
    )
    for row in (
        texts.filter(pl.col("report_error").is_not_null())
        .select("study_id", "report_path", "report_error", "report_error_detail")
        .sort("study_id")
        .iter_rows(named=True)
    ):
        src = report_source(lay, row["report_path"])
        rejects.append(
            {
                "study_id": row["study_id"],
                "source": f"{src}: {row['report_error_detail']}",
                "reason": row["report_error"],
            }
        )
    return texts.filter(pl.col("report_error").is_null()).drop(
        "subject_id", "report_error", "report_error_detail", "report_path"
    )


def _prior_lists(timeline: pl.DataFrame, pairs: pl.DataFrame, good: pl.DataFrame) -> pl.DataFrame:
    """study_id → list of prior structs, over every study placed in time (a study whose
    report is missing still happened: it counts, with null texts)."""
    prior_info = (
        timeline.select("study_id", "study_datetime", "images")
        .join(
            good.select("study_id", "indication", "findings", "impression"),
            on="study_id",
            how="left",
        )
        .rename(lambda c: f"{c}_p")
    )
    prior_lists = (
        pairs.join(prior_info, on="study_id_p", how="left")
        .sort("study_id", "rank")
        .group_by("study_id", maintain_order=True)
        .agg(
            pl.struct(
                pl.col("study_id_p").alias("study_id"),
                pl.col("study_datetime_p").alias("study_datetime"),
                pl.col("days_before"),
                pl.col("indication_p").alias("indication"),
                pl.col("findings_p").alias("findings"),
                pl.col("impression_p").alias("impression"),
                pl.col("images_p").alias("images"),
            ).alias("priors")
        )
    )
    return prior_lists


def _assemble_records(
    studies: pl.DataFrame,
    good: pl.DataFrame,
    stats: pl.DataFrame,
    prior_lists: pl.DataFrame,
    inp: _Inputs,
) -> pl.DataFrame:
    """One record per study with a readable report: sections, priors, labels, flags."""
    rec = (
        studies.join(good, on="study_id", how="inner")
        .join(stats, on="study_id", how="left")
        .join(prior_lists, on="study_id", how="left")
    )
    if inp.split is not None:
        rec = rec.join(inp.split, on="study_id", how="left")
    for name, table in (("chexpert", inp.chexpert), ("negbio", inp.negbio)):
        if table is not None:
            rec = rec.join(
                table.select("study_id", pl.struct(L.LABEL_KEYS).alias(name)),
                on="study_id",
                how="left",
            )
    rec = rec.with_columns(
        pl.col("n_prior_studies").fill_null(0),
        pl.col("priors").fill_null([]),
        pl.col("same_time_ambiguous").fill_null(False),
        pl.col("same_day_unordered").fill_null(False),
    )
    rec = with_temporal_language(rec)
    rec = with_flags(rec)
    return conform(
        rec.sort(["subject_id", "study_datetime", "study_id"], nulls_last=True), RECORD_SCHEMA
    )


def _write(
    out: Path,
    rec: pl.DataFrame,
    rej: pl.DataFrame,
    cfg: BuildPriorsConfig,
    lay: L.MimicLayout,
    files: list[Path],
    counts: dict[str, int],
    summary: dict,
) -> Manifest:
    """Shards, rejects, optional JSONL; the manifest goes last, so a directory without one
    is visibly incomplete. A full or read-only disk is a one-line error."""
    try:
        return _write_outputs(out, rec, rej, cfg, lay, files, counts, summary)
    except OSError as e:
        raise CxrctxError(f"{out}: cannot write the output: {e.strerror or e}") from None


def _write_outputs(
    out: Path,
    rec: pl.DataFrame,
    rej: pl.DataFrame,
    cfg: BuildPriorsConfig,
    lay: L.MimicLayout,
    files: list[Path],
    counts: dict[str, int],
    summary: dict,
) -> Manifest:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    for folder in (out, out / "records"):  # temp files left by a killed run
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
    shards = write_shards(rec, out / "records", cfg.rows_per_shard, relative_to=out)
    tables = [
        write_parquet(rej, out / "rejects.parquet").model_copy(update={"path": "rejects.parquet"})
    ]
    if "jsonl" in cfg.formats:
        tables.append(write_jsonl(rec, out / "records.jsonl"))
    manifest = write_stage_manifest(
        out,
        stage=STAGE,
        schema_version=RECORD_SCHEMA_VERSION,
        config=cfg.model_dump(mode="json"),
        inputs=[input_file(p, _rel_name(p, lay.root)) for p in files],
        shards=shards,
        tables=tables,
        counts=counts,
        extra={
            "reports_source": cfg.reports_source,
            **summary,
            "sections_note": "FINDINGS AND IMPRESSION text fills both findings and impression unless an explicit one exists",
        },
    )
    return manifest
