"""Prior studies: a per-patient self-join, filtered by time and ranked (columnar, polars)."""

from __future__ import annotations

import polars as pl


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
