"""Image rows → typed, ordered image lists and one row per study (columnar, polars).

Reads the metadata CSV (or scans DICOM headers), parses StudyDate/StudyTime without a
float round-trip, groups views (frontal before lateral) and builds the study table
from which priors are joined.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.mimic import layout as L
from cxrctx.mimic.dicom_scan import find_dicoms, scan_dicoms
from cxrctx.mimic.schema import DT
from cxrctx.vocab import DICOM_ID_RE

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


def _parse_datetimes(img: pl.DataFrame) -> pl.DataFrame:
    """Add date, time_known, dt, bad_date, bad_time from the StudyDate / StudyTime strings."""
    date_raw = pl.col("StudyDate").str.strip_chars()
    time_raw = pl.col("StudyTime").str.strip_chars()
    has_date = date_raw.is_not_null() & (date_raw != "")
    has_time = time_raw.is_not_null() & (time_raw != "")
    date = pl.when(date_raw.str.contains(r"^[0-9]{8}$")).then(
        date_raw.str.to_date("%Y%m%d", strict=False)
    )
    tm = time_raw.str.extract_groups(r"^([0-9]{1,6})(?:\.([0-9]*))?$")
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


def prepare_images(img: pl.DataFrame, image_ext: str) -> pl.DataFrame:
    """Typed image rows with path, view group, order key and parsed date/time."""
    if "path" not in img.columns:
        img = img.with_columns(L.image_relpath_expr(image_ext).alias("path"))
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


def study_table(img: pl.DataFrame) -> pl.DataFrame:
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


def _drop_bad_dicom_ids(meta: pl.DataFrame, rejects: list[dict]) -> pl.DataFrame:
    """A dicom_id that is not MIMIC's five dash-joined hex groups becomes a reject row
    naming its CSV line; no path is ever built from it."""
    ok = pl.col("dicom_id").str.contains(DICOM_ID_RE.pattern)
    for row in meta.filter(~ok).select("study_id", "_src", "dicom_id").iter_rows():
        sid, src, did = row
        rejects.append(
            {"study_id": sid, "source": f"{src}: dicom_id {did!r}", "reason": "bad_dicom_id"}
        )
    return meta.filter(ok)


def _drop_bad_sizes(meta: pl.DataFrame, rejects: list[dict]) -> pl.DataFrame:
    """An image whose Rows or Columns is zero or negative cannot hold a region (ROI boxes
    are clipped to it): a `bad_image_size` reject row naming its source; blank stays null."""
    bad = (pl.col("Rows") <= 0) | (pl.col("Columns") <= 0)
    for sid, src, r, c in (
        meta.filter(bad.fill_null(False)).select("study_id", "_src", "Rows", "Columns").iter_rows()
    ):
        rejects.append(
            {"study_id": sid, "source": f"{src}: Rows={r}, Columns={c}", "reason": "bad_image_size"}
        )
    return meta.filter(~bad.fill_null(False))


def load_images(
    lay: L.MimicLayout,
    *,
    scan_dicom: bool,
    workers: int,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[pl.DataFrame, list[dict], list[Path]]:
    """Image rows (metadata columns, typed ids, `_src`), image-level rejects, input files.

    With `scan_dicom`, `on_start(total)` and `on_progress(n)` follow the header scan.
    """
    rejects: list[dict] = []
    if not scan_dicom:
        assert lay.metadata is not None
        meta = L.read_metadata(lay.metadata)
        name = lay.metadata.name
        meta = meta.with_columns(
            (pl.lit(f"{name} line ") + pl.col("_line").cast(pl.String)).alias("_src")
        )
        meta = _drop_bad_sizes(_drop_bad_dicom_ids(meta, rejects), rejects)
        return meta.drop("_line"), rejects, [lay.metadata]

    if lay.files_dir is None:
        raise CxrctxError(
            f"{lay.root / 'files'}: --scan-dicom needs the files/ tree with DICOM files"
        )
    rels = find_dicoms(lay.files_dir)
    if on_start:
        on_start(len(rels))
    rows, errors = scan_dicoms(lay.root, rels, workers=workers, on_progress=on_progress)
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
    return _drop_bad_sizes(meta, rejects), rejects, []
