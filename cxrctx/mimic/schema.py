"""The one explicit polars schema of records and rejects shards.

Every shard is cast to these types before writing, so empty shards and shards from
different runs have identical Arrow schemas. Kept in step with `cxrctx.models.Record`
(a test checks the column names).
"""

from __future__ import annotations

import polars as pl

from cxrctx.io import PolarsType
from cxrctx.mimic.layout import LABEL_KEYS

DT = pl.Datetime("us")

IMAGE_STRUCT = pl.Struct(
    {
        "dicom_id": pl.String,
        "path": pl.String,
        "view_position": pl.String,
        "view_group": pl.String,
        "rows": pl.Int64,
        "columns": pl.Int64,
    }
)
PRIOR_STRUCT = pl.Struct(
    {
        "study_id": pl.Int64,
        "study_datetime": DT,
        "days_before": pl.Int64,
        "indication": pl.String,
        "findings": pl.String,
        "impression": pl.String,
        "images": pl.List(IMAGE_STRUCT),
    }
)
LABELS_STRUCT = pl.Struct({k: pl.Float64 for k in LABEL_KEYS})

RECORD_SCHEMA: dict[str, PolarsType] = {
    "subject_id": pl.Int64,
    "study_id": pl.Int64,
    "split": pl.String,
    "study_datetime": DT,
    "images": pl.List(IMAGE_STRUCT),
    "examination": pl.String,
    "indication": pl.String,
    "reason_for_exam": pl.String,
    "history": pl.String,
    "technique": pl.String,
    "comparison": pl.String,
    "findings": pl.String,
    "impression": pl.String,
    "addendum": pl.String,
    "last_paragraph": pl.String,
    "priors": pl.List(PRIOR_STRUCT),
    "n_prior_studies": pl.Int64,
    "report_path": pl.String,
    "report_sha256": pl.String,
    "chexpert": LABELS_STRUCT,
    "negbio": LABELS_STRUCT,
    "flags": pl.List(pl.String),
}

REJECT_SCHEMA: dict[str, PolarsType] = {
    "study_id": pl.Int64,
    "source": pl.String,
    "reason": pl.String,
}


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select exactly the schema's columns, in order, cast to its types (missing → null)."""
    cols = []
    for name, dtype in schema.items():
        expr = pl.col(name) if name in df.columns else pl.lit(None)
        cols.append(expr.cast(dtype).alias(name))
    return df.select(cols)
