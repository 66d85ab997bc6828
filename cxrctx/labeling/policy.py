"""The uncertainty policy (`--uncertain positive|negative|keep`), as CheXpert-style label
users know it (U-Ones, U-Zeros, keep the uncertain class).

An *uncertain* row is a rule reading that is positive only through a hedge or a borderline
phrase ("possible effusion", "borderline heart size") and that nothing adjudicated
(source "rules", clarity "ambiguous", the rationale's reasons name hedged or borderline).
Rows decided by the exemplar vote or the model are decisions, not uncertain.

- positive (default, what the trainer reads): uncertain rows stay positive;
- negative: they become negative (location "not mentioned");
- keep: they are written with status "uncertain".

The policy is recorded in the labels manifest (`config.uncertain`); consumers
(`eval-labels`, `release`, `train`) read it there and turn a kept "uncertain" into a
binary status with `as_binary` (positive unless told otherwise), so a run labeled with
`keep` trains and scores like the default.
"""

from __future__ import annotations

import enum
from typing import Any

import polars as pl

#: the rationale's "ambiguous: ..." reasons that make a positive rule reading uncertain
UNCERTAIN_REASONS = r"ambiguous: .*\b(hedged|borderline)\b"


class UncertainPolicy(str, enum.Enum):
    """What a hedged (uncertain) positive reading is written as."""

    positive = "positive"
    negative = "negative"
    keep = "keep"


def uncertain_rows() -> pl.Expr:
    """True for the rows the policy applies to (see the module docstring)."""
    return (
        (pl.col("source") == "rules")
        & (pl.col("clarity") == "ambiguous")
        & (pl.col("status") == "positive")
        & pl.col("rationale").str.contains(UNCERTAIN_REASONS)
    )


def apply_policy(labels: pl.DataFrame, policy: UncertainPolicy | str) -> tuple[pl.DataFrame, int]:
    """Labels with the policy applied, and how many rows it concerned."""
    p = UncertainPolicy(policy)
    if labels.is_empty() or "clarity" not in labels.columns:
        return labels, 0
    hit = uncertain_rows()
    n = int(labels.select(hit.sum()).item() or 0)
    if p is UncertainPolicy.positive or n == 0:
        return labels, n
    status = "negative" if p is UncertainPolicy.negative else "uncertain"
    cols = [
        pl.when(hit).then(pl.lit(status)).otherwise(pl.col("status")).alias("status"),
        pl.when(hit)
        .then(
            pl.col("rationale")
            + pl.lit(f"; uncertain: written as {status} (--uncertain {p.value})")
        )
        .otherwise(pl.col("rationale"))
        .alias("rationale"),
    ]
    if p is UncertainPolicy.negative:
        cols.append(
            pl.when(hit)
            .then(pl.lit("not mentioned"))
            .otherwise(pl.col("location"))
            .alias("location")
        )
    return labels.with_columns(cols), n


def as_binary(labels: pl.DataFrame, uncertain_as: str = "positive") -> pl.DataFrame:
    """Kept "uncertain" statuses as `uncertain_as` (positive or negative) for consumers
    that need a binary status; other rows unchanged."""
    if uncertain_as not in ("positive", "negative"):
        raise ValueError(f"uncertain_as must be positive or negative (got {uncertain_as!r})")
    if "status" not in labels.columns:
        return labels
    u = pl.col("status") == "uncertain"
    out = labels.with_columns(
        pl.when(u).then(pl.lit(uncertain_as)).otherwise(pl.col("status")).alias("status")
    )
    if uncertain_as == "negative" and "location" in labels.columns:
        loc = pl.when(u).then(pl.lit("not mentioned")).otherwise(pl.col("location"))
        out = out.with_columns(loc.alias("location"))
    return out


def policy_of(manifest_config: dict[str, Any] | None) -> str:
    """The policy a labels manifest records (runs before the option: positive)."""
    return str((manifest_config or {}).get("uncertain") or UncertainPolicy.positive.value)
