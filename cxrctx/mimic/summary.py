"""build-priors bookkeeping: the rejects table, the count reconciliation (nothing is lost:
every input study is a record or a reject) and the summary tables the CLI prints."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cxrctx import jsonl
from cxrctx.io import atomic_path, sha256_file
from cxrctx.mimic.schema import REJECT_SCHEMA, conform
from cxrctx.models import ShardInfo
from cxrctx.vocab import FLAGS

#: Reject reasons that drop a whole study, and those that drop one image of a study.
STUDY_REJECT_REASONS = (
    "bad_study_date",
    "bad_study_time",
    "missing_report",
    "unreadable_report",
    "non_utf8_report",
    "empty_report",
    "report_too_large",
)
IMAGE_REJECT_REASONS = ("unreadable_dicom", "bad_dicom_id", "bad_image_size")


def reject_table(rejects: list[dict]) -> pl.DataFrame:
    rej = (
        pl.DataFrame(rejects, schema=REJECT_SCHEMA)
        if rejects
        else pl.DataFrame(schema=REJECT_SCHEMA)
    )
    return conform(rej, REJECT_SCHEMA).sort(["study_id", "reason", "source"], nulls_last=True)


def reconcile(
    rec: pl.DataFrame, rej: pl.DataFrame, img: pl.DataFrame, unknown_views: int, studies_in: int
) -> dict[str, int]:
    """Counts of the run; they must add up before anything is written. `img`: the images
    that survived the image-level checks; `unknown_views`: images without a view position."""
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
        "images_in": img.height + image_rejects.height,
        "images_in_records": images_in_records,
        "images_in_rejected_studies": rejected_with_images,
        "images_rejected": image_rejects.height,
        "reject_rows": rej.height,
        "unknown_view_position": unknown_views,
    }
    if counts["images_in"] != images_in_records + rejected_with_images + image_rejects.height:
        raise RuntimeError(f"image counts do not reconcile: {counts}")
    return counts


def _counts(values: pl.Series) -> dict:
    """value → count (polars' value_counts; a Python Counter over 228k rows is slower)."""
    vc = values.value_counts(name="_n")
    return dict(zip(vc[values.name].to_list(), vc["_n"].to_list(), strict=True))


def summaries(rec: pl.DataFrame, rej: pl.DataFrame, max_priors: int) -> dict:
    """Rejects by reason, flag counts, the n_prior_studies histogram and split sizes."""
    flag_counts = _counts(rec["flags"].explode().drop_nulls())
    hist = {k: 0 for k in [*(str(i) for i in range(max_priors + 1)), f">{max_priors}"]}
    for v, n in _counts(rec["n_prior_studies"].clip(upper_bound=max_priors + 1)).items():
        hist[str(v) if v <= max_priors else f">{max_priors}"] += n
    splits = _counts(rec["split"].fill_null("(none)"))
    return {
        "rejects_by_reason": dict(sorted(_counts(rej["reason"]).items())),
        "flags": {f: int(flag_counts.get(f, 0)) for f in FLAGS},
        "n_prior_studies_histogram": hist,
        "splits": {str(k): int(v) for k, v in sorted(splits.items())},
    }


def write_jsonl(rec: pl.DataFrame, path: Path) -> ShardInfo:
    """JSON Lines of the records (datetimes ISO 8601), written atomically."""
    iso = "%Y-%m-%dT%H:%M:%S%.f"
    rec = rec.with_columns(
        pl.col("study_datetime").dt.to_string(iso),
        pl.col("priors").list.eval(
            pl.element().struct.with_fields(pl.field("study_datetime").dt.to_string(iso))
        ),
    )
    with atomic_path(path) as tmp:
        jsonl.write_frame(rec, tmp)
    return ShardInfo(path=path.name, rows=rec.height, sha256=sha256_file(path))
