"""`build_priors`: a MIMIC-CXR root → C-SRRG-style records shards, rejects and a manifest.

The heavy lifting is columnar (polars): CSV parsing, date/time normalisation, image
ordering and the prior join (a per-patient self-join, filtered and ranked) run without
per-study Python loops. Only report reading + sectioning is per file, and it runs in
worker processes in chunks. Records are not validated one by one with pydantic: the
frame is cast to one explicit schema (`cxrctx.mimic.schema`) and a test validates rows
against `cxrctx.models.Record`.

Fatal problems (missing root or metadata, corrupt gzip, missing columns, malformed rows,
duplicate dicom_ids) raise `CxrctxError` before anything is written. Per-study problems
become rows of `rejects.parquet`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from cxrctx import __version__
from cxrctx.errors import CxrctxError
from cxrctx.io import atomic_path, input_file, write_manifest, write_parquet, write_shards
from cxrctx.mimic import layout as L
from cxrctx.mimic.reports import META_FIELDS, mp_context, process_chunk, quiet_fork
from cxrctx.mimic.schema import DT, RECORD_SCHEMA, REJECT_SCHEMA, conform
from cxrctx.mimic.sections import FIELDS
from cxrctx.models import RECORD_SCHEMA_VERSION, Manifest
from cxrctx.vocab import FLAGS

log = logging.getLogger(__name__)

FRONTAL = ("PA", "AP")
LATERAL = ("LATERAL", "LL")
#: View positions MIMIC is known to use; anything else is counted as a warning.
KNOWN_VIEWS = frozenset(
    {
        *FRONTAL,
        *LATERAL,
        "LAO",
        "RAO",
        "LPO",
        "RPO",
        "AP AXIAL",
        "PA AXIAL",
        "XTABLE LATERAL",
        "AP LLD",
        "PA LLD",
        "AP RLD",
        "PA RLD",
        "SWIMMERS",
        "L5 S1",
        "LEFT LATERAL",
        "RIGHT LATERAL",
        "",
    }
)
#: Per-study reject reasons (image-level ones are listed apart).
STUDY_REJECT_REASONS = (
    "bad_study_date",
    "bad_study_time",
    "missing_report",
    "unreadable_report",
    "non_utf8_report",
    "empty_report",
)
IMAGE_REJECT_REASONS = ("unreadable_dicom",)
SERIAL_BELOW = 2000  # reports; below this, sectioning runs in-process (no pool start-up)


class BuildPriorsConfig(BaseModel):
    """Resolved configuration of a build-priors run (stored in the manifest)."""

    model_config = ConfigDict(extra="forbid")

    max_priors: int = Field(3, ge=0, description="K: how many most recent priors to embed")
    rows_per_shard: int = Field(20_000, ge=1)
    formats: list[Literal["parquet", "jsonl"]] = Field(default_factory=lambda: ["parquet"])
    reports_source: Literal["files", "zip"] = "files"
    reports_zip: str | None = Field(None, description="Zip name relative to the root, or as given")
    scan_dicom: bool = False
    image_ext: str = Field(
        "dcm", description="Extension of image paths built from the metadata CSV"
    )
    workers: int = Field(1, ge=1, description="Worker processes for reports and DICOM headers")


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


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# --- images -----------------------------------------------------------------------------


def _parse_datetimes(img: pl.DataFrame) -> pl.DataFrame:
    """Add date, time_known, dt, bad_date, bad_time from the StudyDate / StudyTime strings."""
    date_raw = pl.col("StudyDate").str.strip_chars()
    time_raw = pl.col("StudyTime").str.strip_chars()
    has_date = date_raw.is_not_null() & (date_raw != "")
    has_time = time_raw.is_not_null() & (time_raw != "")
    date = pl.when(date_raw.str.contains(r"^\d{8}$")).then(
        date_raw.str.to_date("%Y%m%d", strict=False)
    )
    tm = time_raw.str.extract_groups(r"^(\d{1,6})(?:\.(\d*))?$")
    img = img.with_columns(
        date.alias("date"),
        has_date.fill_null(False).alias("_has_date"),
        has_time.fill_null(False).alias("_has_time"),
        tm.struct.field("1").str.zfill(6).alias("_hms"),
        (tm.struct.field("2").fill_null("") + "000000").str.slice(0, 6).alias("_frac"),
    )
    hh = pl.col("_hms").str.slice(0, 2).cast(pl.Int64)
    mm = pl.col("_hms").str.slice(2, 2).cast(pl.Int64)
    ss = pl.col("_hms").str.slice(4, 2).cast(pl.Int64)
    valid_time = pl.col("_hms").is_not_null() & (hh < 24) & (mm < 60) & (ss < 60)
    micros = ((hh * 3600 + mm * 60 + ss) * 1_000_000 + pl.col("_frac").cast(pl.Int64)).fill_null(0)
    img = img.with_columns(
        (pl.col("_has_date") & pl.col("date").is_null()).alias("bad_date"),
        (pl.col("_has_time") & ~valid_time.fill_null(False)).alias("bad_time"),
        (pl.col("_has_time") & valid_time.fill_null(False)).alias("time_known"),
    )
    return img.with_columns(
        (
            pl.col("date").cast(DT)
            + pl.when(pl.col("time_known"))
            .then(pl.duration(microseconds=micros))
            .otherwise(pl.duration(microseconds=0))
        ).alias("dt")
    ).drop("_has_date", "_has_time", "_hms", "_frac")


def _prepare_images(img: pl.DataFrame, image_ext: str) -> pl.DataFrame:
    """Typed image rows with path, view group, order key and parsed date/time."""
    if "path" not in img.columns:
        img = img.with_columns(
            (
                pl.lit("files/p")
                + pl.col("subject_id").cast(pl.String).str.slice(0, 2)
                + "/p"
                + pl.col("subject_id").cast(pl.String)
                + "/s"
                + pl.col("study_id").cast(pl.String)
                + "/"
                + pl.col("dicom_id")
                + f".{image_ext}"
            ).alias("path")
        )
    vp = pl.col("ViewPosition").str.strip_chars().str.to_uppercase().fill_null("")
    group = (
        pl.when(vp.is_in(FRONTAL))
        .then(pl.lit("frontal"))
        .when(vp.is_in(LATERAL))
        .then(pl.lit("lateral"))
        .otherwise(pl.lit("other"))
    )
    order = (
        pl.when(vp == "PA")
        .then(0)
        .when(vp == "AP")
        .then(1)
        .when(vp.is_in(LATERAL))
        .then(2)
        .otherwise(3)
    )
    img = img.with_columns(
        pl.col("ViewPosition").str.strip_chars().alias("view_position"),
        group.alias("view_group"),
        order.alias("_order"),
        (~vp.is_in(list(KNOWN_VIEWS))).alias("unknown_view"),
    )
    return _parse_datetimes(img)


def _image_struct() -> pl.Expr:
    return pl.struct(
        pl.col("dicom_id"),
        pl.col("path"),
        pl.col("view_position"),
        pl.col("view_group"),
        pl.col("Rows").alias("rows"),
        pl.col("Columns").alias("columns"),
    )


def _study_table(img: pl.DataFrame) -> pl.DataFrame:
    """One row per study: subject, datetime (earliest image), flags inputs, image list."""
    img = img.sort("study_id", "_order", "dicom_id")
    return (
        img.group_by("study_id", maintain_order=True)
        .agg(
            pl.col("subject_id").first(),
            pl.col("bad_date").any(),
            pl.col("bad_time").any(),
            pl.col("time_known").any(),
            pl.col("dt").filter(pl.col("time_known")).min().alias("_dt_timed"),
            pl.col("date").min().alias("_date_min"),
            pl.col("_src").filter(pl.col("bad_date")).first().alias("_bad_date_src"),
            pl.col("_src").filter(pl.col("bad_time")).first().alias("_bad_time_src"),
            _image_struct().alias("images"),
        )
        .with_columns(
            pl.when(pl.col("time_known"))
            .then(pl.col("_dt_timed"))
            .otherwise(pl.col("_date_min").cast(DT))
            .alias("study_datetime"),
        )
        .with_columns(pl.col("study_datetime").dt.date().alias("date"))
    )


# --- priors -----------------------------------------------------------------------------


def join_priors(timeline: pl.DataFrame, max_priors: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Prior pairs and per-study prior flags for studies with a known date.

    `timeline`: subject_id, study_id, study_datetime, date, time_known.
    Returns (pairs, stats): pairs = the K most recent priors per study with rank and
    days_before; stats = study_id, n_prior_studies, same_time_ambiguous, same_day_unordered.
    """
    t = timeline.select("subject_id", "study_id", "study_datetime", "date", "time_known")
    p = t.rename({c: f"{c}_p" for c in ("study_id", "study_datetime", "date", "time_known")})
    both_timed = pl.col("time_known") & pl.col("time_known_p")
    pairs = (
        t.join(p, on="subject_id", how="inner")
        .filter(pl.col("study_id") != pl.col("study_id_p"))
        .with_columns(
            pl.when(both_timed)
            .then(pl.col("study_datetime_p") < pl.col("study_datetime"))
            .otherwise(pl.col("date_p") < pl.col("date"))
            .alias("is_prior"),
            (both_timed & (pl.col("study_datetime_p") == pl.col("study_datetime"))).alias(
                "same_time"
            ),
            (~both_timed & (pl.col("date_p") == pl.col("date"))).alias("same_day"),
        )
    )
    stats = pairs.group_by("study_id").agg(
        pl.col("is_prior").sum().cast(pl.Int64).alias("n_prior_studies"),
        pl.col("same_time").any().alias("same_time_ambiguous"),
        pl.col("same_day").any().alias("same_day_unordered"),
    )
    priors = (
        pairs.filter(pl.col("is_prior"))
        .sort(["study_id", "study_datetime_p", "study_id_p"], descending=[False, True, False])
        .with_columns(
            pl.int_range(pl.len()).over("study_id").alias("rank"),
            (pl.col("date") - pl.col("date_p")).dt.total_days().cast(pl.Int64).alias("days_before"),
        )
        .filter(pl.col("rank") < max_priors)
        .select("study_id", "study_id_p", "rank", "days_before")
    )
    return priors, stats


