"""The per-record flags of build-priors: comparison language without a prior study, and
the list of flag names each record carries (columnar, polars)."""

from __future__ import annotations

import polars as pl

from cxrctx.vocab import FLAGS, NEGATED_PATTERN, TEMPORAL_PATTERN, has_temporal_reference


def with_temporal_language(rec: pl.DataFrame) -> pl.DataFrame:
    """`temporal_language` (`has_temporal_reference(findings, impression)`) for the
    records without a prior study (null for the others: the flag it feeds needs both).

    Vectorised with polars' regex engine for ASCII texts (sections are single-spaced, so
    both engines read \\w, \\s and \\b alike there); any other text goes through the
    Python function itself, so the answer is always the function's."""
    sub = rec.filter(pl.col("n_prior_studies") == 0).select("study_id", "findings", "impression")
    fields = ("findings", "impression")
    ascii_ = pl.all_horizontal(
        ~pl.col(c).str.contains(r"[^\x00-\x7F]").fill_null(False) for c in fields
    )
    fast = sub.filter(ascii_).select(
        "study_id", pl.any_horizontal(_temporal_expr(c) for c in fields).alias("temporal_language")
    )
    rest = sub.filter(~ascii_)
    slow = pl.DataFrame(
        {
            "study_id": rest["study_id"],
            "temporal_language": [
                has_temporal_reference(f, i)
                for f, i in zip(rest["findings"], rest["impression"], strict=True)
            ],
        },
        schema={"study_id": pl.Int64, "temporal_language": pl.Boolean},
    )
    found = pl.concat([fast, slow])
    return rec.join(found, on="study_id", how="left", maintain_order="left")


def _temporal_expr(column: str) -> pl.Expr:
    low = pl.col(column).str.to_lowercase()
    positive = low.str.contains(TEMPORAL_PATTERN)
    return (
        positive & low.str.replace_all(NEGATED_PATTERN, " ").str.contains(TEMPORAL_PATTERN)
    ).fill_null(False)


def with_flags(rec: pl.DataFrame) -> pl.DataFrame:
    """`flags`: the names of the conditions that hold, in FLAGS order.

    Each row's conditions are packed into a bit mask and the few distinct masks are
    turned into lists once, then joined back: a per-row `concat_list` of nine
    `when/then` expressions costs ~30× more at full MIMIC scale."""
    conditions = list(flag_conditions().values())
    mask = pl.sum_horizontal(
        [c.fill_null(False).cast(pl.UInt32) * (1 << i) for i, c in enumerate(conditions)]
    )
    rec = rec.with_columns(mask.alias("_mask"))
    masks = rec["_mask"].unique().sort().to_list()
    names = pl.DataFrame(
        {"_mask": masks, "flags": [[f for i, f in enumerate(FLAGS) if m >> i & 1] for m in masks]},
        schema={"_mask": pl.UInt32, "flags": pl.List(pl.String)},
    )
    return rec.join(names, on="_mask", how="left", maintain_order="left").drop("_mask")


def flag_conditions() -> dict[str, pl.Expr]:
    """Flag name → when it applies, in the order of the record contract's FLAGS."""
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
        "only_last_paragraph": pl.col("last_paragraph").is_not_null(),
    }
    assert tuple(conditions) == FLAGS
    return conditions
