"""The tables of a release: what goes public (IDs and enums) and what stays credentialed.

Public tables hold only identifiers, splits, flags, section-presence booleans, counts,
label enums and the checksum of each whole report file: `PUBLIC_COLUMNS` is the whitelist
a test holds every public file to, so a free-text column can never slip in. No public
column is a function of a short piece of text (a hash of "No acute process." is reversed
with a phrase list), and Chest ImaGenome's boxes (a credentialed dataset) stay credentialed. Credentialed tables are the stage
outputs as produced (plus an integer `study_id` on the labels), with the model recorded
by name instead of a local path.

Every table is written per split, one Parquet set per (table, split), so the card's
`configs:` can name each split: MIMIC's `validate` is published under the hub's
`validation` split name; records without a split go to `unsplit`.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from cxrctx.errors import CxrctxError
from cxrctx.io import write_parquet
from cxrctx.models import ShardInfo
from cxrctx.vocab import FLAGS, LESIONS, LOCATIONS, SECTIONS

#: MIMIC split value → hub split name (a split name must match \w+; `validation` is the hub's).
HUB_SPLITS: dict[str, str] = {"train": "train", "validate": "validation", "test": "test"}
UNSPLIT = "unsplit"
SPLIT_ORDER = ("train", "validation", "test", UNSPLIT)
STATUSES = ("positive", "negative")
LABEL_SOURCES = ("llm", "not_candidate", "no_candidate", "rules", "not_mentioned", "cache")

#: Every column a public table may have, with what it holds. Anything else is refused.
PUBLIC_COLUMNS: dict[str, str] = {
    "subject_id": "id",
    "study_id": "id",
    "dicom_id": "id",
    "id": "id",
    "split": "enum",
    "n_images": "count",
    **{f"has_{s}": "bool" for s in SECTIONS},
    "n_prior_studies": "count",
    "prior_study_ids": "id list",
    "flags": "enum list",
    "report_sha256": "checksum of the whole report file",
    "view_position": "enum",
    "view_group": "enum",
    "path": "id path",
    "rows": "count",
    "columns": "count",
    "lesion": "enum",
    "status": "enum",
    "location": "enum",
    "source": "enum",
    "llm_called": "bool",
}


def lesion_key(lesion: str) -> str:
    """`pleural effusion` → `pleural_effusion` (wide label column stem)."""
    return lesion.replace(" ", "_")


PUBLIC_COLUMNS.update(
    {f"{lesion_key(x)}_{k}": "enum" for x in LESIONS for k in ("status", "location")}
)


def hub_split() -> pl.Expr:
    """The hub split name of each row, from the MIMIC `split` column."""
    return pl.col("split").replace_strict(HUB_SPLITS, default=UNSPLIT, return_dtype=pl.String)


def _present(col: str) -> pl.Expr:
    return (pl.col(col).is_not_null() & (pl.col(col).str.strip_chars() != "")).alias(f"has_{col}")


def public_studies(rec: pl.DataFrame) -> pl.DataFrame:
    """One row per study: ids, split, section presence, priors by id, flags, report checksum."""
    return rec.select(
        "subject_id",
        "study_id",
        "split",
        pl.col("images").list.len().cast(pl.Int64).alias("n_images"),
        *[_present(s) for s in SECTIONS if s in rec.columns],
        "n_prior_studies",
        pl.col("priors")
        .list.eval(pl.element().struct.field("study_id"))
        .cast(pl.List(pl.Int64))
        .alias("prior_study_ids"),
        "flags",
        "report_sha256",
    )


def public_images(rec: pl.DataFrame) -> pl.DataFrame:
    """One row per image: ids, split, view and the image path (built from the ids)."""
    return (
        rec.select("subject_id", "study_id", "split", "images")
        .explode("images")
        .filter(pl.col("images").is_not_null())
        .unnest("images")
        .select(
            "subject_id",
            "study_id",
            "dicom_id",
            "split",
            "view_position",
            "view_group",
            "path",
            "rows",
            "columns",
        )
    )


def model_name(model: str) -> str:
    """A model recorded by name: a local path becomes its file (or folder) name."""
    if model and (os.sep in model or model.startswith((".", "~"))):
        return Path(model).name or model
    return model


def labels_long(
    labels: pl.DataFrame, rec: pl.DataFrame, *, source: str, public: bool
) -> pl.DataFrame:
    """Long labels (14 rows per study) with an integer `study_id` and the study's split.

    Public: enums and checksums only (no rationale, no provenance text). Credentialed: every
    column as produced, the model by name. Labels of ids that are not records are refused."""
    lab = labels.with_columns(pl.col("id").cast(pl.String))
    lab = lab.with_columns(pl.col("id").cast(pl.Int64, strict=False).alias("study_id"))
    keys = rec.select("study_id", "split")
    orphans = lab.filter(pl.col("study_id").is_null()).select("id").unique().head(3)["id"].to_list()
    orphans += (
        lab.filter(pl.col("study_id").is_not_null())
        .join(keys, on="study_id", how="anti")
        .select("id")
        .unique(maintain_order=True)
        .head(3)["id"]
        .to_list()
    )
    if orphans:
        n = lab.join(keys, on="study_id", how="anti").select("id").n_unique()
        raise CxrctxError(
            f"{source}: labels for {n} id(s) that are not records of the release "
            f"(e.g. {', '.join(map(str, orphans[:3]))}); label the same build-priors output"
        )
    lab = lab.join(keys, on="study_id", how="left")
    if public:
        cols = ["study_id", "id", "split", "lesion", "status", "location", "source"]
        cols += [c for c in ("llm_called",) if c in lab.columns]
        return lab.select(cols)
    if "model" in lab.columns:
        lab = lab.with_columns(pl.col("model").map_elements(model_name, return_dtype=pl.String))
    rest = [c for c in lab.columns if c not in ("study_id", "id", "split")]
    return lab.select("study_id", "id", "split", *rest)


def labels_wide(long: pl.DataFrame) -> pl.DataFrame:
    """One row per study: `<lesion>_status` and `<lesion>_location` columns (enums only)."""
    base = long.select("study_id", "split").unique(maintain_order=True)
    out = base
    for lesion in LESIONS:
        one = long.filter(pl.col("lesion") == lesion).select(
            "study_id",
            pl.col("status").alias(f"{lesion_key(lesion)}_status"),
            pl.col("location").alias(f"{lesion_key(lesion)}_location"),
        )
        out = out.join(one.unique("study_id", keep="first"), on="study_id", how="left")
    return out.sort("study_id")


def rois_table(rois: pl.DataFrame) -> pl.DataFrame:
    """ROI rows as produced (credentialed only: boxes come from Chest ImaGenome, itself a
    credentialed dataset, and carry report sentences)."""
    return rois


def write_split_files(
    df: pl.DataFrame, folder: Path, bundle: Path, rows_per_file: int
) -> list[ShardInfo]:
    """`folder/<split>-NNNNN-of-NNNNN.parquet` per hub split (paths relative to `bundle`).

    Rows keep their input order within a split; an empty split writes no file."""
    df = df.with_columns(hub_split().alias("_hub"))
    infos: list[ShardInfo] = []
    for split in SPLIT_ORDER:
        part = df.filter(pl.col("_hub") == split).drop("_hub")
        if part.height == 0:
            continue
        n = -(-part.height // rows_per_file)
        for i in range(n):
            path = folder / f"{split}-{i:05d}-of-{n:05d}.parquet"
            info = write_parquet(part.slice(i * rows_per_file, rows_per_file), path)
            infos.append(info.model_copy(update={"path": path.relative_to(bundle).as_posix()}))
    return infos


def split_of(path: str) -> str:
    """Hub split of a data file from its name (`validation-00000-of-00001.parquet`)."""
    return Path(path).name.split("-", 1)[0]


def enum_values() -> dict[str, tuple[str, ...]]:
    """Allowed values of the public enum columns (for validate and the free-text test)."""
    return {
        "split": tuple(HUB_SPLITS),
        "lesion": LESIONS,
        "status": STATUSES,
        "location": LOCATIONS,
        "flags": FLAGS,
        "view_group": ("frontal", "lateral", "other"),
        "source": LABEL_SOURCES,
    }