# --- reports ----------------------------------------------------------------------------


class ReportReader:
    """Reads and sections reports in worker processes, started early.

    The pool is started (and every chunk submitted) before the CSVs are parsed, so the
    main process does its columnar work while the workers read files; `collect()` then
    gathers the columns in input order. Small inputs run in-process at `collect()`.
    """

    def __init__(self, root: Path, zip_path: Path | None, rels: list[str], workers: int) -> None:
        zp = str(zip_path) if zip_path is not None else None
        self.n = len(rels)
        self.serial = workers <= 1 or len(rels) < SERIAL_BELOW
        size = 2000 if self.serial else max(500, min(4000, len(rels) // (workers * 8) + 1))
        self.chunks = [(str(root), zp, rels[i : i + size]) for i in range(0, len(rels), size)]
        self._stack = contextlib.ExitStack()
        self._futures: list[Future] = []
        if not self.serial:
            self._stack.enter_context(quiet_fork())
            pool = self._stack.enter_context(
                ProcessPoolExecutor(max_workers=workers, mp_context=mp_context())
            )
            self._futures = [pool.submit(process_chunk, c) for c in self.chunks]

    def collect(self, on_progress: Callable[[int], None] | None = None) -> dict[str, list]:
        cols: dict[str, list] = {k: [] for k in (*META_FIELDS, *FIELDS)}
        results = (
            (f.result() for f in self._futures)
            if not self.serial
            else map(process_chunk, self.chunks)
        )
        for res, chunk in zip(results, self.chunks, strict=True):
            for k, v in res.items():
                cols[k].extend(v)
            if on_progress:
                on_progress(len(chunk[2]))
        return cols

    def close(self) -> None:
        for f in self._futures:
            f.cancel()
        self._stack.close()


# --- main -------------------------------------------------------------------------------


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not enabled,
    )


def _load_images(
    lay: L.MimicLayout, cfg: BuildPriorsConfig, progress: bool
) -> tuple[pl.DataFrame, list[dict], list[Path]]:
    """Image rows (metadata columns, typed ids, `_src`), image-level rejects, input files."""
    rejects: list[dict] = []
    if not cfg.scan_dicom:
        assert lay.metadata is not None
        meta = L.read_metadata(lay.metadata)
        name = lay.metadata.name
        meta = meta.with_columns(
            (pl.lit(f"{name} line ") + pl.col("_line").cast(pl.String)).alias("_src")
        )
        return meta.drop("_line"), rejects, [lay.metadata]
    from cxrctx.mimic.dicom_scan import find_dicoms, scan_dicoms

    if lay.files_dir is None:
        raise CxrctxError(
            f"{lay.root / 'files'}: --scan-dicom needs the files/ tree with DICOM files"
        )
    rels = find_dicoms(lay.files_dir)
    with _progress_bar(progress) as bar:
        task = bar.add_task("DICOM headers", total=len(rels))
        rows, errors = scan_dicoms(
            lay.root, rels, workers=cfg.workers, on_progress=lambda n: bar.advance(task, n)
        )
    schema = {c: pl.String for c in (*L.METADATA_COLUMNS, "path")}
    meta = pl.DataFrame(rows, schema=schema, orient="row")
    for rel, err in errors:
        parts = rel.replace("\\", "/").split("/")
        study = next(
            (int(p[1:]) for p in parts[:-1] if len(p) > 1 and p[0] == "s" and p[1:].isdigit()), None
        )
        rejects.append({"study_id": study, "source": f"{rel}: {err}", "reason": "unreadable_dicom"})
    meta = meta.with_columns(pl.int_range(pl.len()).alias("_line") + 1)
    meta = L._require_int(meta, lay.root / "files", ("subject_id", "study_id"))
    meta = L._require_int(meta, lay.root / "files", ("Rows", "Columns"), nullable=True)
    dup = meta.filter(pl.col("dicom_id").is_duplicated()).sort("path")
    if dup.height:
        raise CxrctxError(
            f"{lay.root / dup['path'][0]}: duplicate dicom_id {dup['dicom_id'][0]} (also at {dup['path'][1]})"
        )
    meta = meta.with_columns(pl.col("path").alias("_src")).drop("_line")
    return meta, rejects, []


def _report_source(lay: L.MimicLayout, rel: str) -> str:
    """Where a report lives, for reject rows: the zip entry or the path under the root."""
    return f"{lay.reports_zip.name}: {rel}" if lay.reports_zip is not None else rel


def _report_index(lay: L.MimicLayout) -> pl.DataFrame:
    """study_id, subject_id, report_path for every report present."""
    if lay.reports_zip is not None:
        idx = L.zip_report_index(lay.reports_zip)
        data = [(sid, subj, name) for sid, (name, subj) in idx.items()]
    else:
        assert lay.files_dir is not None
        data = [(sid, subj, rel) for subj, sid, rel in L.iter_report_files(lay.files_dir)]
    df = pl.DataFrame(
        data,
        schema={"study_id": pl.Int64, "subject_id": pl.Int64, "report_path": pl.String},
        orient="row",
    )
    return df.unique("study_id", keep="first").sort("study_id")


def build_priors(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_priors: int = 3,
    rows_per_shard: int = 20_000,
    jsonl: bool = False,
    reports_zip: str | os.PathLike | None = None,
    scan_dicom: bool = False,
    image_ext: str = "dcm",
    workers: int | None = None,
    progress: bool = False,
) -> BuildResult:
    """Build C-SRRG-style records from a MIMIC-CXR root into `out_dir`.

    Writes `records/part-NNNNN.parquet`, `rejects.parquet`, `manifest.json` (and
    `records.jsonl` with `jsonl=True`). Raises `CxrctxError` on fatal input problems,
    before anything is written.
    """
    t0 = time.perf_counter()

    def phase(name: str) -> None:
        log.info("build-priors: %s done at %.1fs", name, time.perf_counter() - t0)

    lay = L.discover(root, reports_zip, need_metadata=not scan_dicom)
    zip_name = None
    if lay.reports_zip is not None:
        try:
            zip_name = str(lay.reports_zip.resolve().relative_to(lay.root.resolve()))
        except ValueError:
            zip_name = str(lay.reports_zip)
    cfg = BuildPriorsConfig(
        max_priors=max_priors,
        rows_per_shard=rows_per_shard,
        formats=["parquet", "jsonl"] if jsonl else ["parquet"],
        reports_source=lay.reports_source,
        reports_zip=zip_name,
        scan_dicom=scan_dicom,
        image_ext=image_ext,
        workers=workers or default_workers(),
    )
    out = Path(out_dir)

    # 0. Start reading every report in worker processes; the columnar work below overlaps.
    reports = _report_index(lay)
    reader = ReportReader(lay.root, lay.reports_zip, reports["report_path"].to_list(), cfg.workers)
    try:
        return _build(lay, cfg, out, reports, reader, progress, phase)
    finally:
        reader.close()


def _build(
    lay: L.MimicLayout,
    cfg: BuildPriorsConfig,
    out: Path,
    reports: pl.DataFrame,
    reader: ReportReader,
    progress: bool,
    phase: Callable[[str], None],
) -> BuildResult:
    # 1. Inputs: images, optional label/split tables (all fatal checks happen here).
    img, rejects, inputs = _load_images(lay, cfg, progress)
    split = L.read_split(lay.split) if lay.split else None
    chexpert = L.read_labels(lay.chexpert) if lay.chexpert else None
    negbio = L.read_labels(lay.negbio) if lay.negbio else None
    inputs += [p for p in (lay.split, lay.chexpert, lay.negbio, lay.reports_zip) if p is not None]
    img = _prepare_images(img, cfg.image_ext)
    n_images = img.height
    unknown_views = int(img["unknown_view"].sum())
    if unknown_views:
        vals = img.filter("unknown_view")["view_position"].unique().sort().to_list()
        log.warning(
            "%d image(s) with an unknown ViewPosition (%s) were grouped as 'other'",
            unknown_views,
            ", ".join(map(str, vals[:10])),
        )

    phase("inputs read")
    # 2. Studies: metadata ∪ reports ∪ studies only seen in image rejects.
    studies = _study_table(img)
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
    studies_in = studies.height + len(orphan)
    for sid in orphan:
        rejects.append(
            {
                "study_id": sid,
                "source": "no readable image and no report",
                "reason": "missing_report",
            }
        )

    phase("study table")
    # 3. Date/time problems: the study cannot be placed in time → reject.
    bad = studies.filter(pl.col("bad_date") | pl.col("bad_time"))
    for row in bad.select("study_id", "bad_date", "_bad_date_src", "_bad_time_src").iter_rows(
        named=True
    ):
        if row["bad_date"]:
            rejects.append(
                {
                    "study_id": row["study_id"],
                    "source": row["_bad_date_src"],
                    "reason": "bad_study_date",
                }
            )
        else:
            rejects.append(
                {
                    "study_id": row["study_id"],
                    "source": row["_bad_time_src"],
                    "reason": "bad_study_time",
                }
            )
    studies = studies.filter(~(pl.col("bad_date") | pl.col("bad_time")))

    # 4. Missing reports.
    expected = studies.select(
        "study_id",
        "report_path",
        (
            pl.lit("files/p")
            + pl.col("subject_id").cast(pl.String).str.slice(0, 2)
            + "/p"
            + pl.col("subject_id").cast(pl.String)
            + "/s"
            + pl.col("study_id").cast(pl.String)
            + ".txt"
        ).alias("_expected"),
    )
    for row in expected.filter(pl.col("report_path").is_null()).iter_rows(named=True):
        where = _report_source(lay, row["_expected"])
        rejects.append(
            {
                "study_id": row["study_id"],
                "source": f"{where} (not found)",
                "reason": "missing_report",
            }
        )

    phase("missing reports")
    # 5. Collect the reports (read in parallel since step 0) of the studies that remain.
    with _progress_bar(progress) as bar:
        task = bar.add_task("reports", total=reader.n)
        cols = reader.collect(lambda n: bar.advance(task, n))
    text_schema = {
        "report_sha256": pl.String,
        "report_error": pl.String,
        "report_error_detail": pl.String,
        "temporal_language": pl.Boolean,
    }
    text_schema.update({f: pl.String for f in FIELDS})
    texts = (
        pl.DataFrame(cols, schema=text_schema)
        .with_columns(reports["study_id"], reports["report_path"])
        .join(studies.select("study_id", "report_path"), on=["study_id", "report_path"], how="semi")
    )
    for row in (
        texts.filter(pl.col("report_error").is_not_null())
        .select("study_id", "report_path", "report_error", "report_error_detail")
        .sort("study_id")
        .iter_rows(named=True)
    ):
        src = _report_source(lay, row["report_path"])
        rejects.append(
            {
                "study_id": row["study_id"],
                "source": f"{src}: {row['report_error_detail']}",
                "reason": row["report_error"],
            }
        )
    good_reports = texts.filter(pl.col("report_error").is_null()).drop(
        "report_error", "report_error_detail", "report_path"
    )

    phase("reports read")
    # 6. Priors over every study placed in time (a study whose report is missing still happened).
    timeline = studies.filter(pl.col("study_datetime").is_not_null())
    pairs, stats = join_priors(timeline, cfg.max_priors)
    prior_info = (
        timeline.select("study_id", "study_datetime", "images")
        .join(
            good_reports.select("study_id", "indication", "findings", "impression"),
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

    phase("priors joined")
    # 7. Records: studies with a readable report.
    rec = (
        studies.join(good_reports, on="study_id", how="inner")
        .join(stats, on="study_id", how="left")
        .join(prior_lists, on="study_id", how="left")
    )
    if split is not None:
        rec = rec.join(split, on="study_id", how="left")
    for name, table in (("chexpert", chexpert), ("negbio", negbio)):
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
    conditions = {
        "missing_study_time": pl.col("study_datetime").is_not_null() & ~pl.col("time_known"),
        "missing_study_datetime": pl.col("study_datetime").is_null(),
        "same_time_ambiguous": pl.col("same_time_ambiguous"),
        "same_day_unordered": pl.col("same_day_unordered"),
        "no_findings": pl.col("findings").is_null(),
        "no_impression": pl.col("impression").is_null(),
        "no_images": pl.col("images").list.len() == 0,
        "temporal_reference_without_prior": (pl.col("n_prior_studies") == 0)
        & pl.col("temporal_language"),
    }
    assert tuple(conditions) == FLAGS
    rec = rec.with_columns(
        pl.concat_list([pl.when(c.fill_null(False)).then(pl.lit(n)) for n, c in conditions.items()])
        .list.drop_nulls()
        .alias("flags")
    )
    rec = conform(
        rec.sort(["subject_id", "study_datetime", "study_id"], nulls_last=True), RECORD_SCHEMA
    )
    rej = conform(
        pl.DataFrame(rejects, schema=REJECT_SCHEMA)
        if rejects
        else pl.DataFrame(schema=REJECT_SCHEMA),
        REJECT_SCHEMA,
    ).sort(["study_id", "reason", "source"], nulls_last=True)

    phase("records assembled")
    # 8. Counts must reconcile before anything is written.
    study_rejects = rej.filter(pl.col("reason").is_in(STUDY_REJECT_REASONS))
    image_rejects = rej.filter(pl.col("reason").is_in(IMAGE_REJECT_REASONS))
    rejected_studies = study_rejects["study_id"].n_unique()
    if rec.height + rejected_studies != studies_in:
        raise RuntimeError(
            f"counts do not reconcile: {studies_in} studies in, {rec.height} records, {rejected_studies} rejected"
        )
    images_in_records = int(rec["images"].list.len().sum())
    rejected_with_images = img.join(
        study_rejects.select("study_id").unique(), on="study_id", how="semi"
    ).height
    counts = {
        "studies_in": studies_in,
        "records": rec.height,
        "rejected_studies": rejected_studies,
        "images_in": n_images + image_rejects.height,
        "images_in_records": images_in_records,
        "images_in_rejected_studies": rejected_with_images,
        "images_rejected": image_rejects.height,
        "reject_rows": rej.height,
        "unknown_view_position": unknown_views,
    }
    if counts["images_in"] != images_in_records + rejected_with_images + image_rejects.height:
        raise RuntimeError(f"image counts do not reconcile: {counts}")

    phase("counts")
    # 9. Write: the manifest goes last, so a directory without one is visibly incomplete.
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    shards = write_shards(rec, out / "records", cfg.rows_per_shard, relative_to=out)
    tables = [
        write_parquet(rej, out / "rejects.parquet").model_copy(update={"path": "rejects.parquet"})
    ]
    if "jsonl" in cfg.formats:
        tables.append(_write_jsonl(rec, out / "records.jsonl"))
    rel_inputs = []
    for p in inputs:
        try:
            name = str(p.resolve().relative_to(lay.root.resolve()))
        except ValueError:
            name = str(p)
        rel_inputs.append(input_file(p, name))
    flag_counts = {
        f: int(n) for f, n in Counter(rec["flags"].explode().drop_nulls().to_list()).items()
    }
    flag_counts = {f: flag_counts.get(f, 0) for f in FLAGS}
    n_prior = rec["n_prior_studies"]
    hist_keys = [str(i) for i in range(cfg.max_priors + 1)]
    hist = {k: 0 for k in [*hist_keys, f">{cfg.max_priors}"]}
    for v, n in Counter(min(int(x), cfg.max_priors + 1) for x in n_prior.to_list()).items():
        hist[str(v) if v <= cfg.max_priors else f">{cfg.max_priors}"] += n
    split_counts = {
        str(k): int(v) for k, v in Counter(rec["split"].fill_null("(none)").to_list()).items()
    }
    rejects_by_reason = dict(sorted(Counter(rej["reason"].to_list()).items()))
    manifest = Manifest(
        tool_version=__version__,
        stage="build-priors",
        schema_version=RECORD_SCHEMA_VERSION,
        config=cfg.model_dump(mode="json"),
        inputs=rel_inputs,
        shards=shards,
        tables=tables,
        counts=counts,
        extra={
            "reports_source": cfg.reports_source,
            "rejects_by_reason": rejects_by_reason,
            "flags": flag_counts,
            "n_prior_studies_histogram": hist,
            "splits": dict(sorted(split_counts.items())),
            "sections_note": "FINDINGS AND IMPRESSION text fills both findings and impression unless an explicit one exists",
        },
    )
    write_manifest(manifest, out / "manifest.json")
    phase("written")
    return BuildResult(
        out_dir=out,
        manifest=manifest,
        rejects_by_reason=rejects_by_reason,
        flag_counts=flag_counts,
        prior_histogram=hist,
        split_counts=dict(sorted(split_counts.items())),
        warnings={"unknown_view_position": unknown_views} if unknown_views else {},
    )


def _write_jsonl(rec: pl.DataFrame, path: Path):
    """JSON Lines of the records (datetimes ISO 8601), written atomically."""
    from cxrctx.io import sha256_file
    from cxrctx.models import ShardInfo

    iso = "%Y-%m-%dT%H:%M:%S%.f"
    rec = rec.with_columns(
        pl.col("study_datetime").dt.to_string(iso),
        pl.col("priors").list.eval(
            pl.element().struct.with_fields(pl.field("study_datetime").dt.to_string(iso))
        ),
    )
    with atomic_path(path) as tmp:
        rec.write_ndjson(tmp)
    return ShardInfo(path=path.name, rows=rec.height, sha256=sha256_file(path))
